"""raykube's PyTorch backend (``raykube.torch_backend``) on real local Ray.

A group of one worker gets no process group: nothing to talk to, and gloo's TCP loop
thread would wake every 10 ms beside the training threads. The worker still gets the
torchrun variables and its device. Groups of more join one as under ``TorchTrainer``:
``test_train.py::test_metrics_cover_the_whole_validation_set_across_workers`` fails
without it (each rank would report only its own validation stride).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_group_of_one_trains_without_a_process_group(ray_session, tmp_path):
    from ray.train import RunConfig, ScalingConfig

    from raykube.train import _trainer_class

    def _report_setup(config: dict) -> dict:
        """The training function (nested: pickled by value, the workers cannot import
        this test module): what the backend set up in this worker, as its return value."""
        import os

        import ray.train.torch
        import torch.distributed as dist

        return {
            "processGroup": dist.is_available() and dist.is_initialized(),
            "rank": os.environ.get("RANK"),
            "worldSize": os.environ.get("WORLD_SIZE"),
            "localRank": os.environ.get("LOCAL_RANK"),
            "device": str(ray.train.torch.get_device()),
        }

    trainer = _trainer_class(pg_cleaner=False)(
        _report_setup, scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="solo", storage_path=str(tmp_path)))
    result = trainer.fit()

    assert result.error is None
    assert result.return_value == {"processGroup": False, "rank": "0", "worldSize": "1",
                              "localRank": "0", "device": "cpu"}
