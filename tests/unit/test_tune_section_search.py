"""A search over a whole spec section, and the line a Ctrl-C of a search ends with.

``searchSpace: {train: {choice: [{epochs: 4, batchSize: 128}]}}`` is valid, and each
trial's ``train`` was *replaced* by the sample: the trial trained with the default
optimizer (sgd 0.01) instead of the spec's adam 3e-3, and nothing said so. A section's
sample is merged over the spec's section now (its fields override, the others stay).

A Ctrl-C of a search said only that it resumes; a plain run's line says how many epochs
are saved. The search's now says it too, from the trials' checkpoint files alone (as
tests/unit/test_interrupt_summary.py checks for a plain run).
"""

from __future__ import annotations

import copy
import sys
import types

import numpy as np
import pytest

from raykube import tune as rt
from raykube.commands.run import _interrupted
from raykube.spec import InvalidTrainingRun, parse_spec, parse_training_run

BASE = {
    "apiVersion": "raykube.io/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "t"},
    "spec": {
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "data": {"dataset": "digits"},
        "train": {"epochs": 3, "batchSize": 64, "optimizer": {"name": "adam", "lr": 3e-3}},
        "scaling": {"workers": 1},
        "tune": {"trials": 4, "searchSpace": {
            "train": {"choice": [{"epochs": 4, "batchSize": 128}]}}},
    },
}



def _run(search_space=None, **tune):
    doc = copy.deepcopy(BASE)
    if search_space is not None:
        doc["spec"]["tune"]["searchSpace"] = search_space
    doc["spec"]["tune"].update(tune)
    return parse_training_run(doc)


def _errors(search_space) -> dict[str, str]:
    with pytest.raises(InvalidTrainingRun) as exc:
        _run(search_space)
    return {e.path: e.message for e in exc.value.errors}


# ------------------------------------------------------------- a section's sample
def test_a_sampled_section_is_merged_over_the_specs_section():
    trial = rt.trial_spec(_run().spec, {"train": {"epochs": 4, "batchSize": 128}})
    assert (trial.train.epochs, trial.train.batch_size) == (4, 128)
    assert trial.train.optimizer.name == "adam" and trial.train.optimizer.lr == 3e-3
    assert trial.tune is None


def test_the_merge_is_deep_and_the_values_plain():
    """A nested mapping keeps its other fields too; numpy values (Tune samples with
    numpy) inside the section reach the strict spec as Python values."""
    spec = _run({"train": {"choice": [{"optimizer": {"lr": 0.1}}]}}).spec
    trial = rt.trial_spec(spec, {"train": {"optimizer": {"lr": np.float64(0.1)},
                                           "batchSize": np.int64(32)}})
    assert trial.train.optimizer.name == "adam" and trial.train.optimizer.lr == 0.1
    assert type(trial.train.optimizer.lr) is float and type(trial.train.batch_size) is int
    assert trial.train.epochs == 3


def test_a_dotted_path_beside_its_section_applies_in_the_search_spaces_order():
    spec = _run({"train": {"choice": [{"epochs": 4}]},
                 "train.optimizer.lr": {"choice": [0.05]}}).spec
    trial = rt.trial_spec(spec, {"train": {"epochs": 4}, "train.optimizer.lr": 0.05})
    assert (trial.train.epochs, trial.train.optimizer.name, trial.train.optimizer.lr) == (
        4, "adam", 0.05)


def test_epochs_sampled_inside_a_section_are_the_trials_and_asha_lets_them_run():
    """The trial table's STOPPED and ASHA's max_t read a trial's epochs: the spec's 3
    cut a trial that sampled 4 off at 3 (and listed one that sampled 2 as STOPPED)."""
    spec = _run({"train": {"choice": [{"epochs": 4}, {"batchSize": 32}]}}).spec
    assert rt.trial_epochs(spec, {"train": {"epochs": 4}}) == 4
    assert rt.trial_epochs(spec, {"train": {"batchSize": 32}}) == 3  # the spec's
    assert rt.possible_epochs(spec) == {3, 4}
    assert rt.most_epochs(spec) == 4 == rt._tune_config(spec).scheduler._max_t


def test_a_bad_field_inside_a_sampled_section_is_refused_at_the_field():
    errors = _errors({"train": {"choice": [{"epochs": 4, "optimizer": {"lrr": 0.1}}]}})
    assert list(errors) == ["spec.tune.searchSpace[train]"]
    assert "train.optimizer.lrr: unknown field (did you mean 'lr'?)" in errors[
        "spec.tune.searchSpace[train]"]
    errors = _errors({"train": {"choice": [{"epochs": 0}]}})
    assert "train.epochs" in errors["spec.tune.searchSpace[train]"], errors


def test_validation_checks_the_merged_section_the_trial_trains():
    """Validation must apply a sample as the trial does: merged. A model sample without
    ``name`` is a whole model to a replacement ("model.name: is required") but fine
    merged; ``{name: resnet18}`` merged keeps the spec's mlp-only ``hidden`` and its
    trial fails at start, so it is refused before the search begins."""
    _run({"model": {"choice": [{"options": {"hidden": [8]}}]}})  # valid merged
    errors = _errors({"model": {"choice": [{"name": "resnet18"}]}})
    assert "options.hidden: does not apply to model resnet18" in errors[
        "spec.tune.searchSpace[model]"], errors


def test_a_null_search_space_key_says_what_keys_are():
    assert _errors({None: {"choice": [1]}}) == {
        "spec.tune.searchSpace": "keys must be field paths such as train.optimizer.lr, "
                                 "got null"}


# ----------------------------------------------------------- an interrupted search
def _save(experiment, trial: str, epoch: int, epochs: int = 3):
    """A checkpoint of ``trial``'s Train run as raykube writes it (its meta.json holds
    the trial's own spec, so its epochs)."""
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model

    spec = parse_spec({**BASE["spec"], "train": {**BASE["spec"]["train"], "epochs": epochs},
                       "tune": None}, name="t").spec
    return save_checkpoint(experiment / f"trial-{trial}" / "train" / f"checkpoint_epoch_{epoch:04d}",
                           model=build_model(spec.model, (1, 8, 8), 10), optimizer=None,
                           epoch=epoch, spec=spec.to_dict(), class_names=[str(i) for i in range(10)],
                           input_shape=(1, 8, 8), metrics={"valAccuracy": 0.5})


@pytest.fixture
def experiment(tmp_path):
    """A search of 4 trials interrupted with trial a at epoch 3 of 3, b at 2 and c started
    without a checkpoint (d never created)."""
    exp = tmp_path / "t"
    for trial, saved in (("a", 3), ("b", 2)):
        for epoch in range(1, saved + 1):
            _save(exp, trial, epoch)
    (exp / "trial-c" / "train").mkdir(parents=True)
    return exp


@pytest.fixture
def torch_cut_off_mid_import(monkeypatch):
    """What a Ctrl-C during ``import torch`` leaves in ``sys.modules``."""
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))


def _said(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _resumes(experiment) -> str:
    return (f"interrupted: the search in {experiment} resumes when you run the same command "
            "again")


def test_the_ctrl_c_line_of_a_search_says_what_is_saved(experiment, torch_cut_off_mid_import,
                                                         capsys):
    run = _run({"train.batchSize": {"choice": [32, 64]}})
    assert _interrupted(str(experiment), run) == 130
    assert _said(capsys) == (f"{_resumes(experiment)}; 2 of 4 trials have checkpoints "
                             "(5 of 12 epochs saved)")


def test_with_epochs_searched_an_unknown_total_is_left_out(experiment, capsys):
    """Trials without a checkpoint may have sampled any of the epochs: no guessed total."""
    run = _run({"train": {"choice": [{"epochs": 3}, {"epochs": 5}]}})
    assert _interrupted(str(experiment), run) == 130
    assert _said(capsys) == (f"{_resumes(experiment)}; 2 of 4 trials have checkpoints "
                             "(5 epochs saved)")


def test_every_trial_counts_its_own_epochs(tmp_path, capsys):
    """Each trial's total is its checkpoint's spec's: a sampled epochs, not the spec's."""
    _save(tmp_path / "t", "a", 2, epochs=4)
    run = _run(trials=1)
    assert _interrupted(str(tmp_path / "t"), run) == 130
    assert _said(capsys) == (f"{_resumes(tmp_path / 't')}; 1 of 1 trials has checkpoints "
                             "(2 of 4 epochs saved)")


@pytest.mark.parametrize("made", [False, True])
def test_a_search_without_checkpoints_says_so(tmp_path, capsys, made):
    if made:
        (tmp_path / "t" / "trial-a" / "train" / "checkpoint_epoch_0001").mkdir(parents=True)
    assert _interrupted(str(tmp_path / "t"), _run()) == 130
    assert _said(capsys) == f"{_resumes(tmp_path / 't')}; no trial has saved a checkpoint yet"


def test_storage_that_cannot_be_read_still_ends_as_a_ctrl_c(experiment, monkeypatch, capsys):
    import raykube.resume

    def gone(_run_dir):
        raise OSError("When listing objects under key 'runs/t': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(raykube.resume, "latest_saved", gone)
    assert _interrupted(str(experiment), _run()) == 130
    assert _said(capsys) == f"{_resumes(experiment)}; its checkpoints could not be counted now"
