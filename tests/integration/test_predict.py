"""Batch inference with Ray Data over a checkpoint written by real Ray Train training.

The accuracy ``raykube predict`` prints must be the validation accuracy training
reported for that checkpoint, and equal to a direct in-process computation.
"""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from fake_datasets import write_fashion_mnist
from ray_output import command_lines
from raykube.checkpoint import load_model, read_meta
from raykube.cli import main
from raykube.data import load_arrays
from raykube.spec import TrainingRunSpec, parse_spec

pytestmark = pytest.mark.integration

SPEC = {"model": {"name": "mlp", "options": {"hidden": [32]}},
        "data": {"dataset": "digits", "validationFraction": 0.25},
        "train": {"epochs": 2, "batchSize": 64, "seed": 3,
                  "optimizer": {"name": "adam", "lr": 0.01}},
        "scaling": {"workers": 1}}


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory) -> tuple[str, dict]:
    """(best checkpoint path, its metrics) from a real 1-worker Ray Train run."""
    from raykube.train import fit

    storage = tmp_path_factory.mktemp("storage")
    outcome = fit(parse_spec(SPEC, name="predict-digits"), str(storage))
    assert outcome.best_checkpoint
    return outcome.best_checkpoint, outcome.best_metrics


def direct_probs(checkpoint: str, x: np.ndarray) -> np.ndarray:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), 1).numpy()


def test_predict_accuracy_equals_training_and_direct(trained, ray_session, tmp_path, capsys):
    checkpoint, metrics = trained
    out = tmp_path / "preds.parquet"
    # 50 actors asked of a 4-CPU Ray at 1.5 CPUs each: 2 of them, and a line saying so
    # (50 were started before, each a process loading the model)
    cpus = ray_session.cluster_resources()["CPU"]
    assert main(["predict", checkpoint, "--out", str(out), "--concurrency", "50",
                 "--cpus-per-actor", "1.5", "--batch-size", "50"]) == 0
    printed, err = capsys.readouterr()
    assert err == (f"raykube predict: --concurrency 50: this Ray has {cpus:g} CPUs, 1.5 each, "
                   f"so {int(cpus // 1.5)} predictor actors (each is a process holding the "
                   "model)\n"), err
    table = pq.read_table(out)
    assert table.column_names == ["label", "label_name", "prediction", "prediction_name",
                                  "confidence", "probabilities"]
    # Row i is validation example i, in order (the file lines up with the split).
    arrays = load_arrays(TrainingRunSpec.model_validate(SPEC), "/tmp")
    vx, vy = arrays.val_x.numpy(), arrays.val_y.numpy()
    assert table.num_rows == len(vy)
    np.testing.assert_array_equal(table["label"].to_numpy(), vy)
    probs = np.stack(table["probabilities"].to_numpy(zero_copy_only=False))
    want = direct_probs(checkpoint, vx)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table["prediction"].to_numpy(), want.argmax(1))

    file_acc = float((table["prediction"].to_numpy() == vy).mean())
    direct_acc = float((want.argmax(1) == vy).mean())
    reported = read_meta(checkpoint).metrics["valAccuracy"]
    assert file_acc == pytest.approx(direct_acc, abs=1e-12)
    assert file_acc == pytest.approx(reported, abs=1e-12)
    assert reported == pytest.approx(metrics["valAccuracy"], abs=1e-12)
    assert f"accuracy {100 * reported:.2f} %" in printed
    assert "Accuracy per class" in printed and "training reported valAccuracy" in printed


def test_predict_csv_and_image_folder(trained, tmp_path, capsys, monkeypatch):
    """CSV output; PNG files in class folders predict like the equivalent arrays."""
    from PIL import Image

    checkpoint, _ = trained
    arrays = load_arrays(TrainingRunSpec.model_validate(SPEC), "/tmp")
    vx, vy = arrays.val_x.numpy()[:40], arrays.val_y.numpy()[:40]
    u8 = np.round((vx[:, 0] * 0.5 + 0.5) * 255).astype(np.uint8)
    root = tmp_path / "digits-png"
    for i, (img, label) in enumerate(zip(u8, vy, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(root / str(label) / f"{i:03d}.png")
    for c in range(10):  # every class folder exists (class list = the model's)
        (root / str(c)).mkdir(exist_ok=True)
    out = tmp_path / "folder.csv"
    assert main(["predict", checkpoint, "--data", str(root), "--out", str(out)]) == 0
    table = pacsv.read_csv(out)
    assert table.num_rows == 40  # --split defaults to all for a folder
    assert "probabilities" not in table.column_names
    inst = ((u8.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    want = direct_probs(checkpoint, inst)
    # Rows follow file order; compare as multisets of (label, prediction) pairs.
    got_pairs = sorted(zip(table["label"].to_pylist(), table["prediction"].to_pylist(),
                           strict=True))
    want_pairs = sorted(zip(vy.tolist(), want.argmax(1).tolist(), strict=True))
    assert got_pairs == want_pairs
    # the folder named by a TrainingRun file, relative to that file (as `raykube run`
    # reads it; it was read from the working directory: "--data ...: no such folder"),
    # and an --out folder that does not exist yet: made, with a note
    (tmp_path / "proj").mkdir()
    spec_file = tmp_path / "proj" / "run.yaml"
    spec_file.write_text("apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\n"
                         "metadata: {name: folder}\nspec:\n  model: {name: mlp}\n"
                         "  data: {dataset: image-folder, uri: ../digits-png}\n")
    monkeypatch.chdir(tmp_path / "digits-png" / "0")
    capsys.readouterr()
    again = tmp_path / "new" / "p.csv"
    assert main(["predict", checkpoint, "--data", str(spec_file), "--out", str(again)]) == 0
    assert pacsv.read_csv(again).num_rows == 40
    assert f"note: --out: {tmp_path / 'new'} does not exist: it is made" in capsys.readouterr().err


def test_predict_bad_input(trained, tmp_path, capsys):
    checkpoint, _ = trained
    assert main(["predict", checkpoint, "--out", str(tmp_path / "x.txt")]) == 2
    assert ".parquet or .csv" in capsys.readouterr().err
    assert main(["predict", checkpoint, "--data", "no-such-thing",
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert "dataset name" in capsys.readouterr().err
    assert main(["predict", checkpoint, "--data", "cifar10",
                 "--out", str(tmp_path / "x.csv"), "--cache-dir", str(tmp_path)]) == 2
    assert "shape" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")]) == 2
    assert not list(tmp_path.glob("x.*"))


def test_predict_data_in_a_missing_bucket_is_refused_before_any_work(trained, s3_server,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
    """The bucket of ``--data s3://…`` is checked with the checkpoint, before Ray starts:
    it was met inside the prediction, in AWS's words, after Ray's start-up."""
    import raykube.predict

    def refuse(*_, **__):
        raise AssertionError("the prediction started before --data was checked")

    monkeypatch.setattr(raykube.predict, "predict", refuse)
    checkpoint, _ = trained
    assert main(["predict", checkpoint, "--data", "s3://no-such-bucket/images",
                 "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert command_lines(err) == [
        "raykube predict: --data s3://no-such-bucket/images: bucket "
        f"'no-such-bucket' does not exist at {s3_server.endpoint}"], err


def test_sigterm_ends_predict_as_ctrl_c_does(trained, tmp_path):
    """``kill PID`` or a container stop while Ray Data predicts: "interrupted" and exit
    130, as Ctrl-C and `raykube run` do, and no half-written predictions file. Before,
    Ray's driver handler ended it with a bare ``sys.exit(15)`` and not a word."""
    import os
    import signal
    import subprocess
    import sys

    checkpoint, _ = trained
    data = tmp_path / "big.yaml"  # long enough to be stopped mid-way (~40 s here)
    data.write_text("apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\n"
                    "metadata: {name: big}\nspec:\n  model: {name: mlp}\n"
                    "  data: {dataset: synthetic, shape: [1, 8, 8], numSamples: 2000000}\n")
    out = tmp_path / "pred.parquet"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYKUBE_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    p = subprocess.Popen([sys.executable, "-m", "raykube", "predict", checkpoint, "--data",
                          str(data), "--split", "all", "--out", str(out), "--storage",
                          str(tmp_path / "runs"), "-v"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        seen = []
        for line in p.stderr:  # -v: Ray Data's progress comes here
            seen.append(line)
            if "Running Dataset" in line:
                os.kill(p.pid, signal.SIGTERM)
                break
        rest, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
    assert any("Running Dataset" in line for line in seen), seen[-20:]
    assert p.returncode == 130, (p.returncode, "".join(seen[-20:]), err[-6000:], rest[-2000:])
    assert err.rstrip().splitlines()[-1] == "interrupted", err[-3000:]
    assert "Traceback" not in err + rest
    assert not out.exists()


def _digit_pngs(root, images, names) -> list[str]:
    from PIL import Image

    paths = []
    for i, (img, name) in enumerate(zip(images, names, strict=True)):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{i:03d}.png")
        paths.append(str(folder / f"{i:03d}.png"))
    return paths


def test_predict_folders_as_users_have_them(trained, tmp_path, capsys):
    """Issue 15 #14: a ``path`` column; a plain folder of unlabeled images; folder names
    matched to the model's classes by name, not by folder index; and no accuracy when
    no folder is one of the model's classes."""
    checkpoint, _ = trained
    arrays = load_arrays(TrainingRunSpec.model_validate(SPEC), "/tmp")
    vx, vy = arrays.val_x.numpy()[:12], arrays.val_y.numpy()[:12]
    u8 = np.round((vx[:, 0] * 0.5 + 0.5) * 255).astype(np.uint8)
    want = direct_probs(checkpoint, ((u8.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]).argmax(1)

    # Unlabeled: images straight in the folder.
    plain = tmp_path / "plain"
    paths = _digit_pngs(plain, u8, [""] * len(u8))
    out = tmp_path / "plain.csv"
    assert main(["predict", checkpoint, "--data", str(plain), "--out", str(out)]) == 0
    table = pacsv.read_csv(out)
    assert sorted(table["path"].to_pylist()) == sorted(paths)
    assert "label" not in table.column_names
    got = dict(zip(table["path"].to_pylist(), table["prediction"].to_pylist(), strict=True))
    assert [got[p] for p in paths] == want.tolist()
    assert "no labels" in capsys.readouterr().out

    # Only some classes present, as folders "3", "7", ...: label = the model's class id.
    some = tmp_path / "some"
    _digit_pngs(some, u8, [str(y) for y in vy])
    out = tmp_path / "some.csv"
    assert main(["predict", checkpoint, "--data", str(some), "--out", str(out)]) == 0
    table = pacsv.read_csv(out)
    labels = dict(zip(table["path"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert all(labels[p] == int(p.split("/")[-2]) for p in labels)
    printed = capsys.readouterr().out
    acc = float(np.mean(want == vy))
    assert f"accuracy {100 * acc:.2f} %" in printed

    # Folder names that are none of the model's classes: not scored as folder indexes.
    other = tmp_path / "other"
    _digit_pngs(other, u8, ["cat" if y % 2 else "dog" for y in vy])
    assert main(["predict", checkpoint, "--data", str(other),
                 "--out", str(tmp_path / "other.csv")]) == 0
    printed = capsys.readouterr().out
    assert "the folder names (cat, dog) are none of the model's classes" in printed
    assert "accuracy 0" not in printed


def test_predict_reads_a_folder_as_training_and_serving_do(trained, tmp_path, capsys):
    """Images of another size and mode, in a nested folder, beside a symlink loop: the
    probabilities are the model's on serving's preprocessing (``preprocess_image``). Ray
    Data's ``read_images`` resized them otherwise (one PNG: 0.5247 here, 0.5406 through
    ``/predict``), labelled ``3/extra/x.png`` "(other)", and followed ``3/loop -> ..``
    until the path was 40 folders deep (an audit: 24 images predicted as 984 rows)."""
    from types import SimpleNamespace

    from PIL import Image

    from raykube import data

    checkpoint, _ = trained
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    files = []
    for i, folder in enumerate(["3", "3/extra", "7", "7/deeper/still"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(3):
            path = root / folder / f"{i}{j}.png"
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
            files.append(str(path))
    (root / "3" / "loop").symlink_to("..")
    out = tmp_path / "mixed.parquet"
    assert main(["predict", checkpoint, "--data", str(root), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert sorted(table["path"].to_pylist()) == sorted(files)
    labels = dict(zip(table["path"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert all(labels[f] == int(f[len(str(root)) + 1]) for f in files), labels
    spec = TrainingRunSpec.model_validate(SPEC)
    shape = SimpleNamespace(input_shape=(1, 8, 8))
    want = direct_probs(checkpoint, np.stack([data.preprocess_image(Image.open(f), shape, spec)
                                              for f in table["path"].to_pylist()]))
    probs = np.stack(table["probabilities"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)


def test_uint8_dataset_trains_and_predicts_with_one_normalisation(ray_session, tmp_path, capsys):
    """FashionMNIST is held as its uint8 images and normalised per batch in training;
    batch inference normalises in its Ray Data blocks. Both must see the same numbers:
    the accuracy ``predict`` computes equals the one training reported, and its
    probabilities equal the model's on the tutorial's normalisation done here."""
    from raykube.train import fit

    storage = tmp_path / "storage"
    _, _, test_images, test_labels = write_fashion_mnist(storage / "datasets", n_train=200,
                                                         n_test=60)
    spec = {**SPEC, "data": {"dataset": "fashion-mnist"}}
    outcome = fit(parse_spec(spec, name="fashion-u8"), str(storage))
    checkpoint = outcome.best_checkpoint
    out = tmp_path / "preds.parquet"
    assert main(["predict", checkpoint, "--data", "fashion-mnist", "--split", "val",
                 "--cache-dir", str(storage / "datasets"), "--out", str(out)]) == 0
    table = pq.read_table(out)
    np.testing.assert_array_equal(table["label"].to_numpy(), test_labels)
    probs = np.stack(table["probabilities"].to_numpy(zero_copy_only=False))
    x = ((test_images.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    np.testing.assert_allclose(probs, direct_probs(checkpoint, x), rtol=1e-5, atol=1e-6)
    acc = float((table["prediction"].to_numpy() == test_labels).mean())
    assert acc == pytest.approx(read_meta(checkpoint).metrics["valAccuracy"], abs=1e-12)
