"""One `raykube run` per run directory on this machine at a time.

Two runs of one TrainingRun name in one storage would train into the same run directory,
each writing, pruning and resuming from checkpoints the other also writes and deletes
(seen: the second run's worker failed four times with FileNotFoundError and the run ended
in WorkerGroupError). The second is refused before Ray starts, naming the first.

The lock is ``flock`` on a file under the per-user cache (``$RAYKUBE_CACHE``, default
``~/.cache/raykube``), keyed by the run directory (its real path, or the ``s3://`` URI),
so nothing is added to the run directory. The kernel drops it when the holder exits,
however it exits (Ctrl-C, a crash, SIGKILL): no stale lock is ever left.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from typing import IO


class RunBusy(OSError):
    """Another process on this machine holds the run directory."""


def _lock_path(run_dir: str) -> str:
    key = run_dir if "://" in run_dir else os.path.realpath(run_dir)
    root = os.environ.get("RAYKUBE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "raykube")
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return os.path.join(root, "locks", f"run-{digest}.lock")


def hold(run_dir: str) -> IO[str]:
    """Lock ``run_dir`` for this process; keep the returned file open as long as the run.

    Raises ``RunBusy`` (one line, with the holder's pid) when another process has it.
    """
    path = _lock_path(run_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 (held open on purpose: closing it unlocks)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise RunBusy(f"{run_dir} is in use by another raykube run on this machine "
                      f"(pid {holder}): wait for it to finish (or stop it), or give this one "
                      "another metadata.name or --storage") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
