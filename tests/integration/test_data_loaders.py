"""Ray Data ingest on real local Ray: a PNG image folder, as a dataset and for training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raykube.spec import parse_spec

pytestmark = pytest.mark.integration

# Before the session's Ray starts (collection precedes it): Ray Train's controller then
# polls every 0.2 s instead of 2 s, so each short epoch does not wait for a poll.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

COLOURS = {"blue": (20, 40, 230), "red": (230, 30, 20)}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """40 PNGs per class, 12x10 pixels, class = colour (+ noise) and sub-folder name."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls, rgb in COLOURS.items():
        (root / cls).mkdir()
        for i in range(40):
            px = np.clip(np.array(rgb) + rng.integers(-20, 20, (10, 12, 3)), 0, 255)
            Image.fromarray(px.astype(np.uint8)).save(root / cls / f"{i:03d}.png")
    (root / "red" / "notes.txt").write_text("not an image")
    return root


def folder_spec(root: Path, **train):
    return parse_spec({
        "model": {"name": "cifar-cnn"},
        "data": {"dataset": "image-folder", "uri": str(root), "imageSize": 8,
                 "validationFraction": 0.25},
        "train": {"epochs": 2, "batchSize": 16, "optimizer": {"name": "adam", "lr": 0.01}, **train},
        "scaling": {"workers": 2},
        "checkpoint": {"keep": 1},
    }, name="folder").spec


def test_image_folder_reads_through_ray_data(ray_session, image_folder):
    from raykube import data

    spec = folder_spec(image_folder)
    train = data.as_ray_dataset(spec, "train", "/unused").take_all()
    val = data.as_ray_dataset(spec, "val", "/unused").take_all()
    assert len(train) + len(val) == 80 and 5 < len(val) < 35
    for row in train + val:
        assert row["image"].shape == (3, 8, 8) and row["image"].dtype == np.float32
    # Class from the sub-folder name: blue images have a high blue channel, label 0.
    for row in train:
        blue = row["image"][2].mean() > row["image"][0].mean()
        assert row["label"] == (0 if blue else 1)
    assert min(r["image"].min() for r in train) >= -1.0 and max(r["image"].max() for r in train) <= 1.0
    # Same seed, same split; another seed, another split.
    again = data.as_ray_dataset(spec, "val", "/unused").take_all()
    assert sorted(r["image"].sum() for r in again) == sorted(r["image"].sum() for r in val)
    other = data.as_ray_dataset(folder_spec(image_folder, seed=7), "val", "/unused").take_all()
    assert sorted(r["image"].sum() for r in other) != sorted(r["image"].sum() for r in val)


def _decoded(log_dir: Path) -> list[str]:
    return [line for f in sorted(log_dir.glob("decoded-*.log"))
            for line in f.read_text().splitlines()]


def test_training_on_an_image_folder_decodes_each_image_once(ray_session, image_folder,
                                                             tmp_path, monkeypatch):
    from raykube import data
    from raykube.local import validation_example
    from raykube.train import fit

    spec = folder_spec(image_folder)
    n_val = data.as_ray_dataset(spec, "val", "/unused").count()
    log = tmp_path / "decode-log"
    log.mkdir()
    monkeypatch.setenv(data.DECODE_LOG_ENV, str(log))
    run = parse_spec(spec.to_dict(), name="folder")
    out = fit(run, str(tmp_path / "runs"))
    assert [h["epoch"] for h in out.history] == [1, 2]
    last = out.history[-1]
    # Every validation image, every training image but the remainder of an uneven split
    # over 2 workers (equal shards, as DistributedSampler(drop_last=True)).
    assert last["valExamples"] == n_val and last["trainExamples"] == (80 - n_val) // 2 * 2
    assert out.best_metrics["valAccuracy"] >= 0.9  # two colours: trivially separable
    # Two epochs, training and validation, and the demo example: each image decoded once.
    images = sorted(str(p) for p in image_folder.rglob("*.png"))
    x, label = validation_example(run, str(tmp_path / "runs"))
    assert np.asarray(x).shape == (3, 8, 8) and label in COLOURS
    assert sorted(_decoded(log)) == images
    # Another run over the same files (here: more epochs, another name) decodes nothing.
    more = parse_spec({**spec.to_dict(), "train": {**spec.to_dict()["train"], "epochs": 1}},
                      name="folder-again")
    fit(more, str(tmp_path / "runs"))
    assert sorted(_decoded(log)) == images
    # A changed file is a new folder: decoded again (the cache is keyed by size/mtime).
    changed = image_folder / "red" / "000.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    fit(parse_spec(more.spec.to_dict(), name="folder-third"), str(tmp_path / "runs"))
    assert len(_decoded(log)) == 2 * len(images)


def test_both_decode_paths_give_the_same_cache_and_name_a_bad_file(ray_session, image_folder,
                                                                   tmp_path, monkeypatch):
    """A small local folder decodes in-process (threads); a large or s3:// one on Ray
    Data (forced here by lowering the threshold). Same bytes either way, and an
    undecodable image is one ``DatasetUnavailable`` naming it on both paths."""
    import shutil

    from raykube import data

    spec = folder_spec(image_folder)
    assert data.decodes_in_process(spec)
    in_process = data.build_image_cache(spec, str(tmp_path / "a"))
    monkeypatch.setattr(data, "IN_PROCESS_MAX_FILES", 0)
    assert not data.decodes_in_process(spec)
    ray_data = data.build_image_cache(spec, str(tmp_path / "b"))
    for name in ("x.npy", "y.npy"):
        a, b = np.load(f"{in_process}/{name}"), np.load(f"{ray_data}/{name}")
        assert a.shape == b.shape and np.array_equal(a, b)
    assert np.load(f"{in_process}/x.npy").shape == (80, 3, 8, 8)

    bad_root = tmp_path / "bad"
    shutil.copytree(image_folder, bad_root)
    (bad_root / "blue" / "017.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = folder_spec(bad_root)
    for limit in (0, 10_000):  # Ray Data, then in-process
        monkeypatch.setattr(data, "IN_PROCESS_MAX_FILES", limit)
        with pytest.raises(data.DatasetUnavailable) as err:
            data.build_image_cache(bad, str(tmp_path / f"bad-{limit}"))
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"image-folder {bad_root}: ")
        assert f"{bad_root}/blue/017.png is not a readable image" in msg
        assert not list((tmp_path / f"bad-{limit}").rglob("done"))  # nothing half-written kept
