"""The model registry: the networks a TrainingRun can name.

Every builder takes the spec's ``ModelSpec``, the dataset's input shape (``(C, H, W)`` or
``(features,)``) and the class count, so one YAML field (``model.name``) picks the
network and the dataset sizes it. The checkpoint loader rebuilds models through
``build_model`` too, so a checkpoint never needs pickled code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from raykube.spec import ModelSpec

Builder = Callable[[ModelSpec, tuple[int, ...], int], nn.Module]
REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Add a builder to the registry under ``name`` (the spec's ``model.name``)."""

    def deco(fn: Builder) -> Builder:
        REGISTRY[name] = fn
        return fn

    return deco


def build_model(model_spec: ModelSpec, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The network ``model_spec`` names, sized for ``input_shape`` and ``num_classes``."""
    shape = tuple(int(x) for x in input_shape)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    try:
        builder = REGISTRY[model_spec.name]
    except KeyError:
        raise ValueError(f"unknown model {model_spec.name!r} (known: {', '.join(REGISTRY)})") from None
    return builder(model_spec, shape, num_classes)


def _image_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"model {name} needs image input (C, H, W), got shape {list(shape)}")
    c, h, w = shape
    return c, h, w


@register("mlp")
def _mlp(spec: ModelSpec, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The FashionMNIST tutorial's MLP: flatten, (Linear, ReLU, Dropout) per hidden size, Linear."""
    hidden = spec.options.hidden or [512, 512]
    dropout = 0.25 if spec.options.dropout is None else spec.options.dropout
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class CifarCNN(nn.Module):
    """The CIFAR-10 tutorial CNN: conv5-pool-conv5-pool-fc120-fc84-fc.

    ``hidden`` sizes the fully connected layers (the Tune tutorial's l1/l2).

    Generalised: input channels from the data; on 32x32 (and anything from 16 pixels up)
    it is exactly the tutorial's network; smaller images (8x8 digits) get "same" padding
    and ceil-mode pooling so the feature map never vanishes. The flatten size is measured
    with a dry run instead of hard-coding 16*5*5.
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int,
                 channels: Sequence[int] = (6, 16), hidden: Sequence[int] = (120, 84),
                 dropout: float = 0.0):
        super().__init__()
        c, h, w = shape
        small = min(h, w) < 16
        pad = 2 if small else 0
        blocks: list[nn.Module] = []
        prev = c
        for ch in channels:
            blocks += [nn.Conv2d(prev, ch, 5, padding=pad), nn.ReLU(),
                       nn.MaxPool2d(2, 2, ceil_mode=small)]
            prev = ch
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = int(math.prod(self.features(torch.zeros(1, c, h, w)).shape[1:]))
        fc: list[nn.Module] = [nn.Flatten()]
        width = flat
        for size in hidden:  # the tutorial's l1, l2
            if dropout > 0:
                fc.append(nn.Dropout(dropout))
            fc += [nn.Linear(width, size), nn.ReLU()]
            width = size
        fc.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("cifar-cnn")
def _cifar_cnn(spec: ModelSpec, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CifarCNN(_image_shape("cifar-cnn", shape), num_classes,
                    channels=spec.options.channels or (6, 16),
                    hidden=spec.options.hidden or (120, 84),
                    dropout=spec.options.dropout or 0.0)


@register("resnet18")
def _resnet18(spec: ModelSpec, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision ResNet-18 for small images: 3x3 stride-1 stem, no max-pool (the usual
    CIFAR adaptation), input channels from the data, untrained weights."""
    from torchvision.models import resnet18

    c, _, _ = _image_shape("resnet18", shape)
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
