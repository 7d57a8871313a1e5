"""Smoke runs of every benchmark suite at toy sizes: the harness runs the real variants
(child processes, their own local Ray, real HTTP, the real operator) and the ratios are
computed from what was measured. No speed is asserted: speed is what `raykube bench`
measures, and a timed test on a shared machine would only measure the neighbours."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.integration


def _check_ratios(report) -> None:
    for q in report.ratios:
        num = report.get(q["case"], q["numerator"], q["metric"])
        den = report.get(q["case"], q["denominator"], q["metric"])
        assert q["value"] == pytest.approx(num / den), q


def _check_written(report, tmp_path) -> dict:
    paths = report.write(tmp_path / report.suite)
    data = json.loads(paths["json"].read_text())
    assert data["machine"]["cpus_usable"] >= 1
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"
    assert "| comparison |" in paths["markdown"].read_text()
    return data


def test_train_suite_smoke(tmp_path):
    from raykube.bench import train

    report = train.run_suite(quick=True, cases=["fashion-mnist-mlp"],
                             params={"num_samples": 2048, "epochs": 2, "batch_size": 128})
    assert report.errors == [], report.notes
    rows = {r["variant"]: r["metrics"] for r in report.results}
    assert set(rows) == {"torch", "ddp", "raykube", "raykube-1x2"}
    for variant, m in rows.items():
        assert m["samples_per_s"] > 0 and m["time_to_first_step_s"] > 0, variant
        assert m["checkpoint_saves"] == 2, variant  # one per epoch, by the writing process
        # CPU of the training processes and beside them, over the measured window: NaN
        # when that window held fewer than two of the once-a-second snapshots
        assert m["train_cpu"] > 0 or math.isnan(m["train_cpu"]), variant
        assert m["beside_cpu"] >= 0 or math.isnan(m["beside_cpu"]), variant
    assert rows["torch"]["processes"] == rows["raykube-1x2"]["processes"] == 1
    assert rows["ddp"]["processes"] == 2 and rows["raykube"]["processes"] == 2
    # Both DDP flavours step in lockstep: 2 epochs x (1843 train examples / 2 ranks / 64).
    assert rows["ddp"]["steps_logged"] == rows["raykube"]["steps_logged"] == 2 * 2 * 15
    assert rows["raykube-1x2"]["steps_logged"] == 2 * 15  # one worker, batch 128
    assert rows["raykube"]["checkpoint_uploads"] == 2  # Ray Train's upload was timed
    # Ray's start and Train's start are parts of the time to the first step.
    m = rows["raykube"]
    assert m["ray_init_s"] > 0 and m["train_start_s"] > 0
    assert m["ray_init_s"] + m["train_start_s"] < m["time_to_first_step_s"]
    assert {(q["numerator"], q["denominator"]) for q in report.ratios} >= {
        ("raykube-1x2", "torch"), ("raykube", "ddp")}
    assert [c["name"] for c in report.checks] == [
        "fashion-mnist-mlp: raykube launch to first training step"]
    # A quick run says that its throughput ratios come from windows too short to judge.
    assert any(n.startswith("fashion-mnist-mlp: quick run, measured windows as short as")
               and "make bench-full" in n for n in report.notes), report.notes
    _check_ratios(report)
    _check_written(report, tmp_path)


def test_ingest_suite_smoke(tmp_path):
    from raykube.bench import ingest

    report = ingest.run_suite(quick=True, params={"images": 300, "passes": 2},
                              work_dir=str(tmp_path))
    assert report.errors == [], report.notes
    rows = {r["variant"]: r["metrics"] for r in report.results}
    assert set(rows) == {"dataloader", "raykube", "raykube-ray-data", "dataloader-cached"}
    # All read every image (the raykube split keeps (nearly) all files for training);
    # the cached DataLoader reads the cache raykube wrote (every file).
    assert rows["dataloader"]["images_per_pass"] == rows["dataloader-cached"]["images_per_pass"] == 300
    assert 295 <= rows["raykube"]["images_per_pass"] <= 300
    assert rows["raykube-ray-data"]["images_per_pass"] == rows["raykube"]["images_per_pass"]
    # The in-process decode starts no Ray; the Ray Data variant reports Ray's start apart.
    assert rows["raykube"]["ray_start_s"] is None and rows["raykube-ray-data"]["ray_start_s"] > 0
    assert all(m["cold_images_per_s"] > 0 and m["warm_images_per_s"] > 0
               and m["time_to_first_batch_s"] > 0 for m in rows.values())
    assert {(q["metric"], q["numerator"], q["denominator"]) for q in report.ratios} >= {
        ("cold_images_per_s", "raykube", "dataloader"),
        ("cold_images_per_s", "raykube-ray-data", "dataloader"),
        ("warm_images_per_s", "raykube", "dataloader-cached")}
    _check_ratios(report)
    _check_written(report, tmp_path)


def test_serve_suite_smoke(tmp_path):
    from raykube.bench import serve

    report = serve.run_suite(quick=True, params={"latency_requests": 20, "warmup": 3,
                                                 "saturation_requests": 60, "concurrency": 8,
                                                 "latency_s": 2, "saturation_s": 2})
    assert report.errors == [], report.notes
    rows = {r["variant"]: r["metrics"] for r in report.results}
    assert set(rows) == {"direct", "fastapi", "raykube", "raykube-batched"}
    for variant in ("fastapi", "raykube", "raykube-batched"):
        m = rows[variant]
        assert m["errors"] == 0 and m["requests"] > 8, variant
        assert 0 < m["p50_ms"] <= m["p99_ms"] and m["requests_per_s"] > 0
        assert m["client_cpu"] > 0  # wrk (Debian's package) drove the load
    goals = {(q["metric"], q["numerator"]) for q in report.ratios if q.get("goal")}
    assert goals >= {("p50_ms", "raykube"), ("requests_per_s", "raykube-batched")}
    _check_ratios(report)
    _check_written(report, tmp_path)


def test_operator_suite_smoke(tmp_path, control_plane):
    from raykube.bench import operator

    report = operator.run_suite(quick=True, params={"runs": 6, "timeout_s": 60},
                                control_plane=control_plane)
    assert report.errors == [], report.errors
    (row,) = report.results
    m = row["metrics"]
    assert m["rayjobs"] == 6
    assert m["api_requests_per_run"] > 1  # counted from the API server's audit log
    assert 0 < m["p50_s"] <= m["p99_s"] <= m["max_s"]
    assert m["peak_rss_mib"] >= m["idle_rss_mib"] > 10
    _check_written(report, tmp_path)
