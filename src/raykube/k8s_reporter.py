"""Progress from the training driver into its TrainingRun's status (a RunObserver).

``raykube train`` adds ``KubernetesReporter(namespace, name)`` when the environment
holds ``RAYKUBE_TRAININGRUN=<namespace>/<name>`` (the rendered RayJob sets it). It
patches ``status.progress`` and ``status.checkpoint`` (the best checkpoint so far by
``checkpoint.scoreMetric``) through the ``/status`` subresource, which the rendered Role
allows for this one object only. ``status.checkpoint.storage`` says which storage the
checkpoint is on (``RAYKUBE_STORAGE_ID``, ``pvc/<claim>`` or the s3:// URI, which the
operator's RayJob sets; for a checkpoint under ``RAYKUBE_STORAGE`` only): the operator
does not promote it once ``checkpoint.storage`` names another. A Tune search adds
``status.trials`` (trials by state) and, at its end, ``status.bestTrial``; ``status.progress`` is the best epoch of any trial so
far (by the search's metric), and at the end the best trial's, so that ``kubectl get
tr``'s Epoch and Val-Acc columns show the model the search chooses, not whichever trial
reported last. A run
that fails for a cause no retry can fix writes ``status.permanentFailure`` and waits for
the operator's answer (``stop_retries``), which is why the Role also allows reading the
status back.

Rate-limited (at most one patch per ``min_interval`` seconds; the latest values are
always flushed at ``on_end``) and never raising: an unreachable API server or a refused
patch is logged on one line and training carries on. Each patch has a deadline
(``request_timeout``): an API server behind a firewall that drops packets (a
NetworkPolicy without egress to it) must not hold the driver for the kernel's minutes of
connection retries at every epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from raykube.run_failure import now as _now
from raykube.spec import API_VERSION, METRICS, PLURAL

if TYPE_CHECKING:
    from raykube.spec import TrainingRun

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("trainLoss", "valLoss", "valAccuracy")
PROGRESS_DECIMALS = 4
REQUEST_TIMEOUT = (5.0, 15.0)
"""(connect, read) seconds for one status patch."""
STOP_RETRIES_WAIT_S = 30.0
"""How long a driver whose run failed for good waits for the operator to cancel KubeRay's
retries (``KubernetesReporter.stop_retries``); the operator answers within a second or two."""


def api_error_line(exc: BaseException) -> str:
    """One line for a failed API call: ``403 Forbidden: <the API server's message>`` for an
    answer (the client's own text spans a dozen lines with every response header), the
    exception's text squeezed onto one line otherwise."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(getattr(exc, "body", None) or "{}").get("message", "")
        return f"{status} {getattr(exc, 'reason', '') or ''}".strip() + (
            f": {message}" if message else "")
    return " ".join(str(exc).split())[:300] or type(exc).__name__



TRIAL_STATES = {"RUNNING": "running", "PAUSED": "running", "TERMINATED": "finished",
                "STOPPED": "stopped", "ERROR": "failed"}
"""``raykube.tune``'s trial statuses (Tune's, with ASHA's early stops as STOPPED) ->
``status.trials`` keys; PENDING trials and those not sampled yet are ``pending``."""


def trial_counts(rows: list[dict[str, Any]], total: int | None) -> dict[str, int]:
    """``status.trials`` from the trial table's rows."""
    counts = dict.fromkeys(("running", "finished", "stopped", "failed"), 0)
    for row in rows:
        key = TRIAL_STATES.get(str(row.get("status")))
        if key:
            counts[key] += 1
    total = max(total or 0, len(rows))
    # Tune samples trials lazily (maxConcurrentTrials at a time): the rest are not rows yet
    return {"total": total, **counts, "pending": total - sum(counts.values())}


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


def storage_from_env(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """``KubernetesReporter``'s ``storage`` and ``storage_root`` in a RayJob's pods
    (``RAYKUBE_STORAGE_ID``, ``RAYKUBE_STORAGE``); None where unset (older pods)."""
    env = env if env is not None else os.environ
    return {"storage": env.get("RAYKUBE_STORAGE_ID") or None,
            "storage_root": env.get("RAYKUBE_STORAGE") or None}


class KubernetesReporter:
    """RunObserver patching ``status.progress``/``status.checkpoint`` of one TrainingRun."""

    def __init__(self, namespace: str, name: str, *, min_interval: float = 5.0,
                 api: Any = None, score_metric: str = "valAccuracy",
                 request_timeout: float | tuple[float, float] = REQUEST_TIMEOUT,
                 storage: str | None = None, storage_root: str | None = None):
        self.namespace = namespace
        self.name = name
        self.min_interval = min_interval
        self.request_timeout = request_timeout
        self.gone = False
        """The TrainingRun does not exist (404): nothing more is sent."""
        self.score_metric = score_metric
        self.storage = storage
        """``status.checkpoint.storage`` of a checkpoint under ``storage_root``."""
        self.storage_root = storage_root.rstrip("/") if storage_root else None
        self._api = api
        self._lock = threading.Lock()
        self._last_sent = float("-inf")  # the first epoch is always sent
        self._pending: dict[str, Any] = {}
        self._best: dict[str, Any] | None = None
        self._epochs: int | None = None
        self._trials: int | None = None
        self._ranked_by: tuple[str, str] | None = None  # a search's (metric, mode)
        self._leader: float | None = None  # the best value of that metric so far
        self._ended = (0, 0, 0)
        self.failures = 0
        self.patches = 0
        self._worker_failures = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kwargs: Any) -> KubernetesReporter | None:
        """From ``RAYKUBE_TRAININGRUN=<namespace>/<name>``; None when unset."""
        env = env if env is not None else os.environ
        value = env.get("RAYKUBE_TRAININGRUN", "")
        if "/" not in value:
            return None
        ns, name = value.split("/", 1)
        return cls(ns, name, **{**storage_from_env(env), **kwargs})

    # ------------------------------------------------------------------ client
    def _client(self) -> Any:
        if self._api is None:
            import kubernetes

            # Our own Configuration (not the process-wide default), and KUBECONFIG read
            # now: the client freezes its default path when ``kubernetes`` is imported.
            cfg = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=cfg)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
            self._api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(cfg))
        return self._api

    def _send(self, status: dict[str, Any]) -> bool:
        if self.gone:
            return True  # nothing to report to: dropped (said once, below)
        group, version = API_VERSION.split("/")
        try:
            self._client().patch_namespaced_custom_object_status(
                group, version, self.namespace, PLURAL, self.name, {"status": status},
                _request_timeout=self.request_timeout)
            self.patches += 1
            return True
        except Exception as exc:  # never fail training because of the API
            self.failures += 1
            if getattr(exc, "status", None) == 404:
                # No such TrainingRun (or no such resource type): a RayJob rendered by
                # `raykube render` for GitOps runs without one. It will not appear later
                # (the operator creates the RayJob only after the TrainingRun exists),
                # so say it once and stop, instead of a warning at every epoch.
                self.gone = True
                log.warning("TrainingRun %s/%s does not exist (%s): progress is not "
                            "reported to Kubernetes for this run", self.namespace,
                            self.name, api_error_line(exc))
                return False
            log.warning("could not report progress to TrainingRun %s/%s: %s",
                        self.namespace, self.name, api_error_line(exc))
            return False

    def flush(self) -> bool:
        with self._lock:
            if not self._pending:
                return True
            status, self._pending = self._pending, {}
            self._last_sent = time.monotonic()
        ok = self._send(status)
        if not ok:
            with self._lock:  # keep it for the next try, newer values win
                merged = {**status, **self._pending}
                self._pending = merged
        return ok

    # ---------------------------------------------------------------- observer
    def on_start(self, run: TrainingRun) -> None:
        self._epochs = run.spec.train.epochs
        self.score_metric = run.spec.checkpoint.score_metric
        self._trials = run.spec.tune.trials if run.spec.tune is not None else None
        tune = run.spec.tune
        self._ranked_by = (tune.metric, tune.resolved_mode) if tune is not None else None
        # status.workerFailures counts this attempt's: a retried or resumed run's driver
        # starts with Ray Train's whole budget, and the last attempt's failures (a suspend
        # stops the workers first) would read as this one's, "retry 2 of 3" included.
        # Sent with the first epoch (null removes the field).
        with self._lock:
            self._pending["workerFailures"] = None
            self._pending["lastNote"] = None  # this attempt's notes only

    def on_trials(self, rows: list[dict[str, Any]]) -> None:
        """A Tune search's trial table changed (a trial started, reported or ended)."""
        counts = trial_counts(rows, self._trials)
        ended = (counts["finished"], counts["stopped"], counts["failed"])
        with self._lock:
            self._pending["trials"] = counts
            # A trial's end (a failure above all) is sent at once; the table changes at
            # every report, which the rate limit covers.
            due = (ended != self._ended
                   or time.monotonic() - self._last_sent >= self.min_interval)
            self._ended = ended
        if due:
            self.flush()

    def _progress(self, metrics: dict[str, Any], trial: str | None) -> dict[str, Any]:
        """``status.progress`` for an epoch's metrics (of ``trial``, in a search)."""
        m = _finite(metrics)
        # 4 decimals, as `kubectl get tr` shows them (a number column prints every digit:
        # 0.9498607242339833); status.checkpoint.metrics, which the gate reads, keeps them
        progress: dict[str, Any] = {k: round(m[k], PROGRESS_DECIMALS) for k in PROGRESS_KEYS
                                    if k in m}
        if isinstance(metrics.get("epoch"), int):
            progress["epoch"] = metrics["epoch"]
        if self._epochs is not None:
            progress["epochs"] = self._epochs
        if trial:
            progress["trial"] = str(trial)
        progress["updatedAt"] = _now()
        return progress

    def _leads(self, metrics: dict[str, Any], trial: str | None) -> bool:
        """Whether an epoch's report goes into ``status.progress``. In a search, only the
        best epoch so far of any trial by the search's metric (what the search would
        choose if it ended now, the same record the progress holds once it has ended):
        with ``maxConcurrentTrials`` > 1 the trials' epochs interleave, and ``kubectl get
        tr``'s Epoch and Val-Acc columns read 4, 1, 5, 2 (one trial's, then another's)
        with accuracies that rose and fell with them."""
        if trial is None or self._ranked_by is None:
            return True
        metric, mode = self._ranked_by
        value = metrics.get(metric)
        if value is None:
            return self._leader is None and "progress" not in self._pending
        if self._leader is None or (value > self._leader if mode == "max" else value < self._leader):
            self._leader = float(value)
            return True
        return False

    def on_epoch(self, metrics: dict[str, Any], checkpoint: str | None, trial: str | None) -> None:
        m = _finite(metrics)
        progress = self._progress(metrics, trial)
        with self._lock:
            if self._leads(m, trial):
                self._pending["progress"] = progress
            if checkpoint and self.score_metric in m and self._better(m[self.score_metric]):
                self._best = self._checkpoint(checkpoint, m)
                if "epoch" in progress:
                    self._best["epoch"] = progress["epoch"]
                self._pending["checkpoint"] = dict(self._best)
            due = time.monotonic() - self._last_sent >= self.min_interval
        if due:
            self.flush()

    def on_note(self, message: str) -> None:
        """Something the user should know (``raykube.events.notify``): a checkpoint
        resumed from or skipped, or nothing left to train, which KubeRay's "succeeded"
        alone hid (a run re-created under a name whose directory held more epochs served
        the old checkpoint; only the driver's log said so)."""
        with self._lock:
            self._pending["lastNote"] = {"message": message[:1000], "at": _now()}
        self.flush()

    def on_failure(self, message: str) -> None:
        """Ray Train's worker group failed (a worker killed for memory, a node lost, an
        exception in the loop): ``status.workerFailures`` says so at once, not only the
        driver's log, since the next epoch may be minutes away or never come."""
        with self._lock:
            self._worker_failures += 1
            self._pending["workerFailures"] = {"count": self._worker_failures,
                                               "last": message[:1000], "at": _now()}
        self.flush()

    def stop_retries(self, message: str, *, job_id: str | None = None,
                     wait_s: float = STOP_RETRIES_WAIT_S, poll_s: float = 0.5) -> bool | None:
        """This attempt failed for a cause a retry cannot fix: ask the operator to cancel
        KubeRay's retries, and wait (at most ``wait_s``) for its answer before the
        driver exits. KubeRay decides whether to retry in the same step in which it sees
        the job fail, so the RayJob's ``backoffLimit`` must be lowered while this driver
        still runs.

        Writes ``status.permanentFailure`` (its ``retriesCancelled`` cleared), then reads
        it back every ``poll_s``. Returns the operator's answer (True: cancelled; False:
        too late), or None when none came (no operator, no API server): KubeRay then
        retries as ``failure.maxRetries`` says."""
        report = {"message": message[:1000], "at": _now(), "jobId": job_id,
                  "retriesCancelled": None}
        with self._lock:
            self._pending["permanentFailure"] = report
        if not self.flush():
            return None
        group, version = API_VERSION.split("/")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            try:
                obj = self._client().get_namespaced_custom_object_status(
                    group, version, self.namespace, PLURAL, self.name,
                    _request_timeout=self.request_timeout)
            except Exception as exc:  # keep asking until the deadline
                log.debug("reading TrainingRun %s/%s: %s", self.namespace, self.name,
                          api_error_line(exc))
                continue
            got = ((obj or {}).get("status") or {}).get("permanentFailure") or {}
            if got.get("at") != report["at"] or got.get("message") != report["message"]:
                return None  # replaced (another attempt's driver): not ours to wait for
            if got.get("retriesCancelled") is not None:
                return bool(got["retriesCancelled"])
        return None

    def rayjob(self) -> dict[str, Any] | None:
        """This driver's RayJob (named as its TrainingRun: ``raykube.render.child_name``),
        for whether KubeRay retries a failed attempt (``raykube.run_failure``); None,
        with one line logged, when it cannot be read (a driver Role from before it allowed
        ``get rayjobs``, an API server out of reach)."""
        try:
            return self._client().get_namespaced_custom_object(
                "ray.io", "v1", self.namespace, "rayjobs", self.name,
                _request_timeout=self.request_timeout)
        except Exception as exc:
            log.warning("could not read RayJob %s/%s to tell whether KubeRay retries this "
                        "attempt: %s", self.namespace, self.name, api_error_line(exc))
            return None

    def _checkpoint(self, uri: Any, metrics: dict[str, float]) -> dict[str, Any]:
        """``status.checkpoint`` for ``uri``, with the storage it is on when known."""
        out: dict[str, Any] = {"uri": str(uri), "metrics": metrics}
        root = self.storage_root
        if self.storage and root and (str(uri) == root or str(uri).startswith(root + "/")):
            out["storage"] = self.storage
        return out

    def _better(self, value: float) -> bool:
        if self._best is None:
            return True
        old = self._best["metrics"].get(self.score_metric)
        if old is None:
            return True
        return value > old if METRICS.get(self.score_metric, "max") == "max" else value < old

    def on_end(self, result: dict[str, Any]) -> None:
        best = result.get("bestCheckpoint") or result.get("best_checkpoint")
        metrics = result.get("bestMetrics") or result.get("best_metrics")
        if best and isinstance(metrics, dict):
            with self._lock:
                self._best = self._checkpoint(best, _finite(metrics))
                if isinstance(metrics.get("epoch"), int):
                    self._best["epoch"] = metrics["epoch"]
                self._pending["checkpoint"] = dict(self._best)
        final = result.get("metrics")
        if result.get("reused") and isinstance(final, dict) and final:
            # Nothing trained: the run directory already held a finished run of this
            # name (a TrainingRun deleted and applied again finds its checkpoints). No
            # epoch was reported, so without this EPOCH and VAL-ACC stay empty.
            with self._lock:
                self._pending["progress"] = self._progress(final, None)
        trial = result.get("best_trial")  # a Tune search: already in the status shape
        if isinstance(trial, dict) and trial.get("trialId"):
            with self._lock:
                self._pending["bestTrial"] = {
                    k: trial[k] for k in ("trialId", "config", "metric") if k in trial}
                if isinstance(metrics, dict):
                    self._pending["progress"] = self._progress(metrics, str(trial["trialId"]))
        if isinstance(result.get("trials"), list):
            with self._lock:
                self._pending["trials"] = trial_counts(result["trials"], self._trials)
        self.flush()
