"""raykube.tune without a Ray cluster: search-space mapping, trial specs, scheduler
settings, validation of bad search spaces (field-level), the trial table and report."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

from raykube import tune as rt
from raykube.spec import InvalidTrainingRun, load_one, parse_training_run
from raykube.train import scaling_config

BASE = {
    "apiVersion": "raykube.io/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "t"},
    "spec": {
        "model": {"name": "mlp", "options": {"hidden": [32]}},
        "data": {"dataset": "digits"},
        "train": {"epochs": 5, "batchSize": 64},
        "scaling": {"workers": 2},
        "tune": {
            "trials": 6,
            "maxConcurrentTrials": 3,
            "metric": "valLoss",
            "scheduler": {"name": "asha", "gracePeriod": 2, "reductionFactor": 3},
            "searchSpace": {
                "train.optimizer.lr": {"loguniform": [1e-4, 1e-1]},
                "train.optimizer.momentum": {"uniform": [0.5, 0.99]},
                "train.batchSize": {"randint": [16, 129]},
                "model.options.hidden": {"choice": [[32], [128, 64]]},
            },
        },
    },
}


def _run(**tune_updates):
    doc = copy.deepcopy(BASE)
    doc["spec"]["tune"].update(tune_updates)
    return parse_training_run(doc)


def _errors(search_space=None, **tune_updates):
    doc = copy.deepcopy(BASE)
    if search_space is not None:
        doc["spec"]["tune"]["searchSpace"] = search_space
    doc["spec"]["tune"].update(tune_updates)
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc)
    return {e.path: e.message for e in exc.value.errors}


# ------------------------------------------------------------------- search space
def test_search_space_maps_to_tune_domains_with_the_same_bounds():
    space = rt.param_space(_run().spec.tune)
    assert set(space) == set(BASE["spec"]["tune"]["searchSpace"])  # dotted paths are keys

    lr = space["train.optimizer.lr"]
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform)
    assert (lr.lower, lr.upper) == (1e-4, 1e-1)
    mom = space["train.optimizer.momentum"]
    assert isinstance(mom, Float) and isinstance(mom.get_sampler(), Uniform)
    assert (mom.lower, mom.upper) == (0.5, 0.99)
    bs = space["train.batchSize"]
    assert isinstance(bs, Integer) and (bs.lower, bs.upper) == (16, 129)
    hidden = space["model.options.hidden"]
    assert isinstance(hidden, Categorical) and hidden.categories == [[32], [128, 64]]

    rng = np.random.RandomState(0)
    lrs = np.array(lr.sample(size=2000, random_state=rng))
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1
    # log-uniform: about as many samples per decade
    per_decade = np.histogram(np.log10(lrs), bins=[-4, -3, -2, -1])[0]
    assert per_decade.min() > 500
    ints = bs.sample(size=500, random_state=rng)
    assert min(ints) >= 16 and max(ints) <= 128  # randint is [low, high)


def test_trial_spec_applies_samples_as_plain_values_and_drops_tune():
    spec = _run().spec
    sampled = {"train.optimizer.lr": np.float64(0.003), "train.batchSize": np.int64(32),
               "train.optimizer.momentum": 0.8, "model.options.hidden": [np.int64(128), 64],
               "unrelated": 1}
    trial = rt.trial_spec(spec, sampled)
    assert trial.tune is None
    assert trial.train.optimizer.lr == 0.003 and type(trial.train.optimizer.lr) is float
    assert trial.train.batch_size == 32 and type(trial.train.batch_size) is int
    assert trial.model.options.hidden == [128, 64]
    assert trial.data == spec.data and trial.scaling == spec.scaling
    assert rt.trial_overrides(spec, sampled) == {
        "train.optimizer.lr": 0.003, "train.batchSize": 32, "train.optimizer.momentum": 0.8,
        "model.options.hidden": [128, 64]}


def test_a_sample_that_breaks_a_cross_field_rule_fails_with_the_field():
    with pytest.raises(InvalidTrainingRun) as exc:
        rt.trial_spec(_run().spec, {"train.batchSize": 1})  # < scaling.workers=2
    assert [e.path for e in exc.value.errors] == ["spec.train.batchSize"]


def test_a_samples_spec_error_survives_pickling_as_a_trials_error_does():
    """A trial's error reaches the driver (error.txt, the end-of-search lines) pickled.
    Pickled from its args, InvalidTrainingRun was rebuilt with the joined message as its
    error list, and the search ended with "InvalidTrainingRun: s; p; e; c; ...". (The
    whole path through a real Ray is tests/integration/test_tune.py's failed-trial test.)"""
    import pickle

    from raykube.spec import SpecErrors

    with pytest.raises(InvalidTrainingRun) as exc:
        rt.trial_spec(_run().spec, {"train.batchSize": 1})
    back = pickle.loads(pickle.dumps(exc.value))
    assert str(back) == str(exc.value) == (
        "spec.train.batchSize: global batch 1 is smaller than scaling.workers=2")
    assert back.errors == exc.value.errors
    inner = SpecErrors(exc.value.errors)
    assert str(pickle.loads(pickle.dumps(inner))) == str(inner)


# ------------------------------------------------------------------- validation
@pytest.mark.parametrize(("space", "path", "needle"), [
    ({"train.optimizer.learningRate": {"choice": [0.1]}},
     "spec.tune.searchSpace[train.optimizer.learningRate]", "not a field of the spec"),
    ({"model.options.hidden": {"choice": []}},
     "spec.tune.searchSpace[model.options.hidden].choice", "must not be empty"),
    ({"train.optimizer.lr": {"uniform": [0.1, 0.01]}},
     "spec.tune.searchSpace[train.optimizer.lr].uniform", "low (0.1) must be below high (0.01)"),
    ({"train.batchSize": {"randint": [64, 64]}},
     "spec.tune.searchSpace[train.batchSize].randint", "must be below high"),
    ({"train.optimizer.lr": {"loguniform": [0.0, 0.1]}},
     "spec.tune.searchSpace[train.optimizer.lr].loguniform", "must be > 0"),
    ({"train.optimizer.lr": {"loguniform": [-1.0, 0.1]}},
     "spec.tune.searchSpace[train.optimizer.lr].loguniform", "must be > 0"),
    ({"train.optimizer.lr": {"uniform": [0.1, 0.2], "choice": [0.1]}},
     "spec.tune.searchSpace[train.optimizer.lr]", "exactly one of"),
    ({"train.batchSize": {"choice": [32, "big"]}},
     "spec.tune.searchSpace[train.batchSize]", "value 'big' is not valid"),
    # the upper end of a range is checked too, not only the lower one
    ({"train.optimizer.momentum": {"uniform": [0.5, 1.5]}},
     "spec.tune.searchSpace[train.optimizer.momentum]", "less than 1"),
    # cross-field rules are checked for sampled values (mlp has no conv channels)
    ({"model.options.channels": {"choice": [[6, 16]]}},
     "spec.tune.searchSpace[model.options.channels]", "does not apply to model mlp"),
    ({"train.batchSize": {"randint": [1, 64]}},
     "spec.tune.searchSpace[train.batchSize]", "smaller than scaling.workers=2"),
    ({"tune.trials": {"choice": [1, 2]}},
     "spec.tune.searchSpace[tune.trials]", "cannot search over the tune section"),
    # the cluster is sized from the spec's scaling: a trial sampling more workers would
    # wait for resources that never come
    ({"scaling.workers": {"randint": [1, 4]}},
     "spec.tune.searchSpace[scaling.workers]", "only model.*, data.* and train.*"),
    # each is told why its own section cannot vary (metadata was "the tune section
    # itself", serve.* got the reason for scaling: differential probe)
    ({"metadata.name": {"choice": ["a", "b"]}},
     "spec.tune.searchSpace[metadata.name]", "metadata is the run's, not a trial's"),
    ({"serve.minAccuracy": {"uniform": [0.1, 0.9]}},
     "spec.tune.searchSpace[serve.minAccuracy]", "serving comes after the search"),
    ({"checkpoint.keep": {"choice": [1, 3]}},
     "spec.tune.searchSpace[checkpoint.keep]", "every trial checkpoints under the run's"),
])
def test_bad_search_spaces_are_rejected_at_the_field(space, path, needle):
    errors = _errors(space)
    assert path in errors, errors
    assert needle in errors[path]


def test_a_metric_the_loop_does_not_report_is_rejected():
    errors = _errors(metric="accuracy")
    assert "not a reported metric" in errors["spec.tune.metric"]
    assert "valAccuracy" in errors["spec.tune.metric"]


def test_the_upper_end_of_a_range_is_exclusive():
    # momentum must be < 1; uniform [0.5, 1.0) never samples 1.0, so it is valid
    doc = copy.deepcopy(BASE)
    doc["spec"]["tune"]["searchSpace"] = {"train.optimizer.momentum": {"uniform": [0.5, 1.0]}}
    parse_training_run(doc)


def test_values_valid_alone_but_not_together_are_refused_before_the_search():
    """Each searched value was checked alone, against the base spec: a search over the
    model (mlp or resnet18) beside one over ``hidden`` (the MLP's) passed, and every
    trial sampling resnet18 failed once the search had begun."""
    doc = copy.deepcopy(BASE)
    doc["spec"]["model"] = {"name": "mlp"}
    doc["spec"]["tune"]["searchSpace"] = {"model.name": {"choice": ["mlp", "resnet18"]},
                                          "model.options.hidden": {"choice": [[16], [32]]}}
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc)
    errors = {e.path: e.message for e in exc.value.errors}
    assert errors == {"spec.tune.searchSpace[model.options.hidden]": (
        "value [16] is not valid with model.name value 'resnet18', which a trial may "
        "sample beside it: spec.model.options.hidden: does not apply to model resnet18 "
        "(its options: none)")}


def test_a_pair_is_checked_over_the_ends_of_its_ranges():
    """Ranges are checked at both ends, together too: ``batchSize`` at its low bound
    beside ``workers``-sized batches is the same rule as alone, so here a pair of
    independent, valid dimensions stays valid and costs a handful of checks."""
    run = _run(searchSpace={"train.optimizer.lr": {"loguniform": [1e-4, 1e-1]},
                            "train.batchSize": {"randint": [8, 129]},
                            "model.options.hidden": {"choice": [[16], [32, 16]]}})
    assert run.spec.tune is not None


def test_a_large_search_space_is_checked_within_a_budget(monkeypatch):
    from raykube import spec as S

    calls = []
    real = S._check_overrides
    monkeypatch.setattr(S, "_check_overrides", lambda *a, **k: calls.append(a) or real(*a, **k))
    space = {"train.seed": {"choice": list(range(60))},
             "train.optimizer.lr": {"choice": [i / 1000 for i in range(1, 61)]}}
    _run(searchSpace=space)
    pairs = [c for c in calls if len(c[1]) == 2]
    assert len(pairs) == S.COMBINATION_CHECKS


# ------------------------------------------------------------------- scheduler
def test_asha_uses_epochs_and_the_declared_metric_and_mode():
    run = _run()
    cfg = rt._tune_config(run.spec)
    assert (cfg.metric, cfg.mode, cfg.num_samples) == ("valLoss", "min", 6)
    asha = cfg.scheduler
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epoch"
    assert asha._max_t == 5 and asha._reduction_factor == 3
    # rungs: grace period 2, then x3 (6 > max_t, so only one)
    assert [r[0] for r in asha._brackets[0]._rungs] == [2]
    assert cfg.search_alg.max_concurrent == 3  # maxConcurrentTrials

    fifo = rt._tune_config(_run(scheduler={"name": "fifo"}, metric="valAccuracy").spec)
    assert type(fifo.scheduler).__name__ == "FIFOScheduler"
    assert (fifo.metric, fifo.mode) == ("valAccuracy", "max")
    assert rt._tune_config(_run(mode="min").spec).mode == "min"  # explicit, the same
    with pytest.raises(InvalidTrainingRun, match=r"spec.tune.mode.*valLoss is better lower"):
        _run(mode="max")  # the worst trial first: refused (spec._tune_checks)


@dataclasses.dataclass
class _Trial:
    """What ASHA reads of a Tune trial that Tune adds: its id and status."""

    trial_id: str
    status: str = "TERMINATED"
    last_result: dict = dataclasses.field(default_factory=dict)  # what Tune took of it


def _restored_asha(spec, experiment: Path, history: dict) -> ASHAScheduler:
    """The scheduler as ``Tuner.restore`` gets it: unpickled from what was pickled
    into tuner.pkl at the search's creation, the metric and mode set by Tune."""
    (experiment / rt.HISTORY_FILE).write_text(json.dumps(history))
    cfg = rt._tune_config(spec, str(experiment))
    asha = pickle.loads(pickle.dumps(cfg.scheduler))
    asha.set_search_properties(cfg.metric, cfg.mode)
    return asha


def test_asha_keeps_its_rungs_over_a_resume(tmp_path):
    """Ray Tune keeps no scheduler state over ``Tuner.restore``: a resumed search judged
    each trial only against results reported after the resume, so the first trial to
    reach a rung passed it whatever its score. raykube's ASHA replays every restored
    trial's earlier results (``raykube-history.json``) into its rungs."""
    run = _run(scheduler={"name": "asha", "gracePeriod": 1, "reductionFactor": 2})
    history = {  # valLoss, mode min: "good" finished, "stopped" was cut at epoch 1
        "good": [{"epoch": e, "valLoss": 0.5 / e} for e in range(1, 6)],
        "stopped": [{"epoch": 1, "valLoss": 2.0}],
        "midway": [{"epoch": 1, "valLoss": 0.6}, {"epoch": 2, "valLoss": 0.4}],
    }
    asha = _restored_asha(run.spec, tmp_path, history)
    for tid in history:  # Tune adds every stored trial again, finished ones included
        asha.on_trial_add(None, _Trial(tid))
    rungs = {m: dict(r) for m, r in asha._brackets[0]._rungs}
    assert rungs[1] == {"good": -0.5, "stopped": -2.0, "midway": -0.6}
    assert rungs[2] == {"good": -0.25, "midway": -0.4} and rungs[4] == {"good": -0.125}
    # a new trial as bad as the stopped one is stopped at the first rung again
    asha.on_trial_add(None, _Trial("new"))
    assert asha.on_trial_result(None, rt._TrialRef("new"), {"epoch": 1, "valLoss": 2.0}) == "STOP"
    # the interrupted trial is judged at its next rung against the finished one
    assert asha.on_trial_result(None, rt._TrialRef("midway"), {"epoch": 4, "valLoss": 0.3}) == "STOP"

    # Ray's own ASHA, restored the same way, had forgotten: both went on
    plain = ASHAScheduler(time_attr="epoch", max_t=5, grace_period=1, reduction_factor=2,
                          stop_last_trials=False)
    plain = pickle.loads(pickle.dumps(plain))
    plain.set_search_properties("valLoss", "min")
    for tid in [*history, "new"]:
        plain.on_trial_add(None, _Trial(tid))
    assert plain.on_trial_result(None, rt._TrialRef("new"), {"epoch": 1, "valLoss": 2.0}) == "CONTINUE"


def test_a_trial_whose_replayed_epoch_asha_stops_is_stopped_before_it_runs(tmp_path):
    """An epoch trained as the search was interrupted (Ray Train took it, Tune did not;
    ``keep_history`` records it) and below its rung's cutoff: the resumed trial is
    stopped when Tune next chooses a trial to run, not after another epoch. The
    controller here records the calls ASHA makes (the real TuneController runs in
    ``tests/integration/test_tune.py``); finished trials are not stopped again."""
    run = _run(scheduler={"name": "asha", "gracePeriod": 1, "reductionFactor": 2})
    history = {"good": [{"epoch": e, "valLoss": 0.5 / e} for e in range(1, 6)],
               "cut": [{"epoch": 1, "valLoss": 2.0}],  # trained as it was interrupted
               "ended-bad": [{"epoch": 1, "valLoss": 2.0}],  # stopped live, before
               # Tune took this epoch and ASHA let it go on live (it reported before the
               # good trial did): a replay in another order does not overrule that
               "passed-live": [{"epoch": 1, "valLoss": 2.0}],
               "fine": [{"epoch": 1, "valLoss": 0.4}]}
    asha = _restored_asha(run.spec, tmp_path, history)
    trials = [_Trial("good"), _Trial("cut", "PENDING"), _Trial("ended-bad"),
              _Trial("passed-live", "PENDING", {"epoch": 1, "valLoss": 2.0}),
              _Trial("fine", "PENDING")]
    for t in trials:
        asha.on_trial_add(None, t)

    class Controller:
        stopped: list[str] = []

        def get_trials(self):
            return trials

        def stop_trial(self, trial):
            self.stopped.append(trial.trial_id)
            trial.status = "TERMINATED"

    controller = Controller()
    assert asha.choose_trial_to_run(controller).trial_id == "passed-live"
    assert controller.stopped == ["cut"]
    assert asha.choose_trial_to_run(controller).trial_id == "passed-live"
    assert controller.stopped == ["cut"]  # once


def test_a_fresh_or_unreadable_history_starts_asha_empty(tmp_path):
    run = _run(scheduler={"name": "asha", "gracePeriod": 1, "reductionFactor": 2})
    cfg = rt._tune_config(run.spec, str(tmp_path))  # a new search: no history file
    asha = pickle.loads(pickle.dumps(cfg.scheduler))
    asha.set_search_properties(cfg.metric, cfg.mode)
    asha.on_trial_add(None, _Trial("t1"))
    assert all(not r for _, r in asha._brackets[0]._rungs)
    (tmp_path / rt.HISTORY_FILE).write_text('{"t1": [{"epo')  # cut off by a kill
    asha = _restored_asha(run.spec, tmp_path, {})
    (tmp_path / rt.HISTORY_FILE).write_text('{"t1": [{"epo')
    asha.on_trial_add(None, _Trial("t1"))
    assert all(not r for _, r in asha._brackets[0]._rungs)


def test_each_trial_gets_the_spec_scaling_including_fractional_gpus():
    doc = copy.deepcopy(BASE)
    doc["spec"]["scaling"] = {"workers": 2, "cpusPerWorker": 1.5, "gpusPerWorker": 0.25}
    sc = scaling_config(parse_training_run(doc).spec)
    assert sc.num_workers == 2 and sc.use_gpu
    assert sc.resources_per_worker == {"CPU": 1.5, "GPU": 0.25}
    cpu = scaling_config(_run().spec)
    assert not cpu.use_gpu and cpu.resources_per_worker == {"CPU": 1.0}


# ------------------------------------------------------------------- results
def test_trial_status_tells_early_stops_from_full_runs():
    assert rt.trial_status("TERMINATED", 2, 5) == "STOPPED"
    assert rt.trial_status("TERMINATED", 5, 5) == "TERMINATED"
    assert rt.trial_status("RUNNING", 2, 5) == "RUNNING"
    assert rt.trial_status("ERROR", 1, 5) == "ERROR"


def test_a_trial_that_ran_its_own_sampled_epochs_is_not_listed_as_stopped():
    class Trial:  # the fields trial_row reads of Tune's Trial
        trial_id, status = "t1", "TERMINATED"
        config = {"train.epochs": 2, "train.optimizer.lr": 0.01}
        last_result = {"epoch": 2, "valLoss": 0.5}

    run = _run(searchSpace={"train.epochs": {"choice": [2, 5]},
                            "train.optimizer.lr": {"loguniform": [1e-4, 1e-1]}},
               scheduler={"name": "fifo"})
    assert rt.trial_row(Trial(), run.spec, "valLoss")["status"] == "TERMINATED"
    Trial.last_result = {"epoch": 1, "valLoss": 0.5}  # an early stop is still one
    assert rt.trial_row(Trial(), run.spec, "valLoss")["status"] == "STOPPED"


@pytest.mark.parametrize("dim,want", [(None, 5), ({"choice": [2, 9, 4]}, 9),
                                      ({"randint": [2, 12]}, 11)])
def test_asha_lets_a_trial_train_the_most_epochs_it_may_sample(dim, want):
    space = {"train.optimizer.lr": {"loguniform": [1e-4, 1e-1]}}
    if dim is not None:
        space["train.epochs"] = dim
    run = _run(searchSpace=space)  # base spec: 5 epochs; ASHA cut trials off there
    assert rt.most_epochs(run.spec) == want
    assert rt._tune_config(run.spec).scheduler._max_t == want


def test_a_finished_search_deletes_the_checkpoints_no_trial_reported(tmp_path):
    """A trial stopped by ASHA (or cut off by an interruption) may write one more
    checkpoint after Ray Train saved its list; Ray never prunes it. The finished search
    deletes those, and keeps every checkpoint Ray lists, every one a result names, and
    any without a readable meta.json (left for a person to look at)."""
    from raykube.resume import TRAIN_SNAPSHOT

    def trial(tid: str, listed: list[int], dirs: dict[int, bool]) -> Path:
        train = tmp_path / f"trial-{tid}" / "train"
        for epoch, readable in dirs.items():
            d = train / f"checkpoint_epoch_{epoch:04d}"
            d.mkdir(parents=True)
            if readable:
                (d / "meta.json").write_text(json.dumps({"epoch": epoch, "spec": {}, "metrics": {}}))
        entry = lambda e: {"checkpoint_dir_name": f"checkpoint_epoch_{e:04d}", "metrics": {}}  # noqa: E731
        (train / TRAIN_SNAPSHOT).write_text(json.dumps({
            "checkpoint_results": [entry(e) for e in listed],
            "latest_checkpoint_result": entry(listed[-1]), "pending_training_results": []}))
        return train

    stopped = trial("a", [1, 2], {1: True, 2: True, 3: True})
    resumed = trial("b", [5], {4: True, 5: True, 6: False})
    rows = [{"trial": "a", "history": [{"epoch": e, rt.CHECKPOINT_KEY: str(stopped / f"checkpoint_epoch_{e:04d}")}
                                       for e in (1, 2)]},
            {"trial": "b", "history": [{"epoch": 4, rt.CHECKPOINT_KEY: str(resumed / "checkpoint_epoch_0004")},
                                       {"epoch": 5, rt.CHECKPOINT_KEY: str(resumed / "checkpoint_epoch_0005")}]},
            {"trial": "never-started", "history": []}]
    deleted = rt.prune_unlisted_checkpoints(str(tmp_path), rows)
    assert deleted == [str(stopped / "checkpoint_epoch_0003")]
    assert sorted(p.name for p in stopped.iterdir() if p.is_dir()) == [
        "checkpoint_epoch_0001", "checkpoint_epoch_0002"]
    assert sorted(p.name for p in resumed.iterdir() if p.is_dir()) == [
        "checkpoint_epoch_0004", "checkpoint_epoch_0005", "checkpoint_epoch_0006"]
    assert rt.prune_unlisted_checkpoints(str(tmp_path), rows) == []


def test_history_keeps_one_row_per_epoch_the_last_one():
    import pandas as pd

    df = pd.DataFrame([
        {"epoch": 1, "valLoss": 1.0, "checkpoint_path": "/a/1", "other": 3},
        {"epoch": 2, "valLoss": 0.9, "checkpoint_path": "/a/2", "other": 3},
        {"epoch": 2, "valLoss": 0.8, "checkpoint_path": "/b/2", "other": 3},  # after restart
        {"epoch": float("nan"), "valLoss": 0.1},
    ])
    hist = rt._history(df)
    assert hist == [{"epoch": 1, "valLoss": 1.0, "checkpoint_path": "/a/1"},
                    {"epoch": 2, "valLoss": 0.8, "checkpoint_path": "/b/2"}]


def test_checkpoint_paths_get_their_scheme_back():
    from raykube.storage import checkpoint_uri

    assert checkpoint_uri("s3://bucket/runs", "bucket/runs/x/checkpoint_1") == \
        "s3://bucket/runs/x/checkpoint_1"
    assert checkpoint_uri("s3://bucket", "s3://bucket/x") == "s3://bucket/x"
    assert checkpoint_uri("/mnt/raykube", "/mnt/raykube/x") == "/mnt/raykube/x"
    assert checkpoint_uri("/mnt", None) is None


def _outcome():
    trials = [
        {"trial": "a_00000", "params": {"train.optimizer.lr": 0.01}, "status": "TERMINATED",
         "metric": 0.2, "iterations": 3,
         "history": [{"epoch": e, "valLoss": 1.0 / e} for e in (1, 2, 3)]},
        {"trial": "a_00001", "params": {"train.optimizer.lr": 1e-6}, "status": "STOPPED",
         "metric": 2.3, "iterations": 1, "history": [{"epoch": 1, "valLoss": 2.3}]},
    ]
    return rt.TuneOutcome(name="t", experiment_dir="/s/t", metric="valLoss", mode="min",
                          best_trial_id="a_00000", best_config={"train.optimizer.lr": 0.01},
                          best_metric=1 / 3, best_checkpoint="/s/t/trial-a_00000/train/c3",
                          best_metrics={"epoch": 3, "valLoss": 1 / 3, "valAccuracy": 0.9},
                          trials=trials, wall_time_s=1.5, spec={"train": {}})


def test_result_document_round_trips_and_carries_the_status_shapes():
    out = _outcome()
    doc = out.to_result()
    assert doc["best_trial"] == {"trialId": "a_00000", "config": {"train.optimizer.lr": 0.01},
                                 "metric": 1 / 3}
    assert doc["best_checkpoint"] == out.best_checkpoint
    assert doc["best_metrics"]["valAccuracy"] == 0.9
    assert all("history" not in t for t in doc["trials"])
    assert rt.TuneOutcome.from_result(doc) == out


def test_trial_table_and_best_summary_render():
    from rich.console import Console

    out = _outcome()
    console = Console(record=True, width=160)
    console.print(rt.trials_table(out.trials, "valLoss", "search"))
    console.print(rt.best_trial_summary(out.to_result()))
    text = console.export_text()
    for needle in ("a_00000", "a_00001", "train.optimizer.lr", "STOPPED", "TERMINATED",
                   "0.01", "1e-06", "2.3000", "Best trial"):
        assert needle in text, needle


def test_trial_table_observer_keeps_the_rows_and_prints_the_summary():
    from rich.console import Console

    console = Console(record=True, width=160, force_terminal=False)
    table = rt.TrialTable(console=console)
    run = _run()
    table.on_start(run)
    table.on_trials(_outcome().trials)
    table.on_epoch({"epoch": 1}, None, "a_00000")
    table.on_end(_outcome().to_result())
    assert table.rows[1]["status"] == "STOPPED"
    text = console.export_text()
    assert "Best trial" in text
    # the stable best/ copy, whole on one line (issue 15 #4, #12)
    assert f"best checkpoint {_outcome().to_result()['run_dir']}/best" in text


def test_report_png_has_a_curve_per_trial():
    png = rt.plot_trials(_outcome())
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize("name", ["digits-tune.yaml", "cifar10-tune.yaml"])
def test_example_jobs_are_valid_searches(jobs_dir, name):
    run = load_one(jobs_dir / name)
    assert run.spec.tune is not None and run.spec.tune.scheduler.name == "asha"
    space = rt.param_space(run.spec.tune)
    assert space and set(space) == set(run.spec.tune.search_space)
    # every first choice / lower bound makes a valid trial spec
    first = {p: (d.choice[0] if d.choice else getattr(d, d.kind())[0])
             for p, d in run.spec.tune.search_space.items()}
    assert rt.trial_spec(run.spec, first).tune is None


def test_a_range_out_of_bounds_names_the_bound_as_written():
    """Tune samples [low, high): the high end is checked just below it, and the message
    said ``value 49.99999999999999`` for a bound the user wrote as 50."""
    (msg,) = _errors({"train.optimizer.lr": {"uniform": [5, 50]}}).values()
    assert msg == ("uniform bound 50.0 is not valid: must be a number more than 0.0 and at "
                   "most 10.0"), msg  # the field's range, not pydantic's words, path once
    (msg,) = _errors({"train.epochs": {"randint": [0, 5]}}).values()
    assert msg == "randint bound 0 is not valid: must be a whole number between 1 and 100000"


def test_a_null_choice_is_checked_as_the_trial_gets_it():
    """A null was dropped before the check (read as the default) and failed the trials
    that sampled it; an optional field takes it (its default)."""
    errs = _errors({"train.optimizer.lr": {"choice": [None, 0.01]}})
    assert errs["spec.tune.searchSpace[train.optimizer.lr]"].startswith(
        "value null is not valid: "), errs
    doc = copy.deepcopy(BASE)
    doc["spec"]["tune"]["searchSpace"] = {"model.options.hidden": {"choice": [None, [32]]}}
    parse_training_run(doc)


def test_the_live_table_starts_with_its_first_rows_never_empty():
    """A resumed `raykube run` drew an empty table (headers only) for seconds, while Ray
    restored the trials: the live display now starts with the first rows."""
    import io

    from rich.console import Console

    out = io.StringIO()
    table = rt.TrialTable(console=Console(file=out, force_terminal=True, width=120))
    table.on_start(_run())
    table.on_trials([])
    assert out.getvalue() == ""
    table.on_trials(_outcome().trials[:1])
    table.stop()
    first = out.getvalue().split("search (")[1]  # the first frame drawn
    assert "a_00000" in first and "a_00001" not in first


def test_a_resumed_search_shows_its_restored_trials_first():
    """Before Tune restarts anything, the table gets the restored trials with what they
    reported (the stored last result, or the kept history's when later: epochs Tune
    never heard of, `keep_history`); those that continue are PENDING (the first one
    ended before its epochs: ASHA stopped it)."""
    from types import SimpleNamespace

    run = _run()
    seen: list = []

    class Table:
        def on_trials(self, rows):
            seen.append(rows)

    sink = rt._ObserverSink([Table()], run.spec, "/s")
    lr = "train.optimizer.lr"
    done = SimpleNamespace(trial_id="a_00000", config={lr: 0.01}, status="TERMINATED",
                           last_result={"epoch": 4, "valLoss": 0.2})
    cut = SimpleNamespace(trial_id="a_00001", config={lr: 1e-6}, status="RUNNING",
                          last_result={"epoch": 1, "valLoss": 2.3})
    sink.restored([done, cut], {"a_00001": [{"epoch": 1, "valLoss": 2.3},
                                            {"epoch": 2, "valLoss": 2.25}]})
    [rows] = seen
    assert [(r["trial"], r["status"], r["iterations"], r["metric"]) for r in rows] == [
        ("a_00000", "STOPPED", 4, 0.2), ("a_00001", "PENDING", 2, 2.25)]
    assert rows[1]["params"] == {lr: 1e-6}
