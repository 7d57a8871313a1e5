"""Which failures of a run a retry could fix, and which it cannot.

On a cluster KubeRay retries a failed RayJob ``failure.maxRetries`` times, each time on a
new Ray cluster. That is right for what passes (a node lost, an object store briefly
unreachable) and wasted for what does not: a dataset folder that does not exist, refused
credentials, a run directory holding another model's checkpoints fail every attempt the
same way, minutes of pods each. ``raykube train`` asks the operator to cancel the retries
when its run fails for such a cause (``raykube.k8s_reporter.KubernetesReporter.
stop_retries``).

The errors raykube raises for a run's inputs (``DatasetUnavailable``, ``StorageError``,
``S3Unavailable``, ``RunDirConflict``) are permanent unless raised with
``transient=True``: raised where the cause is the network (an endpoint that did not
answer, a download that failed), which may work on the next attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


class MaybeTransient:
    """Mixin for raykube's input errors: ``transient`` says a retry may succeed.

    Kept in the instance's ``__dict__``, which exceptions pickle with their args, so it
    survives crossing a Ray process boundary."""

    def __init__(self, *args: Any, transient: bool = False) -> None:
        super().__init__(*args)
        self.transient = transient


def retry_would_help(exc: BaseException) -> bool:
    """False for a failure that every attempt would repeat: one of raykube's input errors
    not marked transient, or an invalid TrainingRun. True for everything else (Ray Train's
    worker failures included: a worker killed for memory or a lost node may pass)."""
    from raykube.spec import InvalidTrainingRun

    if isinstance(exc, InvalidTrainingRun):
        return False
    if isinstance(exc, MaybeTransient):
        return bool(exc.transient)
    return True


def exception_chain(exc: BaseException,
                    more: Callable[[BaseException], Iterable[Any]] = lambda e: ()
                    ) -> Iterator[BaseException]:
    """``exc`` and every exception behind it, each once: ``__cause__``, ``__context__``,
    a Ray task error's ``cause``, and what ``more`` names (Ray Train's worker and
    controller failures). Ray wraps a task's exception in one or more of its own, so the
    error a user can act on is found here, not by its type at the top."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None), *more(e)]
