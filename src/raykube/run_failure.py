"""``<run dir>/failed.json``: a RayJob's driver says its attempt failed, and whether it
was the last one, for the serving that waits on the run.

``raykube render`` puts a RayService beside the RayJob that trains its model; its
replicas wait for the run's ``result.json`` (``raykube.serve.wait_for_training``). A run
that failed for good never writes one, and without a word from the run its replicas
waited forever, the RayService "not ready" with Serve's "taken more than 30s to
initialize" for its only message. Now the driver (``raykube train``) writes this file when
its attempt fails, saying whether KubeRay retries it (its RayJob's ``spec.backoffLimit``
against ``status.failed``, the rule KubeRay applies), and a new attempt's driver removes
it as it starts. A replica that finds a final failure fails in one line naming it, so the
RayService's Serve application is ``DEPLOY_FAILED`` with the run's own reason.

What no driver sees is not written: a driver killed (its pod deleted or killed for
memory, ``activeDeadlineSeconds``) or a submitter that gave up. Serving then waits, as
before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

FAILED_FILE = "failed.json"
GRACE_ENV = "RAYKUBE_FAILED_RUN_GRACE_S"
BELIEVE_AFTER_S = 300.0
"""How long a final failure that was there before a replica began to wait must stay
before it is believed (``$RAYKUBE_FAILED_RUN_GRACE_S`` in the serving pods changes it).
Such a file may be an earlier attempt's: it stays until a new RayJob's driver starts and
removes it, and a RayService applied again together with that new RayJob (``kubectl
delete -f`` and ``apply`` of the render) starts its replicas in the same minute as the
driver. Failing them then would leave the application ``DEPLOY_FAILED`` for good: Serve
starts no more replicas after 3 failures each. A failure that happens while a replica
waits is believed at once. The period runs from the first sighting by any replica of the
serving cluster (Ray's key-value store), and once one replica has believed a failure the
others do at once, so Serve's 3 tries do not each wait it out."""


def believe_after_s(env: Mapping[str, str] | None = None) -> float:
    """``BELIEVE_AFTER_S``, or ``$RAYKUBE_FAILED_RUN_GRACE_S`` when it is a number >= 0
    (anything else is said once in the log and ignored)."""
    raw = (os.environ if env is None else env).get(GRACE_ENV, "").strip()
    if not raw:
        return BELIEVE_AFTER_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        log.warning("ignoring %s=%r: not a number of seconds >= 0; using %g", GRACE_ENV, raw,
                    BELIEVE_AFTER_S)
        return BELIEVE_AFTER_S
    return value


@dataclass(frozen=True)
class RunFailure:
    """What ``failed.json`` holds."""

    message: str
    """The driver's one line (``raykube train: ...`` without the prefix)."""
    at: str
    """When the attempt failed (UTC, RFC 3339)."""
    final: bool
    """No retry follows: the cause repeats on every attempt, or no RayJob retry is left."""
    outcome: str
    """What follows, in words: ``KubeRay retries it (retry 1 of 2)``, ``no RayJob retry is
    left (spec.failure.maxRetries: 2)``, ..."""

    def line(self, run_dir: str) -> str:
        """The replica's one line for a final failure."""
        return (f"the training run in {run_dir} failed for good at {self.at} "
                f"({self.outcome}): {self.message}; there is no model to serve. Fix the "
                "run and start it again (delete its RayJob and apply it), then apply this "
                "RayService again")


def attempt_outcome(permanent: bool, rayjob: Mapping[str, Any] | None) -> tuple[bool, str]:
    """``(final, outcome)`` for an attempt that failed: ``permanent`` when every attempt
    would fail the same way (``raykube.transient.retry_would_help`` said no);
    ``rayjob`` is the driver's RayJob as the API server has it, read while the driver
    still runs (KubeRay counts this attempt in ``status.failed`` once it has ended, and
    retries while that count is at most ``spec.backoffLimit``), or None when it could
    not be read (no RayJob: ``raykube run``; a Role from before this file)."""
    if permanent:
        return True, "a new attempt would fail the same way"
    if rayjob is None:
        return False, "whether KubeRay retries it is not known here"
    limit = int(((rayjob.get("spec") or {}).get("backoffLimit")) or 0)
    failed = int(((rayjob.get("status") or {}).get("failed")) or 0)
    if failed < limit:
        return False, f"KubeRay retries it: retry {failed + 1} of {limit}"
    return True, f"no RayJob retry is left, spec.failure.maxRetries: {limit}"


def now() -> str:
    """The time as Kubernetes writes it (RFC 3339, seconds, UTC): the ``at`` of a failure
    here, and of the driver's status patches (``k8s_reporter``)."""
    return datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(run_dir: str, failure: RunFailure) -> None:
    """Write ``failed.json`` (raises what the store raises)."""
    from raykube.storage import write_bytes

    write_bytes(f"{run_dir}/{FAILED_FILE}", json.dumps(asdict(failure), indent=2).encode())


def clear(run_dir: str) -> bool:
    """Remove ``failed.json``; True when there was one (raises what the store raises)."""
    import pyarrow.fs as pafs

    from raykube.storage import filesystem

    fs, path = filesystem(f"{run_dir}/{FAILED_FILE}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    fs.delete_file(path)
    return True


def read(run_dir: str) -> RunFailure | None:
    """``failed.json``, or None when there is none or it is not one of ours (it is then
    ignored: serving waits, as without it). Raises what the store raises."""
    from raykube.storage import read_bytes

    raw = read_bytes(f"{run_dir}/{FAILED_FILE}")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return RunFailure(message=str(doc["message"]), at=str(doc["at"]),
                          final=doc["final"] is True, outcome=str(doc["outcome"]))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring %s/%s: not a failure record (%s)", run_dir, FAILED_FILE, exc)
        return None


SEEN_NAMESPACE = "raykube"
"""The namespace of Ray's internal key-value store the sightings are kept in."""


def _epoch(at: str) -> float | None:
    try:
        return datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def is_believed(failure: RunFailure, *, waiting_since: float, first_seen: float, now: float,
                grace_s: float) -> bool:
    """Whether a replica that began to wait at ``waiting_since`` (wall clock) fails on
    ``failure``: a final one that happened since then, or one first seen by a replica of
    this cluster at least ``grace_s`` ago (``first_seen`` 0: already believed by one)."""
    if not failure.final:
        return False
    at = _epoch(failure.at)
    fresh = at is not None and at >= int(waiting_since)
    return fresh or now - first_seen >= grace_s


def _kv_key(run_dir: str, failure: RunFailure) -> bytes:
    return f"failed-run:{run_dir}:{failure.at}:{failure.message}".encode()[:1024]


def first_seen(run_dir: str, failure: RunFailure, mine: float) -> float:
    """When a replica of this Ray cluster first saw ``failure`` (0.0: one believed it),
    given ``mine``, when this replica first did: ``mine`` when it was the first, or
    outside a Ray cluster (its own sightings are then all it has)."""
    try:
        from ray.experimental import internal_kv as kv

        if not kv._internal_kv_initialized():
            return mine
        key = _kv_key(run_dir, failure)
        kv._internal_kv_put(key, repr(mine).encode(), overwrite=False, namespace=SEEN_NAMESPACE)
        return float(kv._internal_kv_get(key, namespace=SEEN_NAMESPACE) or mine)
    except Exception as exc:  # Ray's store out of reach: this replica's own sightings
        log.debug("raykube: Ray's key-value store: %s", exc)
        return mine


def tell_believed(run_dir: str, failure: RunFailure) -> None:
    """The other replicas (Serve's next tries) believe ``failure`` at once."""
    try:
        from ray.experimental import internal_kv as kv

        if kv._internal_kv_initialized():
            kv._internal_kv_put(_kv_key(run_dir, failure), b"0.0", overwrite=True,
                                namespace=SEEN_NAMESPACE)
    except Exception as exc:
        log.debug("raykube: Ray's key-value store: %s", exc)
