"""``raykube predict --data s3://…`` with nothing to predict there: one line before Ray
starts (the README says ``--data`` is checked before Ray starts; a missing prefix was
found only after Ray's 5-6 s start-up). A real S3 server (MinIO), no Ray."""

from __future__ import annotations

import pytest

from raykube.cli import main
from raykube.spec import parse_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def checkpoint(tmp_path):
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model

    run = parse_spec({"model": {"name": "mlp", "options": {"hidden": [16]}},
                      "data": {"dataset": "digits"}, "train": {"epochs": 2}})
    return save_checkpoint(tmp_path / "ckpt", model=build_model(run.spec.model, (1, 8, 8), 10),
                           optimizer=None, epoch=1, spec=run.spec.to_dict(),
                           class_names=[str(i) for i in range(10)], input_shape=(1, 8, 8),
                           metrics={"valAccuracy": 0.5})


@pytest.fixture
def no_ray_start(monkeypatch):
    """Fails the test if the command gets as far as starting Ray or predicting (the
    session's Ray may be up: Ray is made to look not started)."""
    import ray

    import raykube.predict
    import raykube.ray_local

    def refuse(*_, **__):
        raise AssertionError("Ray was started before the problem was reported")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(raykube.ray_local, "init_local_ray", refuse)
    monkeypatch.setattr(raykube.predict, "predict", refuse)


@pytest.mark.parametrize("objects,words", [
    ({}, "no such folder (nothing under that prefix)"),
    ({"notes/readme.txt": b"x"}, "no images in it nor in its sub-folders"),
])
def test_an_s3_prefix_with_nothing_to_predict_is_refused_before_ray(
        objects, words, checkpoint, s3_server, s3_prefix, tmp_path, capsys, no_ray_start):
    from raykube.storage import write_bytes

    for key, payload in objects.items():
        write_bytes(f"{s3_prefix}/{key}", payload)
    assert main(["predict", str(checkpoint), "--data", s3_prefix,
                 "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err == f"raykube predict: --data {s3_prefix}: {words}\n", err
