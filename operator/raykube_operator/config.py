"""Typed operator settings, read once from ``RAYKUBE_*`` environment variables.

Rendering defaults (images, storage, ...) belong to ``raykube.render.RenderConfig``
and are read by its own ``from_env``; this module adds what only the operator needs.

| variable | default | meaning |
|---|---|---|
| ``RAYKUBE_NAMESPACES`` | (empty: all) | comma-separated namespaces to watch |
| ``RAYKUBE_LIVENESS`` | (empty: none) | kopf liveness endpoint, ``http://HOST:PORT/PATH`` (``--liveness`` wins; ``off`` disables; see ``liveness_endpoint``) |
| ``RAYKUBE_RETRY_DELAY`` | ``5`` | seconds before a handler retries after a transient API error |
| ``RAYKUBE_MAX_WORKERS`` | ``32`` | threads running the (synchronous) handlers |
| ``RAYKUBE_LOG_LEVEL`` | ``INFO`` | operator log level |
| ``RAYKUBE_API_WAIT`` | ``30`` | seconds to wait at start for an unreachable API server before exiting (2) |
| ``RAYKUBE_RESYNC_SECONDS`` | ``300`` | how often every TrainingRun's RayJob/RayService is checked to exist (``0``: never) |
| ``RAYKUBE_PREFLIGHT`` | ``1`` | ``0``: skip the start-up checks of credentials and RBAC (``raykube_operator.preflight``) |
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from raykube.flags import env_flag
from raykube.render import RenderConfig


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r}: expected a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{key}={raw!r}: expected a finite number")
    if value < 0:
        raise ValueError(f"{key}={raw!r}: must be >= 0")
    return value


def _log_level(env: Mapping[str, str], key: str, default: str) -> str:
    raw = env.get(key, "").strip().upper() or default
    if raw not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{key}={raw!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return raw


LIVENESS_OFF = ("", "off", "none", "false", "0")
LIVENESS_FORM = "http://HOST:PORT/PATH (e.g. http://127.0.0.1:8080/healthz), or 'off'"


def liveness_endpoint(raw: str | None, source: str = "RAYKUBE_LIVENESS") -> str | None:
    """The URL kopf serves its liveness endpoint at, or None (no endpoint): ``raw`` as
    given by ``source`` (``RAYKUBE_LIVENESS`` or ``--liveness``, named in the error).

    kopf (1.45) takes the URL as it is and fails only once it runs, at length: ``foo``
    was 48 lines with two tracebacks ending ``Exception: Unsupported scheme: foo``, a port
    that is not a number ``ValueError: Port could not be cast to integer value``. So the
    URL is checked here: scheme ``http`` (kopf serves plain HTTP only), a host, a port
    1-65535 and a path (the route kopf serves; a probe needs one). Empty, ``off``,
    ``none``, ``false`` or ``0``: disabled. Whether the port is free is checked at start
    (``raykube_operator.preflight.check_liveness``); this function is pure."""
    value = (raw or "").strip()
    if value.lower() in LIVENESS_OFF:
        return None
    where = f"{source}={value!r}"
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError as exc:  # an unbalanced [ of an IPv6 address
        raise ValueError(f"{where}: {exc}: expected {LIVENESS_FORM}") from None
    if parts.scheme.lower() == "https":
        raise ValueError(f"{where}: kopf serves its liveness endpoint over plain http: "
                         f"expected {LIVENESS_FORM}")
    if parts.scheme.lower() != "http" or not parts.netloc:
        raise ValueError(f"{where}: expected {LIVENESS_FORM}")
    if not parts.hostname:
        raise ValueError(f"{where}: no host: expected {LIVENESS_FORM}")
    port = re.search(r":([^:\]]*)$", parts.netloc.rpartition("@")[2])
    if not port or not port.group(1):
        raise ValueError(f"{where}: no port: expected {LIVENESS_FORM}")
    text = port.group(1)
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{where}: the port {text!r} is not a number: expected {LIVENESS_FORM}")
    if not 1 <= int(text) <= 65535:
        raise ValueError(f"{where}: the port {int(text)} is out of range (1-65535)")
    if not parts.path:  # (after a host, a path starts with /)
        raise ValueError(f"{where}: no path (the probes' path, e.g. /healthz): "
                         f"expected {LIVENESS_FORM}")
    return value


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the handlers need to know besides the TrainingRun itself."""

    render: RenderConfig = field(default_factory=RenderConfig)
    namespaces: tuple[str, ...] = ()
    # None: no health endpoint. The Deployment names one (--liveness, k8s/base/operator.yaml);
    # a default on 0.0.0.0:8080 also served a local operator's 404s to a kubectl without
    # KUBECONFIG (its fallback is http://localhost:8080), on every interface.
    liveness: str | None = None
    retry_delay: float = 5.0
    # Handlers spend their time waiting on the API server (~9 requests per new run), not
    # on CPU: 32 threads gave 1.9x the runs/s of 8 on the real control plane (bench operator).
    max_workers: int = 32
    log_level: str = "INFO"
    # Start-up checks (raykube_operator.preflight): how long an unreachable API server is
    # waited for, and whether to check at all.
    api_wait: float = 30.0
    preflight: bool = True
    # Level-triggered backstop (controller-runtime's SyncPeriod): a child deleted while a
    # watch was cut (an API server restart) sends no DELETED event to anyone.
    resync: float = 300.0
    # A Ray pod that cannot run is named in the status (and a Warning) once it has been so
    # for this long: on the real node a serving pod waited ~20 s on every happy path, for
    # the CPU of the training cluster being deleted, and was a Warning each time.
    pod_problem_grace: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get("RAYKUBE_NAMESPACES", "").split(",")
                           if n.strip())
        return cls(
            render=RenderConfig.from_env(env),
            namespaces=namespaces,
            liveness=liveness_endpoint(env.get("RAYKUBE_LIVENESS", cls.liveness or "")),
            retry_delay=_float(env, "RAYKUBE_RETRY_DELAY", cls.retry_delay),
            max_workers=max(1, int(_float(env, "RAYKUBE_MAX_WORKERS", cls.max_workers))),
            log_level=_log_level(env, "RAYKUBE_LOG_LEVEL", cls.log_level),
            api_wait=_float(env, "RAYKUBE_API_WAIT", cls.api_wait),
            preflight=env_flag("RAYKUBE_PREFLIGHT", cls.preflight, env),
            resync=_float(env, "RAYKUBE_RESYNC_SECONDS", cls.resync),
            pod_problem_grace=_float(env, "RAYKUBE_POD_PROBLEM_GRACE_SECONDS",
                                     cls.pod_problem_grace),
        )
