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
from raykube.spec import TrainingRun


@dataclass
class Outcome:
    """The checkpoint that counts and its metrics, from a training run or a search."""

    best_checkpoint: str | None
    best_metrics: dict[str, Any]
    run_dir: str
    raw: Any


# Ray Train's controller polls its workers every 2 s by default, and a worker's second
# report blocks until the first was polled: short epochs would each wait up to 2 s.
# Ray processes inherit this from the process that starts Ray (on a cluster, the pods'
# env must carry it: render sets it).
FAST_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def init_ray(*, address: str | None = None, num_cpus: int | None = None) -> None:
    """Start an embedded Ray (no dashboard, no telemetry) or join ``address``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for k, v in FAST_POLL.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray's default dashboard setting, not include_dashboard=False: that also drops
        # the state API, which Ray Train's placement-group cleaner polls every second
        # (a warning each time it fails). It listens on 127.0.0.1 only.
        # This command's own Ray, even when another one runs here (raykube.ray_local).
        from raykube.ray_local import init_local_ray

        init_local_ray(num_cpus=num_cpus, log_to_driver=True)


def local_cpus(run: TrainingRun) -> int:
    """Logical CPUs for an embedded Ray: the machine's, but at least what the run asks
    for (workers, plus a serve replica), so a small laptop still schedules it."""
    s = run.spec
    need = s.scaling.workers * s.scaling.cpus_per_worker
    if s.tune is not None:
        need *= s.tune.max_concurrent_trials
    need += s.serve.cpus_per_replica * s.serve.replicas if s.serve.enabled else 0
    return int(max(os.cpu_count() or 1, -(-need // 1)))


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


def gate_passed(run: TrainingRun, metrics: dict[str, Any]) -> bool:
    """The promotion gate: the best checkpoint's valAccuracy reaches serve.minAccuracy."""
    acc = metrics.get("valAccuracy")
    return acc is not None and float(acc) >= run.spec.serve.min_accuracy


def validation_example(run: TrainingRun, storage: str) -> tuple[list, str]:
    """One validation example (as nested lists) and its true class name."""
    from raykube import data as rk_data

    spec = run.spec
    cache = rk_data.cache_dir_for(spec, storage)
    info = rk_data.dataset_info(spec, cache)
    if spec.data.dataset == "image-folder":
        row = rk_data.as_ray_dataset(spec, "val", cache).take(1)[0]
        return row["image"].tolist(), info.class_names[int(row["label"])]
    arrays = rk_data.load_arrays(spec, cache)
    return arrays.val_x[0].tolist(), info.class_names[int(arrays.val_y[0])]


def demo_request(base_url: str, instance: list) -> dict[str, Any]:
    """POST one instance to /predict, as any client would."""
    import httpx

    r = httpx.post(f"{base_url.rstrip('/')}/predict", json={"instances": [instance]}, timeout=60)
    r.raise_for_status()
    return r.json()


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
