"""A run's result.json is a summary written when the run ends; the checkpoints are the
record. One that is corrupt (cut short, edited by hand) failed every rerun of the run
with ``JSONDecodeError`` after Ray started: now it counts as absent, with one note.
No Ray here: a rerun with no more epochs than the checkpoints hold trains nothing."""

from __future__ import annotations

import json

import pytest

from raykube.spec import parse_spec
from raykube.storage import read_summary

SPEC = {"model": {"name": "mlp", "options": {"hidden": [16]}}, "data": {"dataset": "digits"},
        "train": {"epochs": 3}}

CORRUPT = [(b"not json\n", "could not be parsed (9 bytes)"), (b"", "was empty"),
           (b"\xff\xfe{", "could not be parsed (3 bytes)"), (b"[1, 2]", "holds no JSON object")]


class Notes:
    """A RunObserver that keeps the notes it is told."""

    def __init__(self):
        self.notes: list[str] = []
        self.ended: list[dict] = []

    def on_start(self, run):
        pass

    def on_epoch(self, metrics, checkpoint, trial):
        pass

    def on_end(self, result):
        self.ended.append(result)

    def on_note(self, message):
        self.notes.append(message)


def _trained(run_dir, epochs: int) -> None:
    """``run_dir`` as a run of ``SPEC`` that saved ``epochs`` checkpoints left it."""
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model
    from raykube.train import HISTORY_FILE

    spec = parse_spec(SPEC, name="r").spec
    model = build_model(spec.model, (1, 8, 8), 10)
    history = []
    for epoch in range(1, epochs + 1):
        history.append({"epoch": epoch, "valAccuracy": 0.5 + epoch / 100})
        d = save_checkpoint(run_dir / f"checkpoint_epoch_{epoch:04d}", model=model,
                            optimizer=None, epoch=epoch, spec=spec.to_dict(),
                            class_names=[str(i) for i in range(10)], input_shape=(1, 8, 8),
                            metrics=history[-1])
        (d / HISTORY_FILE).write_text(json.dumps(history))


@pytest.mark.parametrize("content,what", CORRUPT)
def test_a_corrupt_summary_reads_as_absent_with_a_note_naming_it(tmp_path, content, what):
    f = tmp_path / "result.json"
    f.write_bytes(content)
    doc, note = read_summary(str(f))
    assert doc is None
    assert note == (f"the run's summary {f} {what}: ignored, as if absent (the checkpoints "
                    "on storage are the record)")
    assert "\n" not in note


def test_a_whole_summary_or_none_is_read_as_it_is(tmp_path):
    f = tmp_path / "result.json"
    assert read_summary(str(f)) == (None, None)
    f.write_text(json.dumps({"epochs": 3}))
    assert read_summary(str(f)) == ({"epochs": 3}, None)


@pytest.mark.parametrize("content,what", CORRUPT)
def test_a_rerun_over_a_corrupt_result_json_goes_by_the_checkpoints(tmp_path, content, what):
    """``raykube run ... --epochs 6`` over a finished 12-epoch run whose result.json
    said ``not json``: exit 1 with ``JSONDecodeError``. Now the outcome comes from the
    checkpoints, as when there is no result.json, and the user is told once."""
    from raykube.train import fit, read_result

    run_dir = tmp_path / "r"
    _trained(run_dir, 3)
    (run_dir / "result.json").write_bytes(content)
    rec = Notes()
    outcome = fit(parse_spec({**SPEC, "train": {"epochs": 2}}, name="r"), str(tmp_path),
                  observers=[rec])
    assert outcome.reused and outcome.epochs == 3
    assert outcome.best_checkpoint.endswith("checkpoint_epoch_0003")
    assert rec.ended and rec.ended[0]["epochs"] == 3
    said = [n for n in rec.notes if "result.json" in n]
    assert said == [f"the run's summary {run_dir}/result.json {what}: ignored, as if absent "
                    "(the checkpoints on storage are the record)"], rec.notes
    assert read_result(str(run_dir)) is None  # the other readers (bench) take it as absent


def test_a_search_over_a_corrupt_result_json_goes_on_with_a_note(tmp_path, monkeypatch):
    """A search reads its own result.json the same way (its stored outcome): a corrupt
    one failed the rerun with ``JSONDecodeError`` before the search could resume."""
    from raykube import tune

    class Reached(Exception):
        """The search went past its stored result (to its storage check)."""

    def reached(*_, **__):
        raise Reached

    monkeypatch.setattr(tune, "check_search_storage", reached)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "result.json").write_text("{cut short")
    run = parse_spec({**SPEC, "tune": {"trials": 2,
                                       "searchSpace": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}}},
                     name="s")
    rec = Notes()
    with pytest.raises(Reached):
        tune.run_tune(run, str(tmp_path), observers=[rec])
    assert rec.notes == [f"the run's summary {tmp_path}/s/result.json could not be parsed "
                         "(10 bytes): ignored, as if absent (the checkpoints on storage are "
                         "the record)"]
