"""Iterating a Ray Data dataset on the driver so that an interrupt can shut Ray down.

``raykube predict`` and the image-folder decode read a Dataset with ``iter_batches`` on
the driver, and the command shuts its Ray down when it ends, Ctrl-C included. Ray Data's
iterator runs prefetch threads (daemons it never joins) that wait in ``ray.get``. One
still there when Ray shuts down gets ``SystemExit`` from the shutdown; freeing that
exception's frames released an ``ObjectRef`` into the core worker already gone, and
Ray's ``QuickExit`` ended the process at once with exit 1 and no message (seen with gdb:
``_exit(1)`` from ``CoreWorkerProcess::GetCoreWorker`` in ``ObjectRef``'s dealloc). An
interrupted ``raykube predict`` did so 6 times in 26.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

# Ray Data's block prefetcher parks on a condition (outside Ray) until its owner is
# collected: awaiting it would only add the whole wait to every interrupt.
_PARKED = ("Prefetcher",)


@contextlib.contextmanager
def batches(dataset: Any, wait_s: float = 10.0, **iter_batches_kwargs: Any) -> Iterator[Any]:
    """``dataset.iter_batches(**iter_batches_kwargs)``; when the body raises (Ctrl-C,
    a failed write), the iteration is stopped and the threads it started are awaited (at
    most ``wait_s``) before the exception goes on. Closing the iterator sets their stop
    flag and shuts Ray Data's executor down; its tasks and actors gone, a thread waiting
    on them returns."""
    before = set(threading.enumerate())
    it = dataset.iter_batches(**iter_batches_kwargs)
    try:
        yield it
    except BaseException:
        with contextlib.suppress(Exception):
            getattr(it, "close", lambda: None)()
        deadline = time.monotonic() + wait_s
        for t in set(threading.enumerate()) - before:
            if t is not threading.current_thread() and t.name not in _PARKED:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        raise
