"""What a new user gets wrong on the local side gets one clear line, exit code != 0, and
no traceback, before any Ray work starts (regressions found by using the CLI as a new
user would: odd files, bad flags, a busy port, a broken checkpoint, a reused run dir)."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from rich.console import Console

from raykube.cli import main
from raykube.spec import InvalidTrainingRun, load_file, parse_spec

QUICKSTART_SPEC = {"model": {"name": "mlp", "options": {"hidden": [16]}},
                   "data": {"dataset": "digits"}, "train": {"epochs": 2}}


def _yaml(tmp_path, text: str, name: str = "run.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


def _run_yaml(tmp_path, extra: str = "") -> str:
    return str(_yaml(tmp_path, "apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\n"
                     "metadata: {name: r}\nspec:\n  model: {name: mlp, options: {hidden: [16]}}\n"
                     "  data: {dataset: digits}\n  train: {epochs: 2}\n" + extra))


@pytest.fixture
def no_ray_start(monkeypatch):
    """Fails the test if the command gets as far as starting Ray. Stands in for "Ray is
    not initialized afterwards", which a session that ran integration tests first (the
    shared local Ray is up) cannot tell: Ray looks not started yet to the command, and
    both ways of starting it raise."""
    import ray

    import raykube.ray_local

    def refuse(*_, **__):
        raise AssertionError("Ray was started before the problem was reported")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(raykube.ray_local, "init_local_ray", refuse)


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and "pydantic.dev" not in err, err


# ------------------------------------------------------------------------ files
def test_binary_file_is_an_error_not_a_traceback(tmp_path, capsys):
    f = tmp_path / "model.pt"
    f.write_bytes(b"\x00\x01PK\xff\xfe")
    with pytest.raises(InvalidTrainingRun) as exc:
        load_file(f)
    assert exc.value.errors[0].path == "(file)" and "UTF-8" in exc.value.errors[0].message
    assert main(["validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert str(f) in err
    _no_traceback(err)


def test_duplicate_keys_are_refused_as_kubectl_does(tmp_path):
    f = _yaml(tmp_path, "apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: r}\n"
                        "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n"
                        "  train:\n    epochs: 3\n    batchSize: 8\n    epochs: 12\n")
    with pytest.raises(InvalidTrainingRun) as exc:
        load_file(f)
    msg = exc.value.errors[0].message
    assert "duplicate key 'epochs'" in msg and "line 10" in msg


_RUN_HEAD = "apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: r}\n"
_NESTED = "&a [1,1,1,1,1,1,1,1,1]"
for _p, _x in zip("abcdef", "bcdefg", strict=True):  # 9^7 values, written in one line
    _NESTED = f"&{_x} [{_NESTED}" + f", *{_p}" * 8 + "]"
_LAUGHS = "".join(f"{x}: &{x} [" + ",".join([f"*{p}"] * 9) + "]\n"
                  for p, x in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize("name,text,words", [
    # kubectl's YAML parser refuses these too; PyYAML expanded a "billion laughs" lazily
    # into 9^8 values for validation to walk, and recursed out on deep nesting
    ("laughs", _RUN_HEAD + "x-a: &a [1,1,1,1,1,1,1,1,1]\n" + _LAUGHS
     + "spec: {model: {name: mlp}, data: {dataset: digits}}\n", "excessive aliasing"),
    ("in-spec", _RUN_HEAD + "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n"
     "  tune: {trials: 2, searchSpace: {model.options.hidden: {choice: [" + _NESTED
     + "]}}}\n", "excessive aliasing"),
    ("self", _RUN_HEAD + "spec: &s {model: {name: mlp}, data: {dataset: digits}, x: *s}\n",
     "contains itself through an alias"),
    ("deep", _RUN_HEAD + "spec: " + "[" * 50000 + "]" * 50000 + "\n", "nested too deeply"),
    # no alias at all: it was called "excessive aliasing" (a new-user probe)
    ("huge", _RUN_HEAD + "spec:\n  model: {name: mlp, options: {hidden: ["
     + ",".join(["1"] * 100_001) + "]}}\n  data: {dataset: digits}\n",
     "holds more than 100,000 values (a TrainingRun holds a few hundred)"),
])
def test_yaml_bombs_are_refused_in_one_line_at_once(name, text, words, tmp_path, capsys):
    f = _yaml(tmp_path, text)
    started = time.monotonic()
    assert main(["validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - started < 20  # seconds each before; a hang was the bug
    _no_traceback(err)
    assert len(err) < 2000, err[:300]  # the error names the problem, not the values
    assert "(file): not valid YAML: " in err and words in err, err


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    from raykube.spec import load_yaml_documents

    docs = load_yaml_documents("base: &b {x: 1, z: 2}\nm:\n  <<: *b\n  x: 3\n")
    assert docs[0]["m"] == {"x": 3, "z": 2}


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    f = _yaml(tmp_path, "apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\n"
                        "metadata:\n\tname: x\n")
    with pytest.raises(InvalidTrainingRun) as exc:
        load_file(f)
    msg = exc.value.errors[0].message
    assert "line 4, column 1" in msg and "<unicode string>" not in msg


# ------------------------------------------------------------------- raykube run
@pytest.mark.parametrize("flags, expected", [
    # in the spec's words (they were pydantic's, "input should be greater than or equal")
    (["--epochs", "0"], "(with --epochs): spec.train.epochs: must be a whole number "
     "between 1 and 100000, got 0"),
    (["--workers", "-2"], "(with --workers): spec.scaling.workers: must be a whole number "
     "between 1 and 1024, got -2"),
])
def test_run_names_the_bad_flag(tmp_path, capsys, flags, expected):
    assert main(["run", _run_yaml(tmp_path), *flags]) == 1
    err = capsys.readouterr().err
    assert expected in err
    _no_traceback(err)


def test_run_refuses_an_empty_storage_flag(tmp_path, capsys, monkeypatch):
    """``--storage "$RUNS"`` with RUNS unset was the default ./runs without a word."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["run", _run_yaml(tmp_path), "--storage", ""])
    assert exc.value.code == 2
    assert "argument --storage: is empty (leave the flag out for the default)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_run_overrides_go_through_the_cross_field_checks(tmp_path, capsys):
    f = _run_yaml(tmp_path, "  tune:\n    trials: 2\n    scheduler: {name: asha, gracePeriod: 2}\n"
                            "    searchSpace:\n      train.optimizer.lr: {loguniform: [0.001, 0.1]}\n")
    assert main(["run", f, "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "gracePeriod" in err and "--epochs" in err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_run_and_serve_refuse_a_port_that_cannot_be(port, capsys):
    for cmd in (["run", "x.yaml"], ["serve", "ckpt"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--port", port])
        assert exc.value.code == 2
        assert "not a port number" in capsys.readouterr().err


def test_run_refuses_a_storage_that_is_a_file_before_ray(tmp_path, capsys):
    storage = tmp_path / "storage"
    storage.write_text("I am a file")
    assert main(["run", _run_yaml(tmp_path), "--storage", str(storage)]) == 1
    err = capsys.readouterr().err
    assert "cannot hold run 'r'" in err and "Not a directory" in err
    _no_traceback(err)


# Found by using the CLI: pyarrow took ``gs://`` and asked Google's metadata server (no
# output for over a minute with no network), answered ``S3://`` with a traceback, and a
# typo'd ``s3:/bucket`` trained into a local folder named ``s3:``.
BAD_LOCATIONS = [
    ("gs://b/runs", "gs:// storage is not supported"),
    ("S3://bucket/runs", "lower case (s3://)"),
    ("s3:/bucket/runs", "starts with s3:// (two slashes)"),
    ("s3://", "names no bucket"),
    ("s3://My_Bucket/runs", "not an S3 bucket name"),
    ("s3://bucket/runs?region=x", "no query or fragment"),
]


@pytest.mark.parametrize("storage,words", BAD_LOCATIONS)
def test_run_refuses_a_storage_that_is_neither_a_path_nor_s3_at_once(
        storage, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    assert main(["run", _run_yaml(tmp_path), "--storage", storage]) == 1
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - started < 20  # a hang is the bug; 20 s is far above normal
    assert err.count("\n") == 0 and repr(storage) in err and words in err, err
    assert sorted(os.listdir(tmp_path)) == ["run.yaml"]  # nothing written (no ``s3:/``)


@pytest.mark.parametrize("location,words", BAD_LOCATIONS)
@pytest.mark.parametrize("command", ["serve", "predict"])
def test_serve_and_predict_name_a_checkpoint_uri_they_cannot_read(
        command, location, words, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "p.csv")] if command == "predict" else []
    assert main([command, location, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"checkpoint {location!r}" in err and words in err, err


def test_run_takes_a_file_uri_as_its_path():
    from raykube.commands._util import local_path

    assert local_path("file:///data/runs") == "/data/runs"
    assert local_path("~/runs") == os.path.expanduser("~/runs")
    assert local_path("s3://bkt/runs") == "s3://bkt/runs"


@pytest.mark.parametrize("flags,words", [
    (["--data", "no/such/dir"], "--data 'no/such/dir': not a TrainingRun YAML file"),
    (["--data", "mnist"], "a dataset name (digits, fashion-mnist, cifar10, synthetic)"),
    (["--out", "preds.json"], "--out 'preds.json': the file name must end in .parquet or .csv"),
    # an unset shell variable: the current folder read as images, or the default storage
    (["--data", ""], "--data is empty"),
    (["--storage", " "], "--storage is empty"),
    (["--cache-dir", ""], "--cache-dir is empty"),
    (["--out", ""], "--out is empty"),
    (["--concurrency", "2", "--gpus-per-actor", "-1"], "--gpus-per-actor -1: must be 0 or more"),
    (["--cpus-per-actor", "nan"], "--cpus-per-actor nan: must be 0 or more"),
])
def test_predict_refuses_data_and_out_it_cannot_use_before_ray(flags, words, checkpoint,
                                                               tmp_path, capsys, monkeypatch,
                                                               no_ray_start):
    """Ray took seconds to start before these were found (found using the CLI)."""
    monkeypatch.chdir(tmp_path)
    args = {"--out": "p.csv", **dict(zip(flags[::2], flags[1::2], strict=True))}
    assert main(["predict", str(checkpoint), *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raykube predict: ") and words in err and "\n" not in err, err


def test_predict_names_a_data_source_it_cannot_read(checkpoint, tmp_path, capsys):
    assert main(["predict", str(checkpoint), "--data", "gs://b/images",
                 "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("raykube predict: --data 'gs://b/images': gs:// storage is not supported: "
                   "use a path (a local directory or a mounted volume) or an s3:// URI "
                   "(other object stores through their S3 API, with AWS_ENDPOINT_URL)")


def test_run_refuses_a_run_dir_of_another_model_before_ray(tmp_path, capsys):
    """Ray Train would restore it into every worker, fail them maxWorkerFailures times
    over a minute, then print a traceback."""
    other = parse_spec({**QUICKSTART_SPEC, "model": {"name": "mlp", "options": {"hidden": [64]}}})
    ckpt = tmp_path / "runs" / "r" / "checkpoint_epoch_0002"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"spec": other.spec.to_dict()}))
    assert main(["run", _run_yaml(tmp_path), "--storage", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "different spec.model" in err
    _no_traceback(err)


def test_run_refuses_a_busy_serve_port_before_training(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        f = _run_yaml(tmp_path, "  serve: {enabled: true}\n")
        assert main(["run", f, "--storage", str(tmp_path / "runs"), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "already in use" in err


def test_run_refuses_a_run_dir_another_run_is_training_before_ray(tmp_path, capsys,
                                                                 monkeypatch):
    """Two runs in one run directory write and prune the same checkpoints (seen: the
    second failed its worker with FileNotFoundError). The holder here is another process
    taking the lock as `raykube run` does; SIGKILLing it frees the directory at once."""
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("RAYKUBE_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from raykube import run_lock; "
         f"f = run_lock.hold({str(run_dir)!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "held"
        # the same directory spelled through a symlink is the same run
        (tmp_path / "alias").symlink_to(tmp_path / "runs")
        assert main(["run", _run_yaml(tmp_path), "--storage", str(tmp_path / "alias")]) == 1
        err = capsys.readouterr().err
        assert "in use by another raykube run" in err and f"pid {holder.pid}" in err, err
        assert len(err.strip().splitlines()) == 1
        _no_traceback(err)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from raykube import run_lock

    run_lock.hold(str(run_dir)).close()  # no stale lock after a SIGKILL


def test_port_number_type():
    from raykube.commands._util import port_number

    assert port_number("8080") == 8080
    for bad in ("0", "65536", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            port_number(bad)


# ----------------------------------------------------------------- checkpoints
@pytest.fixture
def checkpoint(tmp_path):
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model

    run = parse_spec(QUICKSTART_SPEC)
    model = build_model(run.spec.model, (1, 8, 8), 10)
    return save_checkpoint(tmp_path / "ckpt", model=model, optimizer=None, epoch=1,
                           spec=run.spec.to_dict(), class_names=[str(i) for i in range(10)],
                           input_shape=(1, 8, 8), metrics={"valAccuracy": 0.5})


def _corrupt(path, how: str) -> None:
    import torch

    pt = path / "checkpoint.pt"
    if how == "truncated":
        pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    elif how == "garbage":
        pt.write_bytes(bytes(range(256)) * 20)
    elif how == "empty":
        pt.write_bytes(b"")
    elif how == "not a dict":
        torch.save([1, 2, 3], pt)
    elif how == "missing key":
        payload = torch.load(pt, weights_only=True)
        del payload["class_names"]
        torch.save(payload, pt)
    elif how == "other model":  # weights of [16] hidden units, spec says [64]
        payload = torch.load(pt, weights_only=True)
        payload["spec"]["model"]["options"]["hidden"] = [64]
        torch.save(payload, pt)


@pytest.mark.parametrize("how, words", [
    ("truncated", "truncated or corrupted"),
    ("garbage", "corrupted, or not a file written by torch.save"),
    ("empty", "truncated or corrupted"),
    ("not a dict", "holds a list"),
    ("missing key", "incomplete or incompatible checkpoint (KeyError: 'class_names')"),
    ("other model", "weights do not fit the model its spec describes (mlp"),
])
def test_load_model_explains_a_broken_checkpoint(checkpoint, how, words):
    from raykube.checkpoint import CheckpointError, load_model

    load_model(checkpoint)  # sound before
    _corrupt(checkpoint, how)
    with pytest.raises(CheckpointError) as exc:
        load_model(checkpoint)
    assert words in str(exc.value) and str(checkpoint) in str(exc.value)
    assert "weights_only` set to `False`" not in str(exc.value)  # torch's unsafe advice


def test_read_meta_explains_a_broken_meta_json(checkpoint):
    from raykube.checkpoint import CheckpointError, read_meta

    (checkpoint / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid raykube meta.json"):
        read_meta(checkpoint)


def test_serve_points_from_a_run_dir_to_its_best_checkpoint(tmp_path, capsys):
    (tmp_path / "r" / "best").mkdir(parents=True)
    (tmp_path / "r" / "best" / "checkpoint.pt").write_bytes(b"")
    assert main(["serve", str(tmp_path / "r")]) == 2
    assert f"its best checkpoint is {tmp_path / 'r' / 'best'}" in capsys.readouterr().err


def test_serve_refuses_a_corrupt_checkpoint_before_ray(checkpoint, capsys):
    _corrupt(checkpoint, "truncated")
    assert main(["serve", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated or corrupted" in err


def test_serve_names_bad_flags_and_a_busy_port(checkpoint, capsys):
    assert main(["serve", str(checkpoint), "--replicas", "0", "--batch-wait-ms", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--replicas 0:" in err and "--batch-wait-ms -1.0:" in err
    _no_traceback(err)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(checkpoint), "--port", str(port)]) == 2
    assert "already in use" in capsys.readouterr().err
    # IPv6: Serve's proxy was never reported ready, "Proxies not available after 60s"
    # after 72 s; one line now, before Ray starts
    for host in ("::1", "[::1]"):
        assert main(["serve", str(checkpoint), "--host", host]) == 2
        err = capsys.readouterr().err
        assert "an IPv6 address" in err and "127.0.0.1" in err and err.count("\n") == 1, err


# --------------------------------------------------------------------- display
def _display():
    from raykube.display import RichDisplay

    console = Console(record=True, width=200)
    return RichDisplay(console), console


def test_display_keeps_trial_ids_and_escapes_failure_text():
    d, console = _display()
    d.on_epoch({"epoch": 1, "epochs": 2, "trainLoss": 0.5}, None, "abc_00000")
    d.on_failure("worker failure (rank 1: ActorDiedError) [/x] [bold]")
    text = console.export_text()
    assert "[abc_00000] epoch" in text  # was swallowed as a rich markup tag
    assert "[/x] [bold]" in text


def test_display_says_when_a_run_continues():
    d, console = _display()
    d.on_epoch({"epoch": 4, "epochs": 6}, None, None)
    d.on_epoch({"epoch": 5, "epochs": 6}, None, None)
    text = console.export_text()
    assert text.count("continuing from the checkpoint of epoch 3") == 1


def test_failure_announcement_counts_retries():
    from raykube.train import announce_failure

    seen = []

    class Obs:
        def on_failure(self, message):
            seen.append(message)

    announce_failure([Obs(), object()], "worker failure (rank 1: ActorDiedError)", 1, 3, True)
    announce_failure([Obs()], "worker failure", 4, 3, False)
    announce_failure([Obs()], "worker failure", 9, -1, True)
    assert "retry 1 of 3" in seen[0]
    assert "no retries left (failure.maxWorkerFailures=3)" in seen[1]
    assert seen[2].endswith("restarting the workers from the last checkpoint (retry 9)")


def test_every_failure_decision_is_forwarded_with_its_outcome():
    """The controller-side hook reads Ray Train's own states (2.60): a retry after a
    worker failed (Restarting), after the group failed to start (Rescheduling), and the
    end (ShuttingDown towards Errored). A ControllerError (a worker killed by Ray's memory
    monitor while the controller polled it, as on make e2e-local's node) reaches the
    driver like a worker's error; a clean finish and other states send nothing."""
    from ray.exceptions import OutOfMemoryError
    from ray.train.v2._internal.execution.controller.state import (
        ErroredState,
        FinishedState,
        ReschedulingState,
        RestartingState,
        RunningState,
        ShuttingDownState,
    )
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from raykube.train import _forwarder, announce_failure

    class Channel:
        def __init__(self):
            self.items = []

        def put_nowait(self, item):
            self.items.append(item)

    q = Channel()
    _, hook = _forwarder(q, "/tmp/runs")
    oom = ControllerError(OutOfMemoryError(
        "1 worker(s) were killed due to the node running low on memory. Memory on the node "
        "(IP: 10.0.0.1, ID: ab) was 0.96GB used / 1.00GB limit (0.96)\n\nadvice"))
    worker = WorkerGroupError("Training failed due to worker errors:",
                              {1: RuntimeError("boom")})
    running = RunningState()
    hook.after_controller_state_update(running, RestartingState(training_failed_error=worker))
    hook.after_controller_state_update(running, ReschedulingState(training_failed_error=oom))
    end = ShuttingDownState(next_state=ErroredState(training_failed_error=oom))
    hook.after_controller_state_update(running, end)
    hook.after_controller_state_update(end, end.next_state)  # the same failure: not again
    hook.after_controller_state_update(running, ShuttingDownState(next_state=FinishedState()))
    assert [i["retry"] for i in q.items] == [True, True, False]
    assert [i["controller"] for i in q.items] == [False, True, True]
    assert q.items[0]["failure"].startswith("worker failure (rank 1: RuntimeError: boom;")
    assert "OutOfMemoryError: Ray's memory monitor killed 1 worker(s)" in q.items[1]["failure"]
    # the controller's own failure is not called a worker's (it read "worker failure ...;
    # not retried: Ray Train's controller failed, not a worker": a new user's probe)
    assert q.items[2]["failure"].startswith("controller failure (")

    seen = []

    class Obs:
        def on_failure(self, message):
            seen.append(message)

    # Ray's decision wins over the count: a controller's error is not retried against
    # failure.maxWorkerFailures, and the message does not blame that budget
    announce_failure([Obs()], q.items[2]["failure"], 1, 3, q.items[2]["retry"],
                     q.items[2]["controller"])
    announce_failure([Obs()], q.items[0]["failure"], 4, 3, False)
    assert seen[0].endswith("not retried: Ray Train retries its controller only when "
                            "starting the workers failed"), seen
    assert seen[1].endswith("no retries left (failure.maxWorkerFailures=3)"), seen


@pytest.mark.parametrize("text,want", [
    # kill -9 of Train's controller mid-run (a new user's probe)
    ("The actor died unexpectedly before finishing this task.",
     "a Ray actor process died (killed, or out of memory: see the run's log)"),
    ("The actor died unexpectedly before finishing this task.\n\tclass_name: TrainController",
     "Ray Train's controller process died (killed, or out of memory: see the run's log)"),
    # its start refused (a checkpoint list naming a deleted checkpoint, before this fix)
    ("The actor died because of an error raised in its creation task, \x1b[36mray::"
     "TrainController.__init__()\x1b[39m (pid=8681, repr=<TrainController object at 0x7f>)\n"
     "  File \"x.py\", line 1, in f\n    raise E\n"
     "ray.train.v2.api.exceptions.CheckpointManagerInitializationError: The run snapshot "
     "contains a reference to a checkpoint that does not exist anymore",
     "Ray Train's controller failed to start (ray.train.v2.api.exceptions."
     "CheckpointManagerInitializationError: The run snapshot contains a reference to a "
     "checkpoint that does not exist anymore)"),
])
def test_an_actor_that_died_is_one_line_without_colour_codes(text, want):
    """Only the error's text is read (Ray's ``ActorDiedError`` as ``fit`` raised it)."""
    from raykube.train import actor_died_line

    got = actor_died_line(RuntimeError(text))
    assert got == want and "\x1b" not in got


def test_predict_refuses_an_out_it_cannot_write_before_ray_starts(tmp_path):
    """``--out s3://...`` was written as a local folder named ``s3:`` and reported as
    done; an --out under a file failed only after the whole prediction."""
    from raykube.predict import PredictError, check_out

    for out, words in (("s3://bucket/p.csv", "must be a local file"),
                       ("s3:/bucket/p.csv", "must be a local file"),
                       (str(tmp_path / "f" / "p.csv"), "is not a directory"),
                       # os.access says yes to root everywhere: the write failed after
                       # the whole prediction (a probe, as root)
                       ("/proc/p.parquet", "cannot write in /proc (No such file or directory)")):
        (tmp_path / "f").write_text("a file")
        with pytest.raises(PredictError, match=re.escape(words)):
            check_out(out)
    assert check_out(str(tmp_path / "new" / "dir" / "p.parquet")) == "parquet"  # made later


FULL_LOG = r"""
import sys
from raykube import cli, terminal
real = cli._command_module

class Failing:
    add_arguments = staticmethod(real("validate").add_arguments)

    @staticmethod
    def run(args):
        terminal.divert("/dev/full")  # the log's disk is full: every write is ENOSPC
        raise OSError(28, "No space left on device", "/runs/x/checkpoint_epoch_0003")

cli._command_module = lambda name: Failing
sys.exit(cli.main(["validate", "x.yaml"]))
"""


def test_an_error_with_the_logs_disk_full_is_still_one_line():
    """The details of an error go to the command's log; on a full disk (often the very
    error) writing them failed too, and 83 lines of nested tracebacks reached the
    terminal. /dev/full stands in for the full disk (every write fails with ENOSPC)."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", FULL_LOG], capture_output=True, text=True,
                       timeout=60)
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("Ray's output goes to")]
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert len(lines) == 1 and lines[0].startswith(
        "raykube validate: OSError: [Errno 28] No space left on device"), lines


@pytest.mark.parametrize("meta,words", [
    (b"\xcf\x00garbage", "not a valid raykube meta.json ('utf-8' codec"),
    (b'{"epoch": "x", "classNames": 5}', "not a valid raykube meta.json (its fields are not "),
])
def test_predict_refuses_a_broken_meta_json_before_ray(meta, words, checkpoint, tmp_path,
                                                       capsys, no_ray_start):
    """meta.json (what predict reads for the class names and the input shape) was read
    only once Ray was up: exit 1 after seconds, in Python's words about our class
    (``CheckpointMeta.__init__() got an unexpected keyword argument``)."""
    (checkpoint / "meta.json").write_bytes(meta)
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raykube predict: ") and words in err and "\n" not in err, err
    assert "__init__" not in err


def test_a_long_failure_line_is_cut_at_a_word():
    """Ray's text was cut mid-word ("...caused by a remote worker hanging or b...": a new
    user's probe)."""
    from raykube.train import failure_line

    text = ("RuntimeError: Timed out waiting for the collective; this is typically caused by "
            "a remote worker hanging or being killed, or by a network problem between the "
            "workers that Ray cannot see from here at all")
    got = failure_line(RuntimeError(text), limit=120)
    assert len(got) <= 120 and got.endswith("...") and got[:-3] == text[:len(got) - 3]
    assert text[len(got) - 3] == " ", got  # the next character: the cut fell between words
    assert failure_line(RuntimeError("x" * 300), limit=50) == "RuntimeError: " + "x" * 33 + "..."


def test_a_namespace_may_start_with_a_digit_a_name_may_not(tmp_path, capsys):
    """Namespaces are RFC 1123 labels (``1team`` is one); a TrainingRun's name names
    Services (RFC 1035: a letter first). ``1team`` was refused, also from --namespace."""
    f = _yaml(tmp_path, _RUN_HEAD.replace("{name: r}", "{name: r, namespace: 1team}")
              + "spec: {model: {name: mlp}, data: {dataset: digits}}\n")
    assert main(["validate", str(f)]) == 0
    assert main(["render", "-n", "2team", str(f)]) == 0
    assert "namespace: 2team" in capsys.readouterr().out
    assert main(["render", "-n", "2Team", str(f)]) == 1
    err = capsys.readouterr().err
    assert "metadata.namespace: must be a DNS label" in err and "starting and ending" in err
    f = _yaml(tmp_path, _RUN_HEAD.replace("{name: r}", "{name: 1r}")
              + "spec: {model: {name: mlp}, data: {dataset: digits}}\n", "digit.yaml")
    assert main(["validate", str(f)]) == 1
    assert "starting with a letter" in capsys.readouterr().err


def test_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """``raykube crd --out`` onto a directory, under a file, or onto a full disk, and
    ``raykube validate`` onto a full disk: each was a traceback (a new-user probe)."""
    (tmp_path / "afile").write_text("x")
    for out in (str(tmp_path), str(tmp_path / "afile" / "crd.yaml"), "/dev/full"):
        assert main(["crd", "--out", out]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"raykube crd: cannot write {out}: ") and err.count("\n") == 1, err
    f = _yaml(tmp_path, _RUN_HEAD + "spec: {model: {name: mlp}, data: {dataset: digits}}\n")
    with open("/dev/full", "w") as disk:
        full = subprocess.run([sys.executable, "-m", "raykube", "validate", str(f)],
                              stdout=disk, stderr=subprocess.PIPE, text=True, timeout=120)
    assert full.returncode == 1
    assert full.stderr == "raykube validate: cannot write the output: No space left on device\n"


def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path):
    """``raykube validate many/ | head -1`` printed a BrokenPipeError traceback."""
    for i in range(2000):
        _yaml(tmp_path, _RUN_HEAD.replace("{name: r}", f"{{name: r{i}}}")
              + "spec: {model: {name: mlp}, data: {dataset: digits}}\n", f"r{i}.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "raykube", "validate", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().endswith(": valid\n")
    proc.stdout.close()  # as `head -1` exits
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, as `yes | head`
    assert err == "", err


def test_a_location_with_a_pasted_newline_or_space_is_refused(tmp_path, capsys):
    """``data.uri: "/data/x\\ny"`` and ``storage.uri: "s3://bucket/x "`` passed validation
    (``render --checkpoint`` already refused such a value): one rule now, in
    ``location_problem``."""
    f = _yaml(tmp_path, _RUN_HEAD + 'spec:\n  model: {name: mlp}\n'
              '  data: {dataset: image-folder, uri: "/data/x\\ny"}\n'
              '  checkpoint: {storage: {uri: "s3://bucket/x "}}\n')
    assert main(["validate", str(f)]) == 1
    err = capsys.readouterr().err
    for field in ("spec.data.uri", "spec.checkpoint.storage.uri"):
        assert f"{field}: " in err and "leading or trailing spaces or a control" in err, err


def test_the_same_file_named_twice_is_read_once(tmp_path, capsys):
    """``render a.yaml ./a.yaml`` refused the run as a duplicate of itself, where
    ``validate`` took it (and ``kubectl apply -f a.yaml -f a.yaml`` applies it)."""
    f = _yaml(tmp_path, _RUN_HEAD + "spec: {model: {name: mlp}, data: {dataset: digits}}\n")
    twice = [str(f), str(tmp_path / "." / "run.yaml"), str(tmp_path)]
    assert main(["validate", *twice]) == 0
    assert capsys.readouterr().out.count(": valid") == 1
    assert main(["render", *twice]) == 0
    assert capsys.readouterr().out.count("kind: RayJob") == 1
    assert main(["render", "--out", "", str(f)]) == 2
    assert "--out is empty" in capsys.readouterr().err


@pytest.mark.parametrize("body,words", [
    ("scaling: {memoryPerWorker: [2Gi]}",
     "spec.scaling.memoryPerWorker: must be a string, got ['2Gi'], a list"),
    ("scaling: {tolerations: {key: a}}",
     "spec.scaling.tolerations: must be a list, got {'key': 'a'}, a mapping: a list of them"),
    ("serve: {enabled: 'yes'}", "spec.serve.enabled: must be true or false, got 'yes', a "
     "string: write true or false, without quotes"),
    ("train: {optimizer: {lr: .nan}}",
     "spec.train.optimizer.lr: must be a finite number, got .nan, a number"),
    ("checkpoint: {storage: {pvc: {mountPath: mnt}}}", "spec.checkpoint.storage.pvc.mountPath: "
     "must be an absolute path (starting with /), got 'mnt'"),
    ("checkpoint: {storage: {uri: /data/x}}", "spec.checkpoint.storage.uri: must be an s3:// "
     "URI (s3://<bucket>/<prefix>), got '/data/x'; a volume is checkpoint.storage.pvc"),
])
def test_a_value_of_the_wrong_kind_says_what_yaml_made_of_it(body, words, tmp_path, capsys):
    """pydantic's words reached the user: "Input should be a valid list", "string should
    match pattern '^/'" (a new-user probe)."""
    f = _yaml(tmp_path, _RUN_HEAD + f"spec:\n  model: {{name: mlp}}\n  data: {{dataset: digits}}\n  {body}\n")
    assert main(["validate", "-q", str(f)]) == 1
    err = capsys.readouterr().err
    assert words in err, err
    assert "Input should" not in err and "pattern" not in err


@pytest.mark.parametrize("text,words", [
    ("kind: TrainingRun\nmetadata: {name: r}\nspec: {model: {name: mlp}, data: {dataset: digits}}\n",
     "apiVersion: must be 'raykube.io/v1alpha1', it is missing"),  # was "got None"
    (_RUN_HEAD + "spec: null\n", "spec: is empty (null): give it a value\n"),  # not "or remove"
    (_RUN_HEAD + "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n"
     "  tune: {searchSpace: {train.batch_size: {choice: [8, 16]}}}\n",
     "'train.batch_size' is not a field of the spec (fields are camelCase: did you mean "
     "'train.batchSize'?)"),
    (_RUN_HEAD + "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n"
     "  tune: {searchSpace: {train.batchsize: {choice: [8, 16]}}}\n",
     "(did you mean 'train.batchSize'?)"),
    # "uniform bound 1.0 is not valid: must be a whole number" (an operator probe)
    (_RUN_HEAD + "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n"
     "  tune: {searchSpace: {train.epochs: {uniform: [1, 5]}}}\n",
     "train.epochs takes whole numbers and uniform samples fractions: use randint"),
    # a section's choice that sets the same path: its value was dropped without a word
    (_RUN_HEAD + "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n  tune:\n"
     "    searchSpace:\n      train.optimizer.lr: {choice: [0.1]}\n"
     "      train.optimizer: {choice: [{lr: 0.2}, {lr: 0.01}]}\n",
     "spec.tune.searchSpace[train.optimizer.lr]: train.optimizer is searched as a whole too"),
])
def test_small_slips_are_named_in_the_users_terms(text, words, tmp_path, capsys):
    f = _yaml(tmp_path, text)
    assert main(["validate", str(f)]) == 1
    assert words in capsys.readouterr().err


def test_a_file_too_large_for_a_trainingrun_is_refused_before_it_is_parsed(tmp_path):
    """A 28 MB dataset .json beside the specs (``raykube validate .``) was read and parsed
    whole: 4 GB and more than two minutes; /dev/zero never ended."""
    from raykube.spec import MAX_SPEC_FILE_BYTES

    big = tmp_path / "dataset.json"
    big.write_text("[" + "1," * (MAX_SPEC_FILE_BYTES // 2) + "1]")
    with pytest.raises(InvalidTrainingRun) as exc:
        load_file(big)
    assert "larger than 4 MiB" in exc.value.errors[0].message
    with pytest.raises(InvalidTrainingRun) as exc:
        load_file("/dev/zero")
    assert "larger than 4 MiB" in exc.value.errors[0].message


def _run_doc(**spec):
    return {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "big"},
            "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}, **spec}}


def test_a_spec_too_large_for_kubernetes_annotations_is_refused_where_it_is_large():
    """kubectl apply and the operator (kopf) each keep a copy of the spec in an
    annotation, and annotations hold 256 KiB: a 406 KB spec the API server took had the
    operator retry every 5 s for good. Refused, one line, naming where the bulk is."""
    from raykube.spec import MAX_SPEC_BYTES, parse_training_run

    big = ["x" * 1000] * (MAX_SPEC_BYTES // 1000 + 1)
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(_run_doc(tune={"trials": 2, "searchSpace": {
            "train.optimizer.name": {"choice": big}}}))
    (err,) = exc.value.errors
    assert err.path == "spec" and "64 KiB" in err.message, err
    assert "spec.tune.searchSpace[train.optimizer.name].choice" in err.message, err
    parse_training_run(_run_doc(tune={"trials": 2, "searchSpace": {
        "train.optimizer.name": {"choice": ["adam", "sgd"]}}}))  # a spec of a normal size


@pytest.mark.parametrize("where,value,path", [
    ("tolerations", [{"key": "k", "operator": "Exists"}] * 65, "spec.scaling.tolerations"),
    ("nodeSelector", {f"k{i}": "v" for i in range(65)}, "spec.scaling.nodeSelector"),
    ("nodeSelector", {"k": "v" * 64}, "spec.scaling.nodeSelector"),
    ("tolerations", [{"key": "k" * 318, "operator": "Exists"}], "spec.scaling.tolerations"),
])
def test_placement_lists_are_bounded(where, value, path):
    """Bounded in the models, so in the CRD too (maxItems, maxProperties, maxLength)."""
    from raykube.spec import parse_training_run

    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(_run_doc(scaling={where: value}))
    assert any(e.path.startswith(path) for e in exc.value.errors), exc.value.errors


@pytest.mark.parametrize("space,where", [
    ({"data.dataset": {"choice": ["digits", "fashion-mnist"]}}, "data.dataset"),
    ({"data.validationFraction": {"uniform": [0.1, 0.3]}}, "data.validationFraction"),
    ({"data": {"choice": [{"dataset": "digits"}, {"dataset": "synthetic"}]}}, "data.dataset"),
])
def test_a_search_may_not_vary_what_trials_are_validated_on(space, where):
    """validate accepted a search over data.dataset: trials ranked by valAccuracy on
    different datasets (a new-user audit). The data that fixes the validation split is
    the same for every trial; the rest of data.* may still vary."""
    from raykube.spec import parse_training_run

    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(_run_doc(tune={"trials": 2, "searchSpace": space}))
    (err,) = exc.value.errors
    assert err.message.startswith(f"{where} must be the same for every trial"), err
    parse_training_run(_run_doc(tune={"trials": 2, "searchSpace": {
        "data": {"choice": [{"numSamples": 500}, {"numSamples": 1000}]}}}))
