"""Ray Train on real local Ray: learning, aggregation, keep, recovery, no retraining.

Small on purpose (digits, a small MLP, few epochs): each TorchTrainer start costs tens
of seconds on a 2-core machine, so each test asserts several properties of one run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from raykube.k8s_reporter import KubernetesReporter
from raykube.spec import parse_spec

pytestmark = pytest.mark.integration

# Before the session's Ray starts (collection precedes it): Ray Train's controller then
# polls every 0.2 s instead of 2 s, so each short epoch does not wait for a poll.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


class Recorder:
    """A RunObserver that remembers what it was told."""

    def __init__(self):
        self.started = 0
        self.epochs: list[dict] = []
        self.checkpoints: list[str | None] = []
        self.ended: list[dict] = []
        self.failures: list[str] = []

    def on_failure(self, message):
        self.failures.append(message)

    def on_start(self, run):
        self.started += 1

    def on_epoch(self, metrics, checkpoint, trial):
        self.epochs.append(metrics)
        self.checkpoints.append(checkpoint)

    def on_end(self, result):
        self.ended.append(result)


def digits_run(name: str, *, epochs: int = 4, keep: int = 1, workers: int = 2):
    return parse_spec({
        "model": {"name": "mlp", "options": {"hidden": [64], "dropout": 0.0}},
        "data": {"dataset": "digits", "validationFraction": 0.2},
        "train": {"epochs": epochs, "batchSize": 64, "seed": 0,
                  "optimizer": {"name": "adam", "lr": 0.003}},
        "scaling": {"workers": workers, "cpusPerWorker": 1},
        "checkpoint": {"keep": keep, "scoreMetric": "valAccuracy"},
        "failure": {"maxWorkerFailures": 2},
    }, name=name)


def checkpoint_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir()
                  if p.is_dir() and p.name.startswith("checkpoint_epoch_"))


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def finished(ray_session, storage):
    """One 2-worker digits run shared by the tests below."""
    from raykube.train import fit

    rec = Recorder()
    outcome = fit(digits_run("digits2"), str(storage), observers=[rec])
    return outcome, rec


def test_two_workers_learn_digits_and_write_artefacts(finished, storage):
    outcome, rec = finished
    assert outcome.epochs == 4 and [h["epoch"] for h in outcome.history] == [1, 2, 3, 4]
    assert outcome.best_metrics["valAccuracy"] >= 0.9  # chance is 0.1
    assert outcome.history[-1]["workers"] == 2
    assert outcome.history[-1]["trainLoss"] < outcome.history[0]["trainLoss"]
    run_dir = storage / "digits2"
    assert outcome.run_dir == str(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epochs"] == 4 and result["best_checkpoint"] == outcome.best_checkpoint
    assert result["history"] == outcome.history and result["wall_time_s"] > 0
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # best/ is a stable copy of the best checkpoint (for `raykube serve`, GitOps renders).
    from raykube.checkpoint import read_meta

    best_meta = read_meta(run_dir / "best")
    assert best_meta.epoch == read_meta(outcome.best_checkpoint).epoch
    assert best_meta.metrics["valAccuracy"] == outcome.best_metrics["valAccuracy"]
    # Observers saw each epoch once, in order, each with its checkpoint.
    assert rec.started == 1 and len(rec.ended) == 1
    assert [m["epoch"] for m in rec.epochs] == [1, 2, 3, 4]
    assert all(c and Path(c).name == f"checkpoint_epoch_{i:04d}"
               for i, c in enumerate(rec.checkpoints, 1))


def test_metrics_cover_the_whole_validation_set_across_workers(finished):
    """valAccuracy must be over all 359 validation examples, not rank 0's half: the
    final checkpoint, evaluated here on the full set, gives exactly the reported value."""
    from raykube import data
    from raykube.checkpoint import load_model

    outcome, _ = finished
    spec = digits_run("x").spec
    arrays = data.load_arrays(spec, "/unused")
    last = outcome.history[-1]
    assert last["valExamples"] == len(arrays.val_y) == 359
    assert last["trainExamples"] == 2 * (len(arrays.train_y) // 2)
    final_ckpt = Path(outcome.run_dir) / "checkpoint_epoch_0004"
    model, meta = load_model(final_ckpt)  # plain torch, weights_only, no Ray
    assert meta.epoch == 4 and meta.class_names == [str(i) for i in range(10)]
    with torch.no_grad():
        logits = model(arrays.val_x)
    full_acc = (logits.argmax(1) == arrays.val_y).double().mean().item()
    full_loss = torch.nn.functional.cross_entropy(logits, arrays.val_y).item()
    assert last["valAccuracy"] == pytest.approx(full_acc, abs=1e-9)
    assert last["valLoss"] == pytest.approx(full_loss, rel=1e-4)
    half = (logits[0::2].argmax(1) == arrays.val_y[0::2]).double().mean().item()
    assert 359 * last["valAccuracy"] == pytest.approx(round(359 * full_acc))  # integer count
    assert last["valExamples"] != len(arrays.val_y[0::2]) or half == full_acc


def test_keep_is_honoured(finished):
    """keep=1: the best checkpoint survives; Ray Train also keeps the latest (to resume)."""
    outcome, _ = finished
    run_dir = Path(outcome.run_dir)
    dirs = checkpoint_dirs(run_dir)
    latest = "checkpoint_epoch_0004"
    assert Path(outcome.best_checkpoint).name in dirs and latest in dirs
    assert set(dirs) == {Path(outcome.best_checkpoint).name, latest}  # 4 written, <= 2 left


class _StatusRecorder:
    """Stands in for the API server's status subresource (the reporter against the real
    one: tests/integration/test_operator_reporter.py)."""

    def __init__(self):
        self.statuses: list[dict] = []

    def patch_namespaced_custom_object_status(self, group, version, ns, plural, name, body,
                                              **_):
        self.statuses.append(body["status"])


def test_rerun_of_a_finished_run_does_not_retrain(finished, storage):
    from raykube.train import fit

    outcome, _ = finished
    before = {p: os.stat(storage / "digits2" / p).st_mtime_ns for p in checkpoint_dirs(storage / "digits2")}
    rec = Recorder()
    api = _StatusRecorder()
    rep = KubernetesReporter("default", "digits2", api=api, min_interval=0)
    again = fit(digits_run("digits2"), str(storage), observers=[rec, rep])
    assert again.reused and rec.epochs == [] and len(rec.ended) == 1
    assert again.history == outcome.history and again.best_checkpoint == outcome.best_checkpoint
    # kubectl get tr's EPOCH and VAL-ACC: the finished run's last epoch, though none was
    # reported (a TrainingRun deleted and applied again found its checkpoints)
    last = outcome.history[-1]
    progress = api.statuses[-1]["progress"]
    assert (progress["epoch"], progress["epochs"]) == (last["epoch"], 4), progress
    assert progress["valAccuracy"] == round(last["valAccuracy"], 4), progress  # as shown
    after = {p: os.stat(storage / "digits2" / p).st_mtime_ns for p in checkpoint_dirs(storage / "digits2")}
    assert after == before


def test_more_epochs_resume_from_the_latest_checkpoint(finished, storage, tmp_path):
    """Same name, train.epochs 4 -> 5: only epoch 5 is trained, history stays whole."""
    import shutil

    from raykube.train import fit

    outcome, _ = finished
    copy = tmp_path / "runs"
    shutil.copytree(storage, copy)  # keep the shared run untouched for other tests
    rec = Recorder()
    more = fit(digits_run("digits2", epochs=5), str(copy), observers=[rec])
    assert [m["epoch"] for m in rec.epochs] == [5]
    assert [h["epoch"] for h in more.history] == [1, 2, 3, 4, 5]
    assert more.history[:4] == outcome.history and not more.reused


def test_a_corrupt_result_json_does_not_stop_a_rerun(finished, storage, tmp_path):
    """result.json is the summary a run writes as it ends: ``not json`` in it failed the
    rerun with ``JSONDecodeError`` after Ray started. It now counts as absent (one note
    naming it), the run resumes from its checkpoints and writes a whole one at its end."""
    import shutil

    from raykube.train import fit

    copy = tmp_path / "runs"
    shutil.copytree(storage, copy)
    result = copy / "digits2" / "result.json"
    result.write_text("not json\n")
    rec = Recorder()
    rec.notes = []
    rec.on_note = rec.notes.append
    more = fit(digits_run("digits2", epochs=5), str(copy), observers=[rec])
    assert [m["epoch"] for m in rec.epochs] == [5] and not more.reused
    assert f"the run's summary {result} could not be parsed (9 bytes): ignored, as if absent " \
           "(the checkpoints on storage are the record)" in rec.notes, rec.notes
    assert json.loads(result.read_text())["epochs"] == 5


def test_a_run_killed_while_ray_wrote_its_checkpoint_list_resumes(finished, storage, tmp_path):
    """Ray Train rewrites checkpoint_manager_snapshot.json in place at each report; a run
    killed between truncate and write (seen after a Ctrl-C) left it empty, and Train's
    controller then died parsing it on every re-run (``JSONDecodeError``). Emptying the
    file stands in for that kill; the controller that reads it is Ray's own."""
    import shutil

    from raykube.resume import TRAIN_SNAPSHOT
    from raykube.train import fit

    outcome, _ = finished
    copy = tmp_path / "runs"
    shutil.copytree(storage, copy)
    run_dir = copy / "digits2"
    snapshot = run_dir / TRAIN_SNAPSHOT
    assert snapshot.stat().st_size > 0  # Ray wrote one: the file this test breaks
    snapshot.write_bytes(b"")
    old = {n: json.loads((run_dir / n / "meta.json").read_text())["metrics"]["valAccuracy"]
           for n in checkpoint_dirs(run_dir)}
    assert old, "the finished run left no checkpoint: nothing to prune"
    # one more old checkpoint that ranks last (as a keep=2 list would have kept): the
    # pruning must delete it whatever the seeds make of the others
    worst = run_dir / "checkpoint_epoch_0001"
    if not worst.exists():
        shutil.copytree(run_dir / max(old), worst)
        meta = json.loads((worst / "meta.json").read_text())
        meta["metrics"]["valAccuracy"] = old["checkpoint_epoch_0001"] = 0.0
        (worst / "meta.json").write_text(json.dumps(meta))
    rec = Recorder()
    rec.notes = []
    rec.on_note = rec.notes.append
    more = fit(digits_run("digits2", epochs=5), str(copy), observers=[rec])
    assert [m["epoch"] for m in rec.epochs] == [5]
    assert [h["epoch"] for h in more.history] == [1, 2, 3, 4, 5]
    assert any(f"{TRAIN_SNAPSHOT} was empty" in n for n in rec.notes), rec.notes
    assert json.loads(snapshot.read_text())  # Ray's new list, written at epoch 5
    # Ray's new list names epoch 5 only: the older checkpoints are ranked with it and
    # pruned under keep=1 by raykube (the best of all stays, and is the run's best)
    top = max(old, key=old.get)
    old_wins = old[top] > more.history[-1]["valAccuracy"]
    kept = {"checkpoint_epoch_0005", *([top] if old_wins else [])}
    assert set(checkpoint_dirs(run_dir)) == kept, (old, more.history[-1])
    assert more.best_checkpoint.endswith(top if old_wins else "checkpoint_epoch_0005")
    assert sorted(os.path.basename(c) for c in more.checkpoints) == sorted(kept)
    said = any("deleted" in n and "checkpoint.keep is 1" in n for n in rec.notes)
    assert said == (len(old) > int(old_wins)), rec.notes


def test_a_listed_checkpoint_deleted_by_hand_does_not_stop_the_next_run(finished, storage,
                                                                        tmp_path):
    """A checkpoint directory that Ray Train's list names, deleted by hand: Ray's
    controller refused to start on every later run (``CheckpointManagerInitializationError``,
    an ``ActorDiedError`` to ``raykube run``; a new user's probe). The list is removed
    with a note, and the run resumes from the checkpoints still there. Ray's controller
    is the real one."""
    import shutil

    from raykube.resume import TRAIN_SNAPSHOT, listed_checkpoints
    from raykube.train import fit

    copy = tmp_path / "runs"
    shutil.copytree(storage, copy)
    run_dir = copy / "digits2"
    listed = sorted(listed_checkpoints(str(run_dir)) or [])
    assert listed, "Ray's list names no checkpoint: nothing to delete"
    shutil.rmtree(run_dir / listed[0])
    rec = Recorder()
    rec.notes = []
    rec.on_note = rec.notes.append
    more = fit(digits_run("digits2", epochs=5), str(copy), observers=[rec])
    assert [h["epoch"] for h in more.history] == [1, 2, 3, 4, 5]
    assert any(f"{TRAIN_SNAPSHOT} names {listed[0]}, which is no longer on storage" in n
               for n in rec.notes), rec.notes


def test_killed_worker_is_replaced_without_repeating_epochs(ray_session, tmp_path):
    from raykube.train import fit

    marker = tmp_path / "killed"
    rec = Recorder()
    out = fit(digits_run("faulty", epochs=3, keep=2), str(tmp_path / "runs"), observers=[rec],
              extra_config={"fault": {"epoch": 2, "rank": 1, "marker": str(marker)}})
    assert marker.exists(), "the fault hook never fired: nothing was tested"
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    assert [m["epoch"] for m in rec.epochs] == [1, 2, 3]  # epoch 1 not retrained
    assert out.best_metrics["valAccuracy"] > 0.5
    # the user is told which rank failed and why, in one line (its traceback is in Ray's
    # log); which rank Ray names varies: rank 0 can fail first, in gloo, on its dead peer
    assert len(rec.failures) == 1 and rec.failures[0].startswith("worker failure (rank "), \
        rec.failures
    assert "Error" in rec.failures[0].split(";")[0], rec.failures
    assert "\n" not in rec.failures[0] and "restarting the workers" in rec.failures[0]


class InterruptAt(Recorder):
    """Raises KeyboardInterrupt on the driver's thread as epoch ``at`` is reported: what
    Ctrl-C, or SIGTERM in `raykube run`, does to the driver while it trains."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_epoch(self, metrics, checkpoint, trial):
        super().on_epoch(metrics, checkpoint, trial)
        if metrics["epoch"] == self.at:
            raise KeyboardInterrupt


def test_an_interrupted_run_is_aborted_before_the_interrupt_goes_on(ray_session, tmp_path):
    """The driver re-raises Ctrl-C only once Ray Train's run is aborted and the thread
    that waits on it has left Ray: `raykube run` shuts Ray down next, and a thread still in
    ``ray.get`` then read the freed core worker (SIGSEGV after SIGTERM, 1 run in 8 on a
    loaded machine; the core dump's crashing thread was in ``CoreWorker::Get``)."""
    import threading
    import time

    from raykube.train import fit

    runs = tmp_path / "runs"
    rec = InterruptAt(2)
    with pytest.raises(KeyboardInterrupt):
        fit(digits_run("interrupted", epochs=200, keep=200), str(runs), observers=[rec])
    alive = [t.name for t in threading.enumerate() if t.name == "raykube-fit"]
    assert alive == [], "fit's thread still waits in Ray after the interrupt"
    assert [m["epoch"] for m in rec.epochs] == [1, 2]
    saved = checkpoint_dirs(runs / "interrupted")
    assert 2 <= len(saved) < 200, saved
    time.sleep(3)  # the workers were stopped: none saves another epoch meanwhile
    assert checkpoint_dirs(runs / "interrupted") == saved


def test_a_run_that_fails_for_good_is_one_line_naming_the_rank(ray_session, tmp_path):
    """No retries left: Ray Train raises its WorkerGroupError, whose text starts with a
    header that names nothing ("Training failed due to worker errors:"). raykube run and
    raykube train end with training_failure's line instead: the failing rank and its
    error; the RayJob's message, and so the TrainingRun's, quotes that last line."""
    from ray.train import TrainingFailedError

    from raykube.train import fit, training_failure

    run = digits_run("fails", epochs=3)
    run = run.model_copy(update={"spec": run.spec.model_copy(update={
        "failure": run.spec.failure.model_copy(update={"max_worker_failures": 0})})})
    marker = tmp_path / "killed"
    rec = Recorder()
    with pytest.raises(TrainingFailedError) as exc:
        fit(run, str(tmp_path / "runs"), observers=[rec],
            extra_config={"fault": {"epoch": 2, "rank": 1, "marker": str(marker)}})
    assert marker.exists()
    assert str(exc.value).startswith("Training failed due to worker errors")
    line = training_failure(exc.value)
    assert line.startswith("rank ") and "Error" in line and "\n" not in line, line
    assert "Training failed due to" not in line
    # the failure that ends the run is announced like any other (status.workerFailures)
    assert len(rec.failures) == 1 and "no retries left" in rec.failures[0], rec.failures


def test_ray_memory_monitor_kill_keeps_its_figures():
    """Ray's OutOfMemoryError text as a real node's memory monitor wrote it (make
    e2e-local, a 1Gi worker pod): its last lines are advice; the line keeps the figures."""
    from ray.exceptions import OutOfMemoryError
    from ray.train.v2.api.exceptions import ControllerError

    from raykube.train import training_failure

    text = ("1 worker(s) were killed due to the node running low on memory. Memory on the "
            "node (IP: 10.244.0.42, ID: 48cd7e79) was 0.96GB used / 1.00GB limit (0.962307)\n"
            "OOM kill reason: Memory usage 1025490944B exceeded threshold of 1020054720B "
            "(95.0% of 1073741824B limit)\nRefer to the documentation on how to address the "
            "out of memory issue: https://docs.ray.io/en/latest/ray-observability/.")
    assert training_failure(ControllerError(OutOfMemoryError(text))) == (
        "OutOfMemoryError: Ray's memory monitor killed 1 worker(s): the node had 0.96GB in "
        "use of its 1.00GB limit")


OOM_PROBE = r"""
import json, os, sys

# Ray's memory monitor (a raylet setting, so a Ray of this process's own): kill when the
# node's used memory grows 3 GiB past what it is now; the worker below grows until then.
with open("/proc/meminfo") as f:
    info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
used = info["MemTotal"] - info["MemAvailable"]
os.environ["RAY_memory_usage_threshold"] = str(round((used + 3 * 2**30) / info["MemTotal"], 4))
os.environ["RAY_memory_monitor_refresh_ms"] = "100"

from raykube.local import init_ray
from raykube.spec import parse_spec
from raykube.train import fit

init_ray(num_cpus=2)
storage, marker = sys.argv[1], sys.argv[2]
run = parse_spec({
    "model": {"name": "mlp", "options": {"hidden": [64], "dropout": 0.0}},
    "data": {"dataset": "digits", "validationFraction": 0.2},
    "train": {"epochs": 3, "batchSize": 64, "seed": 0,
              "optimizer": {"name": "adam", "lr": 0.003}},
    "scaling": {"workers": 1, "cpusPerWorker": 1},
    "failure": {"maxWorkerFailures": 1},
}, name="oom")

class Recorder:
    failures, epochs = [], []
    def on_start(self, run): pass
    def on_epoch(self, metrics, checkpoint, trial): self.epochs.append(metrics["epoch"])
    def on_end(self, result): pass
    def on_failure(self, message): self.failures.append(message)

rec = Recorder()
try:
    out = fit(run, storage, observers=[rec], extra_config={"fault": {
        "epoch": 2, "rank": 0, "marker": marker, "allocate_gib": 8}})
    result = {"history": [h["epoch"] for h in out.history]}
except Exception as exc:
    result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
print("RESULT " + json.dumps({**result, "failures": rec.failures, "epochs": rec.epochs}))
"""


def test_a_worker_killed_by_rays_memory_monitor_is_retried(tmp_path):
    """Ray's memory monitor kills the Train worker (a fault only a Ray configured for it
    can produce: its threshold is a raylet setting, so this run has a Ray of its own, in a
    fresh interpreter). Its error is ``OutOfMemoryError``, which Ray's backend tear-down
    did not forgive: restarting the group then failed with a non-retryable
    ControllerError, so the first OOM kill ended the run whatever
    ``failure.maxWorkerFailures`` allowed (found on make e2e-local's node). Now the run
    resumes from epoch 1's checkpoint and finishes, with the kill announced once."""
    import subprocess
    import sys

    marker = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", OOM_PROBE, str(tmp_path / "runs"),
                           str(marker)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert marker.exists(), "the fault hook never ran: nothing was tested"
    assert "error" not in result, result
    assert result["history"] == [1, 2, 3], result
    assert result["epochs"] == [1, 2, 3], result  # epoch 1 not retrained
    assert len(result["failures"]) == 1, result
    assert "OutOfMemoryError: Ray's memory monitor killed" in result["failures"][0], result
    assert "restarting the workers" in result["failures"][0], result
