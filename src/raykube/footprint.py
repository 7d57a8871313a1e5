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

from raykube.k8s_rules import quantity_bytes
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

RAY_POD_BYTES = 400 * MiB
"""Ray's own processes in a Ray pod, beside its Train worker or Serve replica (``ray
start``, the raylet, the dashboard and runtime-env agents, the log monitor; Serve's
HAProxyManager in a serving pod). Measured on `make e2e-local`'s node (2026-12-02) with
the quickstart's digits MLP, as the pod cgroup's anonymous memory (``total_rss``): a
serving pod of one replica held 795 MiB, a training worker pod 798-799 MiB (peaks,
sampled every 0.5 s); in both, 400 MiB of torch plus this comes to 800 MiB. The split
differs (a Train worker process, with Ray Train imported, is larger than a replica's
torch; a training pod has no HAProxyManager), the sum does not."""

RAY_HEAD_BYTES = 1100 * MiB
"""A training RayCluster's head pod: Ray's GCS, dashboard and agents, the job supervisor,
the driver (``raykube train``), Ray Train's controller and its synchronization actor.
Measured on that node with the quickstart (2 workers): 1,129-1,169 MiB of anonymous
memory in a 2Gi head, through the run and through a worker pod's loss and restart; a 1Gi
head had the Train controller and the job supervisor killed by Ray's memory monitor on
each of the RayJob's 3 attempts. No model in it: the same for every spec."""

MEMORY_MONITOR_FRACTION = 0.95
"""Ray's memory monitor kills workers above this fraction of the pod's memory
(``RAY_memory_usage_threshold``). On that node, with that model: a 768Mi serving pod
reached 780 MB, over its 765 MB threshold, never became Ready, and half the requests
during an update got HTTP 500; training worker pods of 512Mi and of 768Mi had their
Train workers killed by the monitor on each of the RayJob's 3 attempts and the run
failed. 1Gi pods trained and served to the end."""

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

    def training_pod_bytes(self, per_pod: int = 1) -> int:
        """``memoryPerWorker`` for a pod of ``per_pod`` Train workers (fractional GPUs
        pack several; its memory is ``per_pod`` times it): the workers and the pod's one
        set of Ray processes, under Ray's memory-monitor threshold."""
        return pod_share(self.training_bytes, per_pod)

    def serving_pod_bytes(self, per_pod: int = 1) -> int:
        """``memoryPerReplica`` for a pod of ``per_pod`` replicas, as above."""
        return pod_share(self.serving_bytes, per_pod)


TUNE_HEAD_BYTES = 1200 * MiB
"""A Tune search's head before its trials: what ``RAY_HEAD_BYTES`` holds less the one
Train run's actors, plus the Tune driver (460 MiB PSS against a training driver's 141).
With each trial's actors pinned to the head (``raykube.tune.TRIAL_RESOURCES``), on
`make e2e-local`'s node (2026-12-02, 4 trials of the digits MLP, 6 epochs, a 4Gi head,
its cgroup's anonymous memory sampled every 0.5 s): a peak of 1,672 MiB at
``maxConcurrentTrials: 1``, 2,142 at 2 and 3,048 at 4 (least squares: 1,219 MiB plus 458
per concurrent trial); rounded down so that each stays a floor (1,640, 2,080, 2,960)."""

TUNE_TRIAL_HEAD_BYTES = 440 * MiB
"""Each running trial's actors on the head: the trial's driver (Tune's ``ImplicitFunc``),
Ray Train's controller, its synchronization actor and its placement-group cleaner (127,
125, 111 and 116 MiB PSS at the peak above); the slope of that line, rounded down."""

DEFAULT_HEAD_MEMORY = "2Gi"
"""``scaling.head.memory`` when unset, unless the head needs more (``default_head_memory``)."""


def head_bytes(spec: TrainingRunSpec, *, job: bool = True) -> int:
    """What the head holds: the training (``job``) cluster's head of a search holds the
    Tune driver and each concurrent trial's actors; any other head is ``RAY_HEAD_BYTES``."""
    if job and spec.tune is not None:
        return TUNE_HEAD_BYTES + spec.tune.concurrent_trials * TUNE_TRIAL_HEAD_BYTES
    return RAY_HEAD_BYTES


def head_pod_bytes(spec: TrainingRunSpec, *, job: bool = True) -> int:
    """``scaling.head.memory``'s floor: ``head_bytes`` under the memory monitor (1158 MiB
    for a training run and a serving cluster)."""
    return math.ceil(head_bytes(spec, job=job) / MEMORY_MONITOR_FRACTION)


def default_head_memory(spec: TrainingRunSpec, *, job: bool = True) -> str:
    """The head's memory when the spec leaves it unset: ``DEFAULT_HEAD_MEMORY``, or for a
    search whose trials need more, the floor rounded up to a whole 512 MiB (2.5Gi at 2
    concurrent trials). Each peak measured on the node (see ``TUNE_HEAD_BYTES``) stayed
    under 95 % of the default it gets."""
    need = head_pod_bytes(spec, job=job)
    if need <= quantity_bytes(DEFAULT_HEAD_MEMORY):
        return DEFAULT_HEAD_MEMORY
    return f"{math.ceil(need / (512 * MiB)) * 512}Mi"


def pod_share(unit_bytes: int, per_pod: int) -> int:
    """Each unit's share of a pod holding ``per_pod`` units of ``unit_bytes`` and one set
    of Ray's processes, divided by the memory monitor's fraction."""
    return math.ceil((unit_bytes + RAY_POD_BYTES / per_pod) / MEMORY_MONITOR_FRACTION)


def footprint(spec: TrainingRunSpec) -> Footprint | None:
    """The spec's footprint, or None when its model cannot be sized from the spec."""
    shape, classes = input_shape(spec)
    n = parameter_count(spec.model, shape, classes)
    if n is None:
        return None
    return Footprint(n, optimizer_buffers(spec.train.optimizer))


def size(nbytes: float, *, up: bool = False) -> str:
    """A byte count as people read it: 1.5 GiB, 730 MiB. ``up``: rounded up, for a floor
    ("needs at least"): 842.3 MiB read "842 MiB", and 842Mi was then refused."""
    if nbytes >= GiB:
        tenths = math.ceil(nbytes / GiB * 10) if up else round(nbytes / GiB * 10)
        return f"{tenths / 10:.1f} GiB"
    if nbytes >= MiB:
        return f"{math.ceil(nbytes / MiB) if up else round(nbytes / MiB)} MiB"
    return f"{max(1, math.ceil(nbytes / 1024) if up else round(nbytes / 1024))} KiB"


def training_breakdown(spec: TrainingRunSpec, fp: Footprint) -> str:
    """Where ``fp.training_bytes`` comes from, for an error message."""
    opt = spec.train.optimizer
    buffers = {2: f"{opt.name}'s 2 moment buffers", 1: "sgd's momentum buffer",
               0: "no optimizer buffer"}[fp.optimizer_buffers]
    return (f"{spec.model.name} has {fp.parameters:,} parameters: "
            f"{size(fp.parameters * BYTES_PER_PARAMETER * (2 + fp.optimizer_buffers))} for "
            f"float32 weights, gradients and {buffers}, plus ~{size(TORCH_PROCESS_BYTES)} "
            "for torch")


def pod_breakdown(per_pod: int) -> str:
    """What a pod adds to a unit's own bytes, for an error message."""
    ray = size(RAY_POD_BYTES) + (f" shared by the pod's {per_pod}" if per_pod > 1 else "")
    return (f"~{ray} for Ray's processes in the pod, under Ray's memory monitor's "
            f"{MEMORY_MONITOR_FRACTION:.0%}")
