"""Ray Train's PyTorch backend, configured without importing torch where no tensor lives.

Why this exists: ``ray.train.torch.config`` (``TorchConfig`` and its ``_TorchBackend``)
imports torch at its top. A ``TorchTrainer`` therefore makes the driver import torch
(through ``ray.train.torch``), and Train's controller too, when it unpickles the backend
config it sets the workers up with. Neither process runs a tensor op, and on a 2-core
machine each import costs ~1.6 CPU-s right on the path to the first step: the driver
imports before it creates the controller, the controller before it starts the workers.

:class:`TorchBackendConfig` is the same configuration (backend, init method, timeout),
and :class:`TorchBackend` does what Ray's ``_TorchBackend.on_start``/``on_shutdown`` do
for the backends raykube runs (gloo on CPUs, NCCL on CUDA): rank 0's address and a free
port become ``MASTER_ADDR``/``MASTER_PORT``, every worker gets the torchrun variables,
then joins the process group (a group of one worker joins none: below). Every step that
runs on a worker is Ray's own function (``_set_torch_distributed_env_vars``,
``_setup_torch_process_group``, ``_shutdown_torch``, ``TorchConfigContextManager``),
imported there when it runs, so worker behaviour is Ray's. Inside the training function everything is as under a
``TorchTrainer``: ``ray.train.torch.get_device``/``prepare_model`` work unchanged.

One difference on purpose: tearing down a group with a worker that is gone (killed by
Ray's memory monitor, its node lost) is a warning, whatever error Ray gives for it. Under
Ray's backend the memory monitor's ``OutOfMemoryError`` escaped the tear-down before a
restart and ended the run as a non-retryable controller error.

A group of one worker (``scaling.workers: 1``, each Tune trial of one worker) gets the
torchrun variables and its device but no process group: it has no peer, ``prepare_model``
wraps a model in DDP only for more than one worker, and raykube's loop all-reduces only
when a group exists. Ray's ``TorchTrainer`` creates one all the same; with gloo its TCP
loop thread wakes every 10 ms for the whole run, and on a machine whose cores the
training threads fill each wake-up preempts one of them (measured on the FashionMNIST MLP,
1 worker x 2 threads: the worker process's voluntary context switches 313 -> 214 a second,
the loop thread's 99 a second gone; README "Performance").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig

logger = logging.getLogger(__name__)


def _run_ray_torch(name: str, **kwargs: Any) -> Any:
    """On a worker: call ``ray.train.torch.config.<name>`` (the import happens here)."""
    from ray.train.torch import config as ray_torch_config

    return getattr(ray_torch_config, name)(**kwargs)


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


class TorchContext:
    """``train_func_context``: Ray's ``TorchConfigContextManager`` (sets the worker's
    default CUDA device), looked up in the worker when the training function starts."""

    def __enter__(self) -> Any:
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        return bool(self._inner.__exit__(*exc))


class TorchBackend(Backend):
    """Process-group set-up and tear-down as Ray's ``_TorchBackend`` does them."""

    # As Ray's: every worker on a node sees all of the node's GPUs given to the run
    # (NCCL needs to see its peers' devices).
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group: Any, backend_config: TorchBackendConfig) -> None:
        from ray._common.network_utils import build_address
        from ray.train._internal.utils import get_address_and_port

        backend = backend_config.backend
        if backend is None:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            backend = "nccl" if gpus > 0 else "gloo"
        addr, port = worker_group.execute_single(0, get_address_and_port)
        if backend_config.init_method == "env":
            worker_group.execute(_set_master, addr=addr, port=port)
            url = "env://"
        elif backend_config.init_method == "tcp":
            url = f"tcp://{build_address(addr, port)}"
        else:
            raise ValueError(f"init_method {backend_config.init_method!r} is not supported: "
                             "use 'env' or 'tcp'")
        worker_group.execute(_run_ray_torch, name="_set_torch_distributed_env_vars")
        if len(worker_group) == 1:
            # Nothing to all-reduce with, and gloo's TCP loop thread would wake every 10 ms
            # beside the training threads (module docstring).
            return
        ray.get([
            worker_group.execute_single_async(
                rank, _run_ray_torch, name="_setup_torch_process_group", backend=backend,
                world_rank=rank, world_size=len(worker_group), init_method=url,
                timeout_s=backend_config.timeout_s)
            for rank in range(len(worker_group))
        ])

    def on_shutdown(self, worker_group: Any, backend_config: TorchBackendConfig) -> None:
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError, RayError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        futures = worker_group.execute_async(_run_ray_torch, name="_shutdown_torch",
                                             destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                              DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("Torch process group shutdown timed out after %s seconds",
                           timeout_s)
        except RayError as exc:
            # A worker that is gone has no process group to tear down. Ray's
            # BackendSetupCallback forgives only RayActorError and RayTaskError here; a
            # worker killed by Ray's memory monitor answers OutOfMemoryError (neither), which
            # then failed the restart as a non-retryable ControllerError: the first OOM kill
            # ended the run whatever failure.maxWorkerFailures allowed.
            logger.warning("Torch process group shutdown skipped: a worker is gone (%s)",
                           " ".join(str(exc).split())[:200])


@dataclass
class TorchBackendConfig(BackendConfig):
    """Ray's ``TorchConfig`` fields: ``backend`` (None: NCCL with GPUs, else gloo),
    ``init_method`` ('env' or 'tcp') and ``timeout_s`` for collectives."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[TorchBackend]:
        return TorchBackend

    @property
    def train_func_context(self) -> type[TorchContext]:
        return TorchContext

    @property
    def framework(self) -> Any:
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": self.init_method,
                "timeout_s": self.timeout_s}
