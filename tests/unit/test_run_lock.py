"""Run-directory locks (raykube.run_lock): their files do not pile up, and removing
them never lets two runs hold one run directory."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

import pytest


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYKUBE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "locks"


def _holder(run_dir: str) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock as `raykube run` does."""
    p = subprocess.Popen(
        [sys.executable, "-c", "import time; from raykube import run_lock; "
         f"lock = run_lock.hold({run_dir!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_run_lock_file_is_removed_when_its_run_ends(lock_dir, tmp_path):
    from raykube import run_lock

    lock = run_lock.hold(str(tmp_path / "a"))
    assert len(os.listdir(lock_dir)) == 1
    lock.close()
    assert os.listdir(lock_dir) == []
    # and when its process exits without closing it
    subprocess.run([sys.executable, "-c", "from raykube import run_lock; "
                    f"lock = run_lock.hold({str(tmp_path / 'b')!r})"],
                   check=True, env={**os.environ})
    assert os.listdir(lock_dir) == []


def test_lock_files_of_killed_runs_are_swept_but_a_live_runs_is_kept(lock_dir, tmp_path):
    from raykube import run_lock

    live = _holder(str(tmp_path / "live"))
    try:
        killed = _holder(str(tmp_path / "killed"))
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert len(os.listdir(lock_dir)) == 2  # the killed run's file stayed
        with run_lock.hold(str(tmp_path / "other")):
            # the killed run's file is gone; the live run's and this one's remain
            assert len(os.listdir(lock_dir)) == 2
            with pytest.raises(run_lock.RunBusy, match=f"pid {live.pid}"):
                run_lock.hold(str(tmp_path / "live"))
        assert os.listdir(lock_dir) == [os.path.basename(run_lock._lock_path(
            str(tmp_path / "live")))]
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()


def test_a_lock_file_unlinked_while_it_was_being_taken_is_not_held(lock_dir, tmp_path,
                                                                   monkeypatch):
    """The race that unlinking lock files opens: ``hold`` opened the file, its last
    holder unlinked it (as it lets go) and a third run created a new one at the path and
    locked that, all before ``hold``'s flock. The flock then succeeds on a file nobody
    else can see; taken as the lock, two runs would train in one run directory. The
    interleaving is made by running the other two's steps inside ``hold``'s first flock
    call (the third run is this test's process, holding the new file)."""
    from raykube import run_lock

    run_dir = str(tmp_path / "r")
    path = run_lock._lock_path(run_dir)
    os.makedirs(lock_dir)
    open(path, "w").close()  # the last holder's file
    real_flock = fcntl.flock
    third: list = []

    def flock(fd, op):
        if not third:
            os.unlink(path)  # the last holder lets go
            f = open(path, "a+")  # noqa: SIM115 (the third run, holding on)
            real_flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.write("4242")
            f.flush()
            third.append(f)
        return real_flock(fd, op)

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)
    try:
        with pytest.raises(run_lock.RunBusy, match="pid 4242"):
            run_lock.hold(run_dir)
    finally:
        for f in third:
            f.close()
