"""Start-up (issue 14): a ``raykube run`` places Ray Train's controller, its
SynchronizationActor and its workers in worker processes that ``raykube.prestart`` asked
the raylet for before Train needed them, and starts no actor that raykube does not use
(Ray's AutoscalingCoordinator and DatasetManager; ``raykube.train._trainer_class``),
that only the Train workers import torch (``raykube.torch_backend``), that its worker
processes run at nice 0 (``RAY_worker_niceness``, not Ray's 15), and that its Ray starts
neither its API-server process nor its autoscaler monitor (``raykube.ray_local``: a plain
run has no use for them; ``--dashboard`` starts Ray in full,
tests/integration/test_new_user_runs.py).

Real Ray: ``raykube run`` in a subprocess, with a Ray temp dir of its own so that the
logs read below are that run's only. The evidence is Ray's own: the raylet's
"Started worker process" lines, the Train controller's log and each worker's actor name.
If the runtime env that ``prestart`` derives differed from the one Ray gives Train's
actors, the prestarted processes would sit unused and the actors would run in processes
Ray started after them. No timing is asserted.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from raykube.prestart import startup_concurrency

pytestmark = pytest.mark.integration

SPEC = """apiVersion: raykube.io/v1alpha1
kind: TrainingRun
metadata: {name: prestart}
spec:
  model: {name: mlp}
  data: {dataset: synthetic, shape: [1, 28, 28], numClasses: 10, numSamples: 512}
  train: {epochs: 1, batchSize: 64}
  scaling: {workers: 2}
  checkpoint: {keep: 1}
"""
_STARTED_PID = re.compile(r"Started worker process with pid (\d+)")
_TORCH_IMPORT = re.compile(r"^import time:.*\|\s+torch$")
_RAY_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _ray_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")


def _lines(path: str) -> list[str]:
    with open(path) as f:
        return f.readlines()


def test_train_actors_run_in_prestarted_workers(tmp_path):
    (tmp_path / "tr.yaml").write_text(SPEC)
    # Short: Ray's unix sockets live under it (a 107-byte limit on their paths).
    ray_tmp = tempfile.mkdtemp(prefix="rkp", dir="/tmp")
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = ray_tmp
        # Every Ray worker process inherits it: its imports go to its own .err log.
        env["PYTHONPROFILEIMPORTTIME"] = "1"
        r = subprocess.run([sys.executable, "-m", "raykube", "run", str(tmp_path / "tr.yaml"),
                            "--storage", str(tmp_path / "runs")],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        [session] = glob.glob(f"{ray_tmp}/ray/session_2*")
        logs = f"{session}/logs"

        started = sorted((_ray_time(m.group(1)), int(p.group(1)))
                         for line in _lines(f"{logs}/raylet.out")
                         if (p := _STARTED_PID.search(line)) and (m := _RAY_TIME.match(line)))
        starts = [t for t, _ in started]
        [controller_log] = glob.glob(f"{logs}/train/ray-train-sys-controller-*.log")
        group_start = next(_ray_time(json.loads(line)["asctime"]) for line in _lines(controller_log)
                           if "Attempting to start training worker group" in line)
        names = {path[:-len(".out")]: line.split(":actor_name:", 1)[1].strip()
                 for path in glob.glob(f"{logs}/worker-*.out")
                 for line in _lines(path) if line.startswith(":actor_name:")}
        actors = sorted(names.values())
        torch_in = {stem: any(_TORCH_IMPORT.search(line) for line in _lines(f"{stem}.err"))
                    for stem in names}
        # Each core worker logs the niceness Ray gave its process (raykube: 0, Ray: 15).
        niceness = sorted({line.rsplit(" ", 1)[1].strip()
                           for f in glob.glob(f"{logs}/python-core-worker-*.log")
                           for line in _lines(f) if "Adjusted worker niceness to" in line})
        # Each of Ray's Python daemons writes its own log as it starts.
        daemon_logs = {os.path.basename(f) for f in glob.glob(f"{logs}/*.log")}
    finally:
        if not os.environ.get("KEEP_RAY_TMP"):  # =1 keeps Ray's logs to read after a failure
            shutil.rmtree(ray_tmp, ignore_errors=True)

    # Exactly Train's actors, nothing else (no coordinator, dataset manager or cleaner).
    assert actors == ["RayTrainWorker", "RayTrainWorker", "SynchronizationActor",
                      "TrainController"], actors
    # The first batch raykube asked for (before Train's controller existed) hosts actors:
    # had the runtime env not matched, those processes would sit unused and every actor
    # would run in a process Ray started later. The later batch can race with Ray: when
    # the worker group's leases reach the raylet while it is still registering, Ray
    # starts a process itself, and a worker may run there while a prestarted one goes
    # unused (seen on a loaded machine: in CI, and in 2 of 6 runs beside other work).
    actor_pids = {int(stem.rsplit("-", 1)[1]) for stem in names}
    first = min(len(actors), startup_concurrency(os.cpu_count() or 1))  # as prestart asks
    first_batch = {pid for _, pid in started[:first]}
    assert first_batch <= actor_pids, (started, names)
    assert len(started) <= len(actors) + 2, (started, names)  # at most the race's extras
    # Without prestarting only the controller's process starts before it asks for the
    # worker group; the first batch (the raylet starts two at a time on two cores) was
    # started before, and the next one too unless the machine was slow.
    assert sum(t <= group_start for t in starts) >= 2, (starts, group_start)
    # torch is imported by the Train workers only, not by the controller
    # (raykube.torch_backend: ray.train.torch would import it there).
    assert {names[s]: torch_in[s] for s in names if names[s] != "RayTrainWorker"} == {
        "SynchronizationActor": False, "TrainController": False}, torch_in
    assert all(torch_in[s] for s in names if names[s] == "RayTrainWorker"), torch_in
    # Every worker process (the Train workers among them) at nice 0 (raykube.render.TRAIN_ENV).
    assert niceness == ["0"], niceness
    # No API server (dashboard.log) and no autoscaler monitor (monitor.log); the log
    # monitor and the raylet's two agents did start (the logs are where they should be).
    assert {"log_monitor.log", "dashboard_agent.log", "runtime_env_agent.log"} <= daemon_logs
    assert not {"dashboard.log", "monitor.log"} & daemon_logs, sorted(daemon_logs)
