"""What ``raykube run`` and ``raykube train`` share: start/join Ray, train (or tune),
and, on one machine, promote the result to a local Ray Serve app behind the same gate
the operator applies on a cluster."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raykube.events import RunObserver
from raykube.ports import late_bound_port
from raykube.spec import TrainingRun


@dataclass
class Outcome:
    """The checkpoint that counts and its metrics, from a training run or a search."""

    best_checkpoint: str | None
    best_metrics: dict[str, Any]
    run_dir: str
    raw: Any


# On one machine a stopping Serve replica need not wait for remote load balancers:
# HAProxy runs beside it and retries refused connections. (Ray's default 30 s made every
# `serve.shutdown()` outlast its own 30 s wait, and a redeploy right after it failed.)
LOCAL_SERVE_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
# Ray starts one idle worker process per CPU when the driver connects; Train's controller
# and workers carry their own runtime env (Train propagates env vars) so they never use
# them: on a small machine those starts only compete with the ones training waits for.
# Ray Data's decode tasks (image folders) do use them: ``prestart_workers=True``.
PRESTART_ENV = "RAY_prestart_worker_first_driver"
# HAProxy's stats and Prometheus ports (8404, 9101 by default) bind all interfaces:
# a free port each, so two local Rays (or a test session beside `raykube serve`) coexist;
# below the ephemeral range, since they are bound only when Serve starts (late_bound_port).
_HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def apply_ray_env(*, local: bool = True, prestart_workers: bool = False) -> None:
    """Put raykube's Ray settings (``raykube.render.TRAIN_ENV``/``SERVE_ENV``, the same as
    the rendered pods') into this process's environment, where Ray processes started or
    joined from here read them. Values already set win (users can still override each).
    Call before ``ray.init``."""
    from raykube.render import SERVE_ENV, TRAIN_ENV

    env = {**TRAIN_ENV, **SERVE_ENV}
    if local:
        env.update(LOCAL_SERVE_ENV)
        env[PRESTART_ENV] = "1" if prestart_workers else "0"
    for k, v in env.items():
        os.environ.setdefault(k, v)
    if local:
        for k in _HAPROXY_PORTS:
            if not os.environ.get(k):
                os.environ[k] = str(late_bound_port(""))


def init_ray(*, address: str | None = None, num_cpus: int | None = None,
             prestart_workers: bool = False, dashboard: bool = False) -> str | None:
    """Start an embedded Ray (no telemetry) or join ``address``; the dashboard's URL
    when this Ray serves one.

    ``prestart_workers``: idle workers for Ray Data's tasks (see ``PRESTART_ENV``).
    ``dashboard``: Ray's dashboard (and the state API it serves) on 127.0.0.1. Off, Ray
    still starts its API-server process but loads no module into it, and ``ray.init``
    returns ~1 s sooner (the raylet starts only once that process has published its
    address): less CPU on the way to a run's first step and beside its workers. Tune
    needs it on (Ray Train's placement-group cleaner polls the state API every second,
    and warns each time it fails); a plain run does not."""
    apply_ray_env(local=not address, prestart_workers=prestart_workers)
    import ray

    if ray.is_initialized():
        return None
    if address:
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        # This command's own Ray, even when another one runs here (raykube.ray_local).
        from raykube.ray_local import init_local_ray

        # None, not True: Ray's default (start it, without failing the run if it cannot)
        ctx = init_local_ray(num_cpus=num_cpus, log_to_driver=True,
                             include_dashboard=None if dashboard else False)
    url = getattr(ctx, "dashboard_url", None)  # "" without a dashboard; host:port without a scheme
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def local_cpus(run: TrainingRun) -> int:
    """Logical CPUs for an embedded Ray: the machine's, but at least what the run asks
    for (workers, plus a serve replica), so a small laptop still schedules it."""
    s = run.spec
    need = s.scaling.workers * s.scaling.cpus_per_worker
    if s.tune is not None:
        need *= s.tune.concurrent_trials
    need += s.serve.cpus_per_replica * s.serve.replicas if s.serve.enabled else 0
    return int(max(os.cpu_count() or 1, -(-need // 1)))


def available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes this machine can still give new processes: the kernel's ``MemAvailable``
    plus free swap; None where there is no ``/proc/meminfo`` (not Linux)."""
    fields: dict[str, int] = {}
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0]) * 1024  # kB
    except OSError:
        return None
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + fields.get("SwapFree", 0)


def serving_shortfall(spec: dict[str, Any], replicas: int, available: int | None
                      ) -> str | None:
    """Why this machine cannot hold ``replicas`` Serve replicas of a checkpoint trained
    from ``spec`` (its meta.json's), or None: ``raykube.footprint``'s floor per replica
    (torch and the weights). ``raykube serve --replicas 50`` printed nothing for minutes
    while Ray started replica after replica into a machine without room for them (each
    took ~500 MiB here); ``raykube run`` refuses such a request up front, so does serve."""
    from raykube import footprint as fpm
    from raykube.spec import TrainingRunSpec

    if available is None:
        return None
    try:
        fp = fpm.footprint(TrainingRunSpec.model_validate(spec))
    except Exception:  # a checkpoint of an older spec: torch alone is the floor
        fp = None
    each = fp.serving_bytes if fp is not None else fpm.TORCH_PROCESS_BYTES
    if replicas * each <= available:
        return None
    how = ("use fewer --replicas" if each <= available
           else "not even one replica fits")
    return (f"{replicas} replica(s) need at least {fpm.size(replicas * each, up=True)} of memory and "
            f"this machine has {fpm.size(available)} available (each replica at least "
            f"{fpm.size(each, up=True)}: torch and the model's weights); {how}")


def memory_shortfall(run: TrainingRun, available: int | None) -> str | None:
    """Why this machine cannot hold ``run``'s training processes, or None.

    Counted by ``raykube.footprint``'s floors (torch, the model's weights, gradients and
    optimizer buffers) for every Train worker that runs at once: when even that is more
    than ``available``, the run would end in the OOM killer (Ray's memory monitor
    killing workers, Train restarting them, the machine swapping), not in a result.
    ``local_cpus`` lets a run ask for more workers than there are cores, so memory is
    the limit that bites."""
    from raykube import footprint as fpm

    if available is None:
        return None
    s = run.spec
    fp = fpm.footprint(s)
    each = fp.training_bytes if fp is not None else fpm.TORCH_PROCESS_BYTES
    trials = s.tune.concurrent_trials if s.tune is not None else 1
    n = s.scaling.workers * trials
    if n * each <= available:
        return None
    what = (f"{s.scaling.workers} worker(s)"
            + (f" x {trials} concurrent trials" if trials > 1 else ""))
    how = ("use fewer workers (--workers)" if each * trials <= available else
           "not even one worker fits: make the model smaller")
    detail = (fpm.training_breakdown(s, fp) if fp is not None
              else "a Python process with torch imported")
    return (f"{what} need at least {fpm.size(n * each, up=True)} of memory and this machine has "
            f"{fpm.size(available)} available (each Train worker at least "
            f"{fpm.size(each, up=True)}: {detail}); {how}")


def gpu_shortfall(run: TrainingRun, gpus: float) -> str | None:
    """Why ``gpus`` (what this machine's Ray sees) cannot run ``run``, or None.

    Without it a GPU spec on a CPU machine waits silently: Ray Train retries starting its
    worker group every 60 s for workers that can never be placed."""
    s = run.spec
    train = s.scaling.workers * s.scaling.gpus_per_worker
    serve = s.serve.replicas * s.serve.gpus_per_replica if s.serve.enabled else 0.0
    asks = []
    if train > gpus + 1e-9:
        asks.append(f"scaling: {s.scaling.workers} worker(s) x gpusPerWorker "
                    f"{s.scaling.gpus_per_worker:g}")
    if serve > gpus + 1e-9:
        asks.append(f"serve: {s.serve.replicas} replica(s) x gpusPerReplica "
                    f"{s.serve.gpus_per_replica:g}")
    if not asks:
        return None
    fix = ("set scaling.gpusPerWorker (and serve.gpusPerReplica) to 0 to train on CPUs"
           if gpus == 0 else "ask for fewer")
    return (f"the run needs {max(train, serve):g} GPU(s) ({'; '.join(asks)}) and Ray sees "
            f"{gpus:g} on this machine: {fix}, or run it on a machine with CUDA GPUs")


def train_or_tune(run: TrainingRun, storage: str, observers: Iterable[RunObserver] = ()) -> Outcome:
    """``fit`` the run, or ``raykube.tune.run_tune`` it when ``spec.tune`` is set."""
    from raykube.train import check_storage, fit, run_dir_for

    check_storage(storage, run.name)
    if run.spec.tune is not None:
        from raykube.tune import run_tune

        t = run_tune(run, storage, observers=observers)
        return Outcome(t.best_checkpoint, dict(t.best_metrics or {}), run_dir_for(storage, run.name), t)
    o = fit(run, storage, observers=observers)
    return Outcome(o.best_checkpoint, o.best_metrics, o.run_dir, o)


def validation_example(run: TrainingRun, storage: str) -> tuple[list, str]:
    """One validation example (as nested lists) and its true class name."""
    from raykube import data as rk_data

    spec = run.spec
    cache = rk_data.cache_dir_for(spec, storage)
    info = rk_data.dataset_info(spec, cache)
    if spec.data.dataset == "image-folder":  # the training run's decoded cache
        arrays = rk_data.load_image_cache(rk_data.build_image_cache(spec, storage), spec)
    else:
        arrays = rk_data.load_arrays(spec, cache)
    x = rk_data.normalise_batch(arrays.val_x[:1])[0]
    return x.tolist(), info.class_names[int(arrays.val_y[0])]


def demo_request(base_url: str, instance: list) -> dict[str, Any]:
    """POST one instance to /predict, as any client would.

    The standard library's client: the Ray image installs raykube[train], which has no
    HTTP client package (httpx is a dev dependency), and `raykube run` must work there."""
    import urllib.request

    req = urllib.request.Request(
        f"{base_url.rstrip('/')}/predict", method="POST",
        data=json.dumps({"instances": [instance]}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:  # raises HTTPError on 4xx/5xx
        return json.loads(r.read())


def curl_command(base_url: str, instance: list) -> str:
    body = json.dumps({"instances": [instance]}, separators=(",", ":"))
    return (f"curl -s -X POST {base_url.rstrip('/')}/predict -H 'Content-Type: application/json' "
            f"-d '{body}'")


def describe_answer(answer: dict[str, Any]) -> str:
    """'<label> (p=0.97)' from a /predict response, or the raw JSON if its shape is new."""
    try:
        pred = answer["predictions"][0]
        label = pred.get("label", pred.get("class"))
        probs = pred.get("probabilities")
        return f"[bold]{label}[/] (p={max(probs):.3f})" if probs else f"[bold]{label}[/]"
    except (KeyError, IndexError, TypeError, ValueError):
        return json.dumps(answer)
