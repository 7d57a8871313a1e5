"""The TrainingRun contract: pydantic models, the one source of truth.

The CRD under ``k8s/`` is generated from these models (``raykube crd``), the operator
parses objects with them, and ``raykube run`` / ``raykube train`` read YAML files with
them. This module must stay importable without torch or ray (the operator image has
neither); a test enforces that.

Conventions:
- YAML is camelCase (``batchSize``), Python is snake_case (``batch_size``). Models only
  accept the camelCase spelling, exactly as the API server would: a snake_case key is an
  unknown field and is refused, rather than silently pruned on a cluster.
- Unknown fields are errors everywhere in ``spec`` (``extra="forbid"``).
- Types are strict (no ``"2"`` for ``2``), as the API server's schema is.
- Metric names are camelCase too (``valAccuracy``), the same in the loop's reports,
  ``status.progress``, ``checkpoint.scoreMetric``, ``tune.metric`` and ``result.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import math
import os
import re
import reprlib
import sys
import typing
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from raykube import k8s_rules, kube_yaml

GROUP = "raykube.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingRun"
PLURAL = "trainingruns"
SINGULAR = "trainingrun"
SHORT_NAMES = ["tr"]
LABEL = f"{GROUP}/trainingrun"
"""Label put on every child object, value = the TrainingRun's name."""

MAX_SEED = 2**32 - 1
"""The largest ``train.seed``: the common 32-bit seed range. Larger seeds validated and
then failed every worker (torch's generators take a signed 64-bit seed, and the
shuffling seed is derived from it by a multiplication)."""

# Metrics the training loop reports every epoch, with the direction that is "better".
METRICS: dict[str, Literal["max", "min"]] = {
    "valAccuracy": "max",
    "valLoss": "min",
    "trainLoss": "min",
    "trainAccuracy": "max",
}

DatasetName = Literal["digits", "fashion-mnist", "cifar10", "image-folder", "synthetic"]
ModelName = Literal["mlp", "cifar-cnn", "resnet18"]

# Input shape (C, H, W) and class count of the datasets whose shape is fixed. Used for
# validation and rendering; the data module is the authority at run time.
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "digits": ((1, 8, 8), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}

_DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_NAMESPACE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A namespace is an RFC 1123 label: it may start with a digit (``1team``), where a
TrainingRun's name may not (it names Services, which are RFC 1035 labels)."""
_QUANTITY = k8s_rules.QUANTITY_PATTERN
_DNS_SUBDOMAIN = k8s_rules.DNS_SUBDOMAIN_PATTERN
MAX_PATH_LENGTH = 4096
"""Longest path or URI (Linux's PATH_MAX). Without a bound, a spec of 128 KiB and more
applied with ``kubectl apply`` took the TrainingRun's annotations (kubectl's copy of it,
kopf's) over Kubernetes' 256 KiB, and every event of the run failed in kopf."""
MAX_SPEC_INT = 2**53 - 1
"""The bound of an integer field with no other. Without one, ``numSamples:
10000000000000000000`` passed validation and the API server refused it (past int64); the
CRD keeps a bound as a float64, which holds integers exactly up to 2**53 (2**63 - 1 as a
bound made the API server refuse every TrainingRun)."""
MIN_GPU_SHARE = 1e-4
"""The smallest share of a GPU Ray takes (its resource unit): ``num_gpus=0.00005`` is
refused with "The precision of the fractional quantity of resource GPU cannot go beyond
0.0001" when the actor starts, after validation, the API server and KubeRay took it."""
GPU_SHARE_RULE = "must be 0 or at least 0.0001 (the smallest share of a GPU Ray takes)"
MIN_POD_CPUS = 0.1
"""The fewest CPUs of a Ray pod: below, Ray's own processes starve beside the work (and
under a millicore Kubernetes gets a limit of 0)."""
MAX_NAME_LENGTH = 40
"""Child objects append suffixes (``-serve-svc``, KubeRay's ``-raycluster-xxxxx``) and
Kubernetes caps Service names at 63 characters, so TrainingRun names stay short."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # 3-63 characters


def _short(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error names the value it refuses
    without repeating a whole list from the file."""
    r = reprlib.Repr()  # attributes, not keywords: Python 3.10 and 3.11 take none
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = 20
    r.maxlevel = 4
    return r.repr(value)[:limit]


MAX_S3_PREFIX_BYTES = 800
"""An s3:// prefix's longest (UTF-8 bytes): S3 keys are at most 1,024 bytes, and below
a prefix raykube writes ``<namespace>/<name>/`` (up to 104) and a search's
``trial-<id>/train/checkpoint_epoch_NNNN/checkpoint.pt`` (~60). A 1,100-byte prefix was
valid, then failed with the SDK's ``KeyTooLongError``."""


def _reserved_bucket(bucket: str) -> str | None:
    """What S3's naming rules refuse beyond the characters (AWS's, which MinIO follows
    for the address form): the AWS SDK answered ``s3://192.168.1.1/x`` with
    ``InvalidBucketName`` in its own terms, after ``validate`` said valid."""
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket):
        return "it is formatted as an IP address"
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if bucket.startswith(prefix):
            return f"it must not start with {prefix!r}"
    for suffix in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if bucket.endswith(suffix):
            return f"it must not end with {suffix!r}"
    return None


def file_uri_path(location: str) -> str:
    """``file:///data/runs`` -> ``/data/runs``; anything else as it is. The commands take
    a ``file://`` URI as its path (the spec does not: ``location_problem``)."""
    return (urlsplit(location).path or "/") if location.startswith("file://") else location


def location_problem(location: str) -> str | None:
    """Why ``location`` is neither a filesystem path nor an ``s3://<bucket>[/<prefix>]``
    URI, the only two kinds of storage raykube reads and writes; None when it is one.

    One rule for the spec (``data.uri``, ``checkpoint.storage.uri``) and the commands
    (``--storage``, a checkpoint to serve): pyarrow would otherwise take ``gs://`` and
    try Google's metadata server (a hang with no network), answer ``S3://`` with a
    traceback, and read ``s3:/bucket`` as a local folder named ``s3:``.
    """
    if location != location.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in location):
        # a pasted newline or space: the pods look for exactly that path (or key)
        return (f"{location!r}: has leading or trailing spaces or a control character; "
                "it would be used exactly as written")
    m = _SCHEME.match(location)
    if m is None:
        return None  # a path, relative or absolute
    scheme = m.group(1)
    if scheme.lower() == "s3" and scheme != "s3":
        return f"{location!r}: write the scheme in lower case (s3://)"
    if scheme == "s3":
        if not location.startswith("s3://"):
            return f"{location!r}: an S3 URI starts with s3:// (two slashes)"
        rest = location[len("s3://"):]
        bucket = rest.partition("/")[0]
        if not bucket:
            return f"{location!r}: names no bucket (s3://<bucket>/<prefix>)"
        if "?" in rest or "#" in rest:
            return f"{location!r}: an s3:// URI takes no query or fragment"
        if not _S3_BUCKET.match(bucket) or ".." in bucket:
            return (f"{location!r}: {bucket!r} is not an S3 bucket name (3 to 63 "
                    "lower-case letters, digits, dots and hyphens)")
        if why := _reserved_bucket(bucket):
            return f"{location!r}: {bucket!r} is not an S3 bucket name ({why})"
        if len(prefix := rest.partition("/")[2].encode()) > MAX_S3_PREFIX_BYTES:
            return (f"{location!r}: its prefix is {len(prefix)} bytes; at most "
                    f"{MAX_S3_PREFIX_BYTES} (S3 keys are at most 1,024 bytes, and a run's "
                    "files add up to ~200 below it)")
        if "//" in rest:
            return (f"{location!r}: has an empty part ('//'); S3 would store it under "
                    "another key than the one shown")
        if any(part in (".", "..") for part in rest.split("/")[1:]):
            return (f"{location!r}: has a '.' or '..' part; S3 keys are not paths (MinIO "
                    "refuses them, AWS stores them as written)")
        return None
    if scheme == "file":
        return f"{location!r}: give the path itself ({file_uri_path(location)})"
    return (f"{location!r}: {scheme}:// storage is not supported: use a path (a local "
            "directory or a mounted volume) or an s3:// URI (other object stores through "
            "their S3 API, with AWS_ENDPOINT_URL)")


class _Model(BaseModel):
    """Base: camelCase aliases only, unknown fields forbidden, strict types."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
        validate_default=False,
        # YAML has .nan and .inf; NaN passes every bound (each comparison is false), so
        # refuse non-finite numbers by name instead of "less than or equal to 10"
        allow_inf_nan=False,
    )

    def to_dict(self, *, exclude_none: bool = True) -> dict[str, Any]:
        """camelCase plain dict, as it would appear in YAML."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=exclude_none)


# ----------------------------------------------------------------------------- model
MAX_LAYERS = 64
"""Most layers ``model.options.hidden`` / ``channels`` may list: far beyond the tutorials'
networks, and it keeps the spec well inside a ConfigMap (1 MiB), which carries it to the
driver (a list of 140,000 sizes was accepted before and left the run with no status)."""
MAX_WORKERS = 1024
"""Most Ray Train workers one run may ask for at once: ``scaling.workers``, and for a
search ``scaling.workers`` x the concurrent trials (each trial its own workers; 1,024
workers x 1,000 trials once rendered a RayJob of 1,024,000 worker pods)."""
INT32_MAX = 2**31 - 1
"""KubeRay's RayJob stores ``activeDeadlineSeconds`` and ``ttlSecondsAfterFinished`` as
int32: a larger value passed our schema and was refused by the API server on the RayJob."""


class ModelOptions(_Model):
    """Architecture knobs. Each applies to some models only (checked on validation)."""

    hidden: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LAYERS,
        description="mlp: sizes of the hidden layers (default [512, 512], as in the "
        "FashionMNIST tutorial). cifar-cnn: sizes of the fully connected layers after the "
        "convolutions (default [120, 84], the tutorial's l1 and l2).",
    )
    dropout: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="mlp, cifar-cnn: dropout probability before each hidden layer "
        "(default 0.0 for cifar-cnn, 0.25 for mlp).",
    )
    channels: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LAYERS,
        description="cifar-cnn: output channels of the convolution blocks (default "
        "[6, 16], as in the CIFAR-10 tutorial).",
    )


MODEL_OPTIONS: dict[str, set[str]] = {
    "mlp": {"hidden", "dropout"},
    "cifar-cnn": {"channels", "hidden", "dropout"},
    "resnet18": set(),
}


class ModelSpec(_Model):
    """Which network to train. Input shape and class count come from the dataset."""

    name: ModelName = Field(
        description="Model from the registry: mlp (the FashionMNIST tutorial MLP), "
        "cifar-cnn (the CIFAR-10 tutorial CNN, sized to the input), resnet18 "
        "(torchvision ResNet-18 adapted to small images)."
    )
    options: ModelOptions = Field(
        default_factory=ModelOptions, description="Architecture options of the model."
    )


# ------------------------------------------------------------------------------ data
class SecretRef(_Model):
    """A Secret in the TrainingRun's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN,
                      description="Name of the Secret (keys "
                      "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN, "
                      "AWS_ENDPOINT_URL for a non-AWS endpoint such as MinIO, and AWS_REGION; "
                      "the pods get only these keys).")


class DataSpec(_Model):
    """Where the examples come from and how they are split."""

    dataset: DatasetName = Field(
        description="digits (scikit-learn's bundled 8x8 digits, offline), fashion-mnist "
        "and cifar10 (torchvision, downloaded once into the cache directory), "
        "image-folder (a directory or s3:// URI of <class>/<image> files, read with Ray "
        "Data), synthetic (deterministic random tensors, for benchmarks)."
    )
    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="image-folder only: a directory (on the shared volume) or an s3:// URI "
        "whose sub-folders are the class names. A relative path is relative to the spec "
        "file's folder (raykube run); a cluster needs an absolute one.",
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="s3:// uri on a cluster whose checkpoints are on a "
        "volume: the Secret the pods read it with (with an s3:// checkpoint.storage.uri, "
        "its secretRef serves the data too).")
    validation_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Fraction of the examples held out for validation (a deterministic "
        "split by train.seed). Ignored by datasets with an official test split "
        "(fashion-mnist, cifar10), which validate on that split. The split must leave "
        "every Train worker a training example and hold at least one validation example: "
        "checked with the spec for digits and synthetic, before training for an image folder.",
    )
    image_size: int | None = Field(
        default=None,
        ge=4,
        le=1024,
        description="image-folder: images are resized to imageSize x imageSize (default 32).",
    )
    grayscale: bool = Field(
        default=False, description="image-folder: convert images to one channel."
    )
    shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="synthetic: the shape of one example, [C, H, W] or [features] "
        "(default [3, 32, 32]).",
    )
    num_classes: int | None = Field(
        default=None, ge=2, le=100000, description="synthetic: number of classes (default 10)."
    )
    num_samples: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SPEC_INT,
        description="synthetic: number of examples (default 2048). For other datasets: "
        "use at most this many training examples (handy for quick runs).",
    )
    cache_dir: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="Where downloaded datasets are kept, shared by all runs (default: "
        "datasets/ under the storage root): a folder, not a URI. Pre-seed it for offline "
        "clusters. A relative "
        "path is relative to the spec file's folder (raykube run); a cluster needs an "
        "absolute one.",
    )


# ----------------------------------------------------------------------------- train
class OptimizerSpec(_Model):
    """The optimizer and its hyperparameters."""

    name: Literal["sgd", "adam", "adamw"] = Field(default="sgd", description="sgd, adam or adamw.")
    lr: float = Field(default=0.01, gt=0.0, le=10.0, description="Learning rate.")
    momentum: float = Field(
        default=0.9,
        ge=0.0,
        lt=1.0,
        description="sgd: momentum. adam, adamw: beta1, the decay rate of the gradient's "
        "running average (PyTorch's OneCycleLR reads it the same way); the default 0.9 is "
        "Adam's own.",
    )
    weight_decay: float = Field(default=0.0, ge=0.0, lt=1.0, description="L2 weight decay.")

    def torch_kwargs(self) -> dict[str, Any]:
        """The hyperparameters as ``torch.optim``'s keyword arguments for this kind: what
        a new optimizer is built with and what a resumed one's param groups are set to.
        Adam's beta1 is its momentum (what OneCycleLR cycles for it); beta2 stays
        torch's 0.999. The CRD's stored default 0.9 is Adam's own beta1, so runs that
        never set ``momentum`` train as they did when adam ignored it."""
        kw: dict[str, Any] = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.name == "sgd":
            kw["momentum"] = self.momentum
        else:
            kw["betas"] = (self.momentum, 0.999)
        return kw


class TrainSpec(_Model):
    """The training loop's settings."""

    epochs: int = Field(default=10, ge=1, le=100000, description="Number of epochs.")
    batch_size: int = Field(
        default=64,
        ge=1,
        le=1048576,
        description="Global batch size, split evenly across scaling.workers.",
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the split, the "
                      "initial weights and the shuffling: two runs with one seed see the same data. "
                      "Fixed once a run has checkpoints: resuming with another is refused.")


# --------------------------------------------------------------------------- scaling
MAX_PLACEMENT_ITEMS = 64
"""Most tolerations, and node selector entries, of one pod kind. Kubernetes sets no such
bound, but without one a spec the API server took (3,500 tolerations, 406 KB) could not
be handled: kopf keeps a copy of the spec in an annotation, and annotations hold 256 KiB
(the operator retried every 5 s, for good)."""
LABEL_KEY_MAX = 253 + 1 + 63
"""A label key: a DNS-subdomain prefix, '/', a name of at most 63. Keys and values are
bounded in the CRD only (``raykube.crd._LIMITS``): here ``label_problems`` and
``k8s_rules.toleration_problems`` say what is wrong in the API server's words."""
LABEL_VALUE_MAX = 63

_NodeSelector = dict[str, str]


class Toleration(_Model):
    """A Kubernetes toleration (for the Ray worker pods, or the head's)."""

    key: str | None = Field(default=None, description="Taint key (empty with Exists: all).")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate (empty: all)."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=-MAX_SPEC_INT, le=MAX_SPEC_INT,
        description="NoExecute only: how long the pod stays bound."
    )


class HeadSpec(_Model):
    """The Ray head pod (runs the driver; no training work)."""

    cpus: float = Field(default=1.0, ge=MIN_POD_CPUS, le=512, description="CPUs of the head "
                        "pod (at least 0.1).")
    memory: str | None = Field(default=None, pattern=_QUANTITY, max_length=k8s_rules.QUANTITY_MAX_LENGTH, description="Memory of the "
                               "head pod. Default 2Gi; with tune, what the search's head "
                               "needs rounded up to 512Mi (2.5Gi at maxConcurrentTrials 2, "
                               "3.5Gi at 4). At least 1158 MiB: Ray's own processes, the "
                               "driver and Ray Train's controller, under Ray's memory "
                               "monitor's 95 %; with tune, at least (1200 MiB + 440 MiB per "
                               "concurrent trial) / 0.95, since each trial's driver and Ray "
                               "Train's controller run there (checked on validation).")
    node_selector: _NodeSelector | None = Field(default=None, max_length=MAX_PLACEMENT_ITEMS,
                                                description="Node selector (at most 64 "
                                                 "entries) for the head pods (training and "
                                                 "serving) and "
                                                 "KubeRay's job submitter pod. "
                                                 "Not spec.scaling.nodeSelector: the head does "
                                                 "no training work and need not share the "
                                                 "workers' (e.g. GPU) nodes.")
    tolerations: list[Toleration] | None = Field(default=None, max_length=MAX_PLACEMENT_ITEMS,
                                                 description="Tolerations (at most 64) "
                                                 "for the head pods (training and serving) and "
                                                 "KubeRay's job submitter pod; "
                                                 "spec.scaling.tolerations are the workers'.")


class ScalingSpec(_Model):
    """How many Ray Train workers, and what each one gets."""

    workers: int = Field(default=2, ge=1, le=MAX_WORKERS, description="Number of Ray Train workers "
                         "(DDP processes); one Ray worker pod each.")
    cpus_per_worker: float = Field(default=1.0, ge=MIN_POD_CPUS, le=512, description="CPUs "
                                   "per worker (at least 0.1); also the worker's torch "
                                   "thread count.")
    gpus_per_worker: float = Field(default=0.0, ge=0.0, le=16, description="GPUs per worker "
                                   "(0: CPU training). Fractions below 1 share a GPU, e.g. "
                                   "between Tune trials.")
    memory_per_worker: str = Field(default="4Gi", pattern=_QUANTITY, max_length=k8s_rules.QUANTITY_MAX_LENGTH, description="Memory per "
                                   "worker pod (Kubernetes quantity). At least the model's "
                                   "float32 weights, gradients and optimizer buffers, ~400 "
                                   "MiB for torch and ~400 MiB for Ray's processes, under "
                                   "Ray's memory monitor's 95 % (about 850 MiB for a small "
                                   "model; checked on validation).")
    node_selector: _NodeSelector | None = Field(default=None, max_length=MAX_PLACEMENT_ITEMS,
                                                description="Node selector for the worker "
                                                "pods (at most 64 entries).")
    tolerations: list[Toleration] | None = Field(default=None, max_length=MAX_PLACEMENT_ITEMS,
                                                 description="Tolerations for the worker "
                                                 "pods (at most 64).")
    head: HeadSpec = Field(default_factory=HeadSpec, description="The Ray head pod.")


# ------------------------------------------------------------------------------ tune
class Distribution(_Model):
    """One search dimension: exactly one of choice, uniform, loguniform, randint."""

    choice: list[Any] | None = Field(default=None, description="Pick one of these values.")
    uniform: list[float] | None = Field(default=None, description="[low, high]: a float "
                                        "drawn uniformly.")
    loguniform: list[float] | None = Field(default=None, description="[low, high], low > 0: "
                                           "a float drawn uniformly in log space.")
    randint: list[int] | None = Field(default=None, description="[low, high): an integer.")

    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "loguniform", "randint")
                    if getattr(self, k) is not None)

    def sample_values(self) -> list[Any]:
        """Representative values (used to check a path accepts this dimension): every
        choice, or both ends of a range (high is exclusive: Tune samples [low, high))."""
        kind = self.kind()
        vals = getattr(self, kind)
        if kind == "choice":
            return list(vals)
        if len(vals) != 2:
            return list(vals[:1])
        low, high = vals
        if kind == "randint":
            return [low, high - 1] if high - 1 > low else [low]
        return [low, math.nextafter(high, low)]


class SchedulerSpec(_Model):
    """Trial scheduler (early stopping)."""

    name: Literal["asha", "fifo"] = Field(default="asha", description="asha (stop bad trials "
                                          "early) or fifo (run every trial to the end).")
    grace_period: int | None = Field(default=None, ge=1, le=MAX_SPEC_INT, description="asha "
                                     "only: epochs every trial runs before it can be "
                                     "stopped. Default: 1.")
    reduction_factor: float | None = Field(default=None, gt=1.0, le=100, description="asha "
                                           "only: keep the top 1/reductionFactor trials at "
                                           "each rung. Default: 2.")

    # Unset stays unset (not the default written out), so that fifo with either is
    # refused also in the spec the operator hands the driver (defaults resolved there).
    @property
    def resolved_grace_period(self) -> int:
        return self.grace_period if self.grace_period is not None else 1

    @property
    def resolved_reduction_factor(self) -> float:
        return self.reduction_factor if self.reduction_factor is not None else 2.0


class TuneSpec(_Model):
    """A Ray Tune search run before the final model is chosen."""

    trials: int = Field(default=4, ge=1, le=10000, description="Number of trials (samples).")
    max_concurrent_trials: int = Field(default=1, ge=1, le=1000, description="Trials running "
                                       "at once; the Ray cluster is sized for this many "
                                       "(at most trials) times scaling.")
    metric: str = Field(default="valAccuracy", description="Metric that ranks trials: "
                        "valAccuracy, valLoss, trainLoss or trainAccuracy.")
    mode: Literal["max", "min"] | None = Field(default=None, description="max or min: the "
                                               "metric's direction (max for the accuracies, "
                                               "min for the losses), the default; another "
                                               "is refused, it would rank the worst trial "
                                               "first.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="Scheduler.")
    search_space: dict[str, Distribution] = Field(
        min_length=1,
        description="Dotted spec paths (e.g. train.optimizer.lr) to distributions; a whole "
        "section (e.g. train) samples mappings merged over the spec's.",
    )

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        return self.mode or METRICS.get(self.metric, "max")

    @property
    def concurrent_trials(self) -> int:
        """Trials that can run at once: what the Ray cluster (and the head's memory) is
        sized for. Never more than there are trials (``trials: 1, maxConcurrentTrials:
        4`` would otherwise keep three workers' pods idle for the whole search)."""
        return min(self.trials, self.max_concurrent_trials)


# ------------------------------------------------------------------------ checkpoint
class PVCStorage(_Model):
    """A PersistentVolumeClaim (ReadWriteMany) mounted into every Ray pod."""

    claim_name: str = Field(default="raykube-storage", pattern=_DNS_SUBDOMAIN,
                            max_length=253, description="Name of the claim, in the "
                            "TrainingRun's namespace.")
    mount_path: str = Field(default="/mnt/raykube", pattern=r"^/", max_length=MAX_PATH_LENGTH,
                            description="Where the volume is mounted in the pods: a "
                            "directory of its own (not /, /etc/raykube, /tmp or another of "
                            "the image's system directories, nor its home /home/ray or "
                            "its Python in /home/ray/anaconda3).")


S3_SECRET_KEYS: tuple[tuple[str, bool], ...] = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", True),
    ("AWS_ENDPOINT_URL", True),
    ("AWS_REGION", True),
)
"""(key, optional) of a ``checkpoint.storage.secretRef`` Secret: the pods get exactly these
keys as environment variables (never the rest of the Secret), which is what
``raykube.s3`` builds its S3 client from. Part of the contract, hence here."""


class StorageSpec(_Model):
    """Shared storage for checkpoints, results and datasets: a PVC or an s3:// URI."""

    pvc: PVCStorage | None = Field(default=None, description="A shared volume (default: the "
                                   "claim raykube-storage at /mnt/raykube).")
    uri: str | None = Field(default=None, pattern=r"^s3://[^/]+", max_length=MAX_PATH_LENGTH,
                            description="An s3:// URI (bucket and optional prefix); not with "
                            "pvc.")
    secret_ref: SecretRef | None = Field(default=None, description="Credentials to read and write uri.")


class CheckpointSpec(_Model):
    """Where checkpoints go and which are kept. One is written every epoch."""

    storage: StorageSpec = Field(default_factory=StorageSpec, description="Shared storage.")
    keep: int = Field(default=2, ge=1, le=1000, description="How many of the best "
                      "checkpoints by scoreMetric are kept. The latest is kept as well (a "
                      "retry resumes from it), so up to keep + 1 checkpoint folders exist "
                      "while it is not among the best.")
    score_metric: str = Field(default="valAccuracy", description="Metric that ranks "
                              "checkpoints (and picks the one served): valAccuracy, valLoss, "
                              "trainLoss or trainAccuracy.")

    @property
    def score_mode(self) -> Literal["max", "min"]:
        return METRICS.get(self.score_metric, "max")


# ----------------------------------------------------------------------------- serve
class ServeSpec(_Model):
    """Promotion to a Ray Serve deployment (RayService on a cluster)."""

    enabled: bool = Field(default=False, description="Serve the model once training succeeds "
                          "and passes the gate.")
    min_accuracy: float = Field(default=0.0, ge=0.0, le=1.0, description="Gate: the served "
                                "checkpoint's valAccuracy must be at least this, measured "
                                "on at least 10 validation examples (above 0).")
    replicas: int = Field(default=1, ge=1, le=1000, description="Serve replicas.")
    cpus_per_replica: float = Field(default=1.0, ge=MIN_POD_CPUS, le=512, description="CPUs "
                                    "per replica (at least 0.1).")
    gpus_per_replica: float = Field(default=0.0, ge=0.0, le=16, description="GPUs per replica.")
    memory_per_replica: str = Field(default="2Gi", pattern=_QUANTITY, max_length=k8s_rules.QUANTITY_MAX_LENGTH, description="Memory per "
                                    "serving worker pod. At least the model's float32 "
                                    "weights, ~400 MiB for torch and ~400 MiB for Ray's "
                                    "processes, under Ray's memory monitor's 95 % (about "
                                    "850 MiB for a small model; checked on validation).")
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Dynamic batching: "
                                "most requests answered by one model call.")
    batch_wait_timeout_ms: float = Field(default=5.0, ge=0.0, le=10000, description="Dynamic "
                                         "batching: longest wait for a batch to fill.")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=MAX_SPEC_INT, description="Largest "
                                   "request body accepted (413 above).")


# ---------------------------------------------------------------------------- top level
class FailureSpec(_Model):
    """How failures are retried: worker failures inside the Ray job, job failures by KubeRay."""

    max_retries: int = Field(default=2, ge=0, le=100, description="Times the whole RayJob is "
                             "retried (a new Ray cluster) after a failure; each retry resumes "
                             "from the latest checkpoint.")
    max_worker_failures: int = Field(default=3, ge=-1, le=1000, description="Worker failures "
                                     "Ray Train recovers from within one attempt (restart "
                                     "the worker group from the latest checkpoint); -1: no "
                                     "limit.")


class TrainingRunSpec(_Model):
    """What to train, on what, at what scale, and whether to serve it."""

    model: ModelSpec = Field(description="The network.")
    data: DataSpec = Field(description="The dataset.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training loop settings.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers and "
                                 "resources.")
    tune: TuneSpec | None = Field(default=None, description="Optional hyperparameter search.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints "
                                       "and storage.")
    serve: ServeSpec = Field(default_factory=ServeSpec, description="Serving after training.")
    failure: FailureSpec = Field(default_factory=FailureSpec, description="Retries.")
    image: str | None = Field(default=None, min_length=1, max_length=1024,
                              description="Container image of the "
                              "Ray pods (default: the operator's CPU image, or its CUDA image "
                              "when scaling.gpusPerWorker > 0).")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Fail an attempt after this many seconds. KubeRay "
        "counts it per attempt: each retry (failure.maxRetries) starts the clock again, so a "
        "run can take up to (maxRetries + 1) times this. An attempt past it fails the run "
        "(not retried) and the operator deletes its Ray cluster (KubeRay would leave the "
        "job running until ttlSecondsAfterFinished).")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=INT32_MAX, description="Seconds the finished training Ray cluster is kept "
        "(for its logs) before deletion. Default: 600, or 0 when serve.enabled, so the "
        "serving cluster never has to fit beside an idle training cluster.")
    suspend: bool = Field(default=False, description="Do not run (yet); set to false to start. "
                          "Setting it on a running run stops its Ray cluster.")
    rerun: str | None = Field(
        default=None, min_length=1, max_length=253, description="Any new string (a timestamp; "
        "a counter in quotes, \"2\", as YAML reads 2 as a number) asks the operator for a new run of this spec once the current one has "
        "ended, resuming from the latest checkpoint: how a run that failed for a cause "
        "outside the spec (a Secret, a bucket, a dataset folder) is run again once that is "
        "fixed. Removing it asks for nothing. Not read by `raykube run`, which resumes "
        "whenever it is run again.")


class Metadata(BaseModel):
    """ObjectMeta: only name/namespace are ours; the API server adds the rest."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=_DNS_LABEL)
    namespace: str = Field(default="default", min_length=1, max_length=63, pattern=_NAMESPACE)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


# ---------------------------------------------------------------------------- status
class Condition(_Model):
    """metav1.Condition."""

    type: str = Field(description="Validated, Running, Succeeded, Failed, Promoted or Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Generation of the spec "
                                            "this condition was computed from.")


class ProgressStatus(_Model):
    """Live training progress, patched by the driver each epoch."""

    epoch: int | None = Field(default=None, description="Last finished epoch (1-based).")
    epochs: int | None = Field(default=None, description="Epochs in total.")
    train_loss: float | None = Field(default=None, description="Mean training loss (4 "
                                     "decimals, as shown; status.checkpoint.metrics has "
                                     "every digit).")
    val_loss: float | None = Field(default=None, description="Validation loss (4 decimals).")
    val_accuracy: float | None = Field(default=None, description="Validation accuracy "
                                       "(4 decimals).")
    trial: str | None = Field(default=None, description="Tune: the trial of the best epoch "
                              "so far by tune.metric (this epoch and these metrics are "
                              "that epoch's; the columns do not jump between trials); when "
                              "the search has ended, the best trial's best checkpoint.")
    updated_at: str | None = Field(default=None, description="When this was reported.")


class CheckpointStatus(_Model):
    """The checkpoint that counts (best by scoreMetric)."""

    uri: str | None = Field(default=None, description="Where it is (path on the shared volume "
                            "or s3:// URI).")
    epoch: int | None = Field(default=None, description="Epoch it was taken after.")
    metrics: dict[str, float] | None = Field(default=None, description="Its metrics.")
    storage: str | None = Field(default=None, description="The storage it was written to, "
                                "as pvc/<claim> or the s3:// URI: not promoted once "
                                "checkpoint.storage names another.")


class BestTrialStatus(_Model):
    """Tune: the winning trial."""

    trial_id: str | None = Field(default=None, description="Trial id.")
    config: dict[str, Any] | None = Field(default=None, description="Its sampled settings "
                                          "(dotted spec paths).")
    metric: float | None = Field(default=None, description="Its value of tune.metric.")


class TrialsStatus(_Model):
    """Tune: how many trials are in each state, patched by the driver as they change.
    A search succeeds while some trial saved a checkpoint; ``failed`` says how many trials
    ended in an error (their errors: the driver's log and the search's ``result.json``)."""

    total: int | None = Field(default=None, description="Trials the search runs "
                              "(tune.trials).")
    running: int | None = Field(default=None, description="Running now.")
    finished: int | None = Field(default=None, description="Ran every epoch.")
    stopped: int | None = Field(default=None, description="Stopped early by the scheduler "
                                "(ASHA).")
    failed: int | None = Field(default=None, description="Ended in an error (a worker "
                               "killed for memory, an exception in the loop).")
    pending: int | None = Field(default=None, description="Not started yet: waiting for "
                                "resources or for their turn (tune.maxConcurrentTrials); "
                                "the five counts add up to total.")


class ServingStatus(_Model):
    """Where the model is served."""

    endpoint: str | None = Field(default=None, description="In-cluster URL of the HTTP API.")
    checkpoint: str | None = Field(default=None, description="Checkpoint being served.")
    since: str | None = Field(default=None, description="When this checkpoint went live.")
    val_accuracy: float | None = Field(default=None, description="The served checkpoint's "
                                       "validation accuracy (4 decimals), as it was promoted; "
                                       "status.progress has the last epoch's.")


class WorkerFailuresStatus(_Model):
    """Ray Train's worker-group failures in the current attempt, patched by the driver
    as each happens (on one machine ``raykube run`` prints the same line)."""

    count: int | None = Field(default=None, description="Failures so far in this attempt "
                              "(Ray Train restarted the workers from the last checkpoint "
                              "after each, up to failure.maxWorkerFailures).")
    last: str | None = Field(default=None, description="The last one: the failing rank, its "
                             "error's last line, and what happened next.")
    at: str | None = Field(default=None, description="When it was reported (RFC 3339).")


class IncidentStatus(_Model):
    """The latest fault in the run's Ray pods that KubeRay's status does not show, written
    by the operator when it sees it (one Warning Event each). Kept here, not in the
    operator's memory, so that an operator restarted mid-run neither forgets it nor
    announces it again."""

    reason: Literal["OOMKilled", "RayHeadLost", "RayClusterLost"] | None = Field(
        default=None, description="OOMKilled (a container killed for memory), RayHeadLost "
        "(the Ray head pod deleted, failed or restarted while the job ran on it) or "
        "RayClusterLost (the job's whole RayCluster deleted while the job ran on it).")
    message: str | None = Field(default=None, description="What happened, naming the pod.")
    ray_cluster: str | None = Field(default=None, description="The Ray cluster it happened "
                                    "in; the run's message notes it while that cluster "
                                    "runs, retries or has failed the job.")
    at: str | None = Field(default=None, description="When it happened (RFC 3339), as the "
                           "pod's status says where it does.")


class NoteStatus(_Model):
    """The driver's last note to the user in the current attempt, as ``raykube run``
    prints it: a checkpoint it resumed from or skipped, or a run directory that already
    holds the epochs asked for (nothing to train). The run's message says the latter."""

    message: str | None = Field(default=None, description="The note, in one line.")
    at: str | None = Field(default=None, description="When the driver wrote it (RFC 3339).")


class PermanentFailureStatus(_Model):
    """The driver's report that its attempt failed for a cause every attempt would meet
    (a dataset that does not exist, refused credentials, a run directory of another
    model), and the operator's answer. The driver writes it before it exits and waits a
    few seconds for ``retriesCancelled``; the operator lowers the RayJob's
    ``backoffLimit`` so that KubeRay does not retry the attempt (it decides in the same
    step in which it sees the failure, so the answer must come first)."""

    message: str | None = Field(default=None, description="The failure, in one line.")
    at: str | None = Field(default=None, description="When the driver reported it (RFC 3339).")
    job_id: str | None = Field(default=None, description="The Ray job (submission id) of "
                               "the attempt that reported it.")
    retries_cancelled: bool | None = Field(
        default=None, description="The operator's answer: true once KubeRay will not retry "
        "this attempt (the RayJob's backoffLimit lowered), false when it came too late "
        "(the attempt was no longer the RayJob's running one).")


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Serving", "Suspended"]


class TrainingRunStatus(_Model):
    """Written by the operator (and progress/checkpoint by the driver). Never by users."""

    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, "
                                "Failed, Serving or Suspended (derived from conditions).")
    conditions: list[Condition] | None = Field(default=None, description="Validated, Running, "
                                               "Succeeded, Failed, Promoted, Ready.")
    observed_generation: int | None = Field(default=None, description="Last generation acted on.")
    ray_job: str | None = Field(default=None, description="Name of the RayJob.")
    ray_service: str | None = Field(default=None, description="Name of the RayService.")
    job_id: str | None = Field(default=None, description="Ray job submission id.")
    progress: ProgressStatus | None = Field(default=None, description="Training progress.")
    checkpoint: CheckpointStatus | None = Field(default=None, description="Best checkpoint.")
    best_trial: BestTrialStatus | None = Field(default=None, description="Tune: best trial.")
    trials: TrialsStatus | None = Field(default=None, description="Tune: trials by state.")
    worker_failures: WorkerFailuresStatus | None = Field(
        default=None, description="Worker-group failures Ray Train recovered from (or not).")
    last_note: NoteStatus | None = Field(
        default=None, description="The driver's last note in this attempt (resumed, skipped "
        "a checkpoint, nothing to train).")
    serving: ServingStatus | None = Field(default=None, description="Serving endpoint.")
    start_time: str | None = Field(default=None, description="When the RayJob started.")
    completion_time: str | None = Field(default=None, description="When it finished.")
    attempts: int | None = Field(default=None, description="Attempts so far (1 + retries).")
    message: str | None = Field(default=None, description="Last notable event, for humans.")
    last_incident: IncidentStatus | None = Field(
        default=None, description="The latest OOM kill or Ray head loss in the run's pods.")
    permanent_failure: PermanentFailureStatus | None = Field(
        default=None, description="An attempt failed for a cause a retry cannot fix: "
        "KubeRay's retries cancelled.")


class TrainingRun(_Model):
    """A TrainingRun: trains (optionally tunes), checkpoints, and serves a PyTorch model."""

    api_version: Literal["raykube.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrainingRun"]
    metadata: Metadata
    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @model_validator(mode="after")
    def _semantic(self) -> TrainingRun:
        errors = [SpecError("metadata.name", p) for p in name_problems(self.metadata.name)]
        errors += list(metadata_problems(self.metadata))
        errors += semantic_errors(self.spec)
        if errors:
            raise SpecErrors(errors)
        return self


# ------------------------------------------------------------------------ validation
RESERVED_NAMES = {"datasets": "it is the folder of the shared dataset cache "
                  "(<storage>/datasets), where this run's checkpoints would go"}
"""Run names that would share a folder of the storage root with something else."""
RESERVED_SUFFIX = "-serve"
"""The suffix of a run's RayService name (``render.rayservice_name``): a run named
``<x>-serve`` would get KubeRay Services of the same names as run ``<x>``'s RayService
(``<x>-serve-head-svc``), each KubeRay controller rewriting the other's selector."""


def name_problems(name: str) -> list[str]:
    """Why ``name`` cannot name a run, beyond the DNS-label rules (empty if it can). The
    CRD says the same in CEL (``raykube.crd``)."""
    if name in RESERVED_NAMES:
        return [f"{name!r} is reserved: {RESERVED_NAMES[name]}"]
    if name.endswith(RESERVED_SUFFIX):
        return [f"must not end in {RESERVED_SUFFIX!r}: {name} is the name of the RayService "
                f"of a run named {name[:-len(RESERVED_SUFFIX)]}, and KubeRay would give both "
                "the same Services"]
    return []


def metadata_problems(meta: Metadata) -> Iterator[SpecError]:
    """Labels and annotation keys the API server refuses (``validate`` said "valid" of
    ``labels: {"a b": c}``, which ``kubectl apply`` then refused)."""
    yield from label_problems("metadata.labels", meta.labels)
    for key in meta.annotations or {}:
        for p in k8s_rules.label_key_problems(key):  # a qualified name, as a label's
            yield SpecError(f"metadata.annotations[{key}]", f"key {key!r}: {p}")


def label_problems(field: str, labels: dict[str, str] | None) -> Iterator[SpecError]:
    """The keys and values of a label map (``metadata.labels``, a ``nodeSelector``) that
    the API server refuses, each at ``field[key]``."""
    for key, value in (labels or {}).items():
        for p in k8s_rules.label_key_problems(key):
            yield SpecError(f"{field}[{key}]", f"key {key!r}: {p}")
        for p in k8s_rules.label_value_problems(value):
            yield SpecError(f"{field}[{key}]", f"value {_short(value)}: {p}")


@dataclass(frozen=True)
class SpecError:
    """One problem, at a camelCase field path such as ``spec.scaling.workers``."""

    path: str
    message: str
    source: str | None = None
    """The file and document (``jobs/x.yaml[1]``) when a file holds several."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecErrors(ValueError):
    """Semantic errors raised from inside validation (pydantic wraps them)."""

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

    def __reduce__(self):  # noqa: ANN204
        # Pickled as (cls, args) by default, i.e. rebuilt from the joined message: a
        # string, which the join above then spelled out one character at a time (a Tune
        # trial's error crossed Ray that way: "s; p; e; c; ...").
        return (type(self), (self.errors,))


class InvalidTrainingRun(ValueError):
    """A document is not a valid TrainingRun. ``errors`` lists every problem found."""

    def __init__(self, errors: list[SpecError], source: str | None = None):
        self.errors = errors
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(str(e) for e in errors))

    def __reduce__(self):  # noqa: ANN204
        return (type(self), (self.errors, self.source))  # see SpecErrors.__reduce__


def _semantic_checks(spec: TrainingRunSpec) -> Iterator[SpecError]:
    s = "spec"
    ds = spec.data.dataset
    if ds == "image-folder" and not spec.data.uri:
        yield SpecError(f"{s}.data.uri", "is required when dataset is image-folder")
    if spec.data.uri and (problem := location_problem(spec.data.uri)):
        yield SpecError(f"{s}.data.uri", problem)
    if spec.data.cache_dir and (m := _SCHEME.match(spec.data.cache_dir)):
        # os.makedirs("s3://b/c") made the local folder ./s3:/b/c in the pod
        yield SpecError(f"{s}.data.cacheDir", (
            f"{spec.data.cache_dir!r}: a folder, not a {m.group(1)}:// URI (downloaded "
            "datasets are kept on a filesystem: on a cluster, a path on the shared volume)"))
    if ds != "image-folder":
        if spec.data.uri:
            yield SpecError(f"{s}.data.uri", f"only applies to dataset image-folder, not {ds}")
        for f in ("image_size", "grayscale"):
            if getattr(spec.data, f):
                yield SpecError(f"{s}.data.{to_camel(f)}", f"only applies to dataset image-folder, not {ds}")
    if ds != "synthetic":
        for f in ("shape", "num_classes"):
            if getattr(spec.data, f) is not None:
                yield SpecError(f"{s}.data.{to_camel(f)}", f"only applies to dataset synthetic, not {ds}")
    if ds == "synthetic" and spec.data.shape and len(spec.data.shape) == 2:
        yield SpecError(f"{s}.data.shape", "must be [C, H, W] or [features], not two numbers")

    allowed = MODEL_OPTIONS[spec.model.name]
    for opt in ModelOptions.model_fields:
        if getattr(spec.model.options, opt) is not None and opt not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            yield SpecError(f"{s}.model.options.{to_camel(opt)}",
                            f"does not apply to model {spec.model.name} (its options: {names})")
    if spec.model.name != "mlp":
        shape = _input_shape(spec.data)
        if shape is not None and len(shape) != 3:
            yield SpecError(f"{s}.model.name", f"{spec.model.name} needs image input [C, H, W]; "
                            f"the dataset gives {list(shape)} (use mlp)")

    if problem := split_problem(spec, *(known_split_sizes(spec) or (None, None))):
        yield SpecError(*problem)

    if spec.train.batch_size < spec.scaling.workers:
        yield SpecError(f"{s}.train.batchSize", f"global batch {spec.train.batch_size} is "
                        f"smaller than scaling.workers={spec.scaling.workers}")
    for path, g in ((f"{s}.scaling.gpusPerWorker", spec.scaling.gpus_per_worker),
                    (f"{s}.serve.gpusPerReplica", spec.serve.gpus_per_replica)):
        if g > 1 and not float(g).is_integer():
            yield SpecError(path, f"{g}: above 1 it must be a whole number")
        if 0 < g < MIN_GPU_SHARE:
            yield SpecError(path, f"{g}: {GPU_SHARE_RULE}")

    yield from _pod_field_checks(spec)

    st = spec.checkpoint.storage
    if st.pvc is not None and (p := k8s_rules.mount_path_problem(st.pvc.mount_path)):
        yield SpecError(f"{s}.checkpoint.storage.pvc.mountPath", p)
    if st.pvc is not None and st.uri is not None:
        yield SpecError(f"{s}.checkpoint.storage", "set either pvc or uri, not both")
    if st.uri is not None and (problem := location_problem(st.uri)):
        yield SpecError(f"{s}.checkpoint.storage.uri", problem)
    if st.secret_ref is not None and st.uri is None:
        yield SpecError(f"{s}.checkpoint.storage.secretRef", "only applies with uri")
    data_secret = spec.data.secret_ref
    if data_secret is not None and not (spec.data.uri or "").startswith("s3://"):
        yield SpecError(f"{s}.data.secretRef", "only applies with an s3:// data.uri")
    elif (data_secret is not None and st.uri is not None and st.secret_ref is not None
          and st.secret_ref.name != data_secret.name):
        # each pod gets one set of AWS_* variables
        yield SpecError(f"{s}.data.secretRef", (
            f"{data_secret.name!r}: the pods take their S3 settings from one Secret, "
            f"checkpoint.storage.secretRef {st.secret_ref.name!r}: name the same one, or "
            "leave this out (that one serves the data too)"))
    if spec.checkpoint.score_metric not in METRICS:
        yield SpecError(f"{s}.checkpoint.scoreMetric",
                        f"{spec.checkpoint.score_metric!r} is not a reported metric "
                        f"(one of: {', '.join(METRICS)})")

    if spec.tune is not None:
        yield from _tune_checks(spec)


SYNTHETIC_SAMPLES = 2048
"""data.numSamples of a synthetic dataset when not given."""
DEFAULT_MOUNT_PATH = "/mnt/raykube"
"""Where pods mount the shared volume when the spec names no pvc (RenderConfig's default)."""
DATASET_TRAIN_EXAMPLES = {"digits": 1797, "fashion-mnist": 60000, "cifar10": 50000}
"""Examples before the split (digits: scikit-learn's bundled set, split by
validationFraction) or in the official training split (the others validate on their
test split)."""


def validation_count(n: int, fraction: float) -> int:
    """Examples of ``n`` held out for validation (``raykube.data``'s split)."""
    return max(1, round(n * fraction))


def relative_path(location: str) -> bool:
    """A filesystem path that is not absolute: no pod can resolve it (no spec file, no
    working directory of the user's)."""
    return "://" not in location and not location.startswith("/")


def known_split_sizes(spec: TrainingRunSpec) -> tuple[int, int | None] | None:
    """(training, validation) examples of the run, where the spec alone decides them
    (``raykube.data``'s split: ``max(1, round(n * validationFraction))`` held out, then
    ``numSamples`` caps the training examples); validation None for an official test
    split; None for an image folder (its files decide)."""
    d = spec.data
    if d.dataset == "synthetic" or d.dataset == "digits":
        n = ((d.num_samples or SYNTHETIC_SAMPLES) if d.dataset == "synthetic"
             else DATASET_TRAIN_EXAMPLES["digits"])
        n_val = validation_count(n, d.validation_fraction)
        train = n - n_val
        return (min(train, d.num_samples) if d.num_samples and d.dataset == "digits"
                else train), n_val
    if d.dataset in DATASET_TRAIN_EXAMPLES:
        n = DATASET_TRAIN_EXAMPLES[d.dataset]
        return min(n, d.num_samples or n), None
    return None


def split_problem(spec: TrainingRunSpec, train: int | None, val: int | None
                  ) -> tuple[str, str] | None:
    """(field, why) when the split leaves a Train worker without a training example or
    nothing to validate on: such a run trained nothing and still 'succeeded' (digits with
    validationFraction 0.9999 reported an untrained model's 6 % as its result), or too
    few validation examples for a declared accuracy gate to mean anything."""
    if train is None:
        return None
    d, workers = spec.data, spec.scaling.workers
    capped = d.num_samples is not None and d.dataset != "synthetic" and train == d.num_samples
    field = "spec.data.numSamples" if d.dataset == "synthetic" or capped else "spec.data.validationFraction"
    if train < workers:
        fix = ("raise numSamples" if field.endswith("numSamples")
               else "lower validationFraction")
        return field, (f"leaves {train} training example{'' if train == 1 else 's'} for "
                       f"{workers} worker{'' if workers == 1 else 's'}; each worker needs at "
                       f"least one ({fix})")
    if val == 0:
        return "spec.data.validationFraction", "leaves no validation examples (raise it)"
    if val is not None and val < MIN_GATE_EXAMPLES and gate_declared(spec):
        return "spec.data.validationFraction", (
            f"leaves {val} validation example{'' if val == 1 else 's'}, too few for "
            f"spec.serve.minAccuracy {spec.serve.min_accuracy:g} to judge a checkpoint "
            f"(at least {MIN_GATE_EXAMPLES}: raise validationFraction, or set "
            f"serve.minAccuracy: 0)")
    return None


MIN_GATE_EXAMPLES = 10
"""The fewest validation examples an accuracy gate judges on. With one, a model passed
``serve.minAccuracy: 0.9`` on a single lucky guess (digits, ``validationFraction: 1e-9``);
with ten, one example is ten points of accuracy."""


def gate_declared(spec: TrainingRunSpec) -> bool:
    """Serving is asked for behind an accuracy gate above 0."""
    return spec.serve.enabled and spec.serve.min_accuracy > 0


def gate_shortfall(min_accuracy: float, metrics: Mapping[str, Any]) -> str | None:
    """Why a checkpoint with these ``metrics`` (valAccuracy, valExamples) does not pass
    ``serve.minAccuracy``; None when it does. One rule for the operator and ``raykube run``."""
    acc = metrics.get("valAccuracy")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool):
        return f"no valAccuracy metric (gate: serve.minAccuracy={min_accuracy:g})"
    seen = metrics.get("valExamples")
    if min_accuracy > 0 and isinstance(seen, (int, float)) and seen < MIN_GATE_EXAMPLES:
        # validation refuses such a split where the spec decides it; a search that samples
        # validationFraction, or a checkpoint from an older driver, can still report one
        return (f"valAccuracy {float(acc):.4f} on {int(seen)} validation "
                f"example{'' if seen == 1 else 's'}: too few for serve.minAccuracy "
                f"{min_accuracy:g} (at least {MIN_GATE_EXAMPLES})")
    if float(acc) < min_accuracy:
        return f"valAccuracy {float(acc):.4f} < serve.minAccuracy {min_accuracy:g}"
    return None


def _pod_field_checks(spec: TrainingRunSpec) -> Iterator[SpecError]:
    """What a Pod refuses but a RayJob's pod template accepts, and memory no Ray pod can
    run in (see ``k8s_rules``)."""
    sc = "spec.scaling"
    for where, placed in ((sc, spec.scaling), (f"{sc}.head", spec.scaling.head)):
        yield from label_problems(f"{where}.nodeSelector", placed.node_selector)
        for i, t in enumerate(placed.tolerations or []):
            for field, p in k8s_rules.toleration_problems(t.key, t.operator, t.value,
                                                          t.effect, t.toleration_seconds):
                yield SpecError(f"{where}.tolerations[{i}].{field}", p)
    # A pod too small for the model is told the model's floor (torch and Ray's share
    # included, always above Ray's own) and only that: two minimums for one field read
    # as a contradiction.
    model_errors = list(_model_memory_checks(spec))
    for path, qty in ((f"{sc}.memoryPerWorker", spec.scaling.memory_per_worker),
                      (f"{sc}.head.memory", spec.scaling.head.memory),
                      ("spec.serve.memoryPerReplica", spec.serve.memory_per_replica)):
        if (qty is not None and all(e.path != path for e in model_errors)
                and (p := k8s_rules.ray_pod_memory_problem(qty))):
            yield SpecError(path, p)
    if spec.image is not None and (p := k8s_rules.image_problem(spec.image)):
        yield SpecError("spec.image", p)
    yield from _head_memory_check(spec)
    yield from model_errors


def _head_memory_check(spec: TrainingRunSpec) -> Iterator[SpecError]:
    """A head too small for what runs there whatever the model (``raykube.footprint``'s
    ``head_bytes``): refused here rather than have Ray's memory monitor kill the job
    supervisor, Ray Train's controller or a search's trials on every attempt. Unset, the
    head gets enough (``footprint.default_head_memory``)."""
    from raykube import footprint as fpm

    memory = spec.scaling.head.memory
    have = k8s_rules.quantity_bytes(memory) if memory is not None else None
    need = fpm.head_pod_bytes(spec)
    if have is None or have >= need:
        return
    if spec.tune is not None:
        n = spec.tune.concurrent_trials
        what = (f"~{fpm.TUNE_HEAD_BYTES // fpm.MiB} MiB for Ray's processes, the job "
                f"supervisor and Tune's driver, and ~{fpm.TUNE_TRIAL_HEAD_BYTES // fpm.MiB} "
                f"MiB for each of the {n} concurrent trial(s) (spec.tune.maxConcurrentTrials): "
                "its driver and Ray Train's controller run on the head")
    else:
        what = (f"~{fpm.RAY_HEAD_BYTES // fpm.MiB} MiB for Ray's GCS, dashboard and agents, "
                "the job supervisor, the driver and Ray Train's controller")
    yield SpecError("spec.scaling.head.memory", (
        f"{memory}{k8s_rules.milli_hint(memory)} is too small for the Ray head: it needs at least "
        f"{math.ceil(need / fpm.MiB)} MiB ({what}, under Ray's memory monitor's "
        f"{fpm.MEMORY_MONITOR_FRACTION:.0%}); or leave it unset for a default that fits"))


def _model_memory_checks(spec: TrainingRunSpec) -> Iterator[SpecError]:
    """A model that cannot fit the memory its workers (or replicas) are given, by the
    floors of ``raykube.footprint``: refused here rather than OOM-killed mid-run."""
    from raykube import footprint as fpm
    from raykube.render import pods_needed

    sc, sv = spec.scaling, spec.serve
    fp = fpm.footprint(spec)
    if fp is None:
        return
    have = k8s_rules.quantity_bytes(sc.memory_per_worker)
    per_pod = pods_needed(sc.workers, sc.gpus_per_worker)[1]
    if have is not None and (need := fp.training_pod_bytes(per_pod)) > have:
        yield SpecError("spec.scaling.memoryPerWorker", (
            f"{sc.memory_per_worker}{k8s_rules.milli_hint(sc.memory_per_worker)} cannot hold "
            "the model: a training worker's pod needs "
            f"at least {fpm.size(need, up=True)} per worker ({fpm.training_breakdown(spec, fp)}, "
            f"{fpm.pod_breakdown(per_pod)}; before activations and data): raise "
            "memoryPerWorker or make the model smaller"))
    have = k8s_rules.quantity_bytes(sv.memory_per_replica)
    per_pod = pods_needed(sv.replicas, sv.gpus_per_replica)[1]
    if sv.enabled and have is not None and (need := fp.serving_pod_bytes(per_pod)) > have:
        yield SpecError("spec.serve.memoryPerReplica", (
            f"{sv.memory_per_replica}{k8s_rules.milli_hint(sv.memory_per_replica)} cannot "
            "hold the model: a serving pod needs at "
            f"least {fpm.size(need, up=True)} per replica ({fp.parameters:,} float32 parameters, "
            f"~{fpm.size(fpm.TORCH_PROCESS_BYTES)} for torch, {fpm.pod_breakdown(per_pod)}): "
            "raise memoryPerReplica or make the model smaller"))


SEARCHABLE = ("model", "data", "train")
"""The spec sections a Tune search may vary per trial."""
SAME_FOR_EVERY_TRIAL = ("data.dataset", "data.uri", "data.validationFraction")
"""Data fields a search may not vary: they change the examples a trial is validated on,
and the best trial is chosen by its validation metric (``validate`` accepted a search
over ``data.dataset``: a new-user audit)."""
_NOT_SEARCHED = {
    "tune": "cannot search over the tune section itself",
    "metadata": "paths are relative to spec (model.*, data.*, train.*); metadata is the "
                "run's, not a trial's",
    "scaling": "scaling sizes the Ray cluster (maxConcurrentTrials x scaling, the same for "
               "every trial)",
    "serve": "serving comes after the search, with the best trial's checkpoint",
    "checkpoint": "every trial checkpoints under the run's storage",
}
"""Why a search space path outside ``SEARCHABLE`` cannot vary, by its first part."""


def _tune_checks(spec: TrainingRunSpec) -> Iterator[SpecError]:
    tune = spec.tune
    assert tune is not None
    t = "spec.tune"
    if tune.metric not in METRICS:
        yield SpecError(f"{t}.metric", f"{tune.metric!r} is not a reported metric "
                        f"(one of: {', '.join(METRICS)})")
    elif tune.mode is not None and tune.mode != METRICS[tune.metric]:
        # ``mode: max`` of a loss ranks the worst trial first, and serves its model
        better = "higher" if METRICS[tune.metric] == "max" else "lower"
        yield SpecError(f"{t}.mode", f"{tune.mode!r} would rank the trial with the "
                        f"{'highest' if tune.mode == 'max' else 'lowest'} {tune.metric} first, "
                        f"but {tune.metric} is better {better}: use "
                        f"{METRICS[tune.metric]!r}, or leave mode out")
    units = spec.scaling.workers * tune.concurrent_trials
    if units > MAX_WORKERS:
        yield SpecError(f"{t}.maxConcurrentTrials", (
            f"{tune.concurrent_trials} concurrent trials of scaling.workers="
            f"{spec.scaling.workers} each is {units} Train workers at once, more than "
            f"{MAX_WORKERS} (the limit of scaling.workers): lower maxConcurrentTrials or "
            "scaling.workers"))
    sched = tune.scheduler
    if sched.name == "asha" and sched.resolved_grace_period > spec.train.epochs:
        yield SpecError(f"{t}.scheduler.gracePeriod", f"{sched.resolved_grace_period} is more "
                        f"than train.epochs={spec.train.epochs}")
    for field, value in (("gracePeriod", sched.grace_period),
                         ("reductionFactor", sched.reduction_factor)):
        if sched.name == "fifo" and value is not None:
            yield SpecError(f"{t}.scheduler.{field}", "only asha uses it; fifo runs every "
                            "trial to the end: remove it, or use name: asha to stop bad "
                            "trials early")
    base = spec.to_dict(exclude_none=False)
    no_tune = spec.model_copy(update={"tune": None})
    known = frozenset(str(e) for e in semantic_errors(no_tune))
    valid: list[tuple[str, Distribution]] = []  # the dimensions valid value by value
    for path, dist in tune.search_space.items():
        p = f"{t}.searchSpace[{path}]"
        outer = [o for o, d in tune.search_space.items() if path.startswith(o + ".")
                 and any(_holds_path(v, path[len(o) + 1:]) for v in d.choice or [])]
        if outer:
            # a trial's sample of the section is merged first, then the path's value
            # over it: the section's own value of the path was dropped without a word
            yield SpecError(p, f"{outer[0]} is searched as a whole too, and a trial "
                            f"would take {path} from here, not from {outer[0]}'s values: "
                            f"search {path} in one place")
            continue
        set_kinds = [k for k in ("choice", "uniform", "loguniform", "randint")
                     if getattr(dist, k) is not None]
        if len(set_kinds) != 1:
            yield SpecError(p, "needs exactly one of choice, uniform, loguniform, randint "
                            f"(got {', '.join(set_kinds) or 'none'})")
            continue
        kind = set_kinds[0]
        vals = getattr(dist, kind)
        if kind == "choice":
            if not vals:
                yield SpecError(f"{p}.choice", "must not be empty")
                continue
        else:
            if len(vals) != 2:
                yield SpecError(f"{p}.{kind}", f"must be [low, high], got {len(vals)} numbers")
                continue
            lo, hi = vals
            if not (math.isfinite(lo) and math.isfinite(hi)):
                yield SpecError(f"{p}.{kind}", "bounds must be finite")
                continue
            if lo >= hi:
                yield SpecError(f"{p}.{kind}", f"low ({lo}) must be below high ({hi})")
                continue
            if kind == "loguniform" and lo <= 0:
                yield SpecError(f"{p}.loguniform", f"low ({lo}) must be > 0")
                continue
        section = path.split(".")[0]
        if section in ("tune", "metadata"):
            yield SpecError(p, _NOT_SEARCHED[section])
            continue
        if not _path_exists(TrainingRunSpec, path.split(".")):
            yield SpecError(p, f"{path!r} is not a field of the spec{_path_hint(path)}")
            continue
        if section not in SEARCHABLE:
            yield SpecError(p, "only model.*, data.* and train.* can vary between trials: "
                            + _NOT_SEARCHED.get(section, "it belongs to the whole run"))
            continue
        if fixed := [f for f in SAME_FOR_EVERY_TRIAL if path == f or (
                f.startswith(path + ".") and any(_holds_path(v, f[len(path) + 1:])
                                                 for v in dist.choice or []))]:
            yield SpecError(p, f"{fixed[0]} must be the same for every trial: trials are "
                            f"ranked by their {tune.metric} on their validation split, which "
                            "it changes (another dataset, folder or hold-out); run one search "
                            "per dataset")
            continue
        leaf = _leaf_field(TrainingRunSpec, path.split("."))
        if dist.kind() in ("uniform", "loguniform") and leaf is not None and int in (
                leaf.annotation, *typing.get_args(leaf.annotation)) and float not in (
                leaf.annotation, *typing.get_args(leaf.annotation)):
            # "uniform bound 1.0 is not valid: must be a whole number": 1 is one
            yield SpecError(p, f"{path} takes whole numbers and {dist.kind()} samples "
                            "fractions: use randint [low, high] or choice")
            continue
        for value in dist.sample_values():
            err = _check_overrides(base, {path: value}, known)
            if err:
                yield SpecError(p, f"{_shown(dist, value)} is not valid: {err}")
                break
        else:
            valid.append((path, dist))
    yield from _combination_checks(base, valid, known)


COMBINATION_CHECKS = 2000
"""At most this many pairs of searched values are checked (0.4 ms each here): every
pair of every search of a few dimensions, which is what users write."""


def _shown(dist: Distribution, value: Any) -> str:
    """A searched value as the user wrote it: a range is checked just below its
    (exclusive) high end, named by the bound written, not 49.99999999999999."""
    kind = dist.kind()
    vals = getattr(dist, kind)
    if kind in ("uniform", "loguniform") and value == math.nextafter(vals[1], vals[0]):
        return f"{kind} bound {vals[1]!r}"
    if kind != "choice" and value == vals[0]:
        return f"{kind} bound {vals[0]!r}"
    return "value null" if value is None else f"value {_short(value)}"


def _combination_checks(base: dict[str, Any], dims: list[tuple[str, Distribution]],
                        known: frozenset[str]) -> Iterator[SpecError]:
    """Pairs of searched values that are each valid alone but not together (a model
    searched over ``mlp`` and ``resnet18`` beside a search over ``hidden``, which
    resnet18 has not): a trial sampling both would fail when it starts, after the
    search has begun. One error per pair of dimensions, at the second one."""
    budget = COMBINATION_CHECKS
    for i, (first, d1) in enumerate(dims):
        for second, d2 in dims[i + 1:]:
            for v1, v2 in itertools.product(d1.sample_values(), d2.sample_values()):
                if budget <= 0:
                    return
                budget -= 1
                err = _check_overrides(base, {first: v1, second: v2}, known)
                if err:
                    yield SpecError(f"spec.tune.searchSpace[{second}]", (
                        f"{_shown(d2, v2)} is not valid with {first} {_shown(d1, v1)}, "
                        f"which a trial may sample beside it: {err}"))
                    break


def _holds_path(value: Any, path: str) -> bool:
    """Whether a sampled mapping (a searched section's choice) sets the dotted ``path``."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def _leaf_field(model: type[BaseModel], parts: list[str]) -> Any:
    """The pydantic field a dotted camelCase path names, or None."""
    field = {to_camel(n): f for n, f in model.model_fields.items()}.get(parts[0])
    if field is None or len(parts) == 1:
        return field
    sub = _model_type(field.annotation)
    return _leaf_field(sub, parts[1:]) if sub is not None else None


def _path_exists(model: type[BaseModel], parts: list[str]) -> bool:
    """Whether a dotted camelCase path names a field of ``model``."""
    return _leaf_field(model, parts) is not None


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of a camelCase spec dict with a dotted path set (creates missing sections).
    A mapping is merged over the mapping there (``merged``), as a Tune trial's sample
    of a whole section is (``raykube.tune.trial_spec``): validation checks what the
    trial trains."""
    out = copy.deepcopy(doc)
    cur = out
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = merged(cur.get(parts[-1]), value)
    return out


def merged(base: Any, value: Any) -> Any:
    """``value`` over ``base``: a mapping over a mapping keeps the fields it does not
    name (deep); anything else replaces."""
    if isinstance(base, dict) and isinstance(value, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in value.items()}}
    return copy.deepcopy(value)


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def _check_overrides(base: dict[str, Any], overrides: dict[str, Any],
                     known: frozenset[str] = frozenset()) -> str | None:
    # the values as the trial gets them (``apply_overrides``): a null stays a null, which
    # a required field refuses (it was dropped here and read as "the default")
    doc = _drop_none(base)
    for path, value in overrides.items():
        doc = set_path(doc, path, value)
    doc.pop("tune", None)
    try:
        trial = TrainingRunSpec.model_validate(doc)
    except ValidationError as exc:  # in the words of a spec's own errors, not pydantic's
        here = next(iter(overrides)) if len(overrides) == 1 else None
        return "; ".join(e.message if e.path == here else f"{e.path}: {e.message}"
                         for e in _errors_from_pydantic(exc, root=("spec",), show_input=False))
    except SpecErrors as exc:
        return str(exc)
    # Cross-field rules too (e.g. an option the model does not have, a batch smaller
    # than the worker count): a trial would fail on them at run time.
    # ``known``: the base spec's own errors, reported once already.
    errors = [str(e) for e in semantic_errors(trial) if str(e) not in known]
    return "; ".join(errors) if errors else None


def apply_overrides(spec: TrainingRunSpec, overrides: dict[str, Any]) -> TrainingRunSpec:
    """The spec with dotted-path overrides applied (Tune samples, CLI flags), re-validated."""
    doc = spec.to_dict()
    for path, value in overrides.items():
        doc = set_path(doc, path, value)
    return TrainingRunSpec.model_validate(doc)


def _input_shape(data: DataSpec) -> tuple[int, ...] | None:
    if data.dataset in DATASET_SHAPES:
        return DATASET_SHAPES[data.dataset][0]
    if data.dataset == "synthetic":
        return tuple(data.shape or (3, 32, 32))
    return None  # image-folder: [C, size, size], known once read


def semantic_errors(spec: TrainingRunSpec) -> list[SpecError]:
    """Cross-field checks the schema alone cannot express."""
    return list(_semantic_checks(spec))


def _loc(loc: Iterable[Any], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def _model_at(loc: Iterable[Any]) -> type[BaseModel] | None:
    """The pydantic model whose fields sit at ``loc`` (a TrainingRun error location)."""
    model: type[BaseModel] | None = TrainingRun
    keyed = False  # the part is a key of a mapping field (searchSpace's spec paths)
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = {to_camel(n): f for n, f in model.model_fields.items()}.get(str(part)) \
            or model.model_fields.get(str(part))
        if field is None:
            return None
        model = _model_type(field.annotation)
        keyed = _is_mapping(field)
    return model


def _is_mapping(field: Any) -> bool:
    """Whether a field is a ``dict[...]`` (or an optional one): its keys are the user's."""
    return dict in (typing.get_origin(a) for a in (field.annotation,
                                                     *typing.get_args(field.annotation)))


def _field_at(loc: tuple[Any, ...]) -> Any:
    parent = _model_at(loc[:-1]) if loc else None
    if parent is None:
        return None
    by_alias = {to_camel(n): f for n, f in parent.model_fields.items()}
    return by_alias.get(str(loc[-1])) or parent.model_fields.get(str(loc[-1]))


def _bounds(field: Any) -> str:
    """'between 1 and 10000' / 'more than 0.0 and at most 10.0' from a field's
    Field(ge=, le=, gt=, lt=)."""
    bound: dict[str, Any] = {}
    for m in getattr(field, "metadata", ()):
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(m, attr, None) is not None:
                bound[attr] = getattr(m, attr)
    if "ge" in bound and "le" in bound:
        return f" between {bound['ge']} and {bound['le']}"
    words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
    parts = [f"{words[a]} {bound[a]}" for a in ("ge", "gt", "le", "lt") if a in bound]
    return (" " + " and ".join(parts)) if parts else ""


def _path_hint(path: str) -> str:
    """`` (did you mean 'train.batchSize'?)`` for a searchSpace key that is no field path:
    the closest of the spec's own (camelCase) paths, as unknown fields are hinted."""
    known = [p.removeprefix("spec.") for _, p in _field_paths(TrainingRunSpec, "spec")]
    camel = ".".join(to_camel(part) for part in path.split("."))
    if camel != path and camel in known:
        return f" (fields are camelCase: did you mean {camel!r}?)"
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_paths(model: type[BaseModel], prefix: str, depth: int = 0
                 ) -> Iterable[tuple[str, str]]:
    """(camelCase name, dotted path) of every field under ``model``, parents first."""
    nested = []
    for n, f in model.model_fields.items():
        path = f"{prefix}.{to_camel(n)}"
        yield to_camel(n), path
        child = _model_type(f.annotation)
        if child is not None and depth < 6:
            nested.append((child, path))
    for child, path in nested:
        yield from _field_paths(child, path, depth + 1)


SYNONYMS = {"learningrate": "lr", "numworkers": "workers", "numgpus": "gpusPerWorker",
            "gpus": "gpusPerWorker", "numcpus": "cpusPerWorker", "maxepochs": "epochs",
            "numepochs": "epochs", "numtrials": "trials", "numsamples": "trials"}
"""Other libraries' names for a field (lower case, no '_'): Ray's ``num_workers``,
torch's ``learning_rate``, Tune's ``num_samples``; an unknown field by one of these
names is pointed at raykube's."""


def _elsewhere(loc: tuple[Any, ...]) -> list[str]:
    """Where a field named like ``loc[-1]`` does exist in a TrainingRun (``lr`` written
    under ``spec.train`` lives at ``spec.train.optimizer.lr``): a field put one level
    off is the commonest unknown field a new user writes, and a close spelling among
    the siblings does not find it."""
    if not loc or loc[0] != "spec":
        return []
    here = _loc(loc[:-1], "")
    name = to_camel(str(loc[-1])).lower()
    return [path for camel, path in _field_paths(TrainingRunSpec, "spec")
            if camel.lower() == name and path.rsplit(".", 1)[0] != here][:3]


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None or not loc:
        return ""
    names = [to_camel(n) for n in model.model_fields]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    synonym = SYNONYMS.get(str(loc[-1]).replace("_", "").lower())
    if synonym in names:
        return f" (did you mean {synonym!r}?)"
    found = _elsewhere((*loc[:-1], synonym or loc[-1]))
    return f" (it belongs at {' or '.join(found)})" if found else ""


def _not_a_mapping(loc: tuple[Any, ...], got: Any) -> str:
    """A section given a scalar or a list: what it holds instead, and what it got."""
    model = _model_at(loc)
    fields = [to_camel(n) for n in model.model_fields] if model else []
    kind = ("a list" if isinstance(got, list) else "a boolean" if isinstance(got, bool)
            else "a number" if isinstance(got, (int, float)) else "a string")
    field = _field_at(loc)
    if field is not None and _is_mapping(field):
        # a mapping of the user's keys (searchSpace's spec paths), not of our fields:
        # "must be a mapping of its fields (choice, uniform, ...)" named the values' fields
        example = (" such as {train.optimizer.lr: {loguniform: [0.0001, 0.1]}}"
                   if loc[-1] == "searchSpace" else "")
        return f"must be a mapping{example}, got {_short(got)}, {kind}"
    msg = (f"must be a mapping of its fields ({', '.join(fields[:6])}"
           f"{', ...' if len(fields) > 6 else ''}), got {_short(got)}, {kind}"
           if fields else f"must be a mapping, got {_short(got)}, {kind}")
    if isinstance(got, str) and "uri" in fields and ("://" in got or "/" in got):
        msg += f": did you mean {{uri: {got}}}?"
    elif isinstance(got, str) and "name" in fields:
        msg += f": did you mean {{name: {got}}}?"
    return msg


_TYPE_WORDS = {"string_type": "a string", "list_type": "a list", "bool_type": "true or false",
               "finite_number": "a finite number", "int_parsing": "a whole number",
               "float_parsing": "a number", "dict_type": "a mapping"}
"""What a field takes, by pydantic's error type, for the errors no branch above words."""


def _s3_uri_words(value: str, shown: str) -> str:
    """``checkpoint.storage.uri`` that is no ``s3://<bucket>`` (the CRD's pattern, which
    pydantic answered with the regular expression itself)."""
    if value.lower().startswith("s3:") and (problem := location_problem(value)):
        return problem  # S3://, s3:/bucket, s3:///x: the slip named
    return (f"must be an s3:// URI (s3://<bucket>/<prefix>), got {shown}; a volume is "
            "checkpoint.storage.pvc")


def _as_yaml(value: Any) -> str:
    """A value as the user's YAML had it, and what YAML made of it: ``'yes', a string``,
    ``[2Gi], a list``, ``.nan, a number``."""
    kind = ("null" if value is None else "a boolean" if isinstance(value, bool)
            else "a number" if isinstance(value, (int, float))
            else "a string" if isinstance(value, str) else "a list" if isinstance(value, list)
            else "a mapping" if isinstance(value, dict) else type(value).__name__)
    if isinstance(value, float) and not math.isfinite(value):
        shown = ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
    elif value is None or isinstance(value, (bool, int, float)):
        shown = json.dumps(value)
    else:
        shown = _short(value, 80)
    return shown if value is None else f"{shown}, {kind}"


def _errors_from_pydantic(exc: ValidationError,
                          nulls: Collection[tuple[str, ...]] = (),
                          *, root: tuple[str, ...] = (), show_input: bool = True
                          ) -> list[SpecError]:
    """Each error at its camelCase path, in our words. ``root``: where the validated model
    sits in a TrainingRun (``("spec",)`` for a spec alone), to find each field's bounds;
    ``show_input=False`` leaves out the value given (a Tune sample's, shown by the caller
    as the user wrote it)."""
    errors: list[SpecError] = []
    for e in exc.errors():
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, SpecErrors):
            errors.extend(ctx_err.errors)
            continue
        path = _loc(e["loc"], "")
        msg = e["msg"]
        loc = (*root, *e["loc"])
        got = f", got {e.get('input')!r}" if show_input else ""
        if e["loc"] and e["loc"][-1] == "[key]":
            # a mapping's key that is no string (`searchSpace: {~: ...}`): pydantic said
            # "searchSpace.None.[key]: Input should be a valid string"
            path = _loc(e["loc"][:-2], "")
            key = e.get("input")
            what = ("field paths such as train.optimizer.lr"
                    if tuple(map(str, loc[-4:-2])) == ("tune", "searchSpace") else "strings")
            shown = "null" if key is None else json.dumps(key, default=str)
            msg = f"keys must be {what}, got {shown}"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
            last = str(e["loc"][-1]) if e["loc"] else ""
            camel = to_camel(last)
            if "_" in last and camel != last and _field_at((*loc[:-1], camel)) is not None:
                msg += f" (fields are camelCase: did you mean {camel!r}?)"
            else:
                msg += _did_you_mean((*loc[:-1], camel))
        elif e["type"] == "missing":
            msg = ("is empty (null): give it a value" if tuple(map(str, loc)) in nulls
                   else "is required")
        elif e.get("input", ...) is None and loc == ("metadata",):
            path, msg = "metadata.name", "is required (metadata is empty)"
        elif e.get("input", ...) is None and e["type"] in ("model_type", "dict_type",
                                                            "model_attributes_type"):
            field = _field_at(loc)
            required = field is not None and field.is_required()
            msg = ("is empty (null): give it a value" if required  # removed, it is missing
                   else "is empty (null): give it a value or remove the key")
        elif e["type"] in ("model_type", "dict_type", "model_attributes_type"):
            # `storage: s3://bucket` where `storage: {uri: s3://bucket}` belongs: not
            # pydantic's "a valid dictionary or instance of StorageSpec"
            msg = _not_a_mapping(loc, e.get("input"))
        elif e["type"].startswith("int_") or e["type"].startswith("float_"):
            # e.g. `epochs: 1e9` is a float to YAML: say the range, not "valid integer"
            bounds = _bounds(_field_at(loc))
            kind = "a whole number" if e["type"].startswith("int_") else "a number"
            if bounds or e["type"] in ("int_from_float", "int_type", "float_type"):
                msg = f"must be {kind}{bounds}{got}"
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            # pydantic's "Input should be greater than 0": the range, and what was given,
            # as for a fractional epochs
            field = _field_at(loc)
            bounds = _bounds(field)
            ann = getattr(field, "annotation", None)
            whole = ann is int or (int in typing.get_args(ann) and float not in typing.get_args(ann))
            msg = (f"must be {'a whole number' if whole else 'a number'}{bounds}{got}"
                   if bounds else f"{msg[0].lower()}{msg[1:]}{got}")
        elif e["type"] in ("too_short", "too_long", "string_too_short", "string_too_long"):
            # pydantic's "List should have at most 3 items after validation, not 4"
            ctx = e.get("ctx") or {}
            unit = "character" if e["type"].startswith("string") else "item"
            limit = ctx.get("min_length" if e["type"].endswith("short") else "max_length")
            size = ctx.get("actual_length", len(e["input"]) if isinstance(
                e.get("input"), (str, list, dict)) else None)
            msg = (f"must have {'at least' if e['type'].endswith('short') else 'at most'} "
                   f"{limit} {unit}{'' if limit == 1 else 's'}"
                   + (f", got {size}" if size is not None else ""))
            if e["type"] == "string_too_short" and limit == 1:
                msg = "must not be empty"
        elif e["type"] == "literal_error":
            msg = f"{e['input']!r} is not allowed: {msg[0].lower()}{msg[1:]}"
        elif e["type"] == "string_type" and isinstance(e.get("input"), (bool, int, float)):
            # `rerun: 2`, `image: yes`: YAML read a number or a boolean
            got = e["input"]
            what = ("a boolean to YAML (so are y/n, yes/no, on/off)" if isinstance(got, bool)
                    else "a number to YAML")
            msg = f"must be a string, got {json.dumps(got)}, {what}: quote it"
        elif e["type"] == "string_pattern_mismatch":
            shown = _short(e.get("input"))
            msg = (f"must be a DNS label: lower-case letters, digits and '-', starting with "
                   f"a letter and ending with a letter or digit (got {shown})"
                   if (e.get("ctx") or {}).get("pattern") == _DNS_LABEL
                   else f"must be a DNS label: lower-case letters, digits and '-', starting "
                   f"and ending with a letter or digit (got {shown})"
                   if (e.get("ctx") or {}).get("pattern") == _NAMESPACE
                   else f"must be a DNS subdomain: lower-case letters, digits, '-' and '.', "
                   f"starting and ending with a letter or digit (got {shown})"
                   if (e.get("ctx") or {}).get("pattern") == _DNS_SUBDOMAIN
                   else k8s_rules.quantity_hint(str(e.get("input")))
                   if (e.get("ctx") or {}).get("pattern") == _QUANTITY
                   else f"must be an absolute path (starting with /), got {shown}"
                   if (e.get("ctx") or {}).get("pattern") == "^/"
                   else _s3_uri_words(str(e.get("input")), shown)
                   if (e.get("ctx") or {}).get("pattern") == r"^s3://[^/]+"
                   else f"{msg[0].lower()}{msg[1:]} (got {shown})")
        elif e["type"] in _TYPE_WORDS and show_input:
            # pydantic's "Input should be a valid list": what the field takes, and what
            # YAML made of what was written
            msg = f"must be {_TYPE_WORDS[e['type']]}, got {_as_yaml(e.get('input'))}"
            if e["type"] == "bool_type" and isinstance(e.get("input"), str):
                msg += ": write true or false, without quotes"
            elif e["type"] == "list_type" and isinstance(e.get("input"), dict):
                msg += ": a list of them, each item after a '- '"
        errors.append(SpecError(path or "(document)", msg))
    return errors


def _without_nulls(node: Any, path: tuple[str, ...], nulls: set[tuple[str, ...]]) -> Any:
    """``node`` without its null fields, each noted in ``nulls``: the API server prunes a
    null field of a custom resource before validation (apiextensions v1), so ``serve:
    null`` is the default on the cluster; it was an error here. A required one still is,
    said as empty. The search space's values are the user's own (not pruned there)."""
    if not isinstance(node, dict) or path == ("spec", "tune", "searchSpace"):
        return node
    out = {}
    for key, value in node.items():
        if value is None:
            nulls.add((*path, str(key)))
        else:
            out[key] = _without_nulls(value, (*path, str(key)), nulls)
    return out


def parse_training_run(doc: Any, *, source: str | None = None) -> TrainingRun:
    """Validate one TrainingRun document (a dict as read from YAML or the API).

    Raises InvalidTrainingRun listing every problem, each at its camelCase field path.
    """
    if not isinstance(doc, dict):
        raise InvalidTrainingRun([SpecError("(document)", f"expected a mapping, got "
                                            f"{type(doc).__name__}")], source)
    errors: list[SpecError] = []
    for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
        if doc.get(key) != want:
            got = ("it is missing" if key not in doc else "it is empty (null)"
                   if doc[key] is None else f"got {doc[key]!r}")
            errors.append(SpecError(key, f"must be {want!r}, {got}"))
    if errors:
        raise InvalidTrainingRun(errors, source)
    if (too_big := spec_size_problem(doc.get("spec"))) is not None:
        raise InvalidTrainingRun([too_big], source)
    nulls: set[tuple[str, ...]] = set()
    if isinstance(doc.get("spec"), dict):
        doc = {**doc, "spec": _without_nulls(doc["spec"], ("spec",), nulls)}
    try:
        return TrainingRun.model_validate(doc)
    except ValidationError as exc:
        raise InvalidTrainingRun(_errors_from_pydantic(exc, nulls), source) from None
    except SpecErrors as exc:
        raise InvalidTrainingRun(exc.errors, source) from None


MAX_SPEC_BYTES = 64 * 1024
"""Largest ``spec``, as compact JSON. A Kubernetes object's annotations hold 256 KiB in
all, and two of them copy the spec: ``kubectl apply``'s last-applied-configuration and
the operator's (kopf's) last-handled-configuration. A spec the API server took but kopf
could not annotate was retried every 5 s, for good (an operator audit: 406 KB of
tolerations). Every field's own bound keeps a spec far below this; it is reached only
through the search space's open ``choice`` values."""


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def spec_size_problem(spec: Any) -> SpecError | None:
    """``MAX_SPEC_BYTES`` exceeded, at the field that holds most of it (followed down while
    one part holds more than half of its parent)."""
    if not isinstance(spec, (dict, list)) or (size := _json_size(spec)) <= MAX_SPEC_BYTES:
        return None
    path, node, node_size = "spec", spec, size
    while isinstance(node, (dict, list)) and node:
        parts = node.items() if isinstance(node, dict) else enumerate(node)
        key, part, part_size = max(((k, v, _json_size(v)) for k, v in parts),
                                   key=lambda kv: kv[2])
        if part_size * 2 <= node_size:
            break
        path += f"[{key}]" if isinstance(node, list) else (
            f".{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)) else f"[{key}]")
        node, node_size = part, part_size
    where = "" if path == "spec" else f" (most of it in {path}: {node_size // 1024} KiB)"
    return SpecError("spec", f"{size // 1024} KiB as JSON, more than the {MAX_SPEC_BYTES // 1024} "
                     f"KiB a TrainingRun may hold{where}: Kubernetes keeps copies of it in "
                     "the object's annotations, which hold 256 KiB in all")


def cluster_problems(run: TrainingRun) -> list[SpecError]:
    """What only a cluster refuses. A relative ``data.uri`` or ``data.cacheDir`` means the
    spec file's folder to ``raykube run``; a pod has no spec file, and the path would
    resolve against the image's working directory, where the data is not."""
    pvc = run.spec.checkpoint.storage.pvc
    shared = pvc.mount_path if pvc is not None else DEFAULT_MOUNT_PATH
    return [SpecError(path, (f"{value!r} is in a home directory, which on a pod is not "
                             "yours (locally it is)" if value.startswith("~") else
                             f"{value!r} is a relative path, which a pod cannot resolve "
                             "(locally it is relative to the spec file)")
                      + f"; give an absolute path on the shared volume (under {shared})"
                      + (" or an s3:// URI" if path.endswith("uri") else ""))
            for path, value in (("spec.data.uri", run.spec.data.uri),
                                ("spec.data.cacheDir", run.spec.data.cache_dir))
            if value and relative_path(value)]


def check_for_cluster(run: TrainingRun, source: str | None = None) -> TrainingRun:
    """``run``, or ``InvalidTrainingRun`` naming what a cluster refuses
    (``cluster_problems``): the operator and ``raykube render`` ask it."""
    if errors := cluster_problems(run):
        raise InvalidTrainingRun(errors, source)
    return run


def parse_spec(spec_doc: Any, *, name: str = "run", namespace: str = "default") -> TrainingRun:
    """Validate a bare ``spec`` mapping (e.g. a Tune trial's), wrapped as a TrainingRun."""
    return parse_training_run({"apiVersion": API_VERSION, "kind": KIND,
                               "metadata": {"name": name, "namespace": namespace},
                               "spec": spec_doc})


# --------------------------------------------------------------------------- loading
def _yaml_problem(exc: yaml.YAMLError) -> str:
    """'line 3, column 11: expected ...' (PyYAML's own text names "<unicode string>")."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return str(exc)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


MAX_YAML_VALUES = 100_000
"""Values a document may expand to through YAML aliases (a TrainingRun holds a few
hundred). kubectl's YAML parser refuses excessive aliasing the same way; PyYAML expands
them lazily, so a few lines of nested aliases (a "billion laughs") otherwise became
millions of values for validation to walk and an error message of megabytes."""


class _YAMLLimit(yaml.YAMLError):
    """A document too deep, too self-referential or too large once its aliases expand."""


def _expanded_size(doc: Any, limit: int, shared: list[bool] | None = None) -> int:
    """How many values ``doc`` holds with every alias expanded, counting each shared
    list or mapping once per place it appears (memoised, so the walk is over distinct
    objects); stops at ``limit``. A list or mapping that contains itself is an error.
    ``shared`` (when given) gets True appended if any list or mapping appears twice (an
    alias), for the error's words."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(doc, False)]
    while stack:
        obj, done = stack.pop()
        if not isinstance(obj, (list, dict)):
            continue
        key = id(obj)
        children = list(obj.values()) if isinstance(obj, dict) else obj
        if done:
            open_.discard(key)
            sizes[key] = min(limit, 1 + sum(sizes.get(id(c), 1) for c in children))
            continue
        if key in sizes:
            if shared is not None and not shared:
                shared.append(True)
            continue
        if key in open_:
            raise _YAMLLimit("a list or mapping contains itself through an alias")
        open_.add(key)
        stack.append((obj, True))
        stack.extend((c, False) for c in children if isinstance(c, (list, dict)))
    return sizes.get(id(doc), 1)


def load_yaml_documents(text: str) -> list[Any]:
    """All non-empty documents of a YAML stream, read as kubectl reads them and as the
    API server stores them (``raykube.kube_yaml``); a document nested too deeply or that
    expands past ``MAX_YAML_VALUES`` through aliases is a ``yaml.YAMLError``, as it is
    for kubectl."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=kube_yaml.Loader) if d is not None]
    except RecursionError:
        raise _YAMLLimit("nested too deeply") from None
    for doc in docs:
        shared: list[bool] = []
        if _expanded_size(doc, MAX_YAML_VALUES + 1, shared) > MAX_YAML_VALUES:
            raise _YAMLLimit(
                f"expands to more than {MAX_YAML_VALUES:,} values through aliases "
                "(excessive aliasing)" if shared else
                f"holds more than {MAX_YAML_VALUES:,} values (a TrainingRun holds a few "
                "hundred)")
    return [kube_yaml.as_api_server_stores(d) for d in docs]


def other_object(doc: Any) -> str | None:
    """``"Secret/minio"`` when ``doc`` is another Kubernetes object, not a TrainingRun;
    None for a TrainingRun, or for anything that cannot be told apart from a mistyped one.

    ``kubectl apply -f`` takes a file holding a run with its Secret or namespace, so the
    CLI reads such a file too. Only an object of another API group *and* another kind is
    someone else's: ``apiVersion: raykube.io/v1`` or ``kind: TraningRun`` is still a
    TrainingRun with a typo, and is refused naming the field."""
    if not isinstance(doc, dict):
        return None
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if not (isinstance(api, str) and api and isinstance(kind, str) and kind):
        return None
    if api.split("/")[0] == GROUP or kind.lower() in (KIND.lower(), "trainingruns", "tr"):
        return None
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    return f"{kind}/{name}" if isinstance(name, str) and name else kind


def _list_items(docs: list[Any]) -> list[Any]:
    """The documents with each ``kind: List`` (``kubectl get -o yaml``'s output) replaced
    by its items, as kubectl reads them."""
    out: list[Any] = []
    for doc in docs:
        if (isinstance(doc, dict) and doc.get("apiVersion") == "v1" and doc.get("kind") == "List"
                and isinstance(doc.get("items"), list)):
            out.extend(doc["items"])
        else:
            out.append(doc)
    return out


MAX_SPEC_FILE_BYTES = 4 * 2**20
"""Most bytes a file of TrainingRuns may hold: read whole and parsed before, a 28 MB
dataset .json beside the specs (``raykube validate .`` in a project) took 4 GB and more
than two minutes, and /dev/zero never ended."""


def load_file(path: str | Path, skipped: list[str] | None = None) -> list[TrainingRun]:
    """Every TrainingRun in a YAML file (one or more documents, or a ``kind: List``).

    Other Kubernetes objects beside them (a Secret, a Namespace; see ``other_object``)
    are passed over, each named in ``skipped`` when given.

    Raises InvalidTrainingRun (source = the file name, document index when several)
    on the first invalid document, or when the file holds none.
    """
    src = str(path)
    try:
        if src == "-":  # `raykube validate -`, `... | raykube render -`
            src = "<stdin>"
            raw = sys.stdin.buffer.read(MAX_SPEC_FILE_BYTES + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(MAX_SPEC_FILE_BYTES + 1)
        if len(raw) > MAX_SPEC_FILE_BYTES:
            raise InvalidTrainingRun([SpecError("(file)", (
                f"larger than {MAX_SPEC_FILE_BYTES // 2**20} MiB: not a TrainingRun file (the "
                "API server takes an object of at most ~1.5 MiB); is it a dataset?"))], src)
        text = raw.decode("utf-8")
    except IsADirectoryError:
        raise InvalidTrainingRun([SpecError("(file)", _directory_problem(Path(src)))],
                                 src) from None
    except OSError as exc:
        raise InvalidTrainingRun([SpecError("(file)", exc.strerror or str(exc))], src) from None
    except UnicodeDecodeError as exc:
        raise InvalidTrainingRun([SpecError("(file)", f"not UTF-8 text (byte {exc.start}): "
                                            "is this a YAML file?")], src) from None
    try:
        docs = load_yaml_documents(text)
    except yaml.YAMLError as exc:
        raise InvalidTrainingRun([SpecError("(file)", f"not valid YAML: {_yaml_problem(exc)}")],
                                 src) from None
    docs = _list_items(docs)
    kinds = [other_object(d) for d in docs]  # each document read once
    others = [o for o in kinds if o]
    if skipped is not None:
        skipped.extend(others)
    several = len(docs) > 1
    indexed = [(i, d) for i, (d, o) in enumerate(zip(docs, kinds, strict=True)) if not o]
    if not indexed:
        beside = f" (only {', '.join(others)})" if others else ""
        raise InvalidTrainingRun([SpecError("(file)", f"holds no TrainingRun{beside}")], src)
    if not several:
        return [parse_training_run(docs[0], source=src)]
    # Several documents: every invalid one is reported, each with its index.
    runs, errors = [], []
    for i, doc in indexed:
        try:
            runs.append(parse_training_run(doc, source=f"{src}[{i}]"))
        except InvalidTrainingRun as exc:
            errors += [dataclasses.replace(e, source=f"{src}[{i}]") for e in exc.errors]
    if errors:
        raise InvalidTrainingRun(errors, src)
    return runs


def _directory_problem(path: Path) -> str:
    """What is wrong with a directory given where a file is read: ``validate`` and
    ``render`` expand directories, so only an empty one reaches here from them; ``run``
    and ``serve`` take one file (they said "no .yaml file" of a directory full of them)."""
    try:
        found = sorted(f.name for f in path.iterdir()
                       if f.suffix in MANIFEST_SUFFIXES and f.is_file())
    except OSError as exc:  # unreadable
        return f"a directory, not a file ({exc.strerror or exc})"
    if not found:
        return ("a directory with no .yaml, .yml or .json file (its subdirectories are not "
                "read, as kubectl apply -f DIR does not read them)")
    if len(found) == 1:
        return f"a directory, not a file: give the file itself ({path / found[0]})"
    return (f"a directory, not a file: give one of its {len(found)} .yaml/.yml/.json files "
            f"(e.g. {path / found[0]})")


def load_one(path: str | Path) -> TrainingRun:
    """The single TrainingRun in a file (error if it holds several)."""
    runs = load_file(path)
    if len(runs) != 1:
        raise InvalidTrainingRun([SpecError("(file)", f"holds {len(runs)} TrainingRuns; "
                                            "expected one")], str(path))
    return runs[0]


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def expand_paths(paths: Iterable[str | Path]) -> list[str]:
    """Each directory replaced by its ``.yaml``/``.yml``/``.json`` files, sorted, as
    ``kubectl apply -f DIR`` reads it (not recursively); files and ``-`` as given. An
    empty directory stays, to be reported as holding no TrainingRun. A file named twice
    (``a.yaml ./a.yaml``, or a directory and one of its files) is read once, under the
    first name: read twice, its runs were duplicates of themselves to ``render``."""
    out: list[str] = []
    seen: set[str] = set()
    for p in map(str, paths):
        if p != "-" and Path(p).is_dir():
            found = sorted(str(f) for f in Path(p).iterdir()
                           if f.suffix in MANIFEST_SUFFIXES and f.is_file())
            names = found or [p]
        else:
            names = [p]
        for name in names:
            key = name if name == "-" else os.path.realpath(name)
            if key not in seen:
                seen.add(key)
                out.append(name)
    return out


def duplicate_run(namespace: str, name: str, first: str) -> str:
    """Two TrainingRuns of one name in one namespace: applied together, the second
    overwrites the first (and they would share a run directory)."""
    return (f"TrainingRun {name!r} (namespace {namespace}) is already defined in {first}; "
            "names must be unique")


def validate_files(paths: Iterable[str | Path],
                   skipped: dict[str, list[str]] | None = None,
                   cluster: dict[str, list[SpecError]] | None = None
                   ) -> dict[str, list[SpecError]]:
    """File -> its errors (empty list when valid). Never raises for bad input.
    ``skipped`` gets, per file, the other objects passed over (``load_file``);
    ``cluster``, what only a cluster refuses (``cluster_problems``: valid for
    ``raykube run``). A directory stands for its manifests (``expand_paths``)."""
    out: dict[str, list[SpecError]] = {}
    seen: dict[tuple[str, str], str] = {}
    for p in expand_paths(paths):
        if str(p) in out:
            continue  # the same file named twice (a directory and one of its files)
        others: list[str] = []
        try:
            runs = load_file(p, others)
            out[str(p)] = []
            for r in runs:  # as `raykube render` refuses them, and kubectl would overwrite
                key = (r.metadata.namespace or "default", r.name)
                if key in seen:
                    out[str(p)].append(SpecError("metadata.name", duplicate_run(*key, seen[key])))
                seen.setdefault(key, str(p))
            if cluster is not None:
                several = len(runs) > 1
                cluster[str(p)] = [dataclasses.replace(e, source=f"{p}[{r.name}]" if several
                                                       else None)
                                   for r in runs for e in cluster_problems(r)]
        except InvalidTrainingRun as exc:
            out[str(p)] = exc.errors
        if skipped is not None:
            skipped[str(p)] = others
    return out
