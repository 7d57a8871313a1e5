"""Datasets: what ``spec.data.dataset`` names, as tensors or as a Ray Dataset.

Two paths, chosen by size and location:
- in memory (``digits``, ``fashion-mnist``, ``cifar10``, ``synthetic``): each worker
  loads the whole (small) dataset once as normalised float32 tensors and indexes its own
  shard directly: no DataLoader processes, no per-example Python on the hot path.
- streamed (``image-folder``): Ray Data ``read_images`` over a directory or ``s3://``
  URI, decoded/resized/normalised in Ray Data tasks and fed to each worker through
  ``ray.train.get_dataset_shard`` + ``iter_torch_batches``.

Normalisation follows the tutorials: FashionMNIST ``Normalize((0.5,), (0.5,))``, CIFAR-10
``Normalize((0.5,)*3, (0.5,)*3)``; digits and image folders use the same [0, 1] then
(x - 0.5) / 0.5. The train/validation split is a deterministic function of ``train.seed``.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from raykube.spec import TrainingRunSpec

if TYPE_CHECKING:
    import ray.data
    import torch
    from PIL.Image import Image

Split = Literal["train", "val"]
IN_MEMORY = ("digits", "fashion-mnist", "cifar10", "synthetic")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
FASHION_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
MEAN, STD = 0.5, 0.5  # the tutorials' Normalize((0.5,), (0.5,)), per channel
DEFAULT_IMAGE_SIZE = 32
IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]


class DatasetUnavailable(RuntimeError):
    """A dataset is neither in the cache directory nor downloadable (offline)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the serving side need to know about a dataset."""

    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Arrays:
    """An in-memory dataset: normalised float32 examples and int64 labels, split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    info: DatasetInfo


# ------------------------------------------------------------------------- locations
def cache_dir_for(spec: TrainingRunSpec, storage_root: str) -> str:
    """Where downloaded datasets live: ``data.cacheDir``, else ``<storage root>/datasets``.

    torchvision reads local files only, so with an ``s3://`` storage root the cache is a
    node-local directory (each node downloads once).
    """
    if spec.data.cache_dir:
        return spec.data.cache_dir
    if "://" in storage_root:
        return os.path.join(os.path.expanduser("~"), ".cache", "raykube", "datasets")
    return os.path.join(os.path.abspath(storage_root), "datasets")


def _lock(cache_dir: str, name: str):
    from filelock import FileLock

    os.makedirs(cache_dir, exist_ok=True)
    return FileLock(os.path.join(cache_dir, f".{name}.lock"))


# --------------------------------------------------------------------------- helpers
def _normalise(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> the tutorials' Normalize(0.5, 0.5)."""
    return ((x - MEAN) / STD).astype(np.float32, copy=False)


def _split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index arrays: a seeded permutation, val first."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _limit(spec: TrainingRunSpec, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """data.numSamples caps the training examples of real datasets (quick runs)."""
    n = spec.data.num_samples
    if n is not None and spec.data.dataset != "synthetic" and n < len(x):
        idx = np.sort(np.random.default_rng(spec.train.seed + 1).permutation(len(x))[:n])
        return x[idx], y[idx]
    return x, y


# --------------------------------------------------------------------------- loaders
def _digits(spec: TrainingRunSpec) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = _normalise((d.data / 16.0).reshape(-1, 1, 8, 8))
    y = d.target.astype(np.int64)
    tr, va = _split_indices(len(x), spec.data.validation_fraction, spec.train.seed)
    return x[tr], y[tr], x[va], y[va]


def _synthetic_shape(spec: TrainingRunSpec) -> tuple[int, ...]:
    return tuple(spec.data.shape or (3, 32, 32))


def _synthetic(spec: TrainingRunSpec) -> tuple[np.ndarray, ...]:
    """Gaussian examples labelled by a fixed random linear map: deterministic, learnable."""
    shape = _synthetic_shape(spec)
    n = spec.data.num_samples or 2048
    k = spec.data.num_classes or 10
    rng = np.random.default_rng(spec.train.seed)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    w = rng.standard_normal((int(np.prod(shape)), k), dtype=np.float32)
    y = (x.reshape(n, -1) @ w).argmax(1).astype(np.int64)
    tr, va = _split_indices(n, spec.data.validation_fraction, spec.train.seed)
    return x[tr], y[tr], x[va], y[va]


def _seed_help(dataset: str, cache_dir: str) -> str:
    if dataset == "fashion-mnist":
        where = os.path.join(cache_dir, "FashionMNIST", "raw")
        files = ", ".join(f"{f}.gz" for f in FASHION_FILES)
        return (f"pre-seed {where}/ with the four files {files} (from "
                "https://github.com/zalandoresearch/fashion-mnist, gzip'd or not)")
    return (f"pre-seed {cache_dir}/ with cifar-10-python.tar.gz (from "
            "https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted "
            "cifar-10-batches-py/ folder")


def _fashion_mnist(spec: TrainingRunSpec, cache_dir: str) -> tuple[np.ndarray, ...]:
    from torchvision.datasets import FashionMNIST

    raw = os.path.join(cache_dir, "FashionMNIST", "raw")
    with _lock(cache_dir, "fashion-mnist"):
        # Pre-seeded .gz files (as published) are unpacked here, so no network is needed.
        for f in FASHION_FILES:
            path = os.path.join(raw, f)
            if not os.path.exists(path) and os.path.exists(path + ".gz"):
                with gzip.open(path + ".gz", "rb") as src, open(path + ".tmp", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(path + ".tmp", path)
        present = all(os.path.exists(os.path.join(raw, f)) for f in FASHION_FILES)
        try:
            train = FashionMNIST(cache_dir, train=True, download=not present)
            test = FashionMNIST(cache_dir, train=False, download=False)
        except Exception as exc:  # offline: URLError/RuntimeError from torchvision
            raise DatasetUnavailable(f"fashion-mnist is not in {cache_dir} and could not be "
                                     f"downloaded ({exc}); {_seed_help('fashion-mnist', cache_dir)}"
                                     ) from exc
    xs = [_normalise(ds.data.numpy().astype(np.float32)[:, None] / 255.0) for ds in (train, test)]
    ys = [ds.targets.numpy().astype(np.int64) for ds in (train, test)]
    return xs[0], ys[0], xs[1], ys[1]


def _cifar10(spec: TrainingRunSpec, cache_dir: str) -> tuple[np.ndarray, ...]:
    from torchvision.datasets import CIFAR10

    with _lock(cache_dir, "cifar10"):
        present = os.path.isdir(os.path.join(cache_dir, "cifar-10-batches-py"))
        try:
            train = CIFAR10(cache_dir, train=True, download=not present)
            test = CIFAR10(cache_dir, train=False, download=False)
        except Exception as exc:
            raise DatasetUnavailable(f"cifar10 is not in {cache_dir} and could not be "
                                     f"downloaded ({exc}); {_seed_help('cifar10', cache_dir)}"
                                     ) from exc
    # HWC uint8 -> CHW float, ToTensor + Normalize((0.5,)*3, (0.5,)*3) as in the tutorial.
    xs = [_normalise(ds.data.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) for ds in (train, test)]
    ys = [np.asarray(ds.targets, dtype=np.int64) for ds in (train, test)]
    return xs[0], ys[0], xs[1], ys[1]


def _numpy_arrays(spec: TrainingRunSpec, cache_dir: str) -> tuple[np.ndarray, ...]:
    ds = spec.data.dataset
    if ds == "digits":
        out = _digits(spec)
    elif ds == "synthetic":
        out = _synthetic(spec)
    elif ds == "fashion-mnist":
        out = _fashion_mnist(spec, cache_dir)
    elif ds == "cifar10":
        out = _cifar10(spec, cache_dir)
    else:
        raise ValueError(f"dataset {ds!r} is not an in-memory dataset")
    tx, ty = _limit(spec, out[0], out[1])
    return tx, ty, out[2], out[3]


@functools.lru_cache(maxsize=4)
def _cached_arrays(spec_key: str, cache_dir: str) -> tuple[np.ndarray, ...]:
    spec = TrainingRunSpec.model_validate_json(spec_key)
    return _numpy_arrays(spec, cache_dir)


def _data_key(spec: TrainingRunSpec) -> str:
    """The spec fields that decide the data (so Tune trials share one load per process)."""
    keep = TrainingRunSpec.model_validate({"model": {"name": "mlp"}, "data": spec.data.to_dict(),
                                           "train": {"seed": spec.train.seed}})
    return keep.model_dump_json(by_alias=True)


def load_arrays(spec: TrainingRunSpec, cache_dir: str) -> Arrays:
    """The in-memory datasets as normalised tensors, split (cached per process)."""
    import torch

    tx, ty, vx, vy = _cached_arrays(_data_key(spec), cache_dir)
    info = dataset_info(spec, cache_dir)
    return Arrays(torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(vx),
                  torch.from_numpy(vy), info)


# ------------------------------------------------------------------------- info
def _list_classes(uri: str) -> list[str]:
    """Sub-folder names of an image-folder root (local or s3://), sorted."""
    import pyarrow.fs as pafs

    from raykube.storage import filesystem

    if uri.startswith("s3://"):
        from raykube import s3

        try:
            s3.check(uri)
        except s3.S3Unavailable as exc:
            raise DatasetUnavailable(f"image-folder {exc}") from None
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=False))
    except (FileNotFoundError, OSError) as exc:
        raise DatasetUnavailable(f"image-folder {uri}: cannot list it ({exc})") from exc
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))
    if len(names) < 2:
        raise DatasetUnavailable(f"image-folder {uri}: expected one sub-folder per class "
                                 f"(at least 2), found {names or 'none'}")
    return names


def dataset_info(spec: TrainingRunSpec, cache_dir: str | None = None) -> DatasetInfo:
    """Input shape and class names, without loading the examples."""
    ds = spec.data.dataset
    if ds == "digits":
        return DatasetInfo((1, 8, 8), [str(i) for i in range(10)])
    if ds == "fashion-mnist":
        return DatasetInfo((1, 28, 28), list(FASHION_CLASSES))
    if ds == "cifar10":
        return DatasetInfo((3, 32, 32), list(CIFAR10_CLASSES))
    if ds == "synthetic":
        return DatasetInfo(_synthetic_shape(spec),
                           [str(i) for i in range(spec.data.num_classes or 10)])
    size = spec.data.image_size or DEFAULT_IMAGE_SIZE
    assert spec.data.uri, "image-folder needs data.uri"
    return DatasetInfo((1 if spec.data.grayscale else 3, size, size), _list_classes(spec.data.uri))


def prepare(spec: TrainingRunSpec, cache_dir: str) -> DatasetInfo:
    """Make the data available before workers start (download once, check folders)."""
    if spec.data.dataset in ("fashion-mnist", "cifar10"):
        _cached_arrays(_data_key(spec), cache_dir)
    return dataset_info(spec, cache_dir)


# ------------------------------------------------------------------- image handling
def preprocess_image(image: Image, info: DatasetInfo, spec: TrainingRunSpec) -> np.ndarray:
    """A PIL image as the model saw its training examples: float32, ``info.input_shape``.

    Used by serving for PNG/JPEG input: converted to the dataset's channel count, resized
    to its size, scaled to [0, 1] and normalised like training.
    """
    shape = info.input_shape
    if len(shape) != 3:
        raise ValueError(f"this model takes {list(shape)}-feature vectors, not images")
    c, h, w = shape
    img = image.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return _normalise(np.ascontiguousarray(arr))


def _in_split(path: str, root: str, split: Split, fraction: float, seed: int) -> bool:
    """Stable per-file split: hash of (seed, path relative to the root)."""
    rel = path[len(root):].lstrip("/") if path.startswith(root) else path
    h = zlib.crc32(f"{seed}:{rel}".encode()) / 2**32
    return (h < fraction) == (split == "val")


def _image_batch(batch: dict[str, Any], *, root: str, classes: list[str], channels: int,
                 split: Split, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Ray Data batch (image HWC uint8, path) -> (image CHW float32 normalised, label)."""
    keep = [i for i, p in enumerate(batch["path"])
            if _in_split(p, root, split, fraction, seed)]
    index = {c: i for i, c in enumerate(classes)}
    images = np.stack([np.asarray(batch["image"][i]) for i in keep]) if keep else \
        np.zeros((0, 1, 1, channels), dtype=np.uint8)
    if images.ndim == 3:  # grayscale HW -> HW1
        images = images[..., None]
    x = _normalise(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    y = np.asarray([index[os.path.basename(os.path.dirname(batch["path"][i]))] for i in keep],
                   dtype=np.int64)
    return {"image": x, "label": y}


def _read_image_folder(spec: TrainingRunSpec, split: Split) -> ray.data.Dataset:
    import ray.data

    from raykube.storage import filesystem

    uri = spec.data.uri
    assert uri
    info = dataset_info(spec)
    _, size, _ = info.input_shape
    channels = info.input_shape[0]
    # Object stores get raykube's filesystem (endpoint and credentials from the AWS
    # environment, see raykube.s3); its paths are "bucket/key", like the root here.
    fs, root = filesystem(uri) if "://" in uri else (None, os.path.abspath(uri))
    ds = ray.data.read_images(root, filesystem=fs, size=(size, size),
                              mode="L" if channels == 1 else "RGB", include_paths=True,
                              file_extensions=IMAGE_EXTENSIONS)
    return ds.map_batches(
        _image_batch, batch_format="numpy",
        fn_kwargs={"root": root.rstrip("/"), "classes": info.class_names, "channels": channels,
                   "split": split, "fraction": spec.data.validation_fraction,
                   "seed": spec.train.seed})


def as_ray_dataset(spec: TrainingRunSpec, split: Split, cache_dir: str) -> ray.data.Dataset:
    """One split as a Ray Dataset with columns ``image`` (float32, normalised, input
    shape) and ``label`` (int64): for batch inference and benchmarks, and the training
    input of image folders."""
    import ray.data

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if spec.data.dataset == "image-folder":
        return _read_image_folder(spec, split)
    tx, ty, vx, vy = _cached_arrays(_data_key(spec), cache_dir)
    from ray.data.block import BlockAccessor

    x, y = (tx, ty) if split == "train" else (vx, vy)
    rows = 4096  # a few blocks, so batch inference over them runs in parallel
    return ray.data.from_blocks([
        BlockAccessor.batch_to_block({"image": x[i:i + rows], "label": y[i:i + rows]})
        for i in range(0, len(x), rows)])
