"""A rendered RayService's replica waits for its run's training (``waitForTraining``), on
a local volume: what it waits for, and what it does not wait out. The same on MinIO and
in Serve: ``tests/integration/test_s3_errors.py``, ``test_serve_config.py``."""

from __future__ import annotations

import threading
import time

import pytest

from raykube.serve import wait_for_training
from raykube.storage import UnsupportedStorage


def test_it_waits_for_the_runs_result_not_for_best(tmp_path):
    """``best/`` is copied file by file before the run writes ``result.json``: the wait
    ends with ``result.json`` only, and returns at once when it is there already."""
    run_dir = tmp_path / "default" / "quickstart"
    (run_dir / "best").mkdir(parents=True)
    (run_dir / "best" / "checkpoint.pt").write_bytes(b"half")

    def finish() -> None:
        time.sleep(0.6)
        (run_dir / "result.json").write_text("{}")

    threading.Thread(target=finish, daemon=True).start()
    waited = wait_for_training(str(run_dir / "best"), poll_s=0.05)
    assert 0.5 < waited < 10, waited
    assert wait_for_training(f"file://{run_dir}/best/", poll_s=0.05) == 0.0


def test_an_address_no_wait_can_mend_fails_at_once():
    started = time.monotonic()
    with pytest.raises(UnsupportedStorage, match="gs://"):
        wait_for_training("gs://bucket/runs/default/q/best", poll_s=0.05)
    assert time.monotonic() - started < 5


def test_serving_a_runs_best_before_it_exists_names_what_can_be_served(tmp_path):
    """`raykube serve runs/<name>/best` while the run trains (or after it was
    interrupted): best/ is written when the run finishes; its latest per-epoch
    checkpoint is there already, and the error names it."""
    from raykube.serve import resolve_checkpoint

    run_dir = tmp_path / "runs" / "quickstart"
    (run_dir / "checkpoint_epoch_0002").mkdir(parents=True)
    (run_dir / "checkpoint_epoch_0010").mkdir()
    with pytest.raises(FileNotFoundError) as raised:
        resolve_checkpoint(str(run_dir / "best"))
    assert str(raised.value) == (
        f"checkpoint {run_dir}/best: no such file or directory; the run in {run_dir} has not "
        f"finished (best/ is written when it does): its latest checkpoint is "
        f"{run_dir}/checkpoint_epoch_0010")
    empty = tmp_path / "runs" / "new"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="the run in .* has no checkpoint yet"):
        resolve_checkpoint(str(empty / "best"))
    with pytest.raises(FileNotFoundError) as raised:  # nothing there at all: no guess
        resolve_checkpoint(str(tmp_path / "nowhere" / "best"))
    assert str(raised.value).endswith("no such file or directory")
