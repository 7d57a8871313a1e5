"""Datasets without Ray: splits, normalisation, FashionMNIST files through torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fake_datasets import write_fashion_mnist
from raykube import data
from raykube.spec import parse_spec
from raykube.transient import retry_would_help


def make_spec(dataset: str, **data_fields):
    train = data_fields.pop("train", {})
    return parse_spec({"model": {"name": "mlp"}, "data": {"dataset": dataset, **data_fields},
                       "train": train}).spec


def test_digits_shape_normalisation_and_deterministic_split():
    spec = make_spec("digits", validationFraction=0.25)
    tx, ty, vx, vy = data._numpy_arrays(spec, "/nonexistent")
    assert tx.shape[1:] == (1, 8, 8) and tx.dtype == np.float32 and ty.dtype == np.int64
    assert len(tx) + len(vx) == 1797 and len(vx) == round(1797 * 0.25)
    assert tx.min() == -1.0 and tx.max() == 1.0  # [0,1] then Normalize(0.5, 0.5)
    again = data._numpy_arrays(spec, "/nonexistent")
    assert np.array_equal(again[2], vx) and np.array_equal(again[3], vy)
    other = data._numpy_arrays(make_spec("digits", validationFraction=0.25, train={"seed": 1}), "/x")
    assert not np.array_equal(other[3], vy)
    assert set(np.unique(vy)) == set(range(10))


def test_digits_are_scikit_learns_without_importing_it():
    """Every Train worker loads the digits on its way to the first step; importing
    ``sklearn.datasets`` cost each 1.1-1.5 CPU-s (SciPy's stats). The arrays read from
    scikit-learn's file are ``load_digits``'s, and nothing of scikit-learn is imported."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    x, y = data.load_digits_arrays()
    d = load_digits()
    assert np.array_equal(x, d.data) and x.dtype == d.data.dtype
    assert np.array_equal(y, d.target)
    code = ("import json, sys; from raykube.data import load_digits_arrays; "
            "x, y = load_digits_arrays(); "
            "print(json.dumps([x.shape, sorted(m for m in sys.modules if m.startswith('sklearn'))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[[1797, 64], []]", out.stdout + out.stderr


def test_synthetic_is_deterministic_and_learnable_shape():
    spec = make_spec("synthetic", shape=[2, 4, 4], numClasses=3, numSamples=100)
    a, b = data._numpy_arrays(spec, "/x"), data._numpy_arrays(spec, "/x")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert a[0].shape == (80, 2, 4, 4) and set(np.unique(a[1])) <= {0, 1, 2}
    # uint8, like the image datasets: the training loop normalises each batch to [-1, 1]
    assert a[0].dtype == np.uint8
    x = data.normalise_batch(torch.from_numpy(a[0]))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    info = data.dataset_info(spec)
    assert info.input_shape == (2, 4, 4) and info.class_names == ["0", "1", "2"]


def test_num_samples_caps_training_examples_of_real_datasets():
    tx, _, vx, _ = data._numpy_arrays(make_spec("digits", numSamples=100), "/x")
    assert len(tx) == 100 and len(vx) == 359


def test_fashion_mnist_preseeded_gz_files_load_through_torchvision(tmp_path):
    import torch

    images, labels, test_images, test_labels = write_fashion_mnist(tmp_path)
    spec = make_spec("fashion-mnist")
    tx, ty, vx, vy = data._numpy_arrays(spec, str(tmp_path))
    assert tx.shape == (60, 1, 28, 28) and vx.shape == (20, 1, 28, 28)
    # Held as the published uint8 images; each batch normalised as the tutorial's
    # ToTensor + Normalize((0.5,), (0.5,)) when it is used.
    assert tx.dtype == np.uint8 and np.array_equal(tx[:, 0], images)
    np.testing.assert_allclose(data.normalise_batch(torch.from_numpy(tx[:7])).numpy()[:, 0],
                               (images[:7] / 255.0 - 0.5) / 0.5, atol=1e-6)
    as_rows = data._as_float({"image": tx[:7], "label": ty[:7]})  # batch inference's blocks
    assert as_rows["image"].dtype == np.float32
    np.testing.assert_allclose(as_rows["image"][:, 0], (images[:7] / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert np.array_equal(ty, labels) and np.array_equal(vy, test_labels)
    assert data.dataset_info(spec).class_names[0] == "T-shirt/top"


def test_fashion_mnist_offline_error_says_how_to_preseed(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    monkeypatch.setattr(mnist.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(data.DatasetUnavailable) as err:
        data._numpy_arrays(make_spec("fashion-mnist"), str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "train-images-idx3-ubyte.gz" in msg
    assert retry_would_help(err.value)  # a download that failed may work on the next attempt


def test_cache_dir_defaults_and_override():
    spec = make_spec("digits")
    assert data.cache_dir_for(spec, "/mnt/raykube/ns") == "/mnt/raykube/ns/datasets"
    assert data.cache_dir_for(spec, "s3://bkt/p").endswith(".cache/raykube/datasets")
    assert data.cache_dir_for(make_spec("digits", cacheDir="/data"), "/x") == "/data"


def test_preprocess_image_matches_training_normalisation():
    info = data.DatasetInfo((1, 8, 8), [str(i) for i in range(10)])
    img = Image.fromarray(np.full((16, 16), 255, dtype=np.uint8))
    x = data.preprocess_image(img, info, make_spec("digits"))
    assert x.shape == (1, 8, 8) and x.dtype == np.float32 and np.allclose(x, 1.0)
    rgb = data.preprocess_image(Image.new("RGB", (40, 20), (0, 0, 0)),
                                data.DatasetInfo((3, 32, 32), ["a", "b"]), make_spec("digits"))
    assert rgb.shape == (3, 32, 32) and np.allclose(rgb, -1.0)


def test_image_folder_classes_and_stable_split(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.png").write_bytes(b"listed, not decoded")
    (tmp_path / ".hidden").mkdir()
    spec = make_spec("image-folder", uri=str(tmp_path), imageSize=16)
    info = data.dataset_info(spec)
    assert info.class_names == ["cat", "dog"] and info.input_shape == (3, 16, 16)
    paths = [f"{tmp_path}/cat/{i}.png" for i in range(400)]
    val = [p for p in paths if data._in_split(p, str(tmp_path), "val", 0.25, 0)]
    train = [p for p in paths if data._in_split(p, str(tmp_path), "train", 0.25, 0)]
    assert len(val) + len(train) == 400 and not set(val) & set(train)
    assert 60 < len(val) < 140


def test_an_image_folder_is_listed_once_by_one_rule(tmp_path, capsys):
    """The class of an image is the class folder it is under, at any depth (training
    trained ``cat/extra/*.png`` as cat while the empty-class check said ``bird/sub``
    held no images); hidden files are not images; a local folder's symlinks are followed
    (a class folder may be data kept elsewhere) but never back into the dataset or above
    it: ``cat/loop -> ..`` listed 24 images as 984, dog's labelled cat."""
    root = tmp_path / "set"
    elsewhere = tmp_path / "elsewhere"
    for folder in ("cat", "cat/extra", "dog", "bird/sub"):
        (root / folder).mkdir(parents=True)
        (root / folder / "a.png").write_bytes(b"listed, not decoded")
    (root / "cat" / "._a.png").write_bytes(b"macOS metadata")
    (root / "cat" / "loop").symlink_to("..")
    (root / "cat" / "dogs").symlink_to("../dog")
    (root / "dog" / "up").symlink_to(tmp_path)
    elsewhere.mkdir()
    (elsewhere / "b.png").write_bytes(b"x")
    (root / "fox").symlink_to(elsewhere)
    files = data.list_image_files(str(root))
    assert files.classes == ["bird", "cat", "dog", "fox"]
    got = {p[len(str(root)) + 1:]: files.classes[label]
           for p, label in zip(files.paths, files.labels, strict=True)}
    assert got == {"bird/sub/a.png": "bird", "cat/a.png": "cat", "cat/extra/a.png": "cat",
                   "dog/a.png": "dog", "fox/b.png": "fox"}, got


def test_image_folder_needs_class_subfolders(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(data.DatasetUnavailable, match="sub-folder of images per class") as err:
        data.dataset_info(make_spec("image-folder", uri=str(tmp_path)))
    assert not retry_would_help(err.value)  # every attempt would find the same folder


def test_a_missing_image_folder_is_not_worth_a_retry(tmp_path):
    with pytest.raises(data.DatasetUnavailable, match="no-such-images: no such folder$") as err:
        data.dataset_info(make_spec("image-folder", uri=str(tmp_path / "no-such-images")))
    assert not retry_would_help(err.value)


def test_a_16_bit_image_keeps_its_picture():
    """PIL clips a 16-bit image at 255 on the way to 8 bits: a 16-bit PNG of a gradient
    was nearly all white, in training (decode_images) and in serving alike (an audit)."""
    import io

    from PIL import Image

    from raykube.data import decode_images

    ramp8 = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    blobs = []
    for img in (Image.fromarray(ramp8, "L"),
                Image.fromarray(ramp8.astype(np.uint16) * 257)):  # mode I;16
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    assert Image.open(io.BytesIO(blobs[1])).mode.startswith("I")
    eight, sixteen = decode_images(blobs, size=8, channels=1)
    assert np.array_equal(eight, sixteen), (eight[..., 0], sixteen[..., 0])
    rgb = decode_images(blobs[1:], size=8, channels=3)[0]
    assert np.array_equal(rgb[0], ramp8) and np.array_equal(rgb[2], ramp8)  # (C, H, W)


def test_a_large_photo_is_decoded_without_pillows_warning(tmp_path, monkeypatch):
    """Pillow warns (two lines on the terminal) for an image past its 89-megapixel
    "decompression bomb" limit: a large photo in the user's own folder is a picture.
    Here the limit is lowered so that a small image stands in for it."""
    import io
    import warnings

    from PIL import Image as PILImage

    from raykube.dataset_files import check_images

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "big.png"
    PILImage.new("RGB", (12, 12)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        check_images([(str(path), path.stat().st_size, 0.0)], "RGB", 8)
        buf = io.BytesIO(path.read_bytes())
        assert data.decode_images([buf.getvalue()], 8, 3).shape == (1, 3, 8, 8)
