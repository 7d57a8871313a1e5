"""Storage that fails during a run: a full disk while a checkpoint is saved, an object
store (a real MinIO, tests/s3_server.py) that stops mid-run, for good or for a while.

Each run is paused mid-epoch by the workers' fault hook (``pause``), so that the fault
is made at a known point: the worker is training epoch 2, epoch 1's checkpoint is
registered (the driver was told of it, which Ray Train's controller does after writing
its checkpoint list), and the next thing to touch the storage is epoch 2's upload.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from test_s3 import DIGITS_SPEC

from raykube.spec import parse_spec

pytestmark = pytest.mark.integration

# digits, a small MLP, one worker (test_s3's), 3 epochs, every checkpoint kept
SPEC = {**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 3},
        "failure": {"maxWorkerFailures": 3}, "checkpoint": {"keep": 3}}


class Recorder:
    """A RunObserver that remembers the epochs reported, the failures announced and the
    notes (what the terminal prints as it happens)."""

    def __init__(self):
        self.epochs: list[int] = []
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.epoch1 = threading.Event()

    def on_start(self, run):
        pass

    def on_epoch(self, metrics, checkpoint, trial):
        self.epochs.append(int(metrics["epoch"]))
        if metrics["epoch"] == 1:
            self.epoch1.set()

    def on_failure(self, message):
        self.failures.append(message)

    def on_note(self, message):
        self.notes.append(message)

    def on_end(self, result):
        pass


def pause_at_epoch_2(marker: Path) -> dict:
    """The workers' config that pauses rank 0 in epoch 2 until ``<marker>.resume``."""
    return {"fault": {"epoch": 2, "rank": 0, "marker": str(marker), "pause": True}}


def when_paused(marker: Path, rec: Recorder, fault, done: dict) -> threading.Thread:
    """A thread that, once rank 0 is paused in epoch 2 and epoch 1 is registered, calls
    ``fault()`` and lets the worker go on."""

    def run() -> None:
        deadline = time.monotonic() + 600
        while not (marker.exists() and rec.epoch1.is_set()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if marker.exists():
            try:
                fault()
                done["fault"] = True
            finally:
                Path(f"{marker}.resume").touch()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_full_disk_while_saving_a_checkpoint_stops_at_once_and_removes_it(ray_session, tmp_path):
    """What stands in for the full disk: epoch 2's checkpoint.pt is made a symbolic link
    to /dev/full (while rank 0 is paused), so Ray Train's own copy into the run
    directory (pyarrow) gets ENOSPC from the kernel on that file, as on a full disk.
    Filling a real filesystem needs one of the test's own (a small tmpfs), and mounting
    one needs CAP_SYS_ADMIN, which a CI container need not have."""
    from raykube.train import StorageError, fit

    storage = tmp_path / "runs"
    run_dir = storage / "full"
    run = parse_spec(SPEC, name="full")
    marker = tmp_path / "paused"
    rec, done = Recorder(), {}

    def fill_the_disk() -> None:
        (run_dir / "checkpoint_epoch_0002").mkdir()
        (run_dir / "checkpoint_epoch_0002" / "checkpoint.pt").symlink_to("/dev/full")

    t = when_paused(marker, rec, fill_the_disk, done)
    with pytest.raises(StorageError) as err:
        fit(run, str(storage), observers=[rec], extra_config=pause_at_epoch_2(marker))
    t.join(60)
    assert done.get("fault"), "the fault was never made: nothing was tested"
    msg = str(err.value)
    print(msg)
    assert msg == (f"storage {run_dir}: the disk is full (No space left on device) while "
                   "saving checkpoint_epoch_0002, which was removed; free some space (or use "
                   "another --storage), then run again to resume from the latest complete "
                   "checkpoint")
    assert not err.value.transient  # a RayJob's retry would meet the same full disk
    assert rec.failures == []  # stopped at once: no worker restart, nothing retried
    assert rec.epochs == [1]
    # the half-written checkpoint is gone; nothing of raykube's or Ray Train's markers stays
    assert sorted(os.listdir(run_dir)) == ["checkpoint_epoch_0001",
                                           "checkpoint_manager_snapshot.json"]
    assert os.path.exists("/dev/full")  # the clean-up removed the link, not its target

    # Space again: the next run resumes from epoch 1's checkpoint.
    rec2 = Recorder()
    out = fit(run, str(storage), observers=[rec2])
    assert rec2.epochs == [2, 3] and rec2.failures == []
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    assert ".validate_storage_marker" not in os.listdir(run_dir)


def _bucket_ls(s3_server, uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs = s3_server.filesystem()
    return sorted(i.base_name for i in fs.get_file_info(
        pafs.FileSelector(uri[len("s3://"):], allow_not_found=True)))


def test_object_store_gone_mid_run_stops_in_one_line_and_a_rerun_resumes(
        ray_session, s3_server, s3_prefix, tmp_path):
    """MinIO is SIGKILLed while rank 0 trains epoch 2 and stays down: the worker waits
    for it (5 s here, ``store_wait_s``; 300 s by default), then the run stops with one
    line, without restarting the workers (each restart would fail restoring from the
    absent store). Started again on the same data, a new run resumes."""
    from raykube.train import StorageError, fit

    run = parse_spec(SPEC, name="gone")
    marker = tmp_path / "paused"
    rec, done = Recorder(), {}
    t = when_paused(marker, rec, s3_server.stop, done)
    try:
        with pytest.raises(StorageError) as err:
            fit(run, s3_prefix, observers=[rec],
                extra_config={**pause_at_epoch_2(marker), "store_wait_s": 5})
        t.join(60)
    finally:
        if s3_server.proc is None:
            s3_server.start()
    assert done.get("fault"), "the server was never stopped: nothing was tested"
    msg = str(err.value)
    print(msg)
    assert msg == (f"storage {s3_prefix}/gone: the object store failed during training "
                   f"({s3_server.endpoint} did not answer for 5 s while saving "
                   "checkpoint_epoch_0002); run again to resume from the latest complete "
                   "checkpoint")
    assert err.value.transient  # a RayJob's next attempt may find the store back
    assert rec.failures == [] and rec.epochs == [1]
    # the wait was said as it began, not only at its end
    assert any(n.startswith(f"the object store {s3_server.endpoint} did not answer while "
                            "saving checkpoint_epoch_0002: waiting up to ") for n in rec.notes), rec.notes

    rec2 = Recorder()
    out = fit(run, s3_prefix, observers=[rec2])
    assert rec2.epochs == [2, 3] and rec2.failures == []
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    names = _bucket_ls(s3_server, f"{s3_prefix}/gone")
    assert {"checkpoint_epoch_0001", "checkpoint_epoch_0002", "checkpoint_epoch_0003",
            "result.json", "best"} <= set(names), names
    assert ".validate_storage_marker" not in names


def test_object_store_back_within_the_wait_costs_no_worker_restart(
        ray_session, s3_server, s3_prefix, tmp_path):
    """MinIO is SIGKILLed while rank 0 trains epoch 2 and started again 15 s later
    (longer than Ray Train's own retries of an upload, 3 attempts over ~3 s): the worker
    waits for it and uploads epoch 2's checkpoint then; no restart, no epoch trained
    twice, every checkpoint whole."""
    from raykube.checkpoint import load_model
    from raykube.serve import resolve_checkpoint
    from raykube.train import fit

    run = parse_spec(SPEC, name="back")
    marker = tmp_path / "paused"
    rec, done = Recorder(), {}

    def outage() -> None:
        s3_server.stop()
        threading.Timer(15.0, s3_server.start).start()

    t = when_paused(marker, rec, outage, done)
    try:
        out = fit(run, s3_prefix, observers=[rec],
                  extra_config={**pause_at_epoch_2(marker), "store_wait_s": 120})
        t.join(60)
    finally:
        deadline = time.monotonic() + 60
        while s3_server.proc is None and time.monotonic() < deadline:
            time.sleep(0.2)
    assert done.get("fault"), "the server was never stopped: nothing was tested"
    assert rec.failures == []
    assert rec.epochs == [1, 2, 3]
    waits = [n for n in rec.notes if "did not answer while saving checkpoint_epoch_0002" in n]
    assert waits and f"the object store {s3_server.endpoint} answers again: training goes on" in rec.notes, rec.notes
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    for uri in out.checkpoints:
        _, meta = load_model(resolve_checkpoint(uri))
        assert uri.endswith(f"checkpoint_epoch_{meta.epoch:04d}")
