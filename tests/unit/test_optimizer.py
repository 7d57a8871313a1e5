"""The optimizer a spec builds: ``train.optimizer.momentum`` is SGD's momentum and Adam's
beta1, on a fresh run and on a resumed one."""

from __future__ import annotations

import pytest
import torch

from raykube.resume import load_optimizer_state
from raykube.spec import TrainingRunSpec
from raykube.train import _make_optimizer


def _spec(**optimizer) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {"model": {"name": "mlp"}, "data": {"dataset": "digits"},
         "train": {"optimizer": optimizer}})


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return list(torch.nn.Linear(4, 3).parameters())


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_momentum_is_adams_beta1(name, cls):
    opt = _make_optimizer(_spec(name=name, lr=0.01, momentum=0.5, weightDecay=0.01), _params())
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["betas"] == (0.5, 0.999)
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.01


def test_the_default_momentum_leaves_adam_as_torch_makes_it():
    # TrainingRuns stored before momentum reached Adam carry the CRD's default 0.9:
    # they must train exactly as they did (torch's own Adam defaults).
    ours = _make_optimizer(_spec(name="adam", lr=0.01), _params()).param_groups[0]
    torchs = torch.optim.Adam(_params(), lr=0.01).param_groups[0]
    assert {k: v for k, v in ours.items() if k != "params"} == \
           {k: v for k, v in torchs.items() if k != "params"}


def _train(spec: TrainingRunSpec, steps: int = 3) -> torch.Tensor:
    params = _params()
    opt = _make_optimizer(spec, params)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        (x @ params[0].T + params[1]).pow(2).mean().backward()
        opt.step()
    return params[0].detach().clone()


def test_adams_momentum_changes_the_steps_it_takes():
    assert not torch.allclose(_train(_spec(name="adam", momentum=0.0)),
                              _train(_spec(name="adam", momentum=0.9)))


def test_a_resumed_adam_takes_the_new_momentum_and_keeps_its_moments():
    old = _spec(name="adam", lr=0.01)
    params = _params()
    opt = _make_optimizer(old, params)
    params[0].sum().backward()
    opt.step()
    state = opt.state_dict()

    new = _spec(name="adam", lr=0.02, momentum=0.6)
    resumed = _make_optimizer(new, _params())
    load_optimizer_state(resumed, state, old, new)
    assert resumed.param_groups[0]["betas"] == (0.6, 0.999)
    assert resumed.param_groups[0]["lr"] == 0.02
    assert torch.equal(resumed.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
