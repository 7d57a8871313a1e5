"""What raykube leaves behind, and says, when storage fails (no Ray started): the
write probe on a full disk, the one line for a storage failure that ended a run.
tests/integration/test_storage_faults.py has the runs."""

from __future__ import annotations

import errno
import os

import pytest


# ------------------------------------------------------------------ the write probe
def test_a_full_disk_refuses_the_storage_and_leaves_no_write_probe(tmp_path):
    """What stands in for the full disk: the probe's name is a symbolic link to
    /dev/full, on which the kernel fails every write with ENOSPC, after the open (the
    probe file exists by then, as on a full disk)."""
    from raykube.train import StorageError, check_storage

    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / ".raykube-write-test").symlink_to("/dev/full")
    with pytest.raises(StorageError) as err:
        check_storage(str(tmp_path / "runs"), "r")
    assert "No space left on device" in str(err.value)
    assert os.listdir(run_dir) == []
    assert os.path.exists("/dev/full")


# ------------------------------------------------------------------ the one line
class _ControllerError(Exception):
    """Shaped as Ray Train's ControllerError: the cause in ``controller_failure``."""

    def __init__(self, cause: BaseException):
        super().__init__("controller failed")
        self.controller_failure = cause


def test_the_controller_meeting_a_full_disk_is_one_line_naming_the_run_directory():
    from raykube.train import StorageError, _storage_failure

    full = OSError(errno.ENOSPC, "[Errno 28] Error writing bytes to file. Detail: [errno 28] "
                                 "No space left on device")
    err = _storage_failure(_ControllerError(full), "/data/runs/x")
    assert isinstance(err, StorageError) and not err.transient
    assert str(err).startswith("storage /data/runs/x: the disk is full (No space left on "
                               "device) while saving Ray Train's checkpoint list; free")
    assert _storage_failure(_ControllerError(ValueError("other")), "/data/runs/x") is None


def test_the_controller_losing_the_object_store_names_the_endpoint_not_the_sdk(monkeypatch):
    from raykube.train import StorageError, _storage_failure

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.storage:9000")
    aws = OSError("When initiating multiple part upload for key 'runs/x/checkpoint_manager_"
                  "snapshot.json' in bucket 'b': AWS Error NETWORK_CONNECTION during "
                  "CreateMultipartUpload operation: curlCode: 7, Could not connect to server")
    err = _storage_failure(_ControllerError(aws), "s3://b/runs/x")
    assert isinstance(err, StorageError) and err.transient
    assert str(err) == ("storage s3://b/runs/x: the object store failed during training "
                        "(cannot reach the S3 endpoint http://minio.storage:9000); run again "
                        "to resume from the latest complete checkpoint")


def test_a_workers_storage_failure_is_raised_as_it_is():
    from raykube.train import StorageFailed, _storage_failure

    mine = StorageFailed("storage /r/x: the disk is full (...)")
    group = Exception("Training failed due to worker errors")
    group.worker_failures = {1: RuntimeError("collective aborted"), 0: mine}
    assert _storage_failure(group, "/r/x") is mine


def test_ray_names_its_storage_marker_as_raykube_removes_it():
    from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME

    from raykube.train import VALIDATE_MARKER

    assert VALIDATE_MARKER == VALIDATE_STORAGE_MARKER_FILENAME


# ------------------------------------------------------------------ the clean-up
def test_deleting_checkpoint_dirs_reports_what_went_and_never_follows_a_link_out(
        tmp_path, caplog):
    """One clean-up for train's and Tune's checkpoints and a half-written upload: a
    directory goes with all it holds, one already gone is neither deleted nor a warning,
    and a link inside a doomed directory is removed, not followed."""
    from raykube.storage import delete_dirs

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    doomed = tmp_path / "run" / "checkpoint_000001"
    doomed.mkdir(parents=True)
    (doomed / "model.pt").write_bytes(b"x")
    (doomed / "link").symlink_to(outside, target_is_directory=True)
    gone = tmp_path / "run" / "checkpoint_000002"

    with caplog.at_level("WARNING", logger="raykube.storage"):
        deleted = delete_dirs([str(doomed), str(gone)])
    assert deleted == [str(doomed)]
    assert not doomed.exists()
    assert (outside / "keep.txt").read_text() == "not the run's"
    assert caplog.records == []


def test_a_clean_up_that_fails_is_one_warning_and_the_caller_goes_on(tmp_path, caplog):
    """A directory that cannot be deleted (here a symbolic link given as the directory,
    which ``shutil.rmtree`` refuses rather than delete what it points to) is a warning
    naming it; the other deletions still happen."""
    from raykube.storage import delete_dirs

    target = tmp_path / "target"
    target.mkdir()
    (target / "f").write_text("kept")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    other = tmp_path / "other"
    other.mkdir()

    with caplog.at_level("WARNING", logger="raykube.storage"):
        deleted = delete_dirs([str(link), str(other)])
    assert deleted == [str(other)]
    assert (target / "f").read_text() == "kept"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert str(link) in caplog.records[0].getMessage()
