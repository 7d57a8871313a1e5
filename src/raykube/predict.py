"""Batch inference: a checkpoint over a whole dataset with Ray Data.

The Ray Data "working with PyTorch" pattern: the dataset (``raykube.data.as_ray_dataset``,
the very examples and normalisation training used) streams through ``map_batches`` into
a predictor class running on an actor pool (``concurrency`` actors, each loading the
checkpoint once, GPU when asked for); predictions stream back to the driver, which
writes them to one Parquet or CSV file and counts accuracy per class as it goes, so
memory stays flat however large the dataset.

What to predict on (``data``):
- ``None``: the checkpoint's own data spec (its validation split by default): the
  accuracy then equals the ``valAccuracy`` training reported for that checkpoint;
- a TrainingRun YAML file: its ``spec.data`` (and ``train.seed``, which fixes the split);
- a dataset name (``digits``, ``fashion-mnist``, ``cifar10``, ``synthetic``);
- a directory or ``s3://`` URI of ``<class>/<image>`` files (image-folder, resized to
  the model's input; the whole folder by default, ``split="all"``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from raykube import ray_data_batches
from raykube.spec import DatasetName, TrainingRunSpec, load_one

if TYPE_CHECKING:
    import ray.data

    from raykube.checkpoint import CheckpointMeta

Split = Literal["train", "val", "all"]
NAMED_DATASETS = [d for d in DatasetName.__args__ if d != "image-folder"]  # type: ignore[attr-defined]


class PredictError(ValueError):
    """Bad ``predict`` input (data source, split, output file): a message for users."""


@dataclass
class ClassAccuracy:
    name: str
    examples: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else float("nan")


@dataclass
class PredictOutcome:
    """What ``predict`` did: where the rows went and, with labels, how good they are."""

    out: str
    rows: int
    split: str
    dataset: str
    checkpoint: str
    checkpoint_metrics: dict[str, float]
    accuracy: float | None = None
    per_class: list[ClassAccuracy] = field(default_factory=list)
    wall_time_s: float = 0.0
    unscored_reason: str | None = None
    """Why accuracy was not computed (no labels, or folder names that are not classes)."""
    same_data_as_training: bool = False
    """True when the data and split are the checkpoint's own validation split, so
    ``accuracy`` is directly comparable with ``checkpoint_metrics['valAccuracy']``."""


# ------------------------------------------------------------------------- predictor
class TorchPredictor:
    """Ray Data actor: loads the checkpoint once, then classifies batches.

    Output columns: ``prediction`` (class id), ``prediction_name``, ``confidence`` (its
    probability), ``probabilities`` (all classes), plus ``label`` and ``label_name``
    when the input has labels.
    """

    def __init__(self, checkpoint: str, label_names: list[str] | None = None,
                 label_to_model: list[int] | None = None):
        import torch

        from raykube.checkpoint import load_model
        from raykube.serve import resolve_checkpoint

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model, meta = load_model(resolve_checkpoint(checkpoint), map_location=self.device)
        self.model = model.to(self.device).eval()
        self.names = np.asarray(meta.class_names)
        self.label_names = np.asarray(label_names if label_names is not None else meta.class_names)
        # Data label id -> model class id, matched by name (-1: not a class of the model),
        # so ``label`` and ``prediction`` in the output are ids of the same classes.
        self.to_model = np.asarray(label_to_model if label_to_model is not None
                                   else range(len(self.label_names)), dtype=np.int64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        arr = np.ascontiguousarray(batch["image"], dtype=np.float32)
        if not arr.flags.writeable:  # Ray Data hands out read-only views; torch warns on them
            arr = arr.copy()
        x = torch.from_numpy(arr)
        with torch.inference_mode():
            probs = torch.softmax(self.model(x.to(self.device)).float(), dim=1).cpu().numpy()
        pred = probs.argmax(axis=1)
        out = {"prediction": pred.astype(np.int64), "prediction_name": self.names[pred],
               "confidence": probs[np.arange(len(pred)), pred], "probabilities": probs}
        if "label" in batch:
            label = np.asarray(batch["label"], dtype=np.int64)
            out = {"label": self.to_model[label], "label_name": self.label_names[label], **out}
        if "path" in batch:
            out = {"path": np.asarray(batch["path"]), **out}
        return out


# ------------------------------------------------------------------------ data source
def resolve_data(ckpt_spec: TrainingRunSpec, data: str | None) -> tuple[TrainingRunSpec, bool]:
    """The spec whose data to predict on, and whether it is the checkpoint's own data."""
    if data is None:
        return ckpt_spec, True
    doc = ckpt_spec.to_dict()
    doc.pop("tune", None)
    if data.endswith((".yaml", ".yml")) and Path(data).is_file():
        from raykube.commands._util import resolve_data_uri

        # a relative data.uri is the spec file's, as for `raykube run` (it was read from
        # the working directory: "--data imgs: no such folder" from the project's root)
        run = resolve_data_uri(load_one(data), data)
        doc["data"] = run.spec.data.to_dict()
        doc["train"]["seed"] = run.spec.train.seed
    elif data in NAMED_DATASETS:
        if data == ckpt_spec.data.dataset:
            return ckpt_spec, True
        doc["data"] = {"dataset": data}
        if ckpt_spec.data.cache_dir:
            doc["data"]["cacheDir"] = ckpt_spec.data.cache_dir
    elif "://" in data or Path(data).is_dir():
        doc["data"] = {"dataset": "image-folder", "uri": data}
        prev = ckpt_spec.data
        if prev.dataset == "image-folder":  # keep the training-time preprocessing
            doc["data"].update({k: v for k, v in prev.to_dict().items()
                                if k in ("imageSize", "grayscale", "validationFraction")})
    else:
        raise PredictError(f"--data {data!r}: not a TrainingRun YAML file, a dataset name "
                           f"({', '.join(NAMED_DATASETS)}), a directory or an s3:// URI")
    try:
        spec = TrainingRunSpec.model_validate(doc)
    except ValueError as exc:
        raise PredictError(f"--data {data!r}: {exc}") from None
    return spec, spec.data == ckpt_spec.data and spec.train.seed == ckpt_spec.train.seed


def _image_folder_for_model(spec: TrainingRunSpec, input_shape: list[int]) -> TrainingRunSpec:
    """An image folder is read at the model's input size and channel count."""
    if spec.data.dataset != "image-folder" or len(input_shape) != 3:
        return spec
    doc = spec.to_dict()
    doc["data"]["imageSize"] = int(input_shape[-1])
    doc["data"]["grayscale"] = input_shape[0] == 1
    if not doc["data"]["grayscale"]:
        doc["data"].pop("grayscale")
    return TrainingRunSpec.model_validate(doc)


@dataclass(frozen=True)
class FolderListing:
    """An image folder as listed once, before Ray starts: its class sub-folders (None:
    unlabeled images in the folder itself) and the FileInfos of the images in them. The
    decode check and the prediction's dataset use the same listing."""

    uri: str
    classes: list[str] | None
    images: list[Any]


def list_folder(uri: str) -> FolderListing:
    """The images of ``uri``: in its sub-folders (sorted by name; a sub-folder without
    images is not a class), or, when none has any, in ``uri`` itself (a plain folder of
    unlabeled images is predicted too). PredictError when there are none."""
    from raykube.data import _images_in, image_tree
    from raykube.storage import FolderUnreadable, list_folder

    try:
        fs, path, infos = list_folder(uri)
        folders = image_tree(fs, path, infos)  # training's rule: any depth, no loops
    except FolderUnreadable as exc:
        raise PredictError(f"--data {uri}: {exc}") from None
    classes = sorted(name for name, images in folders.items() if images)
    if classes:
        return FolderListing(uri, classes, [f for c in classes for f in folders[c]])
    if images := _images_in(fs, path):
        return FolderListing(uri, None, images)
    raise PredictError(f"--data {uri}: no images in it nor in its sub-folders")


def check_decodable(spec: TrainingRunSpec, listing: FolderListing) -> None:
    """PredictError naming the first image of a local folder that cannot be decoded at
    the size and mode the model reads (an ``s3://`` folder's are found by Ray Data)."""
    from raykube.data import DEFAULT_IMAGE_SIZE
    from raykube.dataset_files import BadDatasetFile, check_images

    if "://" in listing.uri:
        return
    try:
        check_images([(f.path, f.size, f.mtime_ns) for f in listing.images],
                     "L" if spec.data.grayscale else "RGB",
                     spec.data.image_size or DEFAULT_IMAGE_SIZE)
    except BadDatasetFile as exc:
        raise PredictError(f"--data {listing.uri}: {exc}") from None


def _names(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + ("..." if len(names) > most else "")


def check_fits_model(spec: TrainingRunSpec, input_shape: list[int] | tuple[int, ...],
                     class_names: list[str], meta: CheckpointMeta) -> None:
    """PredictError when a dataset (not an image folder) cannot be the model's input or
    its labels are not the model's classes.

    A dataset's labels are indices into its own class list, matched to the model's by
    name; synthetic and digits both name theirs "0", "1", ..., so 3 synthetic classes on
    a 10-class digits model matched 3 of the 10 by coincidence and printed an accuracy
    (15 %) with 7 rows of 0 examples. A dataset always has all its classes, so a class
    count that differs from the model's is another label space: refused. (An image
    folder is matched by folder name, and a subset of the classes is legitimate there:
    ``folder_note``.)
    """
    if tuple(input_shape) != tuple(meta.input_shape):
        raise PredictError(f"the data ({spec.data.dataset}) has examples of shape "
                           f"{list(input_shape)}; the checkpoint's model takes "
                           f"{list(meta.input_shape)}")
    if len(class_names) != meta.num_classes:
        raise PredictError(f"the data ({spec.data.dataset}) has {len(class_names)} classes; "
                           f"the checkpoint's model has {meta.num_classes} "
                           f"({_names(list(meta.class_names))}): its labels are not the "
                           "model's classes, so an accuracy would mean nothing")


def folder_note(uri: str, classes: list[str] | None, model_names: list[str]) -> str | None:
    """A line saying which of the model's classes an image folder covers, when not all
    of them (or when some folders are none of them); None when there is nothing to say.

    Folders are labeled by name, so a folder of only some classes ("3" and "7" of the
    digits) is a legitimate use; but the table then shows rows of 0 examples and the
    accuracy is over those classes only, which the line says. Folders none of whose
    names is a class are not scored at all (``_unscored_reason``).
    """
    if not classes:
        return None
    known = set(model_names)
    matched = [c for c in classes if c in known]
    extra = [c for c in classes if c not in known]
    if not matched or (len(matched) == len(model_names) and not extra):
        return None
    line = (f"--data {uri}: its class folders are {len(matched)} of the model's "
            f"{len(model_names)} classes ({_names(matched)}); the accuracy is over those")
    if extra:
        line += (f"; {_names(extra)} {'is' if len(extra) == 1 else 'are'} none of its "
                 "classes (their images count as wrong)")
    return line


def check_data(ckpt_spec: TrainingRunSpec, meta: CheckpointMeta,
               data: str | None) -> tuple[str | None, FolderListing | None]:
    """Everything about ``data`` that can be found wrong before Ray starts (seconds):
    PredictError (or S3Unavailable) for data it cannot use; else the ``folder_note`` and,
    for an image folder, its listing (for ``predict``, which then lists nothing again).

    An empty folder, one of only empty class folders, a missing ``s3://`` prefix, an
    image that cannot be decoded and data of another label space were found only once
    Ray was up, or never. Listing a folder (or an S3 prefix, with the client the
    prediction reads it with) and a dataset's class names cost milliseconds; a local
    folder's images are decoded once, at reduced scale where the format allows.
    """
    from raykube import s3
    from raykube.data import dataset_info

    spec, _ = resolve_data(ckpt_spec, data)
    spec = _image_folder_for_model(spec, meta.input_shape)
    if spec.data.dataset != "image-folder":
        info = dataset_info(spec)  # a named dataset's: no download, no examples read
        check_fits_model(spec, info.input_shape, list(info.class_names), meta)
        return None, None
    uri = spec.data.uri
    assert uri
    s3.check_named("--data", uri)  # a missing bucket or bad credentials, in one line
    listing = list_folder(uri)
    check_decodable(spec, listing)
    return folder_note(uri, listing.classes, list(meta.class_names)), listing


def meta_mismatch(local: str, json_meta: CheckpointMeta, meta: CheckpointMeta) -> str | None:
    """A line when meta.json is not the copy of checkpoint.pt's own metadata it should be
    (copied from another checkpoint), else None.

    meta.json said "training reported valAccuracy 95.82 %" for a checkpoint.pt that
    measures 92.76 %, while ``serve`` reported checkpoint.pt's figure. Prediction uses
    checkpoint.pt's, as serve does; the line says why the two disagree.
    """
    def shown(m: CheckpointMeta) -> str:
        acc = m.metrics.get("valAccuracy")
        return f"epoch {m.epoch}" + ("" if acc is None else f", valAccuracy {100 * acc:.2f} %")

    if (json_meta.epoch, json_meta.metrics, list(json_meta.class_names),
            list(json_meta.input_shape)) == (meta.epoch, meta.metrics, list(meta.class_names),
                                             list(meta.input_shape)):
        return None
    return (f"{Path(local) / 'meta.json'} is not this checkpoint's ({shown(json_meta)}; "
            f"checkpoint.pt holds {shown(meta)}): using checkpoint.pt's, as serve does")


def _folder_batch(batch: dict[str, Any], *, root: str, classes: list[str] | None,
                  size: int, channels: int, split: Split, fraction: float,
                  seed: int) -> dict[str, np.ndarray]:
    """Ray Data batch of raw files (bytes, path) -> image CHW float32, decoded and
    normalised exactly as training and serving do (``data.decode_images``: Ray Data's
    ``read_images`` resized and converted otherwise, and the same checkpoint scored the
    same PNG 0.5247 here and 0.5406 through ``/predict``), path, and the class folder's
    label (at any depth below it, as in training) when the folder has classes."""
    from raykube.data import _in_split, _normalise, decode_images

    keep = [i for i, p in enumerate(batch["path"])
            if split == "all" or _in_split(str(p), root, split, fraction, seed)]
    paths = [str(batch["path"][i]) for i in keep]
    images = decode_images([batch["bytes"][i] for i in keep], size, channels, paths)
    out = {"image": _normalise(images.astype(np.float32) / 255.0),
           "path": np.asarray(paths, dtype=object)}
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        out["label"] = np.asarray([index.get(p[len(root):].lstrip("/").split("/", 1)[0],
                                             len(classes)) for p in paths], dtype=np.int64)
    return out


def image_folder_dataset(spec: TrainingRunSpec, split: Split, listing: FolderListing | None = None
                         ) -> tuple[ray.data.Dataset, list[str] | None]:
    """An image folder for prediction (labeled or not), with a ``path`` column; and its
    class names (None: unlabeled). Exactly the listed files are read (``list_folder``).
    Undecodable files are one error naming the file. ``listing``: the folder as
    ``check_data`` listed it (and checked), if it did."""
    import ray.data

    from raykube.data import DEFAULT_IMAGE_SIZE, FILES_PER_BLOCK
    from raykube.storage import filesystem

    uri = spec.data.uri
    assert uri
    if listing is None or listing.uri != uri:
        listing = list_folder(uri)
        check_decodable(spec, listing)
    classes = listing.classes
    size = spec.data.image_size or DEFAULT_IMAGE_SIZE
    fs, root = filesystem(uri)
    paths = [i.path for i in listing.images]
    ds = ray.data.read_binary_files(paths, include_paths=True,
                                    filesystem=fs if "://" in uri else None,
                                    override_num_blocks=max(1, -(-len(paths) // FILES_PER_BLOCK)))
    ds = ds.map_batches(_folder_batch, batch_format="numpy", batch_size=None, fn_kwargs={
        "root": root.rstrip("/"), "classes": classes, "size": size,
        "channels": 1 if spec.data.grayscale else 3,
        "split": split, "fraction": spec.data.validation_fraction, "seed": spec.train.seed})
    return ds, (None if classes is None else [*classes, "(other)"])


def dataset_for(spec: TrainingRunSpec, split: Split, cache_dir: str) -> ray.data.Dataset:
    from raykube.data import as_ray_dataset

    if split == "all":
        return as_ray_dataset(spec, "train", cache_dir).union(as_ray_dataset(spec, "val", cache_dir))
    return as_ray_dataset(spec, split, cache_dir)


# --------------------------------------------------------------------------- writing
def check_out(path: str) -> str:
    """The output's kind (``parquet`` or ``csv``, from the file name), or PredictError:
    checked before Ray starts, so that a place the file cannot go is one line now, not
    after the whole prediction. ``s3://`` is refused: it was written as a local folder
    named ``s3:``."""
    if "://" in path or path.lower().startswith("s3:"):
        raise PredictError(f"--out {path!r}: must be a local file (write it here, then copy "
                           "it to object storage)")
    kind = Path(path).suffix.lower().lstrip(".")
    if kind not in ("parquet", "csv"):
        raise PredictError(f"--out {path!r}: the file name must end in .parquet or .csv")
    existing = Path(path).absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # missing folders are made: where they would go
    if not existing.is_dir():
        raise PredictError(f"--out {path!r}: {existing} is not a directory")
    try:  # a file made and removed: os.access says yes to root everywhere (/proc, /sys,
        # a read-only mount), and the write then failed after the whole prediction
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".raykube-out-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PredictError(f"--out {path!r}: cannot write in {existing} "
                           f"({exc.strerror or exc})") from None
    return kind


class _Writer:
    """Streams numpy batches into one Parquet or CSV file."""

    def __init__(self, path: str):
        self.path = path
        self.kind = check_out(path)
        self._writer: Any = None
        self._tmp = f"{path}.tmp-{os.getpid()}"

    def write(self, batch: dict[str, np.ndarray]) -> None:
        import pyarrow as pa

        cols: dict[str, Any] = {}
        for k, v in batch.items():
            if k == "probabilities":
                if self.kind == "csv":
                    continue  # CSV has no list cells; Parquet keeps the full vector
                v = np.ascontiguousarray(v, dtype=np.float32)
                cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1])
            else:
                cols[k] = pa.array(np.asarray(v).tolist() if v.dtype.kind in "OUS" else v)
        table = pa.table(cols)
        if self._writer is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(self._tmp, table.schema)
            else:
                import pyarrow.csv as pacsv

                self._writer = pacsv.CSVWriter(self._tmp, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            Path(self._tmp).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ main
def actor_plan(concurrency: int, resources: dict[str, float], *, cpus_per_actor: float | None,
               gpus_per_actor: float | None) -> tuple[int, float, float, str | None]:
    """``(actors, CPUs each, GPUs each, note)`` for the predictor pool on this cluster.

    Each actor is a process holding the model, so more of them than the cluster can run
    at once only costs start-up and memory: ``--concurrency 100`` on 2 CPUs started 100
    processes and had not finished after 3 minutes. The pool is capped at what fits (one
    per GPU share; without GPUs, one per CPU, or per ``cpus_per_actor``), and the note
    says so. A share larger than the whole cluster can never be placed: an error, not a
    pool waiting forever.
    """
    cpus = float(resources.get("CPU", 1.0))
    gpus = float(resources.get("GPU", 0.0))
    has_cpus = f"{cpus:g} CPU{'' if cpus == 1 else 's'}"
    has_gpus = f"{gpus:g} GPU{'' if gpus == 1 else 's'}"
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    if gpus_per_actor > gpus:
        raise PredictError(f"--gpus-per-actor {gpus_per_actor:g}: this Ray has {has_gpus}")
    if cpus_per_actor is not None and cpus_per_actor > cpus:
        raise PredictError(f"--cpus-per-actor {cpus_per_actor:g}: this Ray has {has_cpus}")
    fit = 1e-9  # 0.3 * 10 is 3.0000000000000004 in floating point
    if gpus_per_actor > 0:
        most, what = int(gpus / gpus_per_actor + fit), f"{has_gpus}, {gpus_per_actor:g} each"
    elif cpus_per_actor:
        most, what = int(cpus / cpus_per_actor + fit), f"{has_cpus}, {cpus_per_actor:g} each"
    else:
        most, what = max(1, int(cpus + fit)), f"{has_cpus} and no GPU"
    note = None
    if concurrency > most:
        note = (f"--concurrency {concurrency}: this Ray has {what}, so {most} predictor "
                f"actor{'s' if most > 1 else ''} (each is a process holding the model)")
        concurrency = most
    if cpus_per_actor is None:
        # Leave one CPU to the read/repartition tasks feeding the actors: actors holding
        # every CPU would starve them and the pipeline would wait forever.
        cpus_per_actor = min(1.0, max(cpus - 1.0, 0.0) / concurrency)
    return concurrency, cpus_per_actor, gpus_per_actor, note


def _bad_file(exc: BaseException) -> BaseException | None:
    """The ``BadDatasetFile`` behind a Ray Data failure (a decode task's), if any."""
    from raykube.dataset_files import BadDatasetFile
    from raykube.transient import exception_chain

    return next((e for e in exception_chain(exc) if isinstance(e, BadDatasetFile)), None)


def predict(checkpoint: str, *, out: str, data: str | None = None, split: Split | None = None,
            batch_size: int = 256, concurrency: int = 1, gpus_per_actor: float | None = None,
            cpus_per_actor: float | None = None,
            cache_dir: str | None = None, storage: str | None = None,
            notify: Callable[[str], None] | None = None,
            meta: CheckpointMeta | None = None,
            listing: FolderListing | None = None) -> PredictOutcome:
    """Classify a dataset with a checkpoint; write the predictions to ``out``.

    Uses the current Ray (the caller starts it). ``split`` defaults to ``val``, or
    ``all`` for an image folder given as ``data``. ``notify`` hears what was changed
    from what was asked (a ``concurrency`` the cluster cannot hold). ``meta``: the
    checkpoint's metadata as checkpoint.pt holds it (``load_model``'s, what the
    predictor actors and serve use), when the caller has it; read from there otherwise,
    never from meta.json, which may have been copied from another checkpoint.
    ``listing``: ``check_data``'s listing of an image folder, when the caller has it.
    """
    import ray
    import ray.data

    from raykube.data import cache_dir_for, dataset_info
    from raykube.serve import resolve_checkpoint

    t0 = time.perf_counter()
    writer = _Writer(out)  # checks the suffix before any work
    if batch_size < 1 or concurrency < 1:
        raise PredictError("--batch-size and --concurrency must be at least 1")
    if meta is None:
        from raykube.checkpoint import load_model

        _, meta = load_model(resolve_checkpoint(checkpoint))
    ckpt_spec = TrainingRunSpec.model_validate(meta.spec)
    spec, same = resolve_data(ckpt_spec, data)
    spec = _image_folder_for_model(spec, meta.input_shape)
    if split is None:
        split = "all" if (data is not None and spec.data.dataset == "image-folder"
                          and not same) else "val"
    if split not in ("train", "val", "all"):
        raise PredictError(f"--split {split!r}: use train, val or all")
    cache = cache_dir or cache_dir_for(spec, storage or os.environ.get("RAYKUBE_STORAGE", "runs"))
    folder = spec.data.dataset == "image-folder"
    if folder:  # read at the model's input shape; labels from its sub-folders, if any
        ds, folder_names = image_folder_dataset(spec, split, listing)
        label_names = folder_names or []
    else:
        info = dataset_info(spec, cache)
        label_names = list(info.class_names)
        check_fits_model(spec, info.input_shape, label_names, meta)
    concurrency, cpus_per_actor, gpus_per_actor, note = actor_plan(
        concurrency, ray.cluster_resources(), cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor)
    if note and notify:
        notify(note)

    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # row i of the file = example i of the split
    names = list(meta.class_names)
    label_index = {n: i for i, n in enumerate(names)}
    # Dataset label id -> model class id (-1: a class the model does not know).
    to_model = np.asarray([label_index.get(n, -1) for n in label_names], dtype=np.int64)
    # Folders none of whose names is a model class carry no usable labels.
    scored = bool(label_names) and bool((to_model >= 0).any())
    examples = np.zeros(len(names) + 1, dtype=np.int64)  # last slot: unknown classes
    correct = np.zeros(len(names) + 1, dtype=np.int64)
    rows = 0
    has_labels = False
    try:
        if not folder:
            ds = dataset_for(spec, split, cache)
        if concurrency > 1 and not folder:
            # In-memory splits come as a few large blocks; one block feeds one actor, so
            # cut them into batch-sized blocks for the whole pool to share.
            ds = ds.repartition(target_num_rows_per_block=batch_size)
        preds = ds.map_batches(
            TorchPredictor,
            fn_constructor_kwargs={"checkpoint": str(checkpoint),
                                   "label_names": label_names or None,
                                   "label_to_model": to_model.tolist() or None},
            batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
        with ray_data_batches.batches(preds, batch_size=None, batch_format="numpy") as it:
            for batch in it:
                writer.write(batch)
                rows += len(batch["prediction"])
                if "label" in batch and scored:
                    has_labels = True
                    truth = batch["label"]  # model class ids (the predictor mapped them)
                    slot = np.where(truth < 0, len(names), truth)
                    examples += np.bincount(slot, minlength=len(names) + 1)
                    correct += np.bincount(slot, weights=truth == batch["prediction"],
                                           minlength=len(names) + 1).astype(np.int64)
        writer.close()
    except BaseException as exc:
        writer.abort()
        if (bad := _bad_file(exc)) is not None:
            # an undecodable image of an s3:// folder (a local one is checked before Ray
            # starts): one line naming it, not Ray Data's traceback
            raise PredictError(f"--data {spec.data.uri}: {bad}") from None
        raise
    finally:
        ctx.execution_options.preserve_order = keep_order

    outcome = PredictOutcome(out=out, rows=rows, split=split, dataset=spec.data.dataset,
                             unscored_reason=_unscored_reason(label_names, names, scored,
                                                              folder),
                             checkpoint=str(checkpoint), checkpoint_metrics=dict(meta.metrics),
                             same_data_as_training=same and split == "val")
    if has_labels and rows:
        outcome.accuracy = float(correct.sum() / examples.sum())
        outcome.per_class = [ClassAccuracy(n, int(examples[i]), int(correct[i]))
                             for i, n in enumerate(names)]
        if examples[-1]:
            outcome.per_class.append(ClassAccuracy("(not a model class)", int(examples[-1]), 0))
    outcome.wall_time_s = time.perf_counter() - t0
    return outcome


def _unscored_reason(label_names: list[str], model_names: list[str], scored: bool,
                     folder: bool = True) -> str | None:
    if scored:
        return None
    if not label_names:
        return "no labels (images without class sub-folders): accuracy not computed"
    shown = ", ".join(n for n in label_names if n != "(other)")
    what = "the folder names" if folder else "the data's classes"
    return (f"{what} ({shown}) are none of the model's classes "
            f"({_names(model_names)}): accuracy not computed")


def print_report(outcome: PredictOutcome, console: Any = None) -> None:
    """Accuracy and a per-class table, as at the end of the CIFAR-10 tutorial."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{outcome.rows}[/] predictions ({outcome.dataset}, split "
                  f"{outcome.split}) -> [cyan]{outcome.out}[/] in {outcome.wall_time_s:.1f}s")
    if outcome.accuracy is None:
        console.print(outcome.unscored_reason or "no labels: accuracy not computed",
                      highlight=False)
        return
    table = Table(title="Accuracy per class")
    table.add_column("class")
    table.add_column("examples", justify="right")
    table.add_column("correct", justify="right")
    table.add_column("accuracy", justify="right")
    for c in outcome.per_class:
        acc = "-" if not c.examples else f"{100 * c.accuracy:.1f} %"
        table.add_row(c.name, str(c.examples), str(c.correct), acc)
    console.print(table)
    line = f"[bold]accuracy {100 * outcome.accuracy:.2f} %[/]"
    reported = outcome.checkpoint_metrics.get("valAccuracy")
    if outcome.same_data_as_training and reported is not None:
        line += f" (training reported valAccuracy {100 * reported:.2f} % for this checkpoint)"
    console.print(line)
