"""Lower bounds on the memory a TrainingRun needs, from its spec alone (no torch).

Why: a model too large for the memory it is given is otherwise found by the kernel's OOM
killer in the middle of a run: on a cluster a Ray worker is killed, Ray Train restarts the
worker group from the last checkpoint and it is killed again until the retries run out;
on one machine (``raykube run``) many workers importing torch can take the whole machine
with them. Both are refused up front, naming the field, when even these lower bounds do
not fit.

Every figure here is a floor, never an estimate that could refuse a run that fits: the
model's float32 weights, their gradients and the optimizer's per-parameter buffers, plus
what importing torch alone takes. Activations, batches, the dataset, DDP's gradient
buckets and Ray's object store come on top and are left out on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from raykube.spec import (
    DATASET_SHAPES,
    ModelSpec,
    OptimizerSpec,
    TrainingRunSpec,
    _input_shape,
)

MiB = 1024 ** 2
GiB = 1024 ** 3

TORCH_PROCESS_BYTES = 400 * MiB
"""Memory of a Python process that has imported torch, before any tensor: measured 506 MiB
(``ru_maxrss`` after ``import torch``, torch 2.14.1, Linux x86-64) and ~500 MiB per Train
worker of a 16-worker quickstart (the machine's used memory rose 8.1 GB); rounded down
so that it stays a floor on other builds."""

RAY_SERVING_POD_BYTES = 400 * MiB
"""Ray's own processes in a serving pod, beside the replica: measured on `make
e2e-local`'s node (2026-12-02), a pod of one digits-MLP replica held 795 MiB of anonymous
memory (its cgroup's ``total_rss``), the replica ~400 MiB of it; ``ray start``, Serve's
HAProxyManager, the dashboard agent and the runtime-env agent the rest."""

MEMORY_MONITOR_FRACTION = 0.95
"""Ray's memory monitor kills workers above this fraction of the pod's memory
(``RAY_memory_usage_threshold``): a pod of 768Mi with that replica reached 780 MB, was
over its 765 MB threshold, never became Ready, and half the requests during an update
got HTTP 500; 1Gi pods (815 MiB in use) served every request."""

BYTES_PER_PARAMETER = 4
"""float32: raykube trains and serves in full precision."""

DEFAULT_IMAGE_SIZE = 32
"""``data.imageSize``'s default (``raykube.data.DEFAULT_IMAGE_SIZE``; a test keeps the
two equal: importing ``raykube.data`` here would import numpy into the operator)."""

DEFAULT_SYNTHETIC_CLASSES = 10
RESNET18_BODY = 11_167_104
"""Parameters of torchvision's ResNet-18 without its stem convolution and its classifier
(both sized by the data below); a test counts them with torch."""


def input_shape(spec: TrainingRunSpec) -> tuple[tuple[int, ...], int]:
    """The example shape (the spec's own ``_input_shape``; an image folder's from
    ``imageSize`` and ``grayscale``) and a class count for ``spec``'s dataset. An image
    folder's classes are only known once read: 2 then, the fewest it may have (a floor)."""
    d = spec.data
    shape = _input_shape(d)
    if shape is None:  # image-folder
        size = d.image_size or DEFAULT_IMAGE_SIZE
        return (1 if d.grayscale else 3, size, size), 2
    if d.dataset in DATASET_SHAPES:
        return shape, DATASET_SHAPES[d.dataset][1]
    return shape, d.num_classes or DEFAULT_SYNTHETIC_CLASSES


def _linear(widths: Sequence[int]) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def _cnn_features(shape: tuple[int, ...], channels: Sequence[int]) -> tuple[int, int] | None:
    """(parameters, flattened size) of ``raykube.models.CifarCNN``'s conv blocks, or None
    when the feature map would vanish (the model refuses that input itself)."""
    c, h, w = shape
    small = min(h, w) < 16
    params, prev = 0, c
    for ch in channels:
        params += prev * ch * 25 + ch
        if small:  # "same" padding, ceil-mode pooling
            h, w = -(-h // 2), -(-w // 2)
        else:  # 5x5 valid convolution, then 2x2 pooling
            h, w = (h - 4) // 2, (w - 4) // 2
        if h < 1 or w < 1:
            return None
        prev = ch
    return params, prev * h * w


def parameter_count(model: ModelSpec, shape: Sequence[int], num_classes: int) -> int | None:
    """How many parameters ``raykube.models.build_model`` gives this model, without
    building it; None for a shape the model cannot take."""
    shape = tuple(int(x) for x in shape)
    o = model.options
    if model.name == "mlp":
        return _linear([math.prod(shape), *(o.hidden or [512, 512]), num_classes])
    if len(shape) != 3:
        return None
    if model.name == "cifar-cnn":
        features = _cnn_features(shape, o.channels or (6, 16))
        if features is None:
            return None
        params, flat = features
        return params + _linear([flat, *(o.hidden or (120, 84)), num_classes])
    if model.name == "resnet18":
        return shape[0] * 64 * 9 + RESNET18_BODY + 512 * num_classes + num_classes
    return None


def optimizer_buffers(opt: OptimizerSpec) -> int:
    """Tensors the optimizer keeps per parameter: Adam's two moments; SGD's momentum
    buffer when it has momentum."""
    if opt.name in ("adam", "adamw"):
        return 2
    return 1 if opt.momentum > 0 else 0


@dataclass(frozen=True)
class Footprint:
    """What one training worker and one serving replica need at the least."""

    parameters: int
    optimizer_buffers: int

    @property
    def training_bytes(self) -> int:
        """Weights, gradients and optimizer buffers, plus torch."""
        return (TORCH_PROCESS_BYTES
                + self.parameters * BYTES_PER_PARAMETER * (2 + self.optimizer_buffers))

    @property
    def serving_bytes(self) -> int:
        """The weights, plus torch."""
        return TORCH_PROCESS_BYTES + self.parameters * BYTES_PER_PARAMETER

    @property
    def serving_pod_bytes(self) -> int:
        """A serving pod of one replica: the replica and Ray's processes, under Ray's
        memory-monitor threshold."""
        return math.ceil((self.serving_bytes + RAY_SERVING_POD_BYTES) / MEMORY_MONITOR_FRACTION)


def footprint(spec: TrainingRunSpec) -> Footprint | None:
    """The spec's footprint, or None when its model cannot be sized from the spec."""
    shape, classes = input_shape(spec)
    n = parameter_count(spec.model, shape, classes)
    if n is None:
        return None
    return Footprint(n, optimizer_buffers(spec.train.optimizer))


def size(nbytes: float) -> str:
    """A byte count as people read it: 1.5 GiB, 730 MiB."""
    if nbytes >= GiB:
        return f"{nbytes / GiB:.1f} GiB"
    return f"{nbytes / MiB:.0f} MiB" if nbytes >= MiB else f"{max(1, round(nbytes / 1024))} KiB"


def training_breakdown(spec: TrainingRunSpec, fp: Footprint) -> str:
    """Where ``fp.training_bytes`` comes from, for an error message."""
    opt = spec.train.optimizer
    buffers = {2: f"{opt.name}'s 2 moment buffers", 1: "sgd's momentum buffer",
               0: "no optimizer buffer"}[fp.optimizer_buffers]
    return (f"{spec.model.name} has {fp.parameters:,} parameters: "
            f"{size(fp.parameters * BYTES_PER_PARAMETER * (2 + fp.optimizer_buffers))} for "
            f"float32 weights, gradients and {buffers}, plus ~{size(TORCH_PROCESS_BYTES)} "
            "for torch")
