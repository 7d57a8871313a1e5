"""The line a Ctrl-C of ``raykube run`` ends with counts the checkpoints from the files
alone, never with torch.

A Ctrl-C that lands while a resumed run imports torch (``plan_resume`` loading the
newest checkpoint, torch's first use) leaves torch half initialised. The handler used to
load the checkpoints again: ``partially initialized module 'torch'``, ``SystemError``, a
segfault, or every checkpoint taken for unreadable ("interrupted before the first
checkpoint" with 3 of them on disk). The half-initialised torch is stood in for here by
an empty module named ``torch``, which is what such an import leaves behind to a caller
that finds it in ``sys.modules``. The end-to-end case (a real interrupted import, in a
real ``raykube run``) is tests/integration/test_interrupted_resume.py."""

from __future__ import annotations

import json
import sys
import types

import pytest

from raykube.commands.run import _interrupted
from raykube.spec import parse_spec

SPEC = {"model": {"name": "mlp", "options": {"hidden": [16]}}, "data": {"dataset": "digits"},
        "train": {"epochs": 5}}


def _save(run_dir, epoch: int):
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model

    spec = parse_spec(SPEC, name="r").spec
    return save_checkpoint(run_dir / f"checkpoint_epoch_{epoch:04d}",
                           model=build_model(spec.model, (1, 8, 8), 10), optimizer=None,
                           epoch=epoch, spec=spec.to_dict(), class_names=[str(i) for i in range(10)],
                           input_shape=(1, 8, 8), metrics={"valAccuracy": 0.5})


@pytest.fixture
def run_dir(tmp_path):
    """A run directory holding the checkpoints of epochs 1 to 3."""
    d = tmp_path / "r"
    for epoch in (1, 2, 3):
        _save(d, epoch)
    return d


@pytest.fixture
def torch_cut_off_mid_import(monkeypatch):
    """``import torch`` finds what an interrupted import of it leaves: a module without
    its attributes (``torch.load`` is missing)."""
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))


def _said(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_the_ctrl_c_line_counts_the_checkpoints_without_torch(run_dir, torch_cut_off_mid_import,
                                                              capsys):
    assert _interrupted(str(run_dir), parse_spec(SPEC, name="r")) == 130
    assert _said(capsys) == (f"interrupted: {run_dir} has 3 of 5 epochs; running the same "
                             "command again continues from epoch 4")


def test_the_ctrl_c_line_leaves_out_what_a_rerun_would_skip(run_dir, monkeypatch, capsys):
    """A rerun continues from the newest checkpoint that loads: not one cut off before
    its meta.json, nor one with an empty weights file, nor one whose weights a torch
    load of this run (``plan_resume``, before the Ctrl-C) found truncated."""
    from raykube.resume import plan_resume

    weights = run_dir / "checkpoint_epoch_0003" / "checkpoint.pt"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated, not empty
    _save(run_dir, 4).joinpath("meta.json").unlink()
    _save(run_dir, 5).joinpath("checkpoint.pt").write_bytes(b"")
    spec = parse_spec(SPEC, name="r")
    plan = plan_resume(str(run_dir), spec.spec)
    assert plan.epoch == 2 and "checkpoint_epoch_0003" in plan.skipped
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # then the Ctrl-C
    assert _interrupted(str(run_dir), spec) == 130
    assert _said(capsys) == (f"interrupted: {run_dir} has 2 of 5 epochs; running the same "
                             "command again continues from epoch 3")


def test_a_run_dir_without_checkpoints_says_so(tmp_path, torch_cut_off_mid_import, capsys):
    (tmp_path / "r" / "checkpoint_epoch_0001").mkdir(parents=True)  # cut off at once
    assert _interrupted(str(tmp_path / "r"), parse_spec(SPEC, name="r")) == 130
    assert _said(capsys) == f"interrupted before the first checkpoint of {tmp_path / 'r'}"


def test_storage_that_cannot_be_read_still_ends_as_a_ctrl_c(run_dir, monkeypatch, capsys):
    """An object store gone with the Ctrl-C: still one line and exit 130, not the
    store's error with exit 1."""
    import raykube.resume

    def gone(_run_dir):
        raise OSError("When listing objects under key 'runs/r': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(raykube.resume, "latest_saved", gone)
    assert _interrupted(str(run_dir), parse_spec(SPEC, name="r")) == 130
    assert _said(capsys) == (f"interrupted: the checkpoints in {run_dir} could not be counted "
                             "now; running the same command again continues from the latest")


def test_the_files_agree_with_the_torch_load_when_torch_is_whole(run_dir):
    """``latest_saved`` (the files) and ``latest_usable`` (torch) name the same
    checkpoint of a healthy run directory."""
    from raykube.resume import latest_saved, latest_usable

    ckpt, meta, _ = latest_usable(str(run_dir))
    assert latest_saved(str(run_dir)) == (ckpt, meta)
    assert meta == json.loads((run_dir / "checkpoint_epoch_0003" / "meta.json").read_text())
