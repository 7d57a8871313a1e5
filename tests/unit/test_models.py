"""The model registry builds each network for each kind of input it is meant for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raykube.models import REGISTRY, CifarCNN, build_model
from raykube.spec import ModelSpec


def spec(name: str, **options) -> ModelSpec:
    return ModelSpec.model_validate({"name": name, "options": options})


def test_registry_matches_the_spec_names():
    from typing import get_args

    from raykube.spec import ModelName

    assert set(REGISTRY) == set(get_args(ModelName))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (64,)])
def test_mlp_defaults_to_the_tutorial_layers(shape):
    m = build_model(spec("mlp"), shape, 10)
    linears = [x for x in m if isinstance(x, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (int(torch.tensor(shape).prod()), 512), (512, 512), (512, 10)]
    assert m(torch.randn(5, *shape)).shape == (5, 10)


def test_mlp_hidden_sizes_and_dropout_come_from_options():
    m = build_model(spec("mlp", hidden=[32], dropout=0.5), (1, 8, 8), 3)
    assert [type(x) for x in m] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert m[3].p == 0.5 and m[-1].out_features == 3
    m0 = build_model(spec("mlp", dropout=0.0), (4,), 2)
    assert not any(isinstance(x, nn.Dropout) for x in m0)


def test_cifar_cnn_is_the_tutorial_network_on_32x32():
    m = build_model(spec("cifar-cnn"), (3, 32, 32), 10)
    assert isinstance(m, CifarCNN)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 6, (5, 5), (0, 0)), (6, 16, (5, 5), (0, 0))]
    fcs = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(16 * 5 * 5, 120), (120, 84), (84, 10)]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (1, 4, 4), (3, 17, 23)])
def test_cifar_cnn_adapts_to_channels_and_small_images(shape):
    m = build_model(spec("cifar-cnn", channels=[8, 12]), shape, 7)
    assert m(torch.randn(3, *shape)).shape == (3, 7)


def test_cifar_cnn_fully_connected_sizes_are_the_tune_tutorials_l1_l2():
    m = build_model(spec("cifar-cnn", hidden=[64, 32]), (3, 32, 32), 10)
    fcs = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(400, 64), (64, 32), (32, 10)]


def test_resnet18_small_image_stem():
    m = build_model(spec("resnet18"), (1, 8, 8), 10)
    assert m.conv1.in_channels == 1 and m.conv1.stride == (1, 1) and m.conv1.kernel_size == (3, 3)
    assert isinstance(m.maxpool, nn.Identity) and m.fc.out_features == 10
    m.eval()
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cifar-cnn", "resnet18"])
def test_conv_models_refuse_flat_input(name):
    with pytest.raises(ValueError, match="needs image input"):
        build_model(spec(name), (64,), 10)


def test_num_classes_below_two_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        build_model(spec("mlp"), (4,), 1)
