"""s3:// storage against a real S3 server (MinIO, tests/s3_server.py): training runs,
resume, worker and server failures, image folders, serving and prediction.

The AWS_* variables point at the session's MinIO (set before Ray starts); every byte
here goes through raykube.s3's pyarrow S3FileSystem to the real server over loopback.
Small on purpose (digits, small models, 2-3 epochs): a TorchTrainer start costs tens of
seconds on a 2-core machine.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from raykube.cli import main
from raykube.spec import parse_spec

pytestmark = pytest.mark.integration

DIGITS_SPEC = {
    "model": {"name": "mlp", "options": {"hidden": [64], "dropout": 0.0}},
    "data": {"dataset": "digits", "validationFraction": 0.2},
    "train": {"epochs": 2, "batchSize": 64, "seed": 0, "optimizer": {"name": "adam", "lr": 0.003}},
    "scaling": {"workers": 1, "cpusPerWorker": 1},
    "checkpoint": {"keep": 1},
}


class Recorder:
    """A RunObserver that remembers the epochs it was told about (and can call back)."""

    def __init__(self, on_epoch=None):
        self.epochs: list[int] = []
        self._cb = on_epoch

    def on_start(self, run):
        pass

    def on_epoch(self, metrics, checkpoint, trial):
        self.epochs.append(int(metrics["epoch"]))
        if self._cb:
            self._cb(metrics)

    def on_end(self, result):
        pass


def key(uri: str) -> str:
    return uri[len("s3://"):]


def ls(fs, uri: str) -> list[str]:
    import pyarrow.fs as pafs

    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(key(uri), allow_not_found=True)))


def read(fs, uri: str) -> bytes:
    with fs.open_input_stream(key(uri)) as f:
        return f.read()


def mtime(fs, uri: str) -> float:
    return fs.get_file_info(key(uri)).mtime.timestamp()


def write_job(path: Path, name: str, spec: dict) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                                    "metadata": {"name": name}, "spec": spec}))
    return path


# ------------------------------------------------------------------ raykube run
def test_run_with_s3_storage_writes_the_bucket_reruns_and_resumes(
        ray_session, s3_server, s3_prefix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a local ./runs must not appear
    spec = {**DIGITS_SPEC, "checkpoint": {"keep": 1, "storage": {"uri": s3_prefix}}}
    job = write_job(tmp_path / "job.yaml", "s3run", spec)
    fs = s3_server.filesystem()
    run_dir = f"{s3_prefix}/default/s3run"  # <uri>/<namespace>/<name>, as on a cluster

    assert main(["run", str(job)]) == 0
    assert not (tmp_path / "runs").exists()
    files = ls(fs, run_dir)
    assert {"result.json", "best", "checkpoint_epoch_0002", "report.png"} <= set(files), files
    result = json.loads(read(fs, f"{run_dir}/result.json"))
    assert result["epochs"] == 2 and [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["best_checkpoint"].startswith(f"{run_dir}/checkpoint_epoch_")
    best_meta = json.loads(read(fs, f"{run_dir}/best/meta.json"))
    assert best_meta["epoch"] == int(result["best_checkpoint"][-4:])
    assert read(fs, f"{run_dir}/best/checkpoint.pt") == read(fs, f"{result['best_checkpoint']}/checkpoint.pt")
    best_mtime = mtime(fs, f"{run_dir}/best/checkpoint.pt")

    # Again: nothing is trained, nothing in the bucket changes.
    before = {n: mtime(fs, f"{run_dir}/{n}") for n in ("result.json",)}
    assert main(["run", str(job)]) == 0
    assert ls(fs, run_dir) == files
    assert {n: mtime(fs, f"{run_dir}/{n}") for n in before} == before
    assert json.loads(read(fs, f"{run_dir}/result.json")) == result

    # More epochs: continues at epoch 3 from the bucket's latest checkpoint.
    time.sleep(1.1)  # S3 mtimes have one-second resolution
    assert main(["run", str(job), "--epochs", "3"]) == 0
    result3 = json.loads(read(fs, f"{run_dir}/result.json"))
    assert result3["epochs"] == 3 and [h["epoch"] for h in result3["history"]] == [1, 2, 3]
    # Epochs 1-2 are the first run's, read back from the checkpoint, not retrained.
    assert result3["history"][:2] == result["history"]
    assert "checkpoint_epoch_0003" in ls(fs, run_dir)
    assert mtime(fs, f"{run_dir}/best/checkpoint.pt") > best_mtime  # best/ refreshed
    assert json.loads(read(fs, f"{run_dir}/best/meta.json"))["epoch"] == \
        int(result3["best_checkpoint"][-4:])


def test_killed_worker_resumes_from_the_bucket_without_repeating_epochs(
        ray_session, s3_server, s3_prefix, tmp_path):
    from raykube.train import fit

    marker = tmp_path / "killed"
    run = parse_spec({**DIGITS_SPEC, "train": {**DIGITS_SPEC["train"], "epochs": 3},
                      "scaling": {"workers": 2, "cpusPerWorker": 1},
                      "failure": {"maxWorkerFailures": 2}, "checkpoint": {"keep": 2}}, name="faulty")
    rec = Recorder()
    out = fit(run, s3_prefix, observers=[rec],
              extra_config={"fault": {"epoch": 2, "rank": 1, "marker": str(marker)}})
    assert marker.exists(), "the fault hook never fired: nothing was tested"
    assert rec.epochs == [1, 2, 3]  # epoch 1 was not trained again after the kill
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    names = ls(s3_server.filesystem(), f"{s3_prefix}/faulty")
    assert {"checkpoint_epoch_0002", "checkpoint_epoch_0003", "best", "result.json"} <= set(names)


def test_server_killed_mid_upload_leaves_no_half_checkpoint_as_latest(
        ray_session, s3_server, s3_prefix, monkeypatch):
    """MinIO is SIGKILLed while epoch 2's checkpoint is being uploaded (a slowed proxy
    makes the upload last seconds), and restarted 3 s later on the same data."""
    from raykube.checkpoint import load_model
    from raykube.serve import resolve_checkpoint
    from raykube.train import StorageError, fit
    from s3_server import SlowProxy

    proxy = SlowProxy(s3_server.port, rate=2_000_000)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    # ~13 MB checkpoints (weights + Adam state): ~6 s each through the proxy.
    run = parse_spec({**DIGITS_SPEC, "model": {"name": "mlp", "options": {"hidden": [1024, 1024]}},
                      "train": {**DIGITS_SPEC["train"], "epochs": 3},
                      "failure": {"maxWorkerFailures": 5}, "checkpoint": {"keep": 3}}, name="cut")
    epoch1 = threading.Event()
    cut: dict[str, float] = {}

    def killer() -> None:
        if not epoch1.wait(600):
            return
        start = proxy.uploaded
        while proxy.uploaded - start < 3_000_000:  # epoch 2's checkpoint is on its way
            time.sleep(0.05)
        cut["uploaded"] = proxy.uploaded - start
        s3_server.stop()
        time.sleep(3)
        s3_server.start()

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    rec = Recorder(on_epoch=lambda m: m["epoch"] == 1 and epoch1.set())
    try:
        try:
            out = fit(run, s3_prefix, observers=[rec])
        except StorageError as exc:  # the run may give up while the server is away,
            # saying so in one line; a retry (a RayJob's next attempt) must resume
            print(f"first attempt: {exc}")
            assert f"storage {s3_prefix}/cut: the object store failed" in str(exc)
            t.join(60)
            out = fit(run, s3_prefix, observers=[rec])
    finally:
        t.join(60)
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    print(f"server killed after {cut.get('uploaded')} bytes of epoch 2's upload; "
          f"epochs reported: {rec.epochs}")
    assert cut, "the server was never stopped: nothing was tested"
    assert cut["uploaded"] < 12_000_000  # it died mid-upload, not after it
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    assert sorted(set(rec.epochs)) == [1, 2, 3] and rec.epochs.count(1) == 1
    # Every checkpoint the run names (and best/) loads whole, with the epoch it claims.
    fs = s3_server.filesystem()
    for uri in [*out.checkpoints, f"{s3_prefix}/cut/best"]:
        model, meta = load_model(resolve_checkpoint(uri))
        assert model is not None and meta.epoch in (1, 2, 3)
    assert json.loads(read(fs, f"{s3_prefix}/cut/best/meta.json"))["epoch"] == \
        int(out.best_checkpoint[-4:])


def test_a_pruned_served_checkpoint_is_served_from_its_copy_on_s3(s3_server, s3_prefix):
    """As on a volume (tests/unit/test_serve_wait.py): the promoted checkpoint_epoch_NNNN
    deleted by a later run's retention is read from best/ while best/ is its copy, in
    MinIO's real answer for a missing object; another epoch's best/ is not used."""
    from raykube.s3 import S3Unavailable
    from raykube.serve import resolve_checkpoint

    fs = s3_server.filesystem()
    run = f"{s3_prefix}/quickstart"
    for name, body in (("meta.json", json.dumps({"epoch": 35}).encode()),
                       ("checkpoint.pt", b"weights")):
        with fs.open_output_stream(key(f"{run}/best/{name}")) as f:
            f.write(body)
    local = Path(resolve_checkpoint(f"{run}/checkpoint_epoch_0035"))
    assert (local / "checkpoint.pt").read_bytes() == b"weights"
    with pytest.raises(S3Unavailable, match="checkpoint_epoch_0036/checkpoint.pt: no such object"):
        resolve_checkpoint(f"{run}/checkpoint_epoch_0036")


# ------------------------------------------------------------------ image folders
def _stripes(vertical: bool, rng: np.random.Generator) -> bytes:
    from PIL import Image

    img = rng.integers(0, 60, (12, 12), dtype=np.uint8)
    offset = int(rng.integers(0, 3))
    if vertical:
        img[:, offset::3] = 230
    else:
        img[offset::3, :] = 230
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_read_from_s3_trains(ray_session, s3_server, s3_prefix):
    from raykube.train import fit

    fs = s3_server.filesystem()
    rng = np.random.default_rng(0)
    uri = f"{s3_prefix}/images"
    for cls in ("horizontal", "vertical"):
        for i in range(40):
            with fs.open_output_stream(f"{key(uri)}/{cls}/{i:03d}.png") as f:
                f.write(_stripes(cls == "vertical", rng))
    run = parse_spec({**DIGITS_SPEC,
                      "data": {"dataset": "image-folder", "uri": uri, "imageSize": 12,
                               "grayscale": True, "validationFraction": 0.25},
                      "train": {**DIGITS_SPEC["train"], "epochs": 3, "batchSize": 16}}, name="img")
    out = fit(run, f"{s3_prefix}/runs")
    last = out.history[-1]
    assert last["trainExamples"] + last["valExamples"] == 80  # every image, read from S3
    assert out.best_metrics["valAccuracy"] >= 0.9  # chance is 0.5
    meta = json.loads(read(fs, f"{s3_prefix}/runs/img/best/meta.json"))
    assert meta["class_names"] == ["horizontal", "vertical"]


# ------------------------------------------------------------- serve and predict
@pytest.fixture(scope="module")
def local_and_s3_checkpoint(ray_session, s3_server, tmp_path_factory) -> tuple[str, str]:
    """A checkpoint trained to a local directory, and the same bytes copied to S3."""
    import pyarrow.fs as pafs

    from raykube.train import fit

    storage = tmp_path_factory.mktemp("local-runs")
    out = fit(parse_spec(DIGITS_SPEC, name="served"), str(storage))
    local_best = f"{out.run_dir}/best"
    uri = f"s3://raykube-test/served-{time.monotonic_ns()}/best"
    pafs.copy_files(local_best, key(uri), source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3_server.filesystem())
    return local_best, uri


def test_predict_from_s3_equals_local(local_and_s3_checkpoint, tmp_path):
    import pyarrow.parquet as pq

    local, uri = local_and_s3_checkpoint
    tables = []
    for ckpt, out in ((local, tmp_path / "local.parquet"), (uri, tmp_path / "s3.parquet")):
        assert main(["predict", ckpt, "--out", str(out)]) == 0
        tables.append(pq.read_table(out).sort_by("index") if "index" in pq.read_schema(out).names
                      else pq.read_table(out))
    a, b = (t.to_pydict() for t in tables)
    assert len(a["prediction"]) > 100 and a["prediction"] == b["prediction"]
    np.testing.assert_allclose(np.asarray(a["probabilities"]), np.asarray(b["probabilities"]), rtol=1e-6)


def test_serve_from_s3_answers_like_the_local_checkpoint(local_and_s3_checkpoint):
    import httpx
    import torch

    from raykube.checkpoint import load_model
    from raykube.data import load_arrays
    from raykube.serve import start_local, stop_local
    from s3_server import free_port

    local, uri = local_and_s3_checkpoint
    x = load_arrays(parse_spec(DIGITS_SPEC).spec, "/nonexistent").val_x[:64].numpy()
    model, _ = load_model(local)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    base = start_local(uri, parse_spec(DIGITS_SPEC).spec.serve, port=free_port(), quiet=True)
    try:
        r = httpx.post(f"{base}/predict", json={"instances": x.tolist()}, timeout=60)
        r.raise_for_status()
        preds = r.json()["predictions"]
        meta = httpx.get(f"{base}/metadata", timeout=30).json()
    finally:
        stop_local()
    got = np.asarray([p["probabilities"] for p in preds])
    assert [p["class"] for p in preds] == want.argmax(1).tolist()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert uri in json.dumps(meta)


def test_checkpoint_upload_check_resends_missing_and_short_files(s3_server, s3_prefix, tmp_path):
    """What the mid-upload test found: pyarrow's copy_files (Ray Train's uploader) can
    leave a checkpoint without its checkpoint.pt and report success. ensure_uploaded
    (run by rank 0 after each report) finds missing and short files and sends them."""
    from raykube.train import ensure_uploaded

    (tmp_path / "checkpoint.pt").write_bytes(b"w" * 100_000)
    (tmp_path / "meta.json").write_text('{"epoch": 2}')
    fs = s3_server.filesystem()
    path = f"{key(s3_prefix)}/checkpoint_epoch_0002"
    with fs.open_output_stream(f"{path}/meta.json") as f:
        f.write(b'{"epoch": 2}')
    assert ensure_uploaded(str(tmp_path), fs, path) == ["checkpoint.pt"]
    assert read(fs, f"{s3_prefix}/checkpoint_epoch_0002/checkpoint.pt") == b"w" * 100_000
    with fs.open_output_stream(f"{path}/checkpoint.pt") as f:
        f.write(b"w" * 10)  # a short copy
    assert ensure_uploaded(str(tmp_path), fs, path) == ["checkpoint.pt"]
    assert ensure_uploaded(str(tmp_path), fs, path) == []


def test_a_failed_attempts_record_is_written_read_and_removed_in_the_bucket(s3_server, s3_prefix):
    """``failed.json`` (``raykube.run_failure``) on MinIO, as a RayJob's driver on s3://
    storage writes it and a new attempt's driver removes it; a replica waiting for that
    run fails on it, naming the reason."""
    from raykube import run_failure
    from raykube.serve import TrainingRunFailed, wait_for_training

    run_dir = f"{s3_prefix}/default/q"
    assert run_failure.read(run_dir) is None and run_failure.clear(run_dir) is False
    failure = run_failure.RunFailure(message="training failed: boom", at="2026-01-01T00:00:00Z",
                                     final=True, outcome="no RayJob retry is left, "
                                     "spec.failure.maxRetries: 0")
    run_failure.record(run_dir, failure)
    assert run_failure.read(run_dir) == failure
    with pytest.raises(TrainingRunFailed, match="training failed: boom; there is no model"):
        wait_for_training(f"{run_dir}/best", poll_s=0.05, believe_after_s=0.2)
    assert run_failure.clear(run_dir) is True
    assert run_failure.read(run_dir) is None
