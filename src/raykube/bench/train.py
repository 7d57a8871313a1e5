"""The ``train`` suite: raykube's Ray Train path vs plain PyTorch and plain DDP.

Variants, each in its own process, on the same synthetic examples (``raykube.data``'s
generator: every training process holds the whole set, as each Ray Train worker does),
model (``raykube.models.build_model``), global batch, optimizer and total CPU threads:

- ``torch``: a plain single-process loop, ``torch.set_num_threads(total threads)``;
- ``ddp``: plain ``torch.distributed`` DDP, one process per worker (gloo), spawned with
  ``torch.multiprocessing``, ``threads / workers`` threads each;
- ``raykube``: ``raykube run`` itself (the command, its own embedded Ray, Ray Train with
  the PyTorch backend) with ``scaling.workers`` workers and ``cpusPerWorker`` CPUs each;
  its Ray stops with it, so no Ray process is alive while the baselines run.

Every variant is timed the same way: a global optimizer step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) logs a timestamp per step
in every training process (for the Ray path it is installed in Ray's workers by a
``worker_process_setup_hook``), so raykube's own metrics are not trusted blindly.
From the step log:

- samples/s after warm-up: the median over fixed-size windows of steps after the first
  epoch, times the global batch (steady-state training throughput);
- time to first step: from the variant's launch (process start, imports, Ray start,
  worker group, data) to the end of the first optimizer step;
- checkpoint cost: time in ``raykube.checkpoint.save_checkpoint`` (+ Ray Train's upload of
  the checkpoint directory to storage inside ``ray.train.report`` for the Ray path) per
  epoch, as a fraction of the epoch time.
"""

from __future__ import annotations

import datetime as dt
import glob
import importlib.abc
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raykube.bench.common import (
    ChildError,
    Goal,
    Report,
    child_env,
    child_main,
    machine_info,
    median,
    run_child,
)
from raykube.ports import free_port

MODULE = "raykube.bench.train"
STEP_LOG_ENV = "RAYKUBE_BENCH_STEP_LOG"

# case -> model spec and example shape (the real datasets' shapes).
# ``epochs`` (full size) are sized so that the measured window (every epoch after the
# first) lasts >= 20 s (WINDOW_GOAL) on a 2-vCPU machine for the fastest variant; quick
# runs use QUICK's. (6 and 14 epochs gave 16-20 s once the synthetic examples became
# uint8: plain torch 1 x 2 ran the CNN's 5 measured epochs at up to 13,830 samples/s.)
CASES: dict[str, dict[str, Any]] = {
    "cifar10-cnn": {"model": {"name": "cifar-cnn"}, "shape": [3, 32, 32], "epochs": 8},
    "fashion-mnist-mlp": {"model": {"name": "mlp"}, "shape": [1, 28, 28], "epochs": 17},
}
GPU_CASE = "cifar10-cnn-gpu"

# num_samples is the whole synthetic set; validation_fraction of it is validated on.
FULL = {"num_samples": 50000, "epochs": 6, "batch_size": 128, "validation_fraction": 0.1,
        "rounds": 3}  # an odd count: the median is a round's figure, robust to one outlier
QUICK = {"num_samples": 10240, "epochs": 3, "batch_size": 128, "validation_fraction": 0.1,
         "rounds": 1}
WORKERS = 2
VAL_BATCH = 1024  # as raykube.train
THREADS = 2  # total CPU threads given to every variant

GOALS = {
    ("raykube", "ddp"): Goal(">=", 0.95),  # N workers x 1 thread, like for like
    ("raykube-1x2", "torch"): Goal(">=", 0.95),  # 1 worker x 2 threads vs 1 process x 2
}
FIRST_STEP_GOAL = Goal("<=", 12.0)  # s, from launch (as `raykube run`) to the first step
CHECKPOINT_GOAL = Goal("<=", 0.02)  # of the CNN's epoch time
WINDOW_GOAL = Goal(">=", 20.0)  # s, each variant's measured window (full size)
VARIANTS = [("ddp", "ddp"), ("raykube", "raykube"), ("raykube-1x2", "raykube"),
            ("torch", "single")]
"""(variant, how it runs) of the CPU cases, in the order of a round: each goal's two
variants back to back (ddp, raykube | raykube-1x2, torch)."""


# ----------------------------------------------------------------------- step clock
class _StepLog:
    """Appends ``s <time>`` per optimizer step and ``c|u <time> <seconds>`` per checkpoint
    save / upload to one file per process. Every line is flushed at once (a write syscall,
    microseconds against steps of milliseconds): worker processes may end without
    running any exit handler, and no step may be lost."""

    def __init__(self, directory: str):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.f = open(os.path.join(directory, f"steps-{os.getpid()}.log"), "a")  # noqa: SIM115

    def step(self, *_: Any) -> None:
        self.f.write(f"s {time.time():.6f}\n")
        self.f.flush()

    def event(self, kind: str, seconds: float) -> None:
        self.f.write(f"{kind} {time.time():.6f} {seconds:.6f}\n")
        self.f.flush()


_LOG: _StepLog | None = None


def _timed(fn: Any, kind: str, when: Any = None) -> Any:
    """Wrap ``fn`` to log its duration as a ``kind`` event (if ``when(args, kwargs)``)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if _LOG is not None and (when is None or when(args, kwargs)):
                _LOG.event(kind, time.perf_counter() - t)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def install_step_clock(directory: str | None = None) -> bool:
    """Log every optimizer step (and checkpoint saves/reports) of this process.

    Used directly by the baselines and as Ray's ``worker_process_setup_hook`` (then the
    directory comes from ``$RAYKUBE_BENCH_STEP_LOG``). Idempotent.
    """
    global _LOG
    directory = directory or os.environ.get(STEP_LOG_ENV)
    if not directory or _LOG is not None:
        return False
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import raykube.checkpoint as ck

    _LOG = _StepLog(directory)
    register_optimizer_step_post_hook(_LOG.step)
    ck.save_checkpoint = _timed(ck.save_checkpoint, "c")
    return True


def _has_checkpoint(args: tuple, kwargs: dict) -> bool:
    # TrainContext._upload_checkpoint(self, checkpoint_dir_name, metrics, checkpoint, ...)
    ckpt = kwargs.get("checkpoint", args[3] if len(args) > 3 else None)
    return ckpt is not None


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then()`` once the module ``name`` has been imported (and executed)."""

    def __init__(self, name: str, then: Any):
        self.name, self.then = name, then

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then(module: Any) -> None:
            exec_module(module)
            self.then()

        spec.loader.exec_module = exec_then  # type: ignore[method-assign]
        return spec


def ray_worker_setup() -> None:
    """Ray ``worker_process_setup_hook``: the step clock, plus timing of Ray Train's
    checkpoint upload (``u``) inside ``ray.train.report``.

    Every process of the job runs the hook (Train's controller and synchronization actor
    too), and ``raykube run`` imports torch only in the Train workers: the clock is
    installed when a process imports torch's optimizers, so that the hook adds no torch
    import, and no CPU, that ``raykube run`` would not spend."""
    if "torch.optim.optimizer" in sys.modules:
        _install_ray_step_clock()
    elif os.environ.get(STEP_LOG_ENV):
        sys.meta_path.insert(0, _AfterImport("torch.optim.optimizer", _install_ray_step_clock))


def _install_ray_step_clock() -> None:
    if not install_step_clock():
        return
    try:
        from ray.train.v2._internal.execution.context import TrainContext

        TrainContext._upload_checkpoint = _timed(TrainContext._upload_checkpoint, "u",
                                                 _has_checkpoint)
    except Exception:  # another Ray Train version: steps and saves are still logged
        pass


def read_step_logs(directory: str) -> list[dict[str, list[float]]]:
    """Each process's log: ``{"steps": [t...], "c": [(t, s)...], "u": [(t, s)...]}``."""
    logs = []
    for path in sorted(glob.glob(os.path.join(directory, "steps-*.log"))):
        log: dict[str, list[Any]] = {"steps": [], "c": [], "u": []}
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if not parts:
                continue
            try:
                if parts[0] == "s" and len(parts) == 2:
                    log["steps"].append(float(parts[1]))
                elif parts[0] in ("c", "u") and len(parts) == 3:
                    log[parts[0]].append((float(parts[1]), float(parts[2])))
            except ValueError:  # a line cut by a killed process
                continue
        if log["steps"]:
            logs.append(log)
    return logs


def steady_rate(steps: list[float], epochs: int, window: int | None = None) -> float:
    """Median steps/s over fixed windows of steps after the first epoch (the warm-up)."""
    n = len(steps)
    per_epoch = n // max(1, epochs)
    start = per_epoch if epochs > 1 else min(n // 4, 10)
    tail = steps[start:]
    if len(tail) < 3:
        return float("nan")
    w = window or max(4, min(50, per_epoch // 5 or 4))
    w = min(w, len(tail) - 1)
    rates = [w / (tail[i + w] - tail[i]) for i in range(0, len(tail) - w, w)
             if tail[i + w] > tail[i]]
    return median(rates)


def measured_window(steps: list[float], epochs: int) -> tuple[float, float] | None:
    """Start and end of the measured window: the first process's steps after its first
    epoch (the warm-up); None with a single epoch."""
    first = len(steps) // max(1, epochs)
    if epochs <= 1 or len(steps) <= first:
        return None
    return steps[first], steps[-1]


def analyse(logs: list[dict[str, list[Any]]], *, t_launch: float, epochs: int,
            global_batch: int, epoch_times: list[float] | None = None) -> dict[str, Any]:
    """The variant's figures from its step logs (one per training process).

    Processes of one data-parallel group step in lockstep, each step covering
    ``global_batch`` samples in total: samples/s = steps/s x global batch (median over
    processes). ``epoch_times`` (if given) are the epochs' wall times as the variant
    measured them; otherwise they come from the steps.
    """
    if not logs:
        raise ChildError("no optimizer step was logged (is the step clock installed?)")
    rates = [steady_rate(lg["steps"], epochs) for lg in logs]
    first = min(lg["steps"][0] for lg in logs)
    # Checkpoint cost per epoch: the save (+ Ray Train's upload to storage) in the
    # process that writes it.
    writer = next((lg for lg in logs if lg["c"]), logs[0])
    ckpt_per_epoch = [s for _, s in writer["c"]]
    uploads = [s for _, s in writer["u"]]
    if uploads:
        ckpt_per_epoch = [c + u for c, u in zip(ckpt_per_epoch, uploads, strict=False)]
    if not epoch_times:
        steps = logs[0]["steps"]
        per = len(steps) // max(1, epochs)
        epoch_times = [steps[min(len(steps) - 1, (i + 1) * per - 1)] - steps[i * per]
                       for i in range(epochs)] if per > 1 else []
    epoch_med = median(epoch_times[1:] if len(epoch_times) > 1 else epoch_times)
    # Between epochs: validation, metric sync, checkpoint, report (from the step clock).
    steps0 = logs[0]["steps"]
    per = len(steps0) // max(1, epochs)
    gaps = [steps0[k * per] - steps0[k * per - 1] for k in range(1, epochs) if per > 1]
    ckpt_med = median(ckpt_per_epoch[1:] if len(ckpt_per_epoch) > 1 else ckpt_per_epoch)
    bounds = measured_window(logs[0]["steps"], epochs)
    window = bounds[1] - bounds[0] if bounds else float("nan")
    return {
        "window_s": window,
        "samples_per_s": median(rates) * global_batch,
        "time_to_first_step_s": first - t_launch,
        "epoch_time_s": epoch_med,
        "between_epochs_s": median(gaps),
        "checkpoint_s": ckpt_med if ckpt_per_epoch else float("nan"),
        "checkpoint_fraction": (ckpt_med / epoch_med) if ckpt_per_epoch and epoch_med > 0
        else float("nan"),
        "steps_logged": sum(len(lg["steps"]) for lg in logs),
        "processes": len(logs),
        "checkpoint_saves": len(writer["c"]),
        "checkpoint_uploads": len(uploads),
    }


# ------------------------------------------------------- CPU beside the training processes
CPU_SAMPLE_S = 1.0  # one /proc snapshot (~2.5 ms for ~100 processes) per second


def proc_cpu() -> dict[int, tuple[str, int]]:
    """Every process's name and CPU time so far (user + system, clock ticks), from
    ``/proc`` (Linux); {} where there is none."""
    out: dict[int, tuple[str, int]] = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:  # gone since the listing
            continue
        end = stat.rindex(")")
        fields = stat[end + 2:].split()
        out[int(pid)] = (stat[stat.index("(") + 1:end], int(fields[11]) + int(fields[12]))
    return out


class CpuSampler:
    """Snapshots of :func:`proc_cpu` every ``period`` s while a variant runs (a thread
    of the bench's own process), so that the CPU the machine spent *beside* the training
    processes in the measured window can be told after the run, when the window is
    known (:func:`beside_cpu`).

    Why: a data-parallel step waits for its slowest thread, so on a small machine every
    core-second that something else takes (Ray's GCS, raylet, agents, Train's controller,
    the driver; or a neighbour) costs the training processes more than that second. The
    figure says how much of a throughput gap is that, measured in the same run."""

    def __init__(self, period: float = CPU_SAMPLE_S):
        import threading

        self.period = period
        self.samples: list[tuple[float, dict[int, tuple[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), proc_cpu()))
            if self._stop.wait(self.period):
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def beside_cpu(samples: list[tuple[float, dict[int, tuple[str, int]]]], start: float,
               end: float, training: set[int], *, hz: int | None = None,
               exclude: set[int] | None = None, top: int = 6) -> dict[str, Any]:
    """CPU (in cores) of the ``training`` processes and of everything else on the machine
    between the first and the last snapshot inside [start, end]; {} with fewer than two
    there. ``exclude``: processes counted in neither (the bench's own). A process that
    started inside the window counts all its CPU; one that ended inside it is missed."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return {}
    (t_a, a), (t_b, b) = inside[0], inside[-1]
    hz = hz or os.sysconf("SC_CLK_TCK")
    secs = t_b - t_a
    train, beside, names = 0.0, 0.0, {}
    for pid, (name, ticks) in b.items():
        if exclude and pid in exclude:
            continue
        cores = (ticks - a.get(pid, (name, 0))[1]) / hz / secs
        if cores <= 0:
            continue
        if pid in training:
            train += cores
        else:
            beside += cores
            names[name] = names.get(name, 0.0) + cores
    heaviest = sorted(names.items(), key=lambda kv: -kv[1])[:top]
    return {"train_cores": train, "beside_cores": beside, "sampled_s": secs,
            "beside_top": [f"{n} {c:.1%}" for n, c in heaviest]}


def step_log_pids(directory: str) -> set[int]:
    """The training processes: one step log each, named after its pid."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "steps-*.log")):
        with_pid = os.path.basename(path)[len("steps-"):-len(".log")]
        if with_pid.isdigit():
            pids.add(int(with_pid))
    return pids


# ------------------------------------------------------------------------ baselines
def _synthetic_arrays(payload: dict[str, Any]) -> Any:
    """The very examples raykube's workers train on (``raykube.data.load_arrays`` on the
    bench's TrainingRun): same generator, same size, same split. Each process holds the
    whole set, as each Ray Train worker does, so a batch is gathered from the same amount
    of memory in every variant (a small pool that stays in cache would favour the
    baselines)."""
    from raykube.data import load_arrays
    from raykube.spec import parse_spec

    return load_arrays(parse_spec(raykube_spec(payload), name="bench").spec, "unused")


def _plain_loop(payload: dict[str, Any], *, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """The loop a PyTorch user writes: shuffle, step, validate, save a checkpoint, per epoch.

    Mirrors what raykube's loop does per epoch (train on the shard, validate, checkpoint
    with ``raykube.checkpoint.save_checkpoint``) so the comparison is like for like.
    """
    import torch
    from torch import nn

    from raykube.checkpoint import save_checkpoint
    from raykube.data import normalise_batch
    from raykube.models import build_model
    from raykube.spec import ModelSpec

    device = torch.device(payload.get("device", "cpu"))
    shape = payload["shape"]
    arrays = _synthetic_arrays(payload)
    x, y = arrays.train_x.to(device), arrays.train_y.to(device)
    val_x, val_y = arrays.val_x[rank::world].to(device), arrays.val_y[rank::world].to(device)
    n_train, n_val = len(arrays.train_x), len(arrays.val_x)
    torch.manual_seed(0)
    model = build_model(ModelSpec.model_validate(payload["model"]), tuple(shape), 10).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    batch = payload["batch_size"] // world
    per = n_train // world  # equal shards: every rank takes the same number of steps
    my_train = range(rank * per, (rank + 1) * per)
    ckpt_root = tempfile.mkdtemp(prefix="raykube-bench-ckpt-")
    epoch_times = []
    for epoch in range(payload["epochs"]):
        t0 = time.perf_counter()
        model.train()
        g = torch.Generator().manual_seed(epoch)
        order = torch.tensor(my_train)[torch.randperm(len(my_train), generator=g)]
        total_loss = torch.zeros((), device=device)
        train_correct = torch.zeros((), device=device, dtype=torch.int64)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            xb, yb = normalise_batch(x[idx]), y[idx]  # uint8, as raykube's loop
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.detach()
            train_correct += (out.detach().argmax(1) == yb).sum()
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for i in range(0, len(val_x), VAL_BATCH):
                correct += (model(normalise_batch(val_x[i:i + VAL_BATCH])).argmax(1)
                            == val_y[i:i + VAL_BATCH]).sum()
        metrics = {"trainLoss": float(total_loss), "valAccuracy": float(correct) / max(1, n_val)}
        if rank == 0 and payload.get("checkpoint", True):
            save_checkpoint(os.path.join(ckpt_root, f"epoch-{epoch}"), model=model,
                            optimizer=opt, epoch=epoch, spec={}, class_names=list("0123456789"),
                            input_shape=shape, metrics=metrics)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_times.append(time.perf_counter() - t0)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return {"epoch_times": epoch_times}


def _single_child(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(payload["threads"])
    install_step_clock(payload["step_dir"])
    return _plain_loop(payload)


def _ddp_rank(rank: int, payload: dict[str, Any], port: int, queue: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, payload["threads"] // payload["workers"]))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=payload["workers"])
    install_step_clock(payload["step_dir"])
    try:
        out = _plain_loop(payload, rank=rank, world=payload["workers"])
        if rank == 0:
            queue.put(out)
    finally:
        dist.destroy_process_group()


def _ddp_child(payload: dict[str, Any]) -> dict[str, Any]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_ddp_rank, args=(payload, free_port(), queue), nprocs=payload["workers"],
             join=True)
    return queue.get()


# ------------------------------------------------------------------------- raykube
def raykube_spec(payload: dict[str, Any]) -> dict[str, Any]:
    """The TrainingRun spec the Ray path trains: the same model, data shape and batch."""
    spec = {
        "model": payload["model"],
        "data": {"dataset": "synthetic", "shape": payload["shape"], "numClasses": 10,
                 "numSamples": payload["num_samples"],
                 "validationFraction": payload["validation_fraction"]},
        "train": {"epochs": payload["epochs"], "batchSize": payload["batch_size"],
                  "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "seed": 0},
        "scaling": {"workers": payload["workers"],
                    "cpusPerWorker": payload["threads"] // payload["workers"],
                    "gpusPerWorker": payload.get("gpus_per_worker", 0)},
        "checkpoint": {"keep": 1},
    }
    return spec


_RAY_LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _ray_log_time(path: str) -> float:
    """The first timestamp in one of Ray's C++ logs, as epoch seconds (Ray writes them
    in local time)."""
    with open(path, errors="replace") as f:
        for line in f:
            if m := _RAY_LOG_TIME.search(line):
                when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                return time.mktime(when.timetuple()) + when.microsecond / 1e6
    raise ChildError(f"no timestamp in {path}")


def _raykube_run(payload: dict[str, Any], *, env: dict[str, str], timeout: float
                 ) -> dict[str, Any]:
    """``raykube run`` itself, the command a user types, on the bench's TrainingRun.

    The step clock reaches the command's Ray through ``RAY_JOB_CONFIG_JSON_ENV_VAR``
    (the job config Ray's job manager hands a submitted entrypoint, which ``ray.init``
    merges into the driver's runtime env): every process of the job runs
    :func:`ray_worker_setup`. Ray's start is read from Ray's own logs (the GCS's first
    line to the driver's core worker), in a Ray temp dir of this run's own."""
    import yaml

    from raykube.spec import API_VERSION, KIND
    from raykube.train import read_result

    work = tempfile.mkdtemp(prefix="raykube-bench-run-")
    ray_tmp = tempfile.mkdtemp(prefix="rkb", dir="/tmp")  # short: Ray's socket paths
    try:
        spec_path = os.path.join(work, "trainingrun.yaml")
        Path(spec_path).write_text(yaml.safe_dump({
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "bench"},
            "spec": raykube_spec(payload)}))
        job = {"runtime_env": {"worker_process_setup_hook": f"{MODULE}.ray_worker_setup",
                               "env_vars": {STEP_LOG_ENV: payload["step_dir"]}}}
        env = {**env, "RAY_TMPDIR": ray_tmp, "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}
        cmd = [sys.executable, "-m", "raykube", "run", spec_path,
               "--storage", os.path.join(work, "runs")]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ChildError(f"raykube run: timed out after {timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise ChildError(f"raykube run: exit {proc.returncode}\n"
                             f"{(proc.stdout + proc.stderr)[-3000:]}")
        result = read_result(os.path.join(work, "runs", "bench")) or {}
        [session] = glob.glob(os.path.join(ray_tmp, "ray", "session_2*"))
        gcs_up = _ray_log_time(os.path.join(session, "logs", "gcs_server.out"))
        driver_up = min(_ray_log_time(f) for f in
                        glob.glob(os.path.join(session, "logs", "python-core-driver-*.log")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    history = [dict(h) for h in result.get("history", [])]
    return {"history": history, "ray_init_s": driver_up - gcs_up, "fit_start": driver_up,
            "epoch_times": [float(h["epochTime"]) for h in history if h.get("epochTime")],
            "reported_samples_per_s": [float(h["samplesPerSecond"]) for h in history
                                       if h.get("samplesPerSecond")]}


# --------------------------------------------------------------------------- suite
def case_params(case: str, quick: bool) -> dict[str, Any]:
    """The case's model and shape, and (full size) its epochs."""
    out = dict(CASES[case])
    if quick:
        out.pop("epochs", None)
    return out


def _measure(case: str, variant: str, mode: str, payload: dict[str, Any],
             timeout: float) -> dict[str, Any]:
    """One run of one variant in its own process; its figures from its step logs."""
    if variant == "raykube-1x2":  # one worker with every thread: no all-reduce
        payload = {**payload, "workers": 1}
    step_dir = tempfile.mkdtemp(prefix=f"raykube-bench-{variant}-")
    payload = {**payload, "step_dir": step_dir}
    env = child_env(OMP_NUM_THREADS=str(payload["threads"] if mode == "single"
                                        else max(1, payload["threads"] // payload["workers"])))
    t_launch = time.time()
    try:
        with CpuSampler() as sampler:
            if mode == "raykube":
                out = _raykube_run(payload, env=env, timeout=timeout)
            else:
                out = run_child(MODULE, mode, payload, timeout=timeout, env=env)
        logs = read_step_logs(step_dir)
        training = step_log_pids(step_dir)
    finally:
        shutil.rmtree(step_dir, ignore_errors=True)
    metrics = analyse(logs, t_launch=t_launch, epochs=payload["epochs"],
                      global_batch=payload["batch_size"], epoch_times=out.get("epoch_times"))
    # The CPU beside the training processes, over the window throughput is measured in.
    bounds = measured_window(logs[0]["steps"], payload["epochs"])
    cpu = beside_cpu(sampler.samples, *bounds, training, exclude={os.getpid()}) if bounds else {}
    metrics["train_cpu"] = cpu.get("train_cores", float("nan"))
    metrics["beside_cpu"] = cpu.get("beside_cores", float("nan"))
    if "fit_start" in out:  # the Ray path: Ray's start, then from Ray up to step 1
        metrics["ray_init_s"] = out["ray_init_s"]
        first = min(lg["steps"][0] for lg in logs)
        metrics["train_start_s"] = first - out["fit_start"]
    metrics["load_1m"] = os.getloadavg()[0]
    return {"metrics": metrics, "epoch_times": out.get("epoch_times"),
            "reported_samples_per_s": out.get("reported_samples_per_s"),
            "beside_top": cpu.get("beside_top", [])}


def _record(report: Report, case: str, variant: str, runs: list[dict[str, Any]]) -> None:
    """Median over rounds of every figure; the rounds themselves are kept in bench.json."""
    if not runs:
        return
    keys = list(runs[0]["metrics"])
    metrics = {k: median(r["metrics"].get(k) for r in runs) for k in keys}
    report.add(case, variant, metrics, rounds=runs)


def run_suite(*, quick: bool = False, cases: list[str] | None = None,
              params: dict[str, Any] | None = None, timeout: float = 900) -> Report:
    """Measure every variant of every case, compute the ratios, return the report."""
    import torch

    p = {**(QUICK if quick else FULL), **(params or {})}
    p.setdefault("workers", WORKERS)
    p.setdefault("threads", THREADS)
    report = Report("train", quick=quick, params=p, machine=machine_info())
    report.columns = {
        "samples_per_s": ("samples/s", ".0f"),
        "time_to_first_step_s": ("first step (s)", ".1f"),
        "ray_init_s": ("of which Ray's start (s)", ".1f"),
        "train_start_s": ("Ray up to first step (s)", ".1f"),
        "window_s": ("measured window (s)", ".0f"),
        "epoch_time_s": ("epoch (s)", ".2f"),
        "between_epochs_s": ("between epochs (s)", ".3f"),
        "checkpoint_s": ("checkpoint (s)", ".3f"),
        "checkpoint_fraction": ("checkpoint / epoch", ".2%"),
        "train_cpu": ("training processes (cores)", ".2f"),
        "beside_cpu": ("beside them (cores)", ".3f"),
        "load_1m": ("load avg", ".1f"),
    }
    report.primary = "samples_per_s"
    wanted = cases or list(CASES)
    rounds = int(p.get("rounds", 1))

    def measure_all(case: str, variants: list[tuple[str, str]], payload: dict[str, Any]) -> None:
        # Rounds interleave the variants, so a burst of load elsewhere on the machine
        # hits all of them rather than one; each run keeps its round, and the ratios pair
        # the runs of a round (Report.add_ratio).
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v, _ in variants}
        for i in range(rounds):
            for variant, mode in variants:
                try:
                    runs[variant].append({**_measure(case, variant, mode, payload, timeout),
                                          "round": i})
                except ChildError as exc:
                    report.error(case, variant, str(exc).strip().splitlines()[0])
                    report.notes.append(f"{case}/{variant} failure detail: {str(exc)[-1500:]}")
        for variant, _ in variants:
            _record(report, case, variant, runs[variant])

    for case in wanted:
        if case == GPU_CASE:
            continue
        measure_all(case, VARIANTS, {**p, **case_params(case, quick)})
        for (num, den), goal in GOALS.items():
            report.add_ratio(case, "samples_per_s", num, den, goal=goal)
        report.add_ratio(case, "samples_per_s", "raykube-1x2", "raykube")
        shortest = min((w for v, _ in VARIANTS
                        if math.isfinite(w := report.get(case, v, "window_s"))),
                       default=float("nan"))
        if not quick:  # throughput is compared over windows this long (issue 14)
            report.add_check(f"{case}: shortest measured window (median of each variant's)",
                             shortest, WINDOW_GOAL, unit="s")
        else:  # say so beside the ratios: a quick run's "no" is not a measurement
            report.notes.append(
                f"{case}: quick run, measured windows as short as {shortest:.0f} s, "
                f"{rounds} round(s): its throughput ratios are a smoke figure, not the goals' "
                f"measurement (windows >= {WINDOW_GOAL.target:.0f} s, {FULL['rounds']} "
                "rounds: "
                "`make bench-full`).")
        report.add_check(f"{case}: raykube launch to first training step",
                         report.get(case, "raykube", "time_to_first_step_s"),
                         FIRST_STEP_GOAL, unit="s")
        if case == "cifar10-cnn":
            frac = report.get(case, "raykube", "checkpoint_fraction")
            report.add_check(f"{case}: raykube per-epoch checkpoint / epoch time", frac * 100,
                             Goal("<=", CHECKPOINT_GOAL.target * 100), unit="%")
    if torch.cuda.is_available() and (cases is None or GPU_CASE in wanted):
        gpu = {**p, **CASES["cifar10-cnn"], "device": "cuda", "workers": 1,
               "gpus_per_worker": 1}
        measure_all(GPU_CASE, [("torch", "single"), ("raykube", "raykube")], gpu)
        report.add_ratio(GPU_CASE, "samples_per_s", "raykube", "torch", goal=Goal(">=", 0.9))
    elif cases is None:
        report.notes.append("GPU variant (gpusPerWorker: 1 vs plain PyTorch on the GPU) not "
                            "run: no CUDA device on this machine.")
    report.notes.append(
        f"Synthetic data of the real shapes, {p['num_samples']} examples "
        f"({p['validation_fraction']:.0%} validated on; the same examples, held whole by "
        f"every training process, in every variant), global batch {p['batch_size']}, "
        + ("epochs per case (" + ", ".join(f"{c} {v['epochs']}" for c, v in CASES.items())
           + ")" if not quick
           else f"{p['epochs']} epochs") + " (the first is warm-up; the measured window, "
        "every later epoch, is in the table), median of "
        f"{rounds} interleaved round(s) (a ratio is the median of the per-round ratios), "
        f"{p['threads']} CPU threads in total for "
        f"every variant; torch: 1 process x {p['threads']} threads, ddp and raykube: "
        f"{p['workers']} processes x {p['threads'] // p['workers']} thread(s), raykube-1x2: "
        f"1 Ray Train worker x {p['threads']} threads. samples/s is the "
        "median over step windows after the first epoch, from a step clock in every "
        "training process. First step: from the launch of the variant's process (for raykube: "
        "the `raykube run` command, its imports, Ray's start, Train's controller and workers, "
        "data) to the end of its first optimizer step; Ray's start (its GCS to the driver "
        "connected, from Ray's logs) and Ray-up-to-first-step are its parts. "
        "Every process runs at nice 0 (raykube's Ray workers through RAY_worker_niceness=0, "
        "which raykube sets instead of Ray's 15). "
        "'training processes' and 'beside them' are CPU in cores over the measured window, "
        f"from a /proc snapshot of every process each {CPU_SAMPLE_S:.0f} s: the processes "
        "that log steps, and everything else on the machine (for raykube: Ray's GCS, raylet "
        "and agents, Train's controller, the `raykube run` driver; for every variant, "
        "anything else running), the bench's own process left out; bench.json lists the "
        "heaviest of the rest per round (beside_top). On a 2-core machine a data-parallel "
        "step waits for its slowest thread, so each core-second taken beside the training "
        "costs it more than that second.")
    return report


if __name__ == "__main__":
    raise SystemExit(child_main({"single": _single_child, "ddp": _ddp_child}))
