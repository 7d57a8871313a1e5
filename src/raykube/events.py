"""Run observers: how progress leaves the training driver.

The driver (``raykube.train.fit``, ``raykube.tune.run_tune``) calls every observer it was
given; observers never influence training and must not raise (the driver guards them
anyway). Implementations: the local rich display (``raykube run``) and the Kubernetes
status reporter (``raykube train`` inside a RayJob).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from raykube.spec import TrainingRun

log = logging.getLogger(__name__)


@runtime_checkable
class RunObserver(Protocol):
    def on_start(self, run: TrainingRun) -> None:
        """The run is about to start (after validation, before Ray work)."""

    def on_epoch(self, metrics: dict[str, Any], checkpoint: str | None, trial: str | None) -> None:
        """An epoch finished: aggregated metrics, the checkpoint written (if any), and the
        Tune trial id when the epoch belongs to a search."""

    def on_end(self, result: dict[str, Any]) -> None:
        """The run finished; ``result`` is what result.json holds."""


class Observers:
    """Fan-out to several observers; an observer's failure is logged, never raised."""

    def __init__(self, observers: Iterable[RunObserver] = ()):
        self._observers = list(observers)

    def __iter__(self) -> Iterator[RunObserver]:
        """The observers themselves, for ``notify``'s optional hooks."""
        return iter(self._observers)

    def _call(self, method: str, *args: Any) -> None:
        for obs in self._observers:
            try:
                getattr(obs, method)(*args)
            except Exception:  # an observer must never fail training
                log.warning("observer %r failed in %s", obs, method, exc_info=True)

    def on_start(self, run: TrainingRun) -> None:
        self._call("on_start", run)

    def on_epoch(self, metrics: dict[str, Any], checkpoint: str | None, trial: str | None = None) -> None:
        self._call("on_epoch", metrics, checkpoint, trial)

    def on_end(self, result: dict[str, Any]) -> None:
        self._call("on_end", result)


NOTHING_TO_TRAIN = "nothing to train"
"""How the driver's note ends when the run directory already holds the epochs asked for
(the operator reads it in ``status.lastNote``: the run's message says it)."""


def notify(observers: Iterable[Any], message: str, hook: str = "on_note") -> None:
    """Tell observers that have an optional ``hook(message)`` (beyond the protocol: the
    terminal display has ``on_note`` and ``on_failure``) something the user should know,
    such as a skipped checkpoint, a changed optimizer on resume or a worker failure; the
    log always gets it."""
    log.info("%s", message)
    for o in observers:
        fn = getattr(o, hook, None)
        if fn is not None:
            try:
                fn(message)
            except Exception:
                log.warning("observer %r failed in %s", o, hook, exc_info=True)
