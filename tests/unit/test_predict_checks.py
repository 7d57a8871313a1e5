"""``raykube predict`` input found wrong before Ray starts, in one line (a new user's
probe): flags Ray would refuse only once up, data folders with nothing to predict, data
of another label space, a meta.json from another checkpoint, a checkpoint.pt that is
not a PyTorch file at all. No Ray here: a command that gets as far as starting it fails."""

from __future__ import annotations

import shutil

import pytest

from raykube.cli import main
from raykube.predict import PredictOutcome
from raykube.spec import parse_spec

SPEC = {"model": {"name": "mlp", "options": {"hidden": [16]}},
        "data": {"dataset": "digits"}, "train": {"epochs": 2}}


def _checkpoint(path, epoch: int = 1, acc: float = 0.5):
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model

    run = parse_spec(SPEC)
    model = build_model(run.spec.model, (1, 8, 8), 10)
    return save_checkpoint(path, model=model, optimizer=None, epoch=epoch,
                           spec=run.spec.to_dict(), class_names=[str(i) for i in range(10)],
                           input_shape=(1, 8, 8), metrics={"valAccuracy": acc})


@pytest.fixture
def checkpoint(tmp_path):
    return _checkpoint(tmp_path / "ckpt")


@pytest.fixture
def no_ray_start(monkeypatch):
    """Fails the test if the command gets as far as starting Ray (see test_user_errors)."""
    import ray

    import raykube.ray_local

    def refuse(*_, **__):
        raise AssertionError("Ray was started before the problem was reported")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(raykube.ray_local, "init_local_ray", refuse)


@pytest.fixture
def fake_predict(monkeypatch):
    """Ray "already up" and a prediction that only records what it was given: what the
    command says before the prediction, without Ray."""
    import ray

    import raykube.predict

    calls: list[dict] = []

    def fake(checkpoint, **kw):
        calls.append(kw)
        return PredictOutcome(out=kw["out"], rows=0, split="val", dataset="digits",
                              checkpoint=str(checkpoint),
                              checkpoint_metrics=dict(kw["meta"].metrics))

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(raykube.predict, "predict", fake)
    return calls


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("raykube predict: ") and err.count("\n") == 1, err
    assert "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------ 1. --num-cpus
@pytest.mark.parametrize("value", ["-1", "0"])
def test_num_cpus_below_one_is_refused_before_ray(value, checkpoint, tmp_path, capsys,
                                                  no_ray_start):
    """-1 was Ray's "ValueError: Resource quantities must be nonnegative" after its
    start-up; 0 was taken, a Ray on which no predictor can ever run."""
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv"),
                 "--num-cpus", value]) == 2
    assert _one_line(capsys) == f"raykube predict: --num-cpus {value}: must be at least 1"


# ---------------------------------------------------------- 2. folders, before Ray
@pytest.mark.parametrize("layout", [[], ["a/", "b/"], ["a/notes.txt"]])
def test_a_folder_with_no_images_is_refused_before_ray(layout, checkpoint, tmp_path, capsys,
                                                       no_ray_start):
    """An empty folder, or one of only empty class folders, was found after Ray's start."""
    data = tmp_path / "images"
    data.mkdir()
    for entry in layout:
        (data / entry.rstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        if entry.endswith("/"):
            (data / entry).mkdir()
        else:
            (data / entry).write_text("x")
    assert main(["predict", str(checkpoint), "--data", str(data),
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert _one_line(capsys) == (f"raykube predict: --data {data}: no images in it nor in "
                                 "its sub-folders")


def test_a_folder_of_some_of_the_classes_gets_a_note(checkpoint, tmp_path, capsys,
                                                     fake_predict):
    """Folders are labeled by name, so "3" and "7" of the digits are a legitimate subset:
    predicted and scored, with a line saying the accuracy covers those classes only
    (the table shows 0 examples for the others)."""
    from PIL import Image

    data = tmp_path / "images"
    for name in ("3", "7", "cat"):
        (data / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(data / name / "a.png")
    assert main(["predict", str(checkpoint), "--data", str(data),
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert _one_line(capsys) == (
        f"raykube predict: note: --data {data}: its class folders are 2 of the model's 10 "
        "classes (3, 7); the accuracy is over those; cat is none of its classes (their "
        "images count as wrong)")
    assert len(fake_predict) == 1


def test_an_undecodable_image_is_refused_before_ray(checkpoint, tmp_path, capsys,
                                                   no_ray_start):
    """An image that cannot be decoded was found only once Ray was up (10 s later): the
    folder is now decoded once before, with the listing the prediction goes on to use."""
    from PIL import Image

    data = tmp_path / "images"
    for name in ("3", "7"):
        (data / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(data / name / "a.png")
    (data / "7" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    assert main(["predict", str(checkpoint), "--data", str(data),
                 "--out", str(tmp_path / "p.csv")]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"raykube predict: --data {data}: {data}/7/b.png is not a "
                           "readable image ("), line
    assert line.endswith("remove or replace it"), line


def test_the_checked_listing_is_what_the_prediction_reads(checkpoint, tmp_path, capsys,
                                                          fake_predict):
    """The folder is listed once: the prediction gets the listing the checks made."""
    from PIL import Image

    data = tmp_path / "images"
    for name in [str(i) for i in range(10)]:
        (data / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(data / name / "a.png")
    assert main(["predict", str(checkpoint), "--data", str(data),
                 "--out", str(tmp_path / "p.csv")]) == 0
    listing = fake_predict[0]["listing"]
    assert listing.uri == str(data) and listing.classes == [str(i) for i in range(10)]
    assert sorted(f.path for f in listing.images) == [
        str(data / str(i) / "a.png") for i in range(10)]


def test_folder_note_says_nothing_when_there_is_nothing_to_say():
    from raykube.predict import folder_note

    names = [str(i) for i in range(10)]
    assert folder_note("d", names, names) is None  # all of them
    assert folder_note("d", None, names) is None  # unlabeled
    assert folder_note("d", ["cat", "dog"], names) is None  # unscored: said in the report


# ------------------------------------------------------- 3. another label space
def _synthetic_yaml(tmp_path, classes: int):
    f = tmp_path / "synthetic.yaml"
    f.write_text("apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: s}\n"
                 "spec:\n  model: {name: mlp}\n  data: {dataset: synthetic, shape: [1, 8, 8], "
                 f"numClasses: {classes}}}\n")
    return f


def test_data_with_another_number_of_classes_is_refused_before_ray(checkpoint, tmp_path,
                                                                   capsys, no_ray_start):
    """3 synthetic classes on a 10-class digits model: labels "0", "1", "2" matched three
    digits by name, and "accuracy 15.00 %" came out with 7 rows of 0 examples."""
    assert main(["predict", str(checkpoint), "--data", str(_synthetic_yaml(tmp_path, 3)),
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert _one_line(capsys) == (
        "raykube predict: the data (synthetic) has 3 classes; the checkpoint's model has 10 "
        "(0, 1, 2, 3, 4, 5, 6, 7, 8, 9): its labels are not the model's classes, so an "
        "accuracy would mean nothing")


def test_data_with_the_models_classes_goes_on(checkpoint, tmp_path, capsys, fake_predict):
    assert main(["predict", str(checkpoint), "--data", str(_synthetic_yaml(tmp_path, 10)),
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert capsys.readouterr().err == ""
    assert len(fake_predict) == 1


# ------------------------------------------------ 4. meta.json of another checkpoint
def test_a_meta_json_from_another_checkpoint_is_named_and_checkpoint_pt_used(
        checkpoint, tmp_path, capsys, fake_predict):
    """meta.json said "training reported valAccuracy 95.82 %" for a checkpoint.pt whose
    model measures less, while serve reported checkpoint.pt's own figure."""
    from rich.console import Console

    from raykube.predict import print_report

    other = _checkpoint(tmp_path / "other", epoch=8, acc=0.9582)
    shutil.copy(other / "meta.json", checkpoint / "meta.json")
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv")]) == 0
    assert _one_line(capsys) == (
        f"raykube predict: note: {checkpoint / 'meta.json'} is not this checkpoint's (epoch 8, "
        "valAccuracy 95.82 %; checkpoint.pt holds epoch 1, valAccuracy 50.00 %): using "
        "checkpoint.pt's, as serve does")
    (call,) = fake_predict
    assert call["meta"].epoch == 1 and call["meta"].metrics == {"valAccuracy": 0.5}

    outcome = PredictOutcome(out="p.csv", rows=2, split="val", dataset="digits",
                             checkpoint=str(checkpoint),
                             checkpoint_metrics=call["meta"].metrics, accuracy=0.5,
                             same_data_as_training=True)
    console = Console(record=True, width=200)
    print_report(outcome, console)
    assert "training reported valAccuracy 50.00 %" in console.export_text()


def test_a_matching_meta_json_says_nothing(checkpoint, tmp_path, capsys, fake_predict):
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv")]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------ 5. not a PyTorch file at all
@pytest.mark.parametrize("content", [
    b"hello, this is not a model\n",
    "épreuve " * 100,  # a character cut at the 512th byte is still text
])
def test_a_text_file_says_so_without_a_raw_code(content, checkpoint, tmp_path, capsys,
                                                no_ray_start):
    """A text file saved as checkpoint.pt was "truncated or corrupted (101)": torch's
    KeyError, a code meaning nothing to users."""
    pt = checkpoint / "checkpoint.pt"
    pt.write_bytes(content.encode() if isinstance(content, str) else content)
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv")]) == 2
    assert _one_line(capsys) == (f"raykube predict: {pt}: cannot read this checkpoint: "
                                 "not a PyTorch checkpoint file (it holds text)")


def test_a_directory_named_checkpoint_pt_says_so(checkpoint, tmp_path, capsys, no_ray_start):
    """It was "truncated or corrupted ([Errno 21] Is a directory ...)"."""
    pt = checkpoint / "checkpoint.pt"
    pt.unlink()
    pt.mkdir()
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv")]) == 2
    assert _one_line(capsys) == (f"raykube predict: {pt}: cannot read this checkpoint: a "
                                 "directory, where the file torch.save wrote belongs")


def test_another_programs_dict_is_not_a_raykube_checkpoint(checkpoint, tmp_path, capsys,
                                                          no_ray_start):
    """A plain state_dict saved as checkpoint.pt said "checkpoint format None, expected
    1" (a new-user probe); a checkpoint of another format version says which."""
    import torch

    pt = checkpoint / "checkpoint.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, pt)
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv")]) == 2
    assert _one_line(capsys) == (f"raykube predict: {pt}: not a raykube checkpoint (a dict "
                                 "of fc.weight, fc.bias; no 'format')")
    torch.save({"format": 99}, pt)
    assert main(["predict", str(checkpoint), "--out", str(tmp_path / "p.csv")]) == 2
    assert "checkpoint format 99: this raykube reads format 1" in _one_line(capsys)
    assert main(["predict", "", "--out", str(tmp_path / "p.csv")]) == 2
    assert _one_line(capsys) == "raykube predict: CHECKPOINT is empty"
