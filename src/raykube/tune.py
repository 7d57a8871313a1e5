"""Hyperparameter search: ``spec.tune`` as a Ray Tune experiment of Ray Train runs.

The "How to use Tune with PyTorch" workflow, declared in YAML. The pattern is the one Ray
documents for Train V2 (Tune + Train interop): every Tune trial is a small *driver*
function that builds and fits a Ray Train trainer for its own spec, so each trial is a
full Ray Train run with ``spec.scaling`` (DDP workers, fractional GPUs allowed). Ray's
``TuneReportCallback`` forwards each epoch's report (metrics + checkpoint path) from the
inner Train controller to Tune, which is what lets ASHA stop bad trials early.

Layout, all in the run's storage (a shared volume or ``s3://``)::

    <storage>/<name>/                  the Tune experiment (Tuner state, restorable)
        raykube-tune.json              the spec this search is for
        raykube-history.json           trials' epochs from before a resume (reported or
                                       checkpointed: keep_history)
        trial-<id>/                    Tune's per-trial results (progress.csv ...)
            train/checkpoint_*/        the trial's Ray Train run and its checkpoints
        result.json, report.png        the outcome, once the search is complete

An interrupted search (driver killed, RayJob retried, Ctrl+C) is resumed with
``Tuner.restore``: finished trials are kept, unfinished ones restart and their Train run
picks up its latest checkpoint (same storage path and name). Re-running a finished
search returns the stored result without starting Ray work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raykube.events import Observers, RunObserver, notify
from raykube.spec import (
    METRICS,
    Distribution,
    TrainingRun,
    TrainingRunSpec,
    TuneSpec,
    parse_spec,
    set_path,
)
from raykube.storage import (
    checkpoint_uri,
    exists,
    ray_storage,
    read_bytes,
    read_summary,
    write_bytes,
)

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
REPORT_FILE = "report.png"
MARKER_FILE = "raykube-tune.json"
HISTORY_FILE = "raykube-history.json"  # every trial's reported epochs, kept over resumes
CHECKPOINT_KEY = "checkpoint_path"  # what Ray's TuneReportCallback adds to each report
TIME_ATTR = "epoch"  # ASHA's clock: the loop's epoch counter survives trial restarts
# The spec sections that decide what a search computes: a stored search is reused (or
# resumed) only for the same values. Serving or scaling changes do not invalidate it.
_IDENTITY_SECTIONS = ("model", "data", "train", "tune")


class TuneInterrupted(RuntimeError):
    """The search stopped before every trial finished; run it again to resume."""


class StorageConflict(RuntimeError):
    """The experiment directory holds a search for a different spec."""


# ------------------------------------------------------------------ search space
def to_domain(dist: Distribution) -> Any:
    """One ``searchSpace`` entry as a Ray Tune sampling domain."""
    kind = dist.kind()
    values = getattr(dist, kind)
    if kind == "choice":
        return tune.choice(list(values))
    low, high = values
    if kind == "uniform":
        return tune.uniform(low, high)
    if kind == "loguniform":
        return tune.loguniform(low, high)
    return tune.randint(int(low), int(high))  # randint: [low, high), as in the spec


def param_space(tune_spec: TuneSpec) -> dict[str, Any]:
    """Tune's ``param_space``: the dotted spec paths themselves are the keys, so a trial's
    config *is* its overrides (and reads well in tables and ``result.json``)."""
    return {path: to_domain(dist) for path, dist in tune_spec.search_space.items()}


def _plain(value: Any) -> Any:
    """Numpy scalars (Tune samples with numpy) as plain Python values: the spec is strict."""
    if isinstance(value, dict):  # a whole section searched: its fields' values
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def trial_overrides(spec: TrainingRunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """The sampled values of a trial config, keyed by the searched spec paths."""
    assert spec.tune is not None
    return {path: _plain(config[path]) for path in spec.tune.search_space if path in config}


def with_samples(doc: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with every sampled value set at its path, in the search space's order; a
    sampled mapping is merged over the spec's section (``spec.set_path``): a search over
    a whole section (``train: {choice: [{epochs: 4, batchSize: 128}]}``) means "these
    fields of train", not "a train of only these". Replaced, the trial trained with the
    default optimizer (sgd 0.01) instead of the spec's adam 3e-3, and nothing said so."""
    for path, value in overrides.items():
        doc = set_path(doc, path, value)
    return doc


def trial_spec(spec: TrainingRunSpec, config: dict[str, Any]) -> TrainingRunSpec:
    """The spec one trial trains: the base spec with the sampled values (a section's
    merged over the spec's, ``with_samples``), without ``tune``.

    Fully re-validated (field types and cross-field rules), so a sample that makes no
    sense (e.g. a batch smaller than the worker count) fails its trial with the field's
    message instead of training something else.
    """
    overridden = TrainingRunSpec.model_validate(
        with_samples(spec.to_dict(), trial_overrides(spec, config)))
    doc = overridden.to_dict()
    doc.pop("tune", None)
    return parse_spec(doc).spec


def _identity(spec: TrainingRunSpec) -> dict[str, Any]:
    doc = spec.to_dict()
    return {k: doc.get(k) for k in _IDENTITY_SECTIONS}


# --------------------------------------------------------------------- storage
def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _read_json(uri: str) -> dict[str, Any] | None:
    raw = read_bytes(uri)
    return json.loads(raw.decode()) if raw is not None else None


def _write_json(uri: str, doc: dict[str, Any]) -> None:
    write_bytes(uri, json.dumps(doc, indent=2, sort_keys=True, default=str).encode())


# ---------------------------------------------------------------------- trials
def trial_dirname(trial: Any) -> str:
    """Short, stable trial folder names (Tune's default embeds every parameter)."""
    return trial_dir_name(trial.trial_id)


def trial_dir_name(trial_id: str) -> str:
    """The folder of trial ``trial_id`` under the experiment (``trial_dirname``'s)."""
    return f"trial-{trial_id}"


class _Forward:
    """Ray Train ``UserCallback`` (runs in the trial's Train controller): sends each
    report, and once the controller's own handle, to the trial through a
    ``raykube.train.ReportChannel`` (no queue actor).

    Like Ray's ``TuneReportCallback``, but the channel is unbounded so the controller never
    blocks on a trial that Tune has stopped, and the handle lets that trial abort its
    Train run gracefully (see ``_AbortTrainOnStop``).
    """

    def __init__(self, queue: Any):
        self.queue = queue
        self._sent_handle = False

    def after_report(self, run_context, metrics, checkpoint):  # noqa: ANN001
        import ray

        if not self._sent_handle:
            self.queue.put_nowait({"controller": ray.get_runtime_context().current_actor})
            self._sent_handle = True
        self.queue.put_nowait({"metrics": dict(metrics[0]) if metrics else {},
                               "checkpoint": checkpoint.path if checkpoint else None})

    def after_exception(self, run_context, worker_exceptions):  # noqa: ANN001
        pass


def _user_callback(queue: Any) -> Any:
    from ray.train import UserCallback

    class Forward(_Forward, UserCallback):
        pass

    return Forward(queue)


class TrialFailures:
    """Worker-group failures of every trial's Train run, from the trial actors to the
    search's driver, through the GCS key-value store (as ``raykube.train.ReportChannel``).

    A trial's Train run retries its own worker failures inside the trial actor; Tune
    hears of none of them (only of a trial that errored in the end), so without this
    ``status.workerFailures`` and the terminal never said that a trial's workers
    restarted. Every trial puts into one board (keys ordered by time, then trial and a
    per-trial count); the driver takes what is there whenever Tune's loop turns.
    """

    NAMESPACE = "raykube-trial-failures"

    def __init__(self) -> None:
        import uuid

        self.prefix = f"{uuid.uuid4().hex}/"
        self._put = 0  # in each trial's copy

    def put(self, trial_id: str, item: dict[str, Any]) -> None:
        from ray import cloudpickle
        from ray.experimental.internal_kv import _internal_kv_put

        key = f"{self.prefix}{time.time_ns():020d}-{trial_id}-{self._put:06d}"
        _internal_kv_put(key.encode(), cloudpickle.dumps({**item, "trial": trial_id}),
                         overwrite=True, namespace=self.NAMESPACE)
        self._put += 1

    def take(self) -> list[dict[str, Any]]:
        """Everything put so far, oldest first, each item once."""
        from ray import cloudpickle
        from ray.experimental.internal_kv import (
            _internal_kv_del,
            _internal_kv_get,
            _internal_kv_list,
        )

        items = []
        for key in sorted(_internal_kv_list(self.prefix.encode(), namespace=self.NAMESPACE)):
            raw = _internal_kv_get(key, namespace=self.NAMESPACE)
            _internal_kv_del(key, namespace=self.NAMESPACE)
            if raw is not None:
                items.append(cloudpickle.loads(raw))
        return items

    def close(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(self.prefix.encode(), del_by_prefix=True, namespace=self.NAMESPACE)


# The Train controller of the trial running in this (trial actor) process.
_RUNNING_CONTROLLER: dict[str, Any] = {}


def _abort_train_run(timeout_s: float = 30.0) -> None:
    """Abort this process's trial Train run, if one is still going.

    Ray Train V2's worker placement group belongs to the job, not to the controller actor:
    when Tune stops a trial (an ASHA early stop) by ending the trial actor, an unaborted
    controller dies and its workers' resources stay reserved until Ray's cleaner notices
    (which needs the dashboard's state API). ``abort`` releases them at once.
    """
    import ray

    controller = _RUNNING_CONTROLLER.pop("handle", None)
    if controller is None:
        return
    # abort ends the controller actor, so its reply may well be an "actor died" error
    with contextlib.suppress(Exception):
        ray.get(controller.abort.remote(), timeout=timeout_s)


class _AbortTrainOnStop:
    """Mixin for the trial's FunctionTrainable: Tune calls ``cleanup`` when it stops a
    trial (early stop, end of the experiment, interruption); abort the Train run then."""

    def cleanup(self) -> None:
        _abort_train_run()
        super().cleanup()  # type: ignore[misc]


def _trial_driver(config: dict[str, Any], spec_doc: dict[str, Any] | None = None,
                  storage_root: str | None = None, experiment_uri: str | None = None,
                  failures: TrialFailures | None = None,
                  extra_config: dict[str, Any] | None = None) -> None:
    """One Tune trial: a Ray Train run of the trial's spec (runs in the trial actor).

    The Train run lives in the trial's folder with a fixed name, so a restarted trial
    (resumed search, or Tune retrying it) continues from its latest checkpoint. Each
    epoch's report is forwarded with ``tune.report`` (ASHA decides on those), each
    failure of its worker group to ``failures`` (the driver's status and terminal).
    ``extra_config`` is merged into the workers' config (tests use it).
    """
    from raykube.resume import drop_unusable_train_snapshot, latest_usable
    from raykube.train import (
        ReportChannel,
        build_trainer,
        failure_callback,
        fit_and_stream,
        remove_storage_marker,
    )

    assert spec_doc is not None and storage_root is not None and experiment_uri is not None
    spec = trial_spec(TrainingRunSpec.model_validate(spec_doc), config)
    trial_id = tune.get_context().get_trial_id()
    queue = ReportChannel()
    trial_dir = _join(experiment_uri, trial_dir_name(trial_id))
    train_dir = _join(trial_dir, "train")  # Ray Train's run: storage_path/name below
    extra_config = dict(extra_config or {})
    # A trial resumes through Ray Train's checkpoint list; when a kill cut it off, Train's
    # controller would fail on it at every restart: continue from storage instead.
    if (note := drop_unusable_train_snapshot(train_dir)) is not None:
        log.warning("trial %s: %s", trial_id, note)
        ckpt, _, skipped = latest_usable(train_dir)
        extra_config.update(resume_from=ckpt,
                            skipped_checkpoints=[os.path.basename(d) for d in skipped])

    trainer = build_trainer(
        spec,
        storage_root=storage_root,
        storage_path=trial_dir,
        name="train",
        callbacks=[_user_callback(queue), failure_callback(queue)],
        extra_config={**extra_config, "notes": queue},
    )
    reports = 0
    last_epoch = 0  # the last epoch this trial reported to Tune (resumed trials: theirs)

    def _on_item(item: dict[str, Any]) -> None:
        nonlocal reports, last_epoch
        if "failure" in item:
            log.warning("trial %s: %s", trial_id, item["failure"])
            if failures is not None:
                with contextlib.suppress(Exception):  # the search must not fail on it
                    failures.put(trial_id, {**item, "after_epoch": last_epoch})
            return
        if "controller" in item:
            _RUNNING_CONTROLLER["handle"] = item["controller"]
            return
        report = dict(item["metrics"])
        last_epoch = _epoch_of(report) or last_epoch
        if item["checkpoint"]:
            report[CHECKPOINT_KEY] = checkpoint_uri(storage_root, item["checkpoint"])
        tune.report(report)
        reports += 1

    try:
        result = fit_and_stream(trainer, queue, _on_item, thread_name="raykube-trial-fit",
                                on_note=lambda text: log.warning("trial %s: %s", trial_id, text))
    finally:
        _RUNNING_CONTROLLER.pop("handle", None)
        remove_storage_marker(train_dir)
    if reports == 0:
        _report_finished_run(result, storage_root)


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _report_finished_run(result: Any, storage_root: str) -> None:
    """A resumed trial whose Train run had already finished (it ended after Tune last
    saved its state) trains nothing: report its final epoch from the checkpoint's
    history, so Tune records where the trial really ended."""
    from raykube.train import HISTORY_FILE

    ckpt = result.checkpoint
    if ckpt is None:
        return
    with ckpt.as_directory() as d:
        path = os.path.join(d, HISTORY_FILE)
        history = json.loads(_read_text(path)) if os.path.exists(path) else []
    if history:
        tune.report({**history[-1], CHECKPOINT_KEY: checkpoint_uri(storage_root, ckpt.path)})


_trial_driver.__mixins__ = (_AbortTrainOnStop,)  # type: ignore[attr-defined]


def _epoch_of(result: dict[str, Any]) -> int:
    value = result.get(TIME_ATTR)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    return int(value)


def _metric_of(result: dict[str, Any], metric: str) -> float | None:
    value = result.get(metric)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def sampled_epochs(spec: TrainingRunSpec, overrides: dict[str, Any]) -> int:
    """``train.epochs`` as these samples leave it: searched by itself or inside a searched
    ``train`` section (``{train: {epochs: 4, ...}}``), else the base spec's."""
    value = with_samples({}, overrides).get("train")
    value = value.get("epochs") if isinstance(value, dict) else None
    return spec.train.epochs if value is None else int(value)


def trial_epochs(spec: TrainingRunSpec, config: dict[str, Any]) -> int:
    """The epochs a trial was asked for: its own sample when ``train.epochs`` is searched
    (a trial that ran its 1 of 1 epochs was listed STOPPED against the base spec's 3)."""
    try:
        return sampled_epochs(spec, trial_overrides(spec, config))
    except (TypeError, ValueError):  # a sample the trial itself refuses: it says so
        return spec.train.epochs


def possible_epochs(spec: TrainingRunSpec) -> set[int]:
    """Every ``train.epochs`` a trial may train (each searched value, also one inside a
    searched ``train`` section, or the base spec's where a sample leaves it)."""
    assert spec.tune is not None
    found = {sampled_epochs(spec, {path: value})
             for path, dim in spec.tune.search_space.items()
             if path in ("train", "train.epochs") for value in dim.sample_values()}
    return found or {spec.train.epochs}


def most_epochs(spec: TrainingRunSpec) -> int:
    """The most epochs any trial may train: ASHA's ``max_t``, at which it ends a trial
    (with the base spec's epochs, a trial that sampled more was cut off there)."""
    return max(possible_epochs(spec))


def trial_status(status: str, epochs_done: int, epochs: int) -> str:
    """Tune's status, with ASHA's early stops told apart from trials that ran to the end
    (Tune calls both TERMINATED)."""
    if status == "TERMINATED" and epochs_done < epochs:
        return "STOPPED"
    return status


def trial_row(trial: Any, spec: TrainingRunSpec, metric: str,
              last_result: dict[str, Any] | None = None,
              status: str | None = None) -> dict[str, Any]:
    """One line of the trial table: trial, params, status, metric, iterations.

    ``last_result`` overrides the trial's own (Tune calls result callbacks before it
    stores the result on the trial); so does ``status`` (Tune calls ``on_trial_complete``
    of a trial stopped before it ran while the trial is still PENDING)."""
    last = last_result if last_result is not None else (trial.last_result or {})
    done = _epoch_of(last)
    return {
        "trial": trial.trial_id,
        "params": trial_overrides(spec, trial.config or {}),
        "status": trial_status(status or str(trial.status), done,
                               trial_epochs(spec, trial.config or {})),
        "metric": _metric_of(last, metric),
        "iterations": done,
    }


class _ObserverSink:
    """Where the Tune callback sends progress: the run's observers (display, k8s status).

    Looked up by experiment path at call time, because Tune pickles its callbacks into the
    experiment state: observers (a live console, an API client) must not travel there.
    """

    def __init__(self, observers: Sequence[RunObserver], spec: TrainingRunSpec,
                 storage_path: str, failures: TrialFailures | None = None):
        self.observers = Observers(observers)
        self.spec = spec
        self.storage_path = storage_path
        self.failures = failures
        self._failures_per_trial: dict[str, int] = {}
        self._held: list[dict[str, Any]] = []  # failures whose trial's epoch is still on its way
        self._epoch_seen: dict[str, int] = {}
        self._looked = 0.0
        self._table_observers = [o for o in observers if hasattr(o, "on_trials")]
        self._kept: dict[str, list[dict[str, Any]]] = {}  # a resumed search's (restored)

    def worker_failures(self, *, every_s: float = 0.0, flush: Iterable[str] | bool = ()
                        ) -> None:
        """Announce the trials' worker failures that have come in (``raykube.train.
        announce_failure``: the terminal's line, ``status.workerFailures``), at most
        every ``every_s`` seconds: Tune's loop turns many times a second.

        A failure is held until Tune has handed over the trial's epochs reported before
        it (results reach the driver later than the board's items), so that the lines
        come in the order things happened; ``flush`` (trial ids, or True for all) lets
        held ones go: their trial ended, or the search did."""
        now = time.monotonic()
        if self.failures is None or (now - self._looked < every_s and not flush):
            return
        self._looked = now
        from raykube.train import announce_failure

        try:
            self._held += self.failures.take()
        except Exception:  # a status line must never fail the search
            log.warning("could not read the trials' worker failures", exc_info=True)
        ended = set() if flush is True else set(flush or ())
        due = [i for i in self._held if flush is True or i["trial"] in ended
               or self._epoch_seen.get(i["trial"], 0) >= i.get("after_epoch", 0)]
        self._held = [i for i in self._held if i not in due]
        for item in due:
            trial = item["trial"]
            n = self._failures_per_trial[trial] = self._failures_per_trial.get(trial, 0) + 1
            announce_failure(self.observers, f"trial {trial}: {item['failure']}", n,
                             self.spec.failure.max_worker_failures, item["retry"],
                             item.get("controller", False))

    def epoch(self, trial_id: str, result: dict[str, Any]) -> None:
        self._epoch_seen[trial_id] = max(self._epoch_seen.get(trial_id, 0), _epoch_of(result))
        metrics = {k: result[k] for k in (TIME_ATTR, *METRICS, "epochTime", "samplesPerSecond")
                   if k in result}
        ckpt = checkpoint_uri(self.storage_path, result.get(CHECKPOINT_KEY))
        self.observers.on_epoch(metrics, ckpt, trial_id)

    def restored(self, trials: Sequence[Any], history: dict[str, list[dict[str, Any]]]
                 ) -> None:
        """The rows of a resumed search's trials before Tune restarts any: each with its
        latest epoch (its stored last result, or its kept history's when later), and
        PENDING for those that continue."""
        self._kept = history
        if not self._table_observers or not trials:
            return
        assert self.spec.tune is not None
        rows = []
        for t in trials:
            row = trial_row(t, self.spec, self.spec.tune.metric, self._latest(t))
            if str(t.status) not in ("TERMINATED", "ERROR"):
                row["status"] = "PENDING"
            rows.append(row)
        self._show(rows)

    def _latest(self, trial: Any) -> dict[str, Any]:
        """The trial's last result, or its kept history's last row when that is later
        (a resumed trial before its first report, or one stopped on resume)."""
        last = dict(trial.last_result or {})
        kept = self._kept.get(trial.trial_id) or []
        return kept[-1] if kept and _epoch_of(kept[-1]) > _epoch_of(last) else last

    def trials(self, trials: Sequence[Any], current: Any = None,
               result: dict[str, Any] | None = None, ended: Any = None) -> None:
        """Show the trial table; ``current`` has just reported ``result``; ``ended`` has
        just completed (TERMINATED, whatever Tune's status says yet)."""
        if not self._table_observers:
            return
        assert self.spec.tune is not None
        self._show([trial_row(t, self.spec, self.spec.tune.metric,
                              result if t is current else self._latest(t),
                              "TERMINATED" if t is ended else None) for t in trials])

    def _show(self, rows: list[dict[str, Any]]) -> None:
        for obs in self._table_observers:
            try:
                obs.on_trials(rows)
            except Exception:  # a display must never fail the search
                log.warning("observer %r failed in on_trials", obs, exc_info=True)


STOPPING_NOTE = ("stopping: Tune saves the search's state, then ends its trials (a few "
                 "seconds; Ctrl-C again skips ending them, the state is kept)")


@contextlib.contextmanager
def _stop_announced(observers: list[RunObserver]):
    """Say at once that a Ctrl-C (or SIGTERM, made one) is stopping the search. Tune
    takes the first one itself and says so only in Ray's log (not on the terminal);
    ending the trials then took 5-13 s with nothing on the screen. Its line is the
    cue: a filter on the logger it is written to (``ray.tune.tune``)."""

    class Cue(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.getMessage().startswith("Stop signal received"):
                notify(observers, STOPPING_NOTE)
            return True

    tune_log, cue = logging.getLogger("ray.tune.tune"), Cue()
    tune_log.addFilter(cue)
    try:
        yield
    finally:
        tune_log.removeFilter(cue)


_SINKS: dict[str, _ObserverSink] = {}


class _ProgressCallback(tune.Callback):
    """Forwards Tune events (driver process, main thread) to the run's observers."""

    def __init__(self, key: str):
        self.key = key

    def _sink(self) -> _ObserverSink | None:
        return _SINKS.get(self.key)

    def on_step_begin(self, iteration, trials, **info):  # noqa: ANN001
        sink = self._sink()
        if sink is not None:
            sink.worker_failures(every_s=1.0)

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
        sink = self._sink()
        if sink is not None:
            sink.worker_failures()  # a failure after the epochs before this one
            sink.epoch(trial.trial_id, result)
            sink.trials(trials, trial, result)

    def _changed(self, trials: Sequence[Any], ended: Any = None,
                 completed: bool = False) -> None:
        sink = self._sink()
        if sink is not None:
            # the failure that ended a trial, before its end
            sink.worker_failures(flush=[ended.trial_id] if ended is not None else ())
            sink.trials(trials, ended=ended if completed else None)

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._changed(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._changed(trials, trial, completed=True)

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._changed(trials, trial)


# --------------------------------------------------------------------- outcome
@dataclass
class TuneOutcome:
    """What a search produced; ``to_result()`` is ``result.json``."""

    name: str
    experiment_dir: str
    metric: str
    mode: str
    best_trial_id: str
    best_config: dict[str, Any]
    best_metric: float | None
    best_checkpoint: str | None
    best_metrics: dict[str, Any]
    trials: list[dict[str, Any]]
    wall_time_s: float = 0.0
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> str:
        return self.experiment_dir

    @property
    def metrics(self) -> dict[str, Any]:
        return self.best_metrics

    def to_result(self) -> dict[str, Any]:
        """``result.json``. Top-level keys follow ``raykube.train``'s result.json
        (``metrics``, ``best_checkpoint``, ``best_metrics``, ``run_dir`` ...) so consumers
        of either read the same fields; ``best_trial`` has the shape of
        ``status.bestTrial`` (trialId, config, metric), ready to patch."""
        return {
            "kind": "tune",
            "complete": True,
            "name": self.name,
            "run_dir": self.experiment_dir,
            "metric": self.metric,
            "mode": self.mode,
            "metrics": self.best_metrics,
            "best_checkpoint": self.best_checkpoint,
            "best_metrics": self.best_metrics,
            "epochs": self.best_metrics.get(TIME_ATTR),
            "best_trial": {"trialId": self.best_trial_id, "config": self.best_config,
                           "metric": self.best_metric},
            "trials": [{k: v for k, v in t.items() if k != "history"} for t in self.trials],
            "history": {t["trial"]: t.get("history", []) for t in self.trials},
            "wall_time_s": self.wall_time_s,
            "spec": self.spec,
        }

    @classmethod
    def from_result(cls, doc: dict[str, Any]) -> TuneOutcome:
        history = doc.get("history") or {}
        best = doc["best_trial"]
        return cls(
            name=doc["name"], experiment_dir=doc["run_dir"], metric=doc["metric"],
            mode=doc["mode"], best_trial_id=best["trialId"], best_config=best["config"],
            best_metric=best["metric"], best_checkpoint=doc["best_checkpoint"],
            best_metrics=doc["best_metrics"],
            trials=[{**t, "history": history.get(t["trial"], [])} for t in doc["trials"]],
            wall_time_s=doc.get("wall_time_s", 0.0), spec=doc.get("spec") or {},
        )


def _history(df: Any) -> list[dict[str, Any]]:
    """A trial's reports, one per epoch (a restarted trial may repeat epochs: keep last)."""
    if df is None or len(df) == 0 or TIME_ATTR not in df.columns:
        return []
    keep = [c for c in (TIME_ATTR, *METRICS, CHECKPOINT_KEY) if c in df.columns]
    rows: dict[int, dict[str, Any]] = {}
    for rec in df[keep].to_dict("records"):
        if rec.get(TIME_ATTR) is None or math.isnan(float(rec[TIME_ATTR])):
            continue
        clean = {k: v for k, v in rec.items()
                 if not (isinstance(v, float) and math.isnan(v))}
        clean[TIME_ATTR] = int(clean[TIME_ATTR])
        rows[clean[TIME_ATTR]] = clean
    return [rows[e] for e in sorted(rows)]


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def summarize(experiment_uri: str, spec: TrainingRunSpec, *, name: str,
              storage_path: str) -> TuneOutcome:
    """Read a finished experiment and pick the best trial and checkpoint.

    The best is the reported epoch with the best ``tune.metric`` (by ``mode``) among
    epochs whose checkpoint is still in storage (``checkpoint.keep`` prunes others), so
    the metric, config and checkpoint always describe the same model.
    """
    from ray.tune import ExperimentAnalysis

    assert spec.tune is not None
    metric, mode = spec.tune.metric, spec.tune.resolved_mode
    path, fs = ray_storage(experiment_uri)
    analysis = ExperimentAnalysis(path, default_metric=metric, default_mode=mode,
                                  storage_filesystem=fs)
    frames = analysis.trial_dataframes
    kept = _kept_history(experiment_uri)  # what resumed trials reported before (keep_history)
    trials: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        row = trial_row(trial, spec, metric)
        row["history"] = history = _merge_history(kept.get(trial.trial_id, []),
                                                  _history(frames.get(trial.trial_id)))
        if history:  # progress.csv is the full record; last_result may lag a restore
            row["iterations"] = max(row["iterations"], history[-1][TIME_ATTR])
            row["status"] = trial_status(str(trial.status), row["iterations"],
                                         trial_epochs(spec, trial.config or {}))
            if row["metric"] is None:
                row["metric"] = _metric_of(history[-1], metric)
        if row["status"] == "ERROR":  # said once, by whoever shows the result (run_tune)
            row["error"] = _trial_error(trial, experiment_uri)
        trials.append(row)
        for rec in history:
            value = _metric_of(rec, metric)
            uri = checkpoint_uri(storage_path, rec.get(CHECKPOINT_KEY))
            if value is None or uri is None:
                continue
            if (best is None or _better(value, best[0], mode)) and exists(uri):
                best = (value, row, {**rec, CHECKPOINT_KEY: uri})
    if best is None:
        errors = [f"{t['trial']}: {t['status']}" for t in trials]
        raise RuntimeError(f"no trial of {experiment_uri} reported {metric!r} with a "
                           f"checkpoint ({'; '.join(errors) or 'no trials'})")
    value, row, rec = best
    best_metrics = {k: v for k, v in rec.items() if k != CHECKPOINT_KEY}
    return TuneOutcome(
        name=name, experiment_dir=experiment_uri, metric=metric, mode=mode,
        best_trial_id=row["trial"], best_config=row["params"], best_metric=value,
        best_checkpoint=rec[CHECKPOINT_KEY], best_metrics=best_metrics, trials=trials,
        spec=_identity(spec),
    )


def _trial_error(trial: Any, experiment_uri: str) -> str:
    """'rank 0: ValueError: ... (traceback: <trial dir>/error.txt)': what failed a trial,
    in one line, so a search that found a best trial still says which trials failed and
    why (Tune itself only logs it while running).

    The cause, from the pickled exception Tune stores: a trial whose Train run failed
    raises Ray Train's error, whose text ends with the last line of the *worker's*
    (e.g. "The actor is dead because ...") without its type or rank; the failing ranks
    and their errors name it, as for a plain run's failure. The stored text's last line
    when there is no pickle (or it does not load here)."""
    folder = getattr(trial.storage, "trial_dir_name", None)
    where = folder and _join(experiment_uri, folder,
                             trial.run_metadata.error_filename or "error.txt")
    message = ""
    with contextlib.suppress(Exception):  # unpicklable, or unreadable storage
        message = _cause_line(trial.get_pickled_error())
    if not message:
        try:
            err = trial.get_error()
        except Exception:  # unreadable storage: say where to look
            err = None
        from raykube.terminal import error_line

        message = error_line(str(err or ""))
    message = message or "no error message stored"
    return f"{message} (traceback: {where})" if where else message


def _cause_line(exc: BaseException | None) -> str:
    """One line for a trial's exception: a Ray Train failure's ranks and their errors, or
    the exception's type and last line (``raykube.train.failure_line``); "" for none."""
    if exc is None:
        return ""
    from raykube.train import failure_line, is_training_failure, training_failure

    cause = getattr(exc, "cause", None)  # a RayTaskError wraps what the trial raised
    exc = cause if isinstance(cause, BaseException) else exc
    return training_failure(exc) if is_training_failure(exc) else failure_line(exc)


def failed_trials_lines(result: dict[str, Any]) -> list[str]:
    """One line per trial of ``result.json`` that ended in ERROR (empty when none), after
    one saying where the best came from: a failed trial's checkpoints of the epochs it
    finished are candidates too (``summarize``)."""
    failed = [t for t in result.get("trials") or [] if t.get("status") == "ERROR"]
    if not failed:
        return []
    total = len(result.get("trials") or [])
    best = (result.get("best_trial") or {}).get("trialId")
    source = (f"the best checkpoint is {best}'s, saved before it failed"
              if best in {t["trial"] for t in failed} else "the best is from the others")
    return [f"{len(failed)} of {total} trials failed; {source}:",
            *(f"  {t['trial']}: {t.get('error') or 'error not recorded'}" for t in failed)]


# ---------------------------------------------------------------------- report
def plot_trials(outcome: TuneOutcome) -> bytes:
    """``report.png``: every trial's ``tune.metric`` per epoch (best trial highlighted)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for t in outcome.trials:
        pts = [(h[TIME_ATTR], h[outcome.metric]) for h in t.get("history", [])
               if outcome.metric in h]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        is_best = t["trial"] == outcome.best_trial_id
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in t["params"].items())
        ax.plot(xs, ys, marker="o", linewidth=2.5 if is_best else 1.2,
                label=f"{t['trial']} ({t['status'].lower()}) {params}" + (" *best*" if is_best else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel(outcome.metric)
    ax.set_title(f"{outcome.name}: {len(outcome.trials)} trials, {outcome.metric} ({outcome.mode})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# ------------------------------------------------------------------------- run
class ResumableASHA(ASHAScheduler):
    """Ray's ASHA, whose rungs survive ``Tuner.restore``.

    Ray Tune (2.60) keeps no scheduler state over a restore: the scheduler a resumed
    search uses is the one pickled into ``tuner.pkl`` when the search was created, its
    rungs empty (``TuneController`` never calls ``TrialScheduler.save``). A resumed
    search then judged each trial only against the results reported after the resume:
    the first trial to reach a rung passed it whatever its score, and trials that the
    search before the interruption would have stopped trained on.

    This one records, as Tune adds each restored trial (``on_trial_add``, finished and
    stopped trials included), the results the trial reported before: its rows in
    ``HISTORY_FILE``, which ``keep_history`` writes before every restore, replayed
    through the trial's bracket in epoch order as Tune replayed them live. A search
    created fresh finds no history file and starts empty, as Ray's does.

    A replayed result can fall below its rung's cutoff: an epoch the trial trained
    while the search was being interrupted, which Ray Train took (so the resumed trial
    continues after it) but Tune never did (``keep_history`` records it from its
    checkpoint). Live, ASHA would have stopped the trial there; such a trial is stopped
    before it trains again (``choose_trial_to_run``), not at the next rung."""

    def __init__(self, *, history_uri: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._history_uri = history_uri
        self._history: dict[str, list[dict[str, Any]]] | None = None
        self._stop_on_resume: dict[str, int] = {}  # trial id -> the epoch of its stop

    def __getstate__(self) -> dict[str, Any]:
        # read again where it is restored
        return {**self.__dict__, "_history": None, "_stop_on_resume": {}}

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        if self._history is None:
            try:
                self._history = (_read_json(self._history_uri) or {}) if self._history_uri else {}
            except Exception as exc:  # cut off by a kill mid-write, storage gone: go on
                log.warning("ASHA resumes without the trials' earlier results: %s: %s",
                            self._history_uri, exc)
                self._history = {}
        stops = self.replay(trial.trial_id, self._history.get(trial.trial_id) or [])
        # Only an epoch Tune never took: on those it did, ASHA decided live (the trial
        # went on), and a replay in another order than the live one must not overrule it.
        seen = _epoch_of(getattr(trial, "last_result", None) or {})
        unseen = [epoch for epoch in stops if epoch > seen]
        if unseen and str(trial.status) not in ("TERMINATED", "ERROR"):
            self._stop_on_resume[trial.trial_id] = unseen[0]

    def replay(self, trial_id: str, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Record ``rows`` (a trial's earlier results) in its bracket's rungs; the epochs
        whose result falls below its rung's cutoff (where ASHA says STOP)."""
        bracket = self._trial_info.get(trial_id)
        if bracket is None:
            return []
        stand_in = _TrialRef(trial_id)
        results = [(int(r[TIME_ATTR]), float(r[self._metric])) for r in rows
                   if isinstance(r.get(TIME_ATTR), (int, float))
                   and isinstance(r.get(self._metric), (int, float))]
        return [epoch for epoch, value in sorted(results)
                if bracket.on_result(stand_in, epoch, self._metric_op * value) == self.STOP]

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """Stop, before they run again, the restored trials whose replayed results ASHA
        stops (see the class); then Ray's choice among the others."""
        for trial in tune_controller.get_trials():
            epoch = self._stop_on_resume.pop(trial.trial_id, None)
            if epoch is not None and str(trial.status) in ("PENDING", "PAUSED"):
                log.info("trial %s: stopped by ASHA at epoch %d, an epoch it trained as "
                         "the search was interrupted (its result is below that rung's "
                         "cutoff)", trial.trial_id, epoch)
                tune_controller.stop_trial(trial)
        return super().choose_trial_to_run(tune_controller)


@dataclass(frozen=True)
class _TrialRef:
    """What ASHA's bracket reads of a trial: its id."""

    trial_id: str


def _tune_config(spec: TrainingRunSpec, experiment_uri: str = "") -> Any:
    assert spec.tune is not None
    t = spec.tune
    if t.scheduler.name == "asha":
        # stop_last_trials=False: a trial that reaches max_t ends by itself (its Train run
        # finishes cleanly) instead of being stopped by the scheduler.
        scheduler = ResumableASHA(history_uri=_join(experiment_uri, HISTORY_FILE)
                                  if experiment_uri else None,
                                  time_attr=TIME_ATTR, max_t=most_epochs(spec),
                                  grace_period=t.scheduler.resolved_grace_period,
                                  reduction_factor=t.scheduler.resolved_reduction_factor,
                                  stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(
        metric=t.metric,
        mode=t.resolved_mode,
        num_samples=t.trials,
        scheduler=scheduler,
        # Seeded sampling: a resumed or repeated search proposes the same trials.
        search_alg=BasicVariantGenerator(random_state=spec.train.seed,
                                         max_concurrent=t.concurrent_trials),
        trial_dirname_creator=trial_dirname,
    )


HEAD_NODE_RESOURCE = "node:__internal_head__"
"""A resource only Ray's head node has (``ray._common.constants.HEAD_NODE_RESOURCE_NAME``),
on a cluster and in local Ray alike."""
TRIAL_RESOURCES = {"cpu": 0.01, HEAD_NODE_RESOURCE: 0.001}
"""What each trial's actor asks for (see ``_trainable``)."""


def _trainable(spec: TrainingRunSpec, storage_root: str, experiment_uri: str,
               failures: TrialFailures | None = None,
               extra_config: dict[str, Any] | None = None) -> Any:
    """The trial: an actor that only drives its Train run (the workers hold the real
    resources), so it asks for a sliver of a CPU; concurrency is bounded by
    maxConcurrentTrials.

    It is pinned to the head. A worker pod of ``cpusPerWorker: 0.25`` advertises one
    whole CPU, so without the pin Ray placed trial actors on worker pods, and Ray Train
    pins each trial's controller and synchronization actor to its trial's node: on a
    real node they added ~600 MiB to a 1Gi worker pod beside its Train worker, and Ray's
    memory monitor killed 2 of 4 trials (3 of 4 at 4 concurrent). The head is sized for
    them (``raykube.footprint.head_bytes``)."""
    fn = tune.with_parameters(_trial_driver, spec_doc=spec.to_dict(),
                              storage_root=storage_root, experiment_uri=experiment_uri,
                              failures=failures, extra_config=extra_config)
    return tune.with_resources(fn, TRIAL_RESOURCES)


def run_tune(run: TrainingRun, storage_path: str, observers: Iterable[RunObserver] = (),
             name: str | None = None, extra_config: dict[str, Any] | None = None
             ) -> TuneOutcome:
    """Run (or resume, or return the stored result of) the search of ``run.spec.tune``.

    ``storage_path`` is the storage root (a directory or ``s3://`` URI); the experiment is
    ``<storage_path>/<name>`` (name defaults to the TrainingRun's). Observers get
    ``on_start``, ``on_epoch(metrics, checkpoint, trial=<trial id>)`` for every trial
    epoch, ``on_trials(rows)`` when they have it (the live table), and ``on_end`` with
    the ``result.json`` document; those with ``on_failure`` get a line for each worker
    failure of any trial's Train run. Raises ``TuneInterrupted`` when the search stopped
    before every trial ended (run again to resume). ``extra_config`` goes to every
    trial's workers (tests use it).
    """
    spec = run.spec
    if spec.tune is None:
        raise ValueError(f"{run.name}: spec.tune is not set; nothing to search")
    name = name or run.name
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)  # Tune and Train want absolute paths
    observers = list(observers)
    obs = Observers(observers)
    experiment_uri = _join(storage_path, name)
    result_uri = _join(experiment_uri, RESULT_FILE)
    marker_uri = _join(experiment_uri, MARKER_FILE)
    identity = _identity(spec)
    obs.on_start(run)

    stored, note = read_summary(result_uri)
    if note is not None:
        notify(observers, note)
    if (stored is not None and stored.get("kind") == "tune" and stored.get("complete")
            and stored.get("spec") == identity):
        log.info("search %s already finished; returning its result", experiment_uri)
        outcome = TuneOutcome.from_result(stored)
        if not exists(_join(experiment_uri, "best")):  # a search finished by an older raykube
            _publish_best(outcome.best_checkpoint, experiment_uri)
        obs.on_end(stored)
        return outcome
    marker = check_search_storage(experiment_uri, spec)

    if spec.data.dataset == "image-folder":
        # Decode once, here, while every CPU is free: trials find the cache done (their
        # Train workers could otherwise leave Ray Data's decode tasks no CPU).
        from raykube.data import build_image_cache

        build_image_cache(spec, storage_path)
    started = time.monotonic()
    key = experiment_uri
    failures = TrialFailures()
    sink = _SINKS[key] = _ObserverSink(observers, spec, storage_path, failures)
    try:
        trainable = _trainable(spec, storage_path, experiment_uri, failures, extra_config)
        # Object stores: Tune gets raykube's filesystem (endpoint, credentials) and
        # scheme-less paths, as Ray Train does (raykube.storage.ray_storage).
        ray_root, ray_fs = ray_storage(storage_path)
        ray_experiment, _ = ray_storage(experiment_uri)
        if marker is not None and tune.Tuner.can_restore(ray_experiment, storage_filesystem=ray_fs):
            restored = keep_history(experiment_uri)
            done = sum(str(t.status) in ("TERMINATED", "ERROR") for t in restored)
            notify(observers, f"resuming the interrupted search in {experiment_uri}: "
                   f"{done} of {spec.tune.trials} trial(s) finished; the others continue "
                   "from their last checkpoint")
            # the table's first rows: what the trials reported before (Tune's first
            # event, a trial starting, comes once the restored trials are set up)
            sink.restored(restored, _kept_history(experiment_uri))
            tuner = tune.Tuner.restore(ray_experiment, trainable=trainable,
                                       resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=ray_fs)
        else:
            _write_json(marker_uri, {"spec": identity})
            quiet = any(isinstance(o, TrialTable) for o in observers)  # it replaces Tune's
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(spec.tune),
                tune_config=_tune_config(spec, experiment_uri),
                run_config=tune.RunConfig(
                    storage_path=ray_root, storage_filesystem=ray_fs, name=name,
                    callbacks=[_ProgressCallback(key)],
                    verbose=0 if quiet else 1,
                ),
            )
        with _stop_announced(observers):
            grid = tuner.fit()
        sink.worker_failures(flush=True)  # any that came in after Tune's last turn
    finally:
        _SINKS.pop(key, None)
        from raykube.train import remove_storage_marker

        remove_storage_marker(experiment_uri)  # Tune's, as Ray Train's in each trial
        with contextlib.suppress(Exception):
            failures.close()

    del grid  # its in-memory trials say TERMINATED for trials an interruption stopped
    statuses = _saved_statuses(experiment_uri)
    # Trials are sampled lazily (maxConcurrentTrials at a time), so an interrupted search
    # may also have trials it never created.
    unfinished = [r for r in statuses if r not in ("TERMINATED", "ERROR")]
    missing = spec.tune.trials - len(statuses)
    if unfinished or missing > 0:
        raise TuneInterrupted(f"search {experiment_uri} stopped with "
                              f"{len(unfinished) + max(missing, 0)} of {spec.tune.trials} "
                              "trials unfinished; run it again to resume")
    outcome = summarize(experiment_uri, spec, name=name, storage_path=storage_path)
    outcome.wall_time_s = round(time.monotonic() - started, 2)
    deleted = prune_unlisted_checkpoints(experiment_uri, outcome.trials)
    if deleted:
        notify(observers, f"deleted {len(deleted)} checkpoint(s) that no trial reported "
                          "(written as ASHA stopped a trial or the search was interrupted, "
                          "after Ray Train's checkpoint list was saved): checkpoint.keep "
                          f"is {spec.checkpoint.keep} per trial")
    result = outcome.to_result()
    _publish_best(outcome.best_checkpoint, experiment_uri)
    try:
        write_bytes(_join(experiment_uri, REPORT_FILE), plot_trials(outcome))
    except Exception:  # a plot must never lose a finished search
        log.warning("could not write %s", REPORT_FILE, exc_info=True)
    _write_json(result_uri, result)
    if not any(isinstance(o, TrialTable) for o in observers):
        for line in failed_trials_lines(result):  # the table prints them under itself
            log.warning("%s", line)
    obs.on_end(result)
    return outcome


def prune_unlisted_checkpoints(experiment_uri: str, trials: Sequence[dict[str, Any]]
                               ) -> list[str]:
    """Delete, in a finished search, each trial's checkpoints that Ray Train's list
    does not name and no result of the trial refers to; return their paths.

    A trial's Train workers run on while Tune decides: when ASHA stops a trial (or an
    interruption does), the epoch being trained may write its checkpoint after Ray
    Train saved its list, and the run is aborted before Ray ranks it. Ray Train prunes
    only what its list names, so one such checkpoint stayed per stopped trial, outside
    ``checkpoint.keep``, for good. A plain run prunes these at its end
    (``raykube.train``); a trial's Train run has no such end. Nothing refers to them:
    they were never reported (Tune's results and ``keep_history`` name only reported or
    listed checkpoints), and a finished search is not resumed. A deletion that fails is
    a warning: the search has finished and its result is what matters."""
    from raykube.resume import unlisted_checkpoints
    from raykube.storage import delete_dirs

    deleted = []
    for row in trials:
        train_dir = _join(experiment_uri, trial_dir_name(row["trial"]), "train")
        referenced = {os.path.basename(str(h[CHECKPOINT_KEY]).rstrip("/"))
                      for h in row.get("history") or [] if h.get(CHECKPOINT_KEY)}
        try:
            unlisted = unlisted_checkpoints(train_dir)
        except Exception as exc:  # noqa: BLE001 - storage trouble: keep them
            log.warning("could not list the checkpoints of %s: %s", train_dir, exc)
            continue
        deleted += delete_dirs(path for path, _ in unlisted
                               if os.path.basename(path) not in referenced)
    return deleted


def _publish_best(checkpoint: str | None, experiment_uri: str) -> None:
    """``<run>/best``: the best trial's checkpoint where ``raykube serve``, the README and
    ``raykube render --serve`` (its RayService) expect a run's best model, as for a
    plain training run."""
    if not checkpoint:
        return
    from raykube.train import publish_best

    try:
        publish_best(checkpoint, experiment_uri)
    except Exception:  # the concrete checkpoint is still in result.json
        log.warning("could not copy the best checkpoint to %s/best", experiment_uri,
                    exc_info=True)


def check_search_storage(experiment_uri: str, spec: TrainingRunSpec) -> dict[str, Any] | None:
    """The stored search marker, or ``StorageConflict`` naming the changed fields when
    ``experiment_uri`` holds a search of another spec (``raykube run`` calls it before
    Ray starts)."""
    marker = _read_json(_join(experiment_uri, MARKER_FILE))
    identity = _identity(spec)
    if marker is not None and marker.get("spec") != identity:
        raise StorageConflict(
            f"{experiment_uri} holds a search for a different spec "
            f"({changed_fields(marker.get('spec') or {}, identity)}); give the TrainingRun "
            "another metadata.name or delete that directory to start over")
    return marker


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict) and doc:
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: doc}


def changed_fields(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """'spec.train.optimizer.lr 0.003 -> 0.1, ...': what differs between two spec
    identities, so a refused re-run says which edit to undo."""
    a, b = _flatten(old), _flatten(new)
    diffs = [f"spec.{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return (", ".join(diffs[:limit]) + more) if diffs else "model, data, train or tune changed"


def _merge_history(older: list[dict[str, Any]], newer: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """One row per epoch, ``newer``'s where both have it (a resumed trial trains again
    from its last checkpoint, so an epoch reported twice has its latest model)."""
    rows = {int(r[TIME_ATTR]): r for r in older}
    rows.update({int(r[TIME_ATTR]): r for r in newer})
    return [rows[e] for e in sorted(rows)]


def _kept_history(experiment_uri: str) -> dict[str, list[dict[str, Any]]]:
    try:
        return _read_json(_join(experiment_uri, HISTORY_FILE)) or {}
    except ValueError:  # cut off by a kill mid-write: progress.csv still has the rest
        log.warning("ignoring the unreadable %s", HISTORY_FILE, exc_info=True)
        return {}


def keep_history(experiment_uri: str) -> list[Any]:
    """Before ``Tuner.restore``: save every trial's epochs in ``HISTORY_FILE``; the
    trials as the stored experiment has them (Tune ``Trial`` objects; [] when it cannot
    be read).

    Tune keeps a trial's ``progress.csv`` over a restore only when the trial has a *Tune*
    checkpoint (``ray.tune.logger``'s ``_restore_from_remote``). Ours have Ray Train
    checkpoints only, so a resumed trial's file started over and the epochs it reported
    before the interruption were gone: from its history, ``report.png``, and the choice
    of the best trial (an interrupted trial's best epoch was never a candidate).

    The epochs a trial checkpointed but Tune never heard of are kept too
    (``_unreported_epochs``): Ctrl-C reaches the driver first and Tune takes no result
    after it, while the trial's Train run may finish an epoch (and write its
    checkpoint) before Tune stops the trial. In Ray Tune's terms a checkpoint reported
    with ``ray.train.report`` is one of the trial's results, and the resumed trial
    continues *after* it (Ray Train's latest checkpoint), so that epoch is never
    reported again: it is recorded here, from its checkpoint's ``meta.json`` (epoch and
    metrics), when Ray Train's checkpoint list holds it (the report reached Ray Train),
    instead of leaving a trained epoch's checkpoint outside the trial's
    history and the choice of the best. An epoch the resumed trial trains again
    replaces its row (``_merge_history``).
    """
    from ray.tune import ExperimentAnalysis

    path, fs = ray_storage(experiment_uri)
    try:
        analysis = ExperimentAnalysis(path, storage_filesystem=fs)
        frames = analysis.trial_dataframes
    except Exception:  # resuming matters more than the curves
        log.warning("could not read the trials' progress before resuming", exc_info=True)
        return []
    kept = _kept_history(experiment_uri)
    for trial in analysis.trials:
        tid = trial.trial_id
        rows = [{k: _plain(v) for k, v in r.items()} for r in _history(frames.get(tid))]
        history = _merge_history(kept.get(tid, []), rows)
        train_dir = _join(experiment_uri, trial_dirname(trial), "train")
        unreported = _unreported_epochs(train_dir, {int(r[TIME_ATTR]) for r in history})
        if history or unreported:
            kept[tid] = _merge_history(unreported, history)
    _write_json(_join(experiment_uri, HISTORY_FILE), kept)
    return list(analysis.trials)


def _unreported_epochs(train_dir: str, reported: set[int]) -> list[dict[str, Any]]:
    """History rows for the checkpoints of a trial's Train run whose epoch is not in
    ``reported``: the epoch and metrics from each one's ``meta.json``, and its path.

    Only those Ray Train's checkpoint list holds (its record of the reports it took; the
    resumed run continues from its latest) when it has a readable one: a checkpoint a
    worker wrote but whose report Ray Train never took is trained again by the resumed
    trial, and reported then. Checkpoints without a readable ``meta.json`` are left out,
    as ``raykube.resume`` does."""
    from raykube.resume import checkpoint_dirs, listed_checkpoints, read_meta

    rows: dict[int, dict[str, Any]] = {}
    try:
        listed = listed_checkpoints(train_dir)
        dirs = [d for d in checkpoint_dirs(train_dir)
                if listed is None or os.path.basename(d) in listed]
    except Exception:  # resuming matters more than the curves
        log.warning("could not list the checkpoints in %s", train_dir, exc_info=True)
        return []
    for d in dirs:
        meta = read_meta(d)
        if meta is None or int(meta["epoch"]) in reported:
            continue
        metrics = meta.get("metrics") or {}
        rows[int(meta["epoch"])] = {TIME_ATTR: int(meta["epoch"]), CHECKPOINT_KEY: d,
                                    **{k: _plain(metrics[k]) for k in METRICS if k in metrics}}
    return [rows[e] for e in sorted(rows)]


def _saved_statuses(experiment_uri: str) -> list[str]:
    """Trial statuses as the experiment state in storage has them: what a resume sees.

    Tune saves that state before it stops the trials of an interrupted search, so a
    trial cut off mid-way is still RUNNING there (and resumes), whereas the returned
    ResultGrid already shows it TERMINATED.
    """
    from ray.tune import ExperimentAnalysis

    path, fs = ray_storage(experiment_uri)
    return [str(t.status) for t in ExperimentAnalysis(path, storage_filesystem=fs).trials]


# ------------------------------------------------------------------- interrupt
def interrupted_search_line(experiment_uri: str, spec: TrainingRunSpec) -> str:
    """The one line a Ctrl-C of a search ends with: what is saved, then what running
    again does (a plain run's says "29 of 40 epochs"; a search's used to say nothing
    of what it keeps). Read from the trials' checkpoint files alone, after Ray is
    down: no Ray call, no torch (``raykube.resume.latest_saved``)."""
    resumes = (f"interrupted: the search in {experiment_uri} resumes when you run the same "
               "command again")
    try:
        saved = _saved_trial_epochs(experiment_uri)
    except Exception:  # e.g. the object store went away too; the checkpoints stay
        log.debug("could not count the checkpoints of %s", experiment_uri, exc_info=True)
        return f"{resumes}; its checkpoints could not be counted now"
    return f"{resumes}; {saved_trials_summary(saved, spec)}"


def saved_trials_summary(saved: Sequence[tuple[int, int]], spec: TrainingRunSpec) -> str:
    """'3 of 4 trials have checkpoints (7 of 16 epochs saved)' from (epoch saved, epochs
    asked) per trial with a checkpoint. The trials without one are asked for the base
    spec's epochs; when their sample may say otherwise (``train.epochs`` searched), the
    total is unknown and left out rather than guessed."""
    assert spec.tune is not None
    if not saved:
        return "no trial has saved a checkpoint yet"
    trials, done = spec.tune.trials, sum(e for e, _ in saved)
    verb = "has" if len(saved) == 1 else "have"
    epochs = possible_epochs(spec)
    if len(saved) < trials and len(epochs) > 1:
        return f"{len(saved)} of {trials} trials {verb} checkpoints ({done} epochs saved)"
    asked = sum(n for _, n in saved) + (trials - len(saved)) * max(epochs)
    return f"{len(saved)} of {trials} trials {verb} checkpoints ({done} of {asked} epochs saved)"


def _saved_trial_epochs(experiment_uri: str) -> list[tuple[int, int]]:
    """(epoch, epochs asked) of each trial's newest saved checkpoint, from its meta.json
    (which holds the trial's own spec), for the trials that have one."""
    from raykube.resume import latest_saved

    saved = []
    for trial_dir in _trial_dirs(experiment_uri):
        ckpt, meta = latest_saved(_join(trial_dir, "train"))
        if ckpt and meta:
            asked = ((meta.get("spec") or {}).get("train") or {}).get("epochs")
            saved.append((int(meta["epoch"]), int(asked or meta["epoch"])))
    return saved


def _trial_dirs(experiment_uri: str) -> list[str]:
    """The ``trial-<id>`` folders of an experiment (``os`` for a local one, as
    ``latest_saved`` reads it; the object store's listing otherwise)."""
    prefix = trial_dir_name("")
    if "://" not in experiment_uri:
        try:
            names = os.listdir(experiment_uri)
        except FileNotFoundError:  # interrupted before Tune wrote anything
            return []
        return sorted(_join(experiment_uri, n) for n in names if n.startswith(prefix)
                      and os.path.isdir(os.path.join(experiment_uri, n)))
    import pyarrow.fs as pafs

    from raykube.storage import filesystem

    fs, path = filesystem(experiment_uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(_join(experiment_uri, i.base_name) for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))


# --------------------------------------------------------------------- display
def trials_table(rows: Sequence[dict[str, Any]], metric: str, title: str | None = None) -> Any:
    """The tutorial-style trial table (rich)."""
    from rich.table import Table

    table = Table(title=title, expand=False)
    table.add_column("trial", no_wrap=True)
    paths = sorted({p for r in rows for p in r["params"]})
    # Headers by last path segment when unambiguous (lr, batchSize): fits 80 columns;
    # the best-trial panel names the full paths.
    lasts = [p.rsplit(".", 1)[-1] for p in paths]
    for p, last in zip(paths, lasts, strict=True):
        table.add_column(last if lasts.count(last) == 1 else p, justify="right")
    table.add_column("status", no_wrap=True, min_width=10)
    table.add_column(metric, justify="right", no_wrap=True)
    table.add_column("iter", justify="right", no_wrap=True)
    styles = {"RUNNING": "cyan", "TERMINATED": "green", "STOPPED": "yellow", "ERROR": "red"}
    for r in rows:
        table.add_row(
            r["trial"], *[_fmt(r["params"].get(p, "")) for p in paths],
            f"[{styles.get(r['status'], 'white')}]{r['status']}[/]",
            "" if r["metric"] is None else f"{r['metric']:.4f}", str(r["iterations"]),
        )
    return table


def best_trial_summary(result: dict[str, Any]) -> Any:
    """The final "best trial" panel (rich), from a ``result.json`` document."""
    from rich.panel import Panel

    best = result["best_trial"]
    params = "\n".join(f"  {k} = {_fmt(v)}" for k, v in best["config"].items())
    bm = result.get("best_metrics") or {}
    metrics = "\n  ".join(  # validation metrics on one line, training on the next
        ", ".join(f"{k}={_fmt(v)}" for k, v in bm.items() if k in METRICS and k.startswith(p))
        for p in ("val", "train"))
    body = (f"trial {best['trialId']}: {result['metric']} = {_fmt(best['metric'])} "
            f"({result['mode']})\n{params}\nepoch {bm.get(TIME_ATTR)}:\n  {metrics}")
    return Panel(body, title="Best trial", expand=False)


class TrialTable:
    """Live trial table for ``raykube run`` (a RunObserver with ``on_trials``).

    The live display starts with the first rows (``on_trials``; no empty table while
    Ray sets the trials up) and ends with ``on_end`` (or ``stop``).
    """

    def __init__(self, console: Any = None, refresh_per_second: float = 4):
        from rich.console import Console

        self.console = console or Console()
        self.refresh_per_second = refresh_per_second
        self._live: Any = None
        self._metric = "valAccuracy"
        self._title = "trials"
        self.rows: list[dict[str, Any]] = []

    def on_start(self, run: TrainingRun) -> None:
        if run.spec.tune is not None:
            self._metric = run.spec.tune.metric
        self._title = f"{run.name}: Tune search ({run.spec.tune.trials if run.spec.tune else 0} trials)"

    def on_trials(self, rows: list[dict[str, Any]]) -> None:
        """Show ``rows``; the live table starts with the first (never empty: a resumed
        search's first rows are its restored trials, ``run_tune``)."""
        from rich.live import Live

        self.rows = rows
        table = trials_table(rows, self._metric, self._title)
        if self._live is not None:
            self._live.update(table)
        elif rows:
            # transient: the final table is printed once by on_end, not twice
            self._live = Live(table, console=self.console,
                              refresh_per_second=self.refresh_per_second, transient=True)
            self._live.start()

    def on_epoch(self, metrics: dict[str, Any], checkpoint: str | None,
                 trial: str | None = None) -> None:
        pass  # rows come with on_trials (they carry status and iterations too)

    def on_note(self, message: str) -> None:
        """Something the user should know (a resumed search): one line above the table."""
        from rich.markup import escape

        self.console.print(escape(message), highlight=False)

    def on_failure(self, message: str) -> None:
        """A trial's worker group failed (``TrialFailures``): one line above the table."""
        from rich.markup import escape

        self.console.print(f"[yellow]{escape(message)}[/]", highlight=False)

    def on_end(self, result: dict[str, Any]) -> None:
        self.stop()
        if result.get("trials"):
            self.console.print(trials_table(result["trials"], result["metric"], self._title))
        if result.get("best_trial"):
            self.console.print(best_trial_summary(result))
            # Meant to be copied: whole lines, never wrapped.
            run_dir = result.get("run_dir")
            for label, path in (("best checkpoint", f"{run_dir}/best"),
                                ("report", f"{run_dir}/{REPORT_FILE}"),
                                ("result", f"{run_dir}/{RESULT_FILE}")):
                self.console.print(f"{label:<16}{path}", soft_wrap=True, highlight=False,
                                   markup=False)
        for line in failed_trials_lines(result):
            self.console.print(line, style="yellow", soft_wrap=True, highlight=False,
                               markup=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


__all__ = [
    "TrialTable", "TuneInterrupted", "TuneOutcome", "StorageConflict", "best_trial_summary",
    "failed_trials_lines", "interrupted_search_line",
    "param_space", "plot_trials", "run_tune", "summarize", "to_domain", "trial_spec",
    "trials_table",
]
