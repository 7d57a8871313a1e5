"""One `raykube run` per run directory on this machine at a time.

Two runs of one TrainingRun name in one storage would train into the same run directory,
each writing, pruning and resuming from checkpoints the other also writes and deletes
(seen: the second run's worker failed four times with FileNotFoundError and the run ended
in WorkerGroupError). The second is refused before Ray starts, naming the first.

The lock is ``flock`` on a file under the per-user cache (``$RAYKUBE_CACHE``, default
``~/.cache/raykube``), keyed by the run directory (its real path, or the ``s3://`` URI),
so nothing is added to the run directory. The kernel drops it when the holder exits,
however it exits (Ctrl-C, a crash, SIGKILL): no stale lock is ever left.

The files themselves are removed, so that they do not pile up (one per run directory
ever trained): the holder unlinks its file while it still holds the lock, when it lets
go; a file left by a holder that was killed is unlinked by the next ``hold`` that finds
it unlocked (``sweep``). Unlinking a lock file is safe only because every taker checks,
once it holds the lock, that the file it locked is still the one at the path (same
inode), and starts again if not: a taker that opened the file just before it was
unlinked would otherwise hold a lock on a file nobody else can see, while a third
process creates a new one at the path and takes that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import weakref
from typing import IO

BUSY_RETRY_S = 0.5
"""How long a taker that finds the lock held tries again before it reports the run busy:
``sweep`` holds a stale file's lock for the instant it takes to unlink it."""


class RunBusy(OSError):
    """Another process on this machine holds the run directory."""


def _lock_dir() -> str:
    root = os.environ.get("RAYKUBE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "raykube")
    return os.path.join(root, "locks")


def _lock_path(run_dir: str) -> str:
    key = run_dir if "://" in run_dir else os.path.realpath(run_dir)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return os.path.join(_lock_dir(), f"run-{digest}.lock")


def _still_at(f: IO[str], path: str) -> bool:
    """Whether the file ``f`` has open is (still) the one at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _release(f: IO[str], path: str) -> None:
    """Unlink ``path`` while holding its lock (if it is still ours), then let go."""
    if f.closed:
        return
    with contextlib.suppress(OSError):
        if _still_at(f, path):
            os.unlink(path)
    f.close()


class RunLock:
    """A held run-directory lock. ``close()`` (or this object's end, or the process's
    exit) removes the lock file and lets go."""

    def __init__(self, f: IO[str], path: str):
        self.file = f
        self.path = path
        self._finalizer = weakref.finalize(self, _release, f, path)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep(skip: str = "") -> int:
    """Remove lock files that no live process holds (left by holders that were killed);
    return how many. A held one is never touched: it is unlinked only under its own
    lock, taken here without waiting."""
    removed = 0
    try:
        names = os.listdir(_lock_dir())
    except OSError:
        return 0
    for name in names:
        path = os.path.join(_lock_dir(), name)
        if path == skip or not (name.startswith("run-") and name.endswith(".lock")):
            continue
        try:
            f = open(path)  # noqa: SIM115 (closed below, after the unlink)
        except OSError:
            continue
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _still_at(f, path):
                os.unlink(path)
                removed += 1
        except OSError:  # held by a live run (or already gone)
            pass
        finally:
            f.close()
    return removed


def hold(run_dir: str) -> RunLock:
    """Lock ``run_dir`` for this process; keep the returned ``RunLock`` as long as the run.

    Raises ``RunBusy`` (one line, with the holder's pid) when another process has it.
    Lock files of killed holders are removed on the way (``sweep``).
    """
    path = _lock_path(run_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    busy_until = time.monotonic() + BUSY_RETRY_S
    while True:
        f = open(path, "a+")  # noqa: SIM115 (held open on purpose: closing it unlocks)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            if time.monotonic() < busy_until:
                time.sleep(0.05)
                continue
            raise RunBusy(f"{run_dir} is in use by another raykube run on this machine "
                          f"(pid {holder}): wait for it to finish (or stop it), or give this "
                          "one another metadata.name or --storage") from None
        if _still_at(f, path):
            break
        f.close()  # unlinked by its last holder (or a sweep) meanwhile: take the new one
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    lock = RunLock(f, path)
    sweep(skip=path)
    return lock
