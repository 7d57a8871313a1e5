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



def test_a_served_checkpoint_a_later_run_pruned_is_served_from_its_copy(tmp_path):
    """The operator promotes checkpoint_epoch_NNNN; a later run of the same TrainingRun
    keeps only checkpoint.keep checkpoints and deleted it while it served: a replica
    started then failed ("no such file or directory", found on real pods). best/ is its
    copy until a later run finishes: served from there, only while it is that epoch."""
    import json

    from raykube.serve import resolve_checkpoint

    run_dir = tmp_path / "default" / "quickstart"
    (run_dir / "best").mkdir(parents=True)
    (run_dir / "best" / "meta.json").write_text(json.dumps({"epoch": 35}))
    assert resolve_checkpoint(str(run_dir / "checkpoint_epoch_0035")) == str(run_dir / "best")
    assert resolve_checkpoint(f"file://{run_dir}/checkpoint_epoch_0035/") == str(run_dir / "best")
    # best/ is another epoch's now (a later run finished): no copy, the error as before
    with pytest.raises(FileNotFoundError, match="checkpoint_epoch_0034: no such file"):
        resolve_checkpoint(str(run_dir / "checkpoint_epoch_0034"))
    (run_dir / "best" / "meta.json").write_text("{not json")
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(run_dir / "checkpoint_epoch_0035"))


EARLIER = "2026-01-01T00:00:00Z"
"""A failure from before the replica began to wait: perhaps an earlier attempt's."""


def _failed(run_dir, *, final: bool, at: str = EARLIER) -> None:
    from raykube import run_failure

    run_failure.record(str(run_dir), run_failure.RunFailure(
        message="training failed: boom", at=at, final=final,
        outcome="no RayJob retry is left, spec.failure.maxRetries: 0" if final
        else "KubeRay retries it: retry 1 of 2"))


def test_a_failure_from_before_the_wait_fails_it_after_the_grace_period(tmp_path):
    """The driver's ``failed.json`` says no retry follows, but it was there before the
    replica began to wait (an earlier attempt's stays until a new attempt's driver removes
    it): the replica fails once it has stood the grace period, naming the run's reason."""
    from raykube.serve import TrainingRunFailed

    run_dir = tmp_path / "default" / "quickstart"
    _failed(run_dir, final=True)
    started = time.monotonic()
    with pytest.raises(TrainingRunFailed) as raised:
        wait_for_training(str(run_dir / "best"), poll_s=0.05, believe_after_s=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    line = str(raised.value)
    assert "\n" not in line and line.startswith(f"the training run in {run_dir} failed for good "
                                                f"at {EARLIER}"), line
    assert "training failed: boom; there is no model to serve" in line, line


def test_a_run_that_fails_for_good_while_waited_for_fails_the_wait_at_once(tmp_path):
    from raykube import run_failure
    from raykube.serve import TrainingRunFailed

    run_dir = tmp_path / "default" / "quickstart"
    _failed(run_dir, final=False)  # an attempt KubeRay retries: waited out

    def fail_for_good() -> None:
        time.sleep(1.2)  # failed.json's times are whole seconds
        _failed(run_dir, final=True, at=run_failure.now())

    threading.Thread(target=fail_for_good, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(TrainingRunFailed, match="failed for good"):
        wait_for_training(str(run_dir / "best"), poll_s=0.05, believe_after_s=3600)
    assert 1.0 < time.monotonic() - started < 10


def test_a_retried_attempt_or_a_cleared_failure_is_waited_out(tmp_path):
    """A failed attempt KubeRay retries is not the end; nor is an earlier attempt's final
    failure that a new attempt removes within the grace period: the wait ends with the
    run's result."""
    from raykube import run_failure

    run_dir = tmp_path / "default" / "quickstart"
    _failed(run_dir, final=True)  # an earlier attempt's, as a new RayJob starts

    def retry_then_finish() -> None:
        time.sleep(0.6)
        run_failure.clear(str(run_dir))  # the new attempt's driver starts
        time.sleep(0.3)
        _failed(run_dir, final=False)  # ... fails, and KubeRay retries it
        time.sleep(0.6)
        (run_dir / "best").mkdir()
        (run_dir / "result.json").write_text("{}")

    threading.Thread(target=retry_then_finish, daemon=True).start()
    waited = wait_for_training(str(run_dir / "best"), poll_s=0.05, believe_after_s=5.0)
    assert 1.0 < waited < 5.0, waited


def test_a_finished_run_is_served_whatever_failed_before(tmp_path):
    """``result.json`` wins: a run that finished after a failed attempt whose file was not
    removed (a store that refused the delete) is served."""
    run_dir = tmp_path / "default" / "quickstart"
    _failed(run_dir, final=True)
    (run_dir / "result.json").write_text("{}")
    assert wait_for_training(str(run_dir / "best"), poll_s=0.05, believe_after_s=0.0) == 0.0
