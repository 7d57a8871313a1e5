"""The ``operator`` suite: N TrainingRuns applied at once, time until each has its RayJob.

The real operator (``python -m raykube_operator -A``, a subprocess) runs against the
kmock API emulator (``raykube.testing.kube``) over HTTP on 127.0.0.1. N copies of
``jobs/quickstart.yaml`` (distinct names) are created from a small thread pool, as fast
as the emulator accepts them. The emulator timestamps, on arrival, each TrainingRun
create and each RayJob create; the figures are the distribution of (RayJob create -
TrainingRun create) per run, and the operator process's peak RSS (``VmHWM``).

The emulator runs in this process and shares the CPUs with the operator: its own
latency is part of the figures (a real API server adds its own instead).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from raykube.bench.common import Goal, Report, machine_info, peak_rss_mib, percentile, rss_mib

FULL = {"runs": 200, "timeout_s": 180, "client_threads": 8}
QUICK = {"runs": 50, "timeout_s": 120, "client_threads": 8}
P99_GOAL_S = 2.0
RSS_GOAL_MIB = 150.0
REPO = Path(__file__).resolve().parents[3]


def _template() -> dict[str, Any]:
    """The quickstart TrainingRun (a realistic body) as a plain dict."""
    from raykube.spec import load_yaml_documents

    path = REPO / "jobs" / "quickstart.yaml"
    if path.exists():  # raykube's YAML loader reads 3e-3 as a number, like kubectl does
        return load_yaml_documents(path.read_text())[0]
    return {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "quickstart"},
            "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}}


class _ArrivalClock:
    """Records when creates of TrainingRuns and RayJobs reach the emulator (by name).

    With ``trim`` set it also keeps the emulator's request log short: kmock 0.8 matches
    every incoming request against each of its reactions by scanning the whole request
    log, so past a few thousand requests the emulator itself, not the operator, is the
    bottleneck. The log only serves assertions in tests. Trimming happens in the
    emulator's event loop between the request's arrival (appended to the log) and that
    scan, with no ``await`` in between, so the request being handled is always kept.
    """

    def __init__(self, keep: int = 8) -> None:
        self.created: dict[str, dict[str, float]] = {"trainingruns": {}, "rayjobs": {}}
        self.lock = threading.Lock()
        self.trim = False
        self.keep = keep
        self.requests: dict[str, int] = {}  # "verb plural[/sub]" -> count, while trimming
        self._orig: Any = None

    def install(self, emulator_cls: Any) -> None:
        from kmock._internal import enums

        from raykube.testing.kube import _verb

        orig = self._orig = emulator_cls._stamp
        clock = self

        def _stamp(self: Any, request: Any) -> None:
            if clock.trim:
                if len(self._requests) > clock.keep:
                    del self._requests[: len(self._requests) - clock.keep]
                if request.resource is not None:
                    key = f"{_verb(request)} {request.resource.plural}" + (
                        f"/{request.subresource}" if request.subresource else "")
                    clock.requests[key] = clock.requests.get(key, 0) + 1
            if request.action == enums.action.CREATE and request.resource is not None:
                plural = request.resource.plural
                if plural in clock.created and isinstance(request.data, dict):
                    name = (request.data.get("metadata") or {}).get("name")
                    with clock.lock:
                        clock.created[plural].setdefault(name, time.monotonic())
            orig(self, request)

        emulator_cls._stamp = _stamp

    def uninstall(self, emulator_cls: Any) -> None:
        if self._orig is not None:
            emulator_cls._stamp = self._orig


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_suite(*, quick: bool = False, params: dict[str, Any] | None = None) -> Report:
    from raykube.testing.kube import Emulator, KubeCluster, OperatorProcess

    p = {**(QUICK if quick else FULL), **(params or {})}
    report = Report("operator", quick=quick, params=dict(p), machine=machine_info(with_gpu=False))
    report.columns = {
        "p50_s": ("p50 create→RayJob (s)", ".3f"),
        "p99_s": ("p99 create→RayJob (s)", ".3f"),
        "max_s": ("max (s)", ".3f"),
        "all_done_s": ("all RayJobs after first create (s)", ".2f"),
        "runs_per_s": ("runs/s", ".1f"),
        "peak_rss_mib": ("operator peak RSS (MiB)", ".0f"),
        "idle_rss_mib": ("RSS before (MiB)", ".0f"),
        "rayjobs": ("RayJobs", "d"),
        "operator_cpu_s": ("operator CPU (s)", ".1f"),
        "emulator_cpu_s": ("emulator + client CPU (s)", ".1f"),
        "api_requests_per_run": ("API requests / run", ".1f"),
    }
    report.primary = "p99_s"
    case = f"{p['runs']} TrainingRuns"
    clock = _ArrivalClock()
    clock.install(Emulator)
    work = tempfile.mkdtemp(prefix="raykube-bench-operator-")
    cluster = KubeCluster(work).start()
    env = {"RAYKUBE_LOG_LEVEL": "WARNING"}
    if p.get("max_workers"):  # else the operator's default
        env["RAYKUBE_MAX_WORKERS"] = str(p["max_workers"])
    op = OperatorProcess(cluster, env=env)
    try:
        op.start(timeout=60)
        assert op.proc is not None
        pid = op.proc.pid
        idle_rss = rss_mib(pid)
        template = _template()
        names = [f"bench-{i:04d}" for i in range(p["runs"])]

        def create(name: str) -> None:
            obj = copy.deepcopy(template)
            obj["metadata"] = {"name": name, "namespace": "default"}
            cluster.create(obj)

        clock.trim = True
        op_cpu0, emu_cpu0 = _cpu_seconds(pid) or 0.0, time.process_time()
        t0 = time.monotonic()
        with ThreadPoolExecutor(p["client_threads"]) as pool:
            list(pool.map(create, names))
        created_s = time.monotonic() - t0
        deadline = time.monotonic() + p["timeout_s"]
        peak = peak_rss_mib(pid)
        while time.monotonic() < deadline:
            with clock.lock:
                done = sum(1 for n in names if n in clock.created["rayjobs"])
            if done == len(names) or op.proc.poll() is not None:
                break
            time.sleep(0.1)
        wall = time.monotonic() - t0
        op_cpu = (_cpu_seconds(pid) or 0.0) - op_cpu0
        emu_cpu = time.process_time() - emu_cpu0
        time.sleep(0.5)  # let in-flight status patches land before reading the peak
        peak = peak_rss_mib(pid) or peak
        tr, rj = clock.created["trainingruns"], clock.created["rayjobs"]
        lat = [rj[n] - tr[n] for n in names if n in rj and n in tr]
        first = min(tr.values()) if tr else t0
        report.add(case, "operator", {
            "p50_s": percentile(lat, 50),
            "p99_s": percentile(lat, 99),
            "max_s": max(lat) if lat else float("nan"),
            "all_done_s": (max(rj.values()) - first) if rj else float("nan"),
            "runs_per_s": len(lat) / (max(rj.values()) - first) if len(rj) > 1 else float("nan"),
            "peak_rss_mib": peak,
            "idle_rss_mib": idle_rss,
            "rayjobs": len(lat),
            "operator_cpu_s": op_cpu,
            "emulator_cpu_s": emu_cpu,
            "wall_s": wall,
            "api_requests_per_run": sum(clock.requests.values()) / max(1, len(names)),
        }, creates_took_s=round(created_s, 3), api_requests=dict(sorted(clock.requests.items())))
        if len(lat) < len(names):
            report.error(case, "operator", f"only {len(lat)} of {len(names)} RayJobs created "
                         f"within {p['timeout_s']} s; operator log tail: {op.logs()[-800:]}")
    finally:
        op.stop()
        cluster.stop()
        clock.uninstall(Emulator)
        shutil.rmtree(work, ignore_errors=True)
    report.add_check(f"{case}: p99 creation → RayJob", report.get(case, "operator", "p99_s"),
                     Goal("<", P99_GOAL_S), unit="s")
    report.add_check("operator peak RSS", report.get(case, "operator", "peak_rss_mib"),
                     Goal("<", RSS_GOAL_MIB), unit="MiB")
    report.notes.append(
        f"{p['runs']} copies of jobs/quickstart.yaml created by {p['client_threads']} client "
        f"threads (all creates took {created_s:.2f} s); times are arrivals at the kmock "
        "emulator (same process as the load, on this machine's CPUs), RSS is the operator "
        "process's VmHWM. The emulator's request log is trimmed during the run (kmock 0.8 "
        "scans it on every request).")
    return report
