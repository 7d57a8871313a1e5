"""Which failures a retry could fix (``raykube.transient``): what ``raykube train`` asks
the operator to stop retrying."""

from __future__ import annotations

import json
import pickle

import pytest

from raykube.commands.train import job_submission_id
from raykube.data import DatasetUnavailable
from raykube.s3 import S3Unavailable
from raykube.spec import InvalidTrainingRun, load_one
from raykube.train import RunDirConflict, StorageError
from raykube.transient import retry_would_help


@pytest.mark.parametrize("exc", [
    DatasetUnavailable("image-folder /x: cannot list it"),
    StorageError("storage s3://bkt/r: refused the credentials"),
    S3Unavailable("s3://nobucket/x: bucket 'nobucket' does not exist"),
    RunDirConflict("/runs/a: the run directory holds checkpoints of a different spec.model"),
])
def test_raykubes_input_errors_are_permanent_by_default(exc):
    assert not retry_would_help(exc)


@pytest.mark.parametrize("exc", [
    DatasetUnavailable("fashion-mnist could not be downloaded", transient=True),
    StorageError("storage s3://bkt/r: cannot reach the S3 endpoint", transient=True),
    RuntimeError("Training failed due to worker errors"),  # a worker OOM, a node lost
    OSError("connection reset"),
])
def test_network_faults_and_everything_else_may_pass(exc):
    assert retry_would_help(exc)


def test_an_invalid_trainingrun_is_permanent(tmp_path):
    f = tmp_path / "tr.yaml"
    f.write_text("apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: x}\n"
                 "spec: {model: {name: nope}, data: {dataset: digits}}\n")
    with pytest.raises(InvalidTrainingRun) as err:
        load_one(str(f))
    assert not retry_would_help(err.value)


def test_the_flag_survives_pickling():
    """Ray ships exceptions between processes by pickling them."""
    for exc in (StorageError("x", transient=True), DatasetUnavailable("y")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert back.transient == exc.transient


def test_the_driver_knows_its_ray_job_from_the_supervisors_job_config():
    config = {"runtime_env": {}, "metadata": {"job_submission_id": "quickstart-x2k9p",
                                              "job_name": "quickstart-x2k9p"}}
    assert job_submission_id({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(config)}) == \
        "quickstart-x2k9p"
    assert job_submission_id({}) is None
    assert job_submission_id({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"}) is None
