"""Benchmark plumbing without Ray: statistics, the report writers, the step clock maths,
and the CLI wiring. Speed itself is measured by `raykube bench`, never asserted here."""

from __future__ import annotations

import json
import math
import time

import pytest

from raykube.bench import common
from raykube.bench import train as bench_train
from raykube.bench.common import Goal, Report


def test_median_percentile_ratio():
    assert common.median([3, 1, 2, float("nan")]) == 2
    assert math.isnan(common.median([]))
    assert common.percentile([1, 2, 3, 4, 5], 50) == 3
    assert common.percentile([0, 10], 99) == pytest.approx(9.9)
    assert common.percentile(list(range(101)), 99) == pytest.approx(99)
    assert common.ratio(3, 4) == 0.75
    assert math.isnan(common.ratio(1, 0))
    assert math.isnan(common.ratio(None, 2))


def test_goal_operators():
    assert Goal(">=", 0.9).met(0.9) is True
    assert Goal(">=", 0.9).met(0.89) is False
    assert Goal("<", 2).met(2) is False
    assert Goal("<=", 3).met(float("nan")) is None
    with pytest.raises(ValueError, match="goal operator"):
        Goal("==", 1)


def _report() -> Report:
    r = Report("train", quick=True, machine=common.machine_info(with_gpu=False))
    r.columns = {"samples_per_s": ("samples/s", ".0f"), "time_to_first_step_s": ("first step (s)", ".1f")}
    r.primary = "samples_per_s"
    r.add("cnn", "torch", {"samples_per_s": 1000.0, "time_to_first_step_s": 2.0})
    r.add("cnn", "ddp", {"samples_per_s": 1200.0, "time_to_first_step_s": 4.0})
    r.add("cnn", "raykube", {"samples_per_s": 850.0, "time_to_first_step_s": 20.0})
    return r


def test_ratios_come_from_the_recorded_measurements():
    r = _report()
    v = r.add_ratio("cnn", "samples_per_s", "raykube", "torch", goal=Goal(">=", 0.9))
    assert v == pytest.approx(850 / 1000)
    q = r.ratios[-1]
    assert (q["numerator_value"], q["denominator_value"]) == (850.0, 1000.0)
    assert q["met"] is False and q["goal"] == ">= 0.9"
    assert r.add_ratio("cnn", "samples_per_s", "raykube", "ddp") == pytest.approx(850 / 1200)
    assert r.ratios[-1]["met"] is None
    # A missing variant gives NaN (written as null), never a made-up number.
    assert math.isnan(r.add_ratio("cnn", "samples_per_s", "raykube", "nope"))


def test_ratios_pair_the_runs_of_each_round():
    """Interleaved rounds: the ratio is the median of per-round ratios, so a round where
    the whole machine was slow (round 1 here) does not skew it; a round one variant
    failed (no run for round 2) is left out of the pairing."""
    r = Report("train")
    torch = [{"round": 0, "metrics": {"samples_per_s": 1000.0}},
             {"round": 1, "metrics": {"samples_per_s": 500.0}},
             {"round": 2, "metrics": {"samples_per_s": 1000.0}}]
    ray = [{"round": 0, "metrics": {"samples_per_s": 960.0}},
           {"round": 1, "metrics": {"samples_per_s": 490.0}}]
    r.add("cnn", "torch", {"samples_per_s": 1000.0}, rounds=torch)
    r.add("cnn", "raykube", {"samples_per_s": 725.0}, rounds=ray)
    v = r.add_ratio("cnn", "samples_per_s", "raykube", "torch", goal=Goal(">=", 0.95))
    assert r.ratios[-1]["per_round"] == pytest.approx([0.96, 0.98])
    assert v == pytest.approx(0.97) and r.ratios[-1]["met"] is True
    assert r.ratios[-1]["ratio_of_medians"] == pytest.approx(0.725)
    assert "0.97x (rounds 0.96, 0.98)" in r.markdown()


def test_report_writes_json_markdown_and_png(tmp_path):
    r = _report()
    r.add_ratio("cnn", "samples_per_s", "raykube", "torch", goal=Goal(">=", 0.9))
    r.add_ratio("cnn", "samples_per_s", "raykube", "gpu")
    r.add_check("checkpoint / epoch", 1.5, Goal("<=", 2), unit="%")
    r.error("cnn", "gpu", "no GPU")
    paths = r.write(tmp_path / "train")
    data = json.loads(paths["json"].read_text())
    assert data["suite"] == "train" and data["quick"] is True
    assert data["machine"]["cpu_count"] >= 1 and "torch" in data["machine"]["versions"]
    assert {x["variant"] for x in data["results"]} == {"torch", "ddp", "raykube"}
    assert data["ratios"][0]["value"] == pytest.approx(0.85)
    assert data["ratios"][1]["value"] is None  # NaN is written as null
    md = paths["markdown"].read_text()
    assert "| cnn | raykube | 850 | 20.0 |" in md
    assert "0.85x" in md and "**no**" in md and "FAILED cnn / gpu" in md
    png = paths["chart"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    summary = common.write_summary(tmp_path)
    assert "### `train`" in summary.read_text()


def test_steady_rate_skips_the_warmup_epoch():
    # Epoch 1: 10 slow steps (0.5 s each); epochs 2-3: 10 steps of 0.1 s each.
    t, steps = 0.0, []
    for i in range(30):
        t += 0.5 if i < 10 else 0.1
        steps.append(t)
    assert bench_train.steady_rate(steps, epochs=3) == pytest.approx(10.0)


def test_analyse_step_logs(tmp_path):
    d = tmp_path / "steps"
    d.mkdir()
    t0 = time.time()
    for pid in (1, 2):  # two lockstepped DDP processes, 2 epochs of 8 steps, 0.05 s/step
        lines = [f"s {t0 + 1 + 0.05 * i:.6f}" for i in range(16)]
        if pid == 1:
            lines.insert(8, f"c {t0 + 1.4:.6f} 0.004000")
            lines.insert(9, f"u {t0 + 1.41:.6f} 0.006000")
            lines.append(f"c {t0 + 1.8:.6f} 0.004000")
            lines.append(f"u {t0 + 1.81:.6f} 0.006000")
            lines.append("s 12")  # a line cut short by a killed process is skipped
        (d / f"steps-{pid}.log").write_text("\n".join(lines) + "\n")
    logs = bench_train.read_step_logs(str(d))
    assert len(logs) == 2
    m = bench_train.analyse(logs, t_launch=t0, epochs=2, global_batch=128,
                            epoch_times=[0.5, 0.4])
    assert m["samples_per_s"] == pytest.approx(20 * 128, rel=1e-3)
    assert m["time_to_first_step_s"] == pytest.approx(1.0, abs=1e-3)
    assert m["checkpoint_s"] == pytest.approx(0.010)
    assert m["checkpoint_fraction"] == pytest.approx(0.010 / 0.4)
    assert m["processes"] == 2


def test_raykube_spec_matches_the_baselines():
    from raykube.spec import parse_spec

    payload = {**bench_train.QUICK, **bench_train.CASES["cifar10-cnn"], "workers": 2, "threads": 2}
    spec = parse_spec(bench_train.raykube_spec(payload)).spec
    assert spec.scaling.workers == 2 and spec.scaling.cpus_per_worker == 1
    assert spec.train.batch_size == payload["batch_size"]
    assert spec.data.dataset == "synthetic" and spec.data.shape == [3, 32, 32]
    assert spec.model.name == "cifar-cnn"


def test_cli_parses_bench_arguments():
    from raykube.cli import build_parser

    args = build_parser("bench").parse_args(["bench", "train", "--quick", "--out", "x",
                                             "--case", "cifar10-cnn"])
    assert (args.suite, args.quick, args.out, args.case) == ("train", True, "x", ["cifar10-cnn"])
    assert args.rounds is None
    assert build_parser("bench").parse_args(["bench", "train", "--rounds", "5"]).rounds == 5
    with pytest.raises(SystemExit):
        build_parser("bench").parse_args(["bench", "nope"])


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/predict
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.20ms  20.00ms   90.00%
    Req/Sec     2.50k   100.00     2.70k    70.00%
  Latency Distribution
     50%    2.95ms
     75%    3.40ms
     90%  850.00us
     99%    1.02s
  5000 requests in 2.00s, 1.50MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2499.50
Transfer/sec:    750.00KB
"""


def test_wrk_output_is_read_with_its_units():
    from raykube.bench.serve import parse_wrk

    r = parse_wrk(WRK_OUTPUT)
    assert r["requests_per_s"] == 2499.5 and r["requests"] == 5000
    assert r["percentiles"] == {50: pytest.approx(0.00295), 75: pytest.approx(0.0034),
                                90: pytest.approx(0.00085), 99: pytest.approx(1.02)}
    assert r["non_2xx"] == 4 and r["socket_errors"] == 3


def test_unreadable_wrk_output_is_an_error_not_a_zero():
    from raykube.bench.common import ChildError
    from raykube.bench.serve import parse_wrk

    with pytest.raises(ChildError):
        parse_wrk("wrk: connection refused")


def test_cpu_beside_the_training_processes_is_told_from_proc_snapshots():
    """beside_cpu reads snapshots of (name, CPU ticks) per pid, taken once a second."""
    snap = [
        (10.0, {1: ("train", 0), 2: ("gcs_server", 50), 3: ("bench", 0), 5: ("gone", 7)}),
        (11.0, {1: ("train", 190), 2: ("gcs_server", 55), 3: ("bench", 40), 5: ("gone", 9)}),
        (12.0, {1: ("train", 380), 2: ("gcs_server", 60), 3: ("bench", 80),
                4: ("ray::TrainController", 4)}),  # 4 started inside the window
        (13.0, {1: ("train", 400), 2: ("gcs_server", 99)}),  # after the window
    ]
    got = bench_train.beside_cpu(snap, 9.5, 12.5, training={1}, hz=100, exclude={3})
    assert got["sampled_s"] == 2.0
    assert got["train_cores"] == pytest.approx(1.9)  # 380 ticks in 2 s at 100 Hz
    # gcs 10 ticks + the controller's 4 (all its CPU): 14 ticks in 2 s; the bench's own
    # process is left out, the one that ended inside the window is missed
    assert got["beside_cores"] == pytest.approx(0.07)
    assert got["beside_top"] == ["gcs_server 5.0%", "ray::TrainController 2.0%"]
    # fewer than two snapshots inside the window: nothing is claimed
    assert bench_train.beside_cpu(snap, 10.5, 11.5, training={1}, hz=100) == {}


def test_proc_cpu_sees_this_process_spend_cpu(tmp_path):
    import os

    before = bench_train.proc_cpu()[os.getpid()][1]
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    name, after = bench_train.proc_cpu()[os.getpid()]
    assert after - before >= 0.2 * os.sysconf("SC_CLK_TCK")
    assert name  # the comm field, e.g. "python"
    (tmp_path / "steps-123.log").write_text("s 1.0\n")
    (tmp_path / "steps-x.log").write_text("s 1.0\n")
    assert bench_train.step_log_pids(str(tmp_path)) == {123}
