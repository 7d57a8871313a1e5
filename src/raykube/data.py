"""Datasets: what ``spec.data.dataset`` names, as tensors or as a Ray Dataset.

Two paths, chosen by size and location:
- in memory (``digits``, ``fashion-mnist``, ``cifar10``, ``synthetic``): each worker
  loads the whole (small) dataset once and indexes its own shard directly: no DataLoader
  processes, no per-example Python on the hot path. FashionMNIST and CIFAR-10 stay the
  uint8 images they are published as (CIFAR-10's 50,000 training images: 147 MiB per
  worker instead of 586 MiB as float32) and each batch is normalised as it is used
  (``normalise_batch``); so are synthetic examples (random uint8). Digits are float32.
- ``image-folder`` (a directory or ``s3://`` URI): decoded once per run, before the Train
  workers start, into a uint8 cache fingerprinted by the files' paths, sizes and mtimes
  and the image size and mode (``image_cache``, under the run's storage: a later run, a
  retry or a Tune trial decodes nothing). A local folder of up to ``IN_PROCESS_MAX_FILES``
  images is decoded by the driver on a few threads (Ray Data's fixed cost is several times
  the decode of a few thousand small images); a larger or remote one by Ray Data on every
  CPU of the cluster. Each worker then indexes the cached uint8 array like an in-memory
  dataset and normalises its batches itself.
  Batch inference (``as_ray_dataset``) streams instead: each split reads only its own
  files, in few large blocks, one decode call per block.

Normalisation follows the tutorials: FashionMNIST ``Normalize((0.5,), (0.5,))``, CIFAR-10
``Normalize((0.5,)*3, (0.5,)*3)``; digits and image folders use the same [0, 1] then
(x - 0.5) / 0.5. The train/validation split is a deterministic function of ``train.seed``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from raykube.spec import SYNTHETIC_SAMPLES, TrainingRunSpec, validation_count
from raykube.transient import MaybeTransient

log = logging.getLogger(__name__)

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


class DatasetUnavailable(MaybeTransient, RuntimeError):
    """A dataset cannot be read: not in the cache directory nor downloadable (offline), a
    folder that is missing or holds no classes, a corrupt file. ``transient`` for the
    network's part (a failed download, an object store that did not answer)."""


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
    n_val = validation_count(n, fraction)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _limit(spec: TrainingRunSpec, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """data.numSamples caps the training examples of real datasets (quick runs)."""
    n = spec.data.num_samples
    if n is not None and spec.data.dataset != "synthetic" and n < len(x):
        idx = np.sort(np.random.default_rng(spec.train.seed + 1).permutation(len(x))[:n])
        return x[idx], y[idx]
    return x, y


# --------------------------------------------------------------------------- loaders
DIGITS_FILE = ("datasets", "data", "digits.csv.gz")
"""scikit-learn's bundled copy of the UCI handwritten digits (1,797 rows of 64 pixel
values 0-16, then the label), relative to the ``sklearn`` package."""


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``load_digits`` gives them (``data`` float64 of shape (1797, 64),
    ``target`` int), read from scikit-learn's file without importing scikit-learn.

    Why: ``import sklearn.datasets`` pulls in SciPy's stats (1.1-1.5 CPU-s here), and
    every Train worker loads the data on its way to the first step: the quickstart's
    two workers paid it side by side on two cores. Where the file is not where this
    scikit-learn keeps it, ``load_digits`` reads it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, *DIGITS_FILE)
        if os.path.isfile(path):
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.float64)
            return table[:, :-1], table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, d.target


def _digits(spec: TrainingRunSpec) -> tuple[np.ndarray, ...]:
    data, target = load_digits_arrays()
    x = _normalise((data / 16.0).reshape(-1, 1, 8, 8))
    y = target.astype(np.int64)
    tr, va = _split_indices(len(x), spec.data.validation_fraction, spec.train.seed)
    return x[tr], y[tr], x[va], y[va]


def _synthetic_shape(spec: TrainingRunSpec) -> tuple[int, ...]:
    return tuple(spec.data.shape or (3, 32, 32))


_LABEL_ROWS = 2048


def _synthetic(spec: TrainingRunSpec) -> tuple[np.ndarray, ...]:
    """Random uint8 examples, labelled by a fixed random linear map of their normalised
    values: deterministic, learnable, and held and normalised per batch exactly as
    FashionMNIST and CIFAR-10 are, so a benchmark on them measures the path real image
    datasets take.

    Every Train worker builds the whole set (it takes its own shard of each epoch), so
    this is on the path to the first step: numpy's uint8 generator and the labels, from
    chunks of ``_LABEL_ROWS`` examples (no float32 copy of the whole set), take 0.4-0.9 s
    for 50,000 x 3 x 32 x 32 where torch's float32 normal sampler took 1.2-1.3 s, for 4x
    the memory. The examples being independent draws, the last
    ``validationFraction`` of them validate (views, no copy)."""
    shape = _synthetic_shape(spec)
    n = spec.data.num_samples or SYNTHETIC_SAMPLES
    k = spec.data.num_classes or 10
    d = int(np.prod(shape))
    rng = np.random.default_rng(spec.train.seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    w = rng.standard_normal((d, k), dtype=np.float32)
    flat = x.reshape(n, d)
    y = np.empty(n, dtype=np.int64)
    for i in range(0, n, _LABEL_ROWS):  # the class whose weights best match the model's input
        y[i:i + _LABEL_ROWS] = (_normalised(flat[i:i + _LABEL_ROWS]) @ w).argmax(1)
    n_val = validation_count(n, spec.data.validation_fraction)
    return x[:n - n_val], y[:n - n_val], x[n - n_val:], y[n - n_val:]


def _seed_help(dataset: str, cache_dir: str) -> str:
    if dataset == "fashion-mnist":
        where = os.path.join(cache_dir, "FashionMNIST", "raw")
        files = ", ".join(f"{f}.gz" for f in FASHION_FILES)
        return (f"pre-seed {where}/ with the four files {files} (from "
                "https://github.com/zalandoresearch/fashion-mnist, gzip'd or not)")
    return (f"pre-seed {cache_dir}/ with cifar-10-python.tar.gz (from "
            "https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted "
            "cifar-10-batches-py/ folder")


def _load_failure(dataset: str, where: str, present: bool, exc: BaseException,
                  cache_dir: str) -> str:
    """Why a torchvision dataset did not load: corrupt files that are there, or a
    download that failed (offline); never an empty reason."""
    why = " ".join(str(exc).split()) or type(exc).__name__
    if present:
        return (f"{dataset}: the files in {where} cannot be read ({why}): one is truncated "
                f"or corrupt; delete them and {_seed_help(dataset, cache_dir)}")
    return (f"{dataset} is not in {cache_dir} and could not be downloaded ({why}); "
            f"{_seed_help(dataset, cache_dir)}")


def _fashion_mnist(spec: TrainingRunSpec, cache_dir: str) -> tuple[np.ndarray, ...]:
    from torchvision.datasets import FashionMNIST

    from raykube.dataset_files import BadDatasetFile, check_checksum, gunzip

    raw = os.path.join(cache_dir, "FashionMNIST", "raw")
    md5 = {os.path.basename(url): digest for url, digest in FashionMNIST.resources}
    fix = f"replace it: {_seed_help('fashion-mnist', cache_dir)}"
    with _lock(cache_dir, "fashion-mnist"):
        # Pre-seeded .gz files (as published) are unpacked here, so no network is needed.
        for f in FASHION_FILES:
            path = os.path.join(raw, f)
            if not os.path.exists(path) and os.path.exists(path + ".gz"):
                try:
                    gunzip(path + ".gz", path, fix)
                except BadDatasetFile as exc:
                    # Say whether it is the published file (the checksum) and which to replace.
                    try:
                        check_checksum(path + ".gz", md5.get(f + ".gz"), fix)
                    except BadDatasetFile as bad:
                        raise DatasetUnavailable(str(bad)) from None
                    raise DatasetUnavailable(str(exc)) from None
        present = all(os.path.exists(os.path.join(raw, f)) for f in FASHION_FILES)
        try:
            train = FashionMNIST(cache_dir, train=True, download=not present)
            test = FashionMNIST(cache_dir, train=False, download=False)
        except Exception as exc:  # offline: URLError/RuntimeError from torchvision
            for f in FASHION_FILES if present else ():  # name a file that is not the published one
                try:
                    check_checksum(os.path.join(raw, f + ".gz"), md5.get(f + ".gz"), fix)
                except BadDatasetFile as bad:
                    raise DatasetUnavailable(str(bad)) from None
            raise DatasetUnavailable(_load_failure("fashion-mnist", raw, present, exc,
                                                   cache_dir), transient=not present) from None
    xs = [ds.data.numpy()[:, None] for ds in (train, test)]  # uint8, N x 1 x 28 x 28
    ys = [ds.targets.numpy().astype(np.int64) for ds in (train, test)]
    return xs[0], ys[0], xs[1], ys[1]


def _cifar10(spec: TrainingRunSpec, cache_dir: str) -> tuple[np.ndarray, ...]:
    from torchvision.datasets import CIFAR10

    from raykube.dataset_files import BadDatasetFile, check_checksum

    with _lock(cache_dir, "cifar10"):
        folder = os.path.join(cache_dir, "cifar-10-batches-py")
        present = os.path.isdir(folder)
        if not present:  # a pre-seeded archive that torchvision would silently re-download
            try:
                check_checksum(os.path.join(cache_dir, CIFAR10.filename), CIFAR10.tgz_md5,
                               f"replace it: {_seed_help('cifar10', cache_dir)}")
            except BadDatasetFile as exc:
                raise DatasetUnavailable(str(exc)) from None
        try:
            train = CIFAR10(cache_dir, train=True, download=not present)
            test = CIFAR10(cache_dir, train=False, download=False)
        except Exception as exc:
            raise DatasetUnavailable(_load_failure("cifar10", folder, present, exc,
                                                   cache_dir), transient=not present) from None
    # HWC -> CHW, still uint8: ToTensor + Normalize((0.5,)*3, (0.5,)*3) as in the tutorial
    # happen per batch (normalise_batch).
    xs = [np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)) for ds in (train, test)]
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
    """The in-memory datasets as tensors, split (cached per process): float32 and
    normalised (digits), or uint8 for ``normalise_batch`` (FashionMNIST, CIFAR-10,
    synthetic)."""
    import torch

    tx, ty, vx, vy = _cached_arrays(_data_key(spec), cache_dir)
    info = dataset_info(spec, cache_dir)
    return Arrays(torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(vx),
                  torch.from_numpy(vy), info)


# ------------------------------------------------------------------------- info
_WARNED: set[tuple[str, str]] = set()


def _images_in(fs: Any, folder: str) -> list[Any]:
    """FileInfos of the images directly in ``folder`` (an unlabeled folder's, for
    ``raykube predict``)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    return sorted((i for i in infos if i.type == pafs.FileType.File and _is_image(i.path)),
                  key=lambda i: i.path)


def _is_image(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return not name.startswith(".") and os.path.splitext(name)[1].lstrip(".").lower() in (
        IMAGE_EXTENSIONS)


def image_tree(fs: Any, root: str, folders: list[Any]) -> dict[str, list[Any]]:
    """The images under each class folder of ``root`` (``folders``: its sub-folders'
    FileInfos), at any depth, sorted by path: an image's class is the class folder it is
    under (torchvision's ``ImageFolder`` rule). Training, the empty-class check and
    ``raykube predict`` all list a folder through this one function: they disagreed
    about ``cat/extra/*.png`` (trained as cat, "bird holds no images" for
    ``bird/sub/*.png``, predicted as "(other)").

    Hidden files and folders (``.DS_Store``, macOS's ``._x.png``) are not images. In a
    local folder symlinks are followed (a class folder may link to data kept elsewhere),
    each real folder once, and never into the dataset's own class folders or the folders
    above it: ``cat/loop -> ..`` was followed 40 levels deep, 24 images were trained as
    984 (the validation split's images among them) and ``dog``'s were labelled cat."""
    import pyarrow.fs as pafs

    classes = sorted((i for i in folders if i.type == pafs.FileType.Directory
                      and not i.base_name.startswith(".")), key=lambda i: i.base_name)
    if not isinstance(fs, pafs.LocalFileSystem):
        prefix = root.rstrip("/") + "/"
        found: dict[str, list[Any]] = {c.base_name: [] for c in classes}
        for info in fs.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=True)):
            rel = info.path[len(prefix):] if info.path.startswith(prefix) else ""
            parts = rel.split("/")
            if (info.type == pafs.FileType.File and len(parts) > 1 and parts[0] in found
                    and not any(p.startswith(".") for p in parts) and _is_image(info.path)):
                found[parts[0]].append(info)
        return {c: sorted(v, key=lambda i: i.path) for c, v in found.items()}
    above = set()  # the root and every folder above it
    here = os.path.realpath(root)
    while here not in above:
        above.add(here)
        here = os.path.dirname(here)
    seen = {os.path.realpath(c.path) for c in classes}
    out: dict[str, list[Any]] = {}
    for cls in classes:
        paths: list[str] = []
        for dirpath, dirnames, filenames in os.walk(cls.path, followlinks=True):
            kept = []
            for d in sorted(dirnames):
                real = os.path.realpath(os.path.join(dirpath, d))
                if d.startswith(".") or real in seen or real in above:
                    continue
                seen.add(real)
                kept.append(d)
            dirnames[:] = kept
            paths += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
        infos = fs.get_file_info(paths) if paths else []
        out[cls.base_name] = sorted((i for i in infos if i.type == pafs.FileType.File),
                                    key=lambda i: i.path)
    return out


def _list_classes(uri: str) -> list[str]:
    """Sub-folder names of an image-folder root (local or s3://) that hold images,
    sorted. An empty class folder is left out with a warning (a class the model never
    sees would only dilute its outputs); fewer than two classes with images is an error
    (a one-class model scores 1.0 and is useless)."""
    return list(_class_images(uri))


def _class_images(uri: str) -> dict[str, list[Any]]:
    """``image_tree`` of an image-folder root, without its empty classes (each warned
    about once); DatasetUnavailable for a folder that cannot be listed or has fewer than
    two classes with images."""
    from raykube.storage import FolderUnreadable, list_folder

    if uri.startswith("s3://"):
        from raykube import s3

        try:
            s3.check(uri)
        except s3.S3Unavailable as exc:
            raise DatasetUnavailable(f"image-folder {exc}", transient=exc.transient) from None
    try:
        fs, path, infos = list_folder(uri)
        tree = image_tree(fs, path, infos)
    except FolderUnreadable as exc:
        raise DatasetUnavailable(f"image-folder {uri}: {exc}",
                                 transient=not exc.missing and uri.startswith("s3://")) from None
    except OSError as exc:
        raise DatasetUnavailable(f"image-folder {uri}: cannot list it ({exc})",
                                 transient=uri.startswith("s3://")) from exc
    counts = {name: len(images) for name, images in tree.items()}
    for name, n in counts.items():
        if n == 0 and (uri, name) not in _WARNED:
            _WARNED.add((uri, name))
            log.warning("image-folder %s: class folder %r holds no images "
                        "(%s); it is left out", uri, name, ", ".join(IMAGE_EXTENSIONS[:3]) + "...")
    names = [n for n, c in counts.items() if c > 0]
    if len(names) < 2:
        raise DatasetUnavailable(
            f"image-folder {uri}: expected one sub-folder of images per class, at least 2 "
            f"classes with images; found {names or 'none'}"
            + (f" (empty: {', '.join(n for n, c in counts.items() if c == 0)})"
               if any(c == 0 for c in counts.values()) else ""))
    return {n: tree[n] for n in names}


def check_image_folder(spec: TrainingRunSpec, listed: ImageFiles) -> None:
    """Decode each image of a local image folder (``listed``: its files, as training
    reads them) once, before any worker reads it: an undecodable file is one
    ``DatasetUnavailable`` line naming it, not a worker failure retried until Ray Train
    gives up (``raykube.dataset_files``)."""
    from raykube.dataset_files import BadDatasetFile, check_images

    uri = spec.data.uri
    if not uri or "://" in uri:
        return  # object stores: the read tasks report it
    files = list(zip(listed.paths, listed.sizes, listed.mtimes, strict=True))
    try:
        check_images(files, "L" if spec.data.grayscale else "RGB",
                     spec.data.image_size or DEFAULT_IMAGE_SIZE)
    except BadDatasetFile as exc:
        raise DatasetUnavailable(f"image-folder {uri}: {exc}") from None


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


def decodes_in_process(spec: TrainingRunSpec) -> bool:
    """Whether ``build_image_cache`` decodes this image folder in its own process (a
    local folder of at most ``IN_PROCESS_MAX_FILES`` images) rather than on Ray Data."""
    uri = spec.data.uri
    if spec.data.dataset != "image-folder" or not uri or "://" in uri:
        return False
    return _in_process(list_image_files(uri))


def _in_process(files: ImageFiles) -> bool:
    limit = os.environ.get(IN_PROCESS_MAX_FILES_ENV)
    try:
        most = int(limit) if limit else IN_PROCESS_MAX_FILES
    except ValueError:
        raise DatasetUnavailable(f"{IN_PROCESS_MAX_FILES_ENV}={limit!r}: expected a whole "
                                 "number of files") from None
    return "://" not in files.uri and len(files.paths) <= most


def prepare(spec: TrainingRunSpec, cache_dir: str, storage_root: str | None = None) -> DatasetInfo:
    """Make the data available before workers start (download once, check folders).

    An image folder that ``build_image_cache`` decodes in-process is decoded into its
    cache here (given ``storage_root``): that decode is the check, so no image is decoded
    twice. A larger local folder is checked file by file (Ray Data decodes it later)."""
    if spec.data.dataset in ("fashion-mnist", "cifar10"):
        _cached_arrays(_data_key(spec), cache_dir)
    if spec.data.dataset == "image-folder":
        uri = spec.data.uri
        assert uri, "image-folder needs data.uri"
        files = list_image_files(uri)
        check_split(spec, files)
        if storage_root is not None and "://" not in uri and _in_process(files):
            build_image_cache(spec, storage_root, files)
        else:
            check_image_folder(spec, files)
    return dataset_info(spec, cache_dir)


def check_split(spec: TrainingRunSpec, files: ImageFiles) -> None:
    """An image folder's split leaves every Train worker a training example and
    something to validate on (``raykube.spec.split_problem``; the spec alone decides it
    for the other datasets), or one ``DatasetUnavailable`` line before any worker."""
    from raykube.spec import split_problem

    val = split_mask(files, "val", spec.data.validation_fraction, spec.train.seed)
    if problem := split_problem(spec, int((~val).sum()), int(val.sum())):
        raise DatasetUnavailable(f"{problem[0]}: {problem[1]} (image-folder {files.uri} has "
                                 f"{len(files.paths)} images)")


# ------------------------------------------------------------------- image handling
def to_mode(image: Image, mode: str) -> Image:
    """``image.convert(mode)`` that keeps the picture of a 16-bit or 32-bit image: PIL
    clips those at 255 on the way to 8 bits, so a 16-bit PNG (common for scientific and
    medical images) became nearly black and white, in training and in serving alike,
    without a word. Integers are scaled from their bit depth's range (16 bits unless a
    value needs more), floats from [0, 1] when they lie in it."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image.convert(mode)
    arr = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
    else:
        top = 65535.0 if not arr.size or arr.max() <= 65535 else float(2**32 - 1)
    eight = np.clip(np.nan_to_num(arr) * (255.0 / top), 0, 255).round().astype(np.uint8)
    from PIL import Image as PILImage

    return PILImage.fromarray(eight, "L").convert(mode)


def preprocess_image(image: Image, info: DatasetInfo, spec: TrainingRunSpec) -> np.ndarray:
    """A PIL image as the model saw its training examples: float32, ``info.input_shape``.

    Used by serving for PNG/JPEG input: converted to the dataset's channel count, resized
    to its size, scaled to [0, 1] and normalised like training.
    """
    shape = info.input_shape
    if len(shape) != 3:
        raise ValueError(f"this model takes {list(shape)}-feature vectors, not images")
    c, h, w = shape
    img = to_mode(image, "L" if c == 1 else "RGB")
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


DECODE_LOG_ENV = "RAYKUBE_DECODE_LOG"
"""Tests: a directory where every process appends the paths it decodes (one file each);
read where a dataset is built (the driver) and passed to the decoding tasks."""
IMAGE_CACHE_VERSION = 1
FILES_PER_BLOCK = 512
"""Image files per Ray Data block when decoding: few, large blocks (``read_images``
makes one per file, and its per-block overhead costs more than a small image's decode)."""
IN_PROCESS_MAX_FILES = 50_000
"""A local folder of at most this many images is decoded into the cache by the process
that builds it, on a few threads (Pillow's decode, convert and resize release the GIL):
~0.2 ms per 32-px PNG here, 3,000 files in ~0.6 s, where Ray Data's fixed cost (its
executor, a metadata pass, worker processes importing pyarrow and PIL) is ~5 s before
the first decode. Larger folders and ``s3://`` folders are decoded by Ray Data on every
CPU of the cluster."""
IN_PROCESS_MAX_FILES_ENV = "RAYKUBE_DECODE_IN_PROCESS_MAX_FILES"
"""Overrides ``IN_PROCESS_MAX_FILES`` (0: always Ray Data, e.g. when the driver's pod
has little CPU and the cluster much)."""
DECODE_THREADS = 4
DECODE_CHUNK = 256


@dataclass(frozen=True)
class ImageFiles:
    """An image folder's files (sorted), their labels, and where it lives."""

    root: str  # path inside the filesystem (no scheme)
    uri: str
    paths: list[str]
    labels: np.ndarray
    sizes: list[int]
    mtimes: list[int]
    classes: list[str]


def _folder_root(uri: str) -> str:
    return (uri.split("://", 1)[1] if "://" in uri else os.path.abspath(uri)).rstrip("/")


def list_image_files(uri: str) -> ImageFiles:
    """Every image file of ``<uri>/<class>/...`` (sorted), with its label, size and mtime
    (``image_tree``: at any depth below its class folder)."""
    from raykube.storage import filesystem

    tree = _class_images(uri)
    classes = list(tree)
    root = filesystem(uri)[1].rstrip("/")
    found = sorted((i.path, label, int(i.size or 0), int(i.mtime_ns or 0))
                   for label, c in enumerate(classes) for i in tree[c])
    if not found:
        raise DatasetUnavailable(f"image-folder {uri}: no image files "
                                 f"({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return ImageFiles(root=root, uri=uri, paths=[f[0] for f in found],
                      labels=np.asarray([f[1] for f in found], dtype=np.int64),
                      sizes=[f[2] for f in found], mtimes=[f[3] for f in found],
                      classes=classes)


def split_mask(files: ImageFiles, split: Split, fraction: float, seed: int) -> np.ndarray:
    """Which of ``files`` belong to ``split`` (the stable hash of ``_in_split``)."""
    return np.fromiter((_in_split(p, files.root, split, fraction, seed) for p in files.paths),
                       dtype=bool, count=len(files.paths))


def decode_images(blobs: list[bytes], size: int, channels: int,
                  paths: list[str] | None = None, log_dir: str | None = None) -> np.ndarray:
    """Encoded images -> one uint8 (N, C, size, size) array, exactly as serving
    preprocesses an uploaded image (``preprocess_image``: convert, then resize).

    An undecodable image is a ``BadDatasetFile`` naming its path (when ``paths`` is given):
    one line, not a traceback from inside a decode task or a Train worker."""
    from PIL import Image

    from raykube.dataset_files import BadDatasetFile

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(blobs), size, size, channels), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        try:
            with warnings.catch_warnings():  # a large photo of the user's (check_images)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = to_mode(Image.open(io.BytesIO(blob)), mode)
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...
            if paths is None:
                raise
            # (PIL names the buffer: "cannot identify image file <_io.BytesIO object at
            # 0x7fe3...>", no help to anyone)
            why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "",
                         " ".join(str(exc).split())) or type(exc).__name__
            raise BadDatasetFile(f"{paths[i]} is not a readable image ({why}); remove or "
                                 "replace it") from None
        if img.size != (size, size):
            img = img.resize((size, size))
        out[i] = np.asarray(img).reshape(size, size, channels)
    if log_dir and paths is not None:
        with open(os.path.join(log_dir, f"decoded-{os.getpid()}.log"), "a") as f:
            f.write("".join(f"{p}\n" for p in paths))
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _decode_block(batch: dict[str, Any], *, size: int, channels: int, root: str,
                  classes: list[str], decode_log: str | None = None) -> dict[str, np.ndarray]:
    """A Ray Data block of raw files -> uint8 images, labels (class folder) and paths."""
    paths = [str(p) for p in batch["path"]]
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[p[len(root):].lstrip("/").split("/", 1)[0]] for p in paths]
    return {"image": decode_images(list(batch["bytes"]), size, channels, paths, decode_log),
            "label": np.asarray(labels, dtype=np.int64), "path": np.asarray(paths)}


def _image_shape(spec: TrainingRunSpec) -> tuple[int, int]:
    return spec.data.image_size or DEFAULT_IMAGE_SIZE, 1 if spec.data.grayscale else 3


def _read_files(spec: TrainingRunSpec, files: ImageFiles, paths: list[str], *,
                num_cpus: float = 1.0) -> ray.data.Dataset:
    """Ray Data over exactly ``paths``: raw bytes in blocks of ``FILES_PER_BLOCK`` files,
    one ``decode_images`` call per block -> columns image (uint8 CHW), label, path."""
    import ray.data

    size, channels = _image_shape(spec)
    fs = None
    if "://" in files.uri:
        from raykube.storage import filesystem

        fs = filesystem(files.uri)[0]
    blocks = max(1, -(-len(paths) // FILES_PER_BLOCK))
    ds = ray.data.read_binary_files(paths, include_paths=True, filesystem=fs,
                                    override_num_blocks=blocks)
    return ds.map_batches(_decode_block, batch_format="numpy", batch_size=None,
                          num_cpus=num_cpus,
                          fn_kwargs={"size": size, "channels": channels, "root": files.root,
                                     "classes": files.classes,
                                     "decode_log": os.environ.get(DECODE_LOG_ENV)})


def image_cache_dir(spec: TrainingRunSpec, storage_root: str, files: ImageFiles) -> str:
    """``<storage root>/datasets/image-folder/<fingerprint>``: the fingerprint covers each
    file's path (relative), size and mtime, the image size and the colour mode."""
    size, channels = _image_shape(spec)
    doc = {"v": IMAGE_CACHE_VERSION, "size": size, "channels": channels,
           "files": [[p[len(files.root):], s, m]
                     for p, s, m in zip(files.paths, files.sizes, files.mtimes, strict=True)]}
    digest = hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()[:24]
    base = storage_root if "://" in storage_root else os.path.abspath(storage_root)
    return f"{base.rstrip('/')}/datasets/image-folder/{digest}"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _decode_in_process(files: ImageFiles, x: np.ndarray, size: int, channels: int) -> None:
    """Decode a local folder into ``x`` (indexed like ``files.paths``) on a few threads."""
    from concurrent.futures import ThreadPoolExecutor

    log_dir = os.environ.get(DECODE_LOG_ENV)

    def chunk(start: int) -> None:
        paths = files.paths[start:start + DECODE_CHUNK]
        blobs = []
        for p in paths:
            with open(p, "rb") as f:
                blobs.append(f.read())
        x[start:start + len(paths)] = decode_images(blobs, size, channels, paths, log_dir)

    threads = max(1, min(DECODE_THREADS, len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(threads, thread_name_prefix="raykube-decode") as pool:
        for _ in pool.map(chunk, range(0, len(files.paths), DECODE_CHUNK)):
            pass  # re-raises the first failure (a BadDatasetFile naming the image)


def _decode_with_ray_data(spec: TrainingRunSpec, files: ImageFiles, x: np.ndarray) -> None:
    """Decode with Ray Data on every CPU of the cluster (large or ``s3://`` folders)."""
    from raykube.dataset_files import BadDatasetFile
    from raykube.ray_data_batches import batches

    position = {p: i for i, p in enumerate(files.paths)}
    try:
        with batches(_read_files(spec, files, files.paths), batch_size=None,
                     batch_format="numpy", prefetch_batches=2) as it:
            for batch in it:
                idx = [position[str(p)] for p in batch["path"]]
                x[idx] = batch["image"]
    except Exception as exc:
        # Ray Data re-raises a decode task's error on the driver as
        # RayTaskError(UserCodeException), with the task's exception only as traceback
        # text (not as a cause): find our one line in it.
        for line in str(exc).splitlines():
            _, found, rest = line.partition(f"{BadDatasetFile.__name__}: ")
            if found:
                raise BadDatasetFile(rest.strip()) from None
        raise


def _ray_is_up() -> bool:
    import ray

    return ray.is_initialized()


def build_image_cache(spec: TrainingRunSpec, storage_root: str,
                      files: ImageFiles | None = None) -> str:
    """Decode the image folder once into its uint8 cache (unless it is there); return
    the cache's address. Every image is decoded exactly once, and that decode is also
    the check: an unreadable file is a ``DatasetUnavailable`` naming it. A local folder
    of up to ``IN_PROCESS_MAX_FILES`` images is decoded here, on a few threads; a larger
    or remote one by Ray Data (every CPU of the cluster, before any Train worker holds
    one) when Ray is up, else here."""
    from raykube.dataset_files import BadDatasetFile
    from raykube.storage import exists, write_bytes

    assert spec.data.uri, "image-folder needs data.uri"
    files = files or list_image_files(spec.data.uri)  # ``files``: the caller just listed it
    cache = image_cache_dir(spec, storage_root, files)
    if exists(f"{cache}/done"):
        return cache
    local = "://" not in cache
    if local:
        os.makedirs(cache, exist_ok=True)
    lock = _lock(cache, "build") if local else contextlib.nullcontext()
    with lock:
        if exists(f"{cache}/done"):
            return cache
        size, channels = _image_shape(spec)
        x = np.empty((len(files.paths), channels, size, size), dtype=np.uint8)
        try:
            if _in_process(files):
                _decode_in_process(files, x, size, channels)
            elif _ray_is_up():
                _decode_with_ray_data(spec, files, x)
            else:
                from raykube.storage import read_bytes

                scheme = files.uri.split("://", 1)[0] + "://" if "://" in files.uri else ""
                for i, p in enumerate(files.paths):
                    x[i] = decode_images([read_bytes(scheme + p) or b""], size, channels, [p],
                                         os.environ.get(DECODE_LOG_ENV))[0]
        except BadDatasetFile as exc:
            raise DatasetUnavailable(f"image-folder {spec.data.uri}: {exc}") from None
        write_bytes(f"{cache}/x.npy", _npy_bytes(x))
        write_bytes(f"{cache}/y.npy", _npy_bytes(files.labels))
        write_bytes(f"{cache}/files.json", json.dumps(
            {"root": files.root, "paths": files.paths, "classes": files.classes}).encode())
        write_bytes(f"{cache}/done", b"ok")
    return cache


def load_image_cache(cache: str, spec: TrainingRunSpec) -> Arrays:
    """The cached folder as uint8 tensors, split: ``train_x``/``val_x`` are uint8 (N, C, H,
    W); ``normalise_batch`` turns a batch into the model's float input. A local cache is
    memory-mapped (pages shared by the workers of a node), a remote one downloaded."""
    import torch

    from raykube.storage import read_bytes

    def load(name: str) -> np.ndarray:
        if "://" not in cache:
            return np.load(f"{cache}/{name}", mmap_mode="r")
        raw = read_bytes(f"{cache}/{name}")
        assert raw is not None, f"{cache}/{name} is missing"
        return np.load(io.BytesIO(raw))

    x, y = load("x.npy"), load("y.npy")
    meta = json.loads((read_bytes(f"{cache}/files.json") or b"{}").decode())
    files = ImageFiles(root=meta["root"], uri=spec.data.uri or "", paths=meta["paths"],
                       labels=y, sizes=[], mtimes=[], classes=meta["classes"])
    val = split_mask(files, "val", spec.data.validation_fraction, spec.train.seed)
    tr_idx, va_idx = np.flatnonzero(~val), np.flatnonzero(val)
    size, channels = _image_shape(spec)
    info = DatasetInfo((channels, size, size), list(meta["classes"]))
    return Arrays(torch.from_numpy(np.ascontiguousarray(x[tr_idx])),
                  torch.from_numpy(np.ascontiguousarray(y[tr_idx])),
                  torch.from_numpy(np.ascontiguousarray(x[va_idx])),
                  torch.from_numpy(np.ascontiguousarray(y[va_idx])), info)


def normalise_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in the tutorials' Normalize(0.5, 0.5): x / 127.5 - 1."""
    import torch

    if x.dtype != torch.uint8:
        return x
    return x.float().mul_(1.0 / (255.0 * STD)).sub_(MEAN / STD)


def _normalised(x: np.ndarray) -> np.ndarray:
    """``normalise_batch`` for a numpy uint8 array."""
    return x.astype(np.float32) * np.float32(1.0 / (255.0 * STD)) - np.float32(MEAN / STD)


def _normalise_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"image": _normalised(batch["image"]), "label": batch["label"]}


def _read_image_folder(spec: TrainingRunSpec, split: Split) -> ray.data.Dataset:
    """One split, streamed: only this split's files are read, in blocks of
    ``FILES_PER_BLOCK``, decoded to uint8 and normalised to float32 per block."""
    assert spec.data.uri
    files = list_image_files(spec.data.uri)
    mask = split_mask(files, split, spec.data.validation_fraction, spec.train.seed)
    paths = [p for p, keep in zip(files.paths, mask, strict=True) if keep]
    return _read_files(spec, files, paths).map_batches(_normalise_columns, batch_format="numpy",
                                                       batch_size=None)


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
        BlockAccessor.batch_to_block(_as_float({"image": x[i:i + rows], "label": y[i:i + rows]}))
        for i in range(0, len(x), rows)])


def _as_float(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of uint8 images normalised as training sees them; float batches as they are."""
    return _normalise_columns(batch) if batch["image"].dtype == np.uint8 else batch
