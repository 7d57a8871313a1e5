"""The ``operator`` suite: N TrainingRuns applied at once, time until each has its RayJob.

Runs on the real control plane (``raykube.testing.control_plane``: etcd, kube-apiserver,
controller manager, scheduler, kwok and KubeRay's controller, all on this machine, built
by ``make cluster-bins``). The real operator (``python -m raykube_operator``, a
subprocess) runs as its ServiceAccount, scoped to a fresh namespace per size. N copies of
``jobs/quickstart.yaml`` (distinct names) are created from a small thread pool; KubeRay
turns each RayJob into a RayCluster with kwok pods meanwhile, as on a cluster.

Latency per run = (the API server's arrival time of the operator's RayJob create, from
its audit log) - (the client's clock just before the TrainingRun create). API requests
per run are the operator's requests in the audit log divided by N. Everything shares
this machine's CPUs: the API server, etcd and KubeRay's work are part of the figures.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from raykube.bench.common import Goal, Report, machine_info, peak_rss_mib, percentile, rss_mib

FULL = {"runs": [200, 1000], "timeout_s": 600, "client_threads": 8}
QUICK = {"runs": [50], "timeout_s": 180, "client_threads": 8}
P99_GOALS_S = {200: 2.0, 1000: 10.0}
RSS_GOAL_MIB = 150.0
REPO = Path(__file__).resolve().parents[3]


def _template() -> dict[str, Any]:
    """The quickstart TrainingRun (a realistic body) as a plain dict."""
    from raykube.spec import load_yaml_documents

    return load_yaml_documents((REPO / "jobs" / "quickstart.yaml").read_text())[0]


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def run_suite(*, quick: bool = False, params: dict[str, Any] | None = None,
              control_plane: Any = None) -> Report:
    """``control_plane``: a running ``ControlPlane`` to use (the tests share theirs); by
    default one is started in a temporary directory and stopped at the end."""
    from raykube.testing.control_plane import ControlPlane
    from raykube.testing.real_kube import OPERATOR_USER, RealKube, RealOperator

    p = {**(QUICK if quick else FULL), **(params or {})}
    sizes = [p["runs"]] if isinstance(p["runs"], int) else list(p["runs"])
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
        "api_requests_per_run": ("API requests / run", ".1f"),
    }
    report.primary = "p99_s"
    work = Path(tempfile.mkdtemp(prefix="raykube-bench-operator-"))
    cp = control_plane or ControlPlane(work)
    env = {"RAYKUBE_LOG_LEVEL": "WARNING"}
    if p.get("max_workers"):  # else the operator's default
        env["RAYKUBE_MAX_WORKERS"] = str(p["max_workers"])
    try:
        if control_plane is None:
            cp.up(timeout=120, fresh=True)
        for n in sizes:
            _one_size(report, cp, n, p, env, RealKube, RealOperator, OPERATOR_USER)
    finally:
        if control_plane is None:
            cp.down(quiet=True)
        shutil.rmtree(work, ignore_errors=True)
    for n in sizes:
        case = f"{n} TrainingRuns"
        goal = P99_GOALS_S.get(n, 2.0 if n <= 200 else 10.0)
        report.add_check(f"{case}: p99 creation → RayJob", report.get(case, "operator", "p99_s"),
                         Goal("<", goal), unit="s")
        report.add_check(f"{case}: operator peak RSS",
                         report.get(case, "operator", "peak_rss_mib"),
                         Goal("<", RSS_GOAL_MIB), unit="MiB")
    report.notes.append(
        f"copies of jobs/quickstart.yaml created by {p['client_threads']} client threads "
        "against a real kube-apiserver + etcd on this machine, KubeRay reconciling every "
        "RayJob into a RayCluster with kwok pods meanwhile; RayJob times are the API "
        "server's arrival times (audit log); RSS is the operator process's VmHWM.")
    return report


def _one_size(report: Report, cp: Any, n: int, p: dict[str, Any], env: dict[str, str],
              RealKube: Any, RealOperator: Any, operator_user: str) -> None:
    case = f"{n} TrainingRuns"
    kube = RealKube(cp, f"bench-{n}-{int(time.time())}")
    op = RealOperator(kube, env=env)
    try:
        op.start(timeout=60)
        assert op.proc is not None
        pid = op.proc.pid
        idle_rss = rss_mib(pid)
        template = _template()
        names = [f"bench-{i:04d}" for i in range(n)]
        sent: dict[str, float] = {}

        def create(name: str) -> None:
            obj = copy.deepcopy(template)
            obj["metadata"] = {"name": name}
            sent[name] = time.time()
            kube.create(obj)

        since = time.time()
        op_cpu0 = _cpu_seconds(pid) or 0.0
        t0 = time.monotonic()
        with ThreadPoolExecutor(p["client_threads"]) as pool:
            list(pool.map(create, names))
        created_s = time.monotonic() - t0
        deadline = time.monotonic() + p["timeout_s"]
        peak = peak_rss_mib(pid)

        def rayjob_creates() -> dict[str, float]:
            out = {}
            for ev in cp.audit_events(operator_user):
                ref = ev.get("objectRef") or {}
                if (ev.get("verb") == "create" and ref.get("resource") == "rayjobs"
                        and ref.get("namespace") == kube.namespace
                        and ev.get("stage") == "ResponseComplete"
                        and (ev.get("responseStatus") or {}).get("code", 0) < 300):
                    name = ref.get("name") or ((ev.get("requestObject") or {}).get(
                        "metadata") or {}).get("name")
                    out.setdefault(name, _epoch(ev["requestReceivedTimestamp"]))
            return out

        rj: dict[str, float] = {}
        while time.monotonic() < deadline:
            rj = rayjob_creates()
            if len(rj) >= n or op.proc.poll() is not None:
                break
            time.sleep(1.0)
        op_cpu = (_cpu_seconds(pid) or 0.0) - op_cpu0
        time.sleep(1.0)  # let in-flight status patches land before reading the peak
        peak = peak_rss_mib(pid) or peak
        lat = [rj[k] - sent[k] for k in names if k in rj and k in sent]
        first = min(sent.values())
        calls = [c for c in kube.calls(since=since) if c.namespace in (None, kube.namespace)]
        per_kind: dict[str, int] = {}
        for c in calls:
            key = f"{c.verb} {c.resource}"
            per_kind[key] = per_kind.get(key, 0) + 1
        report.add(case, "operator", {
            "p50_s": percentile(lat, 50),
            "p99_s": percentile(lat, 99),
            "max_s": max(lat) if lat else float("nan"),
            "all_done_s": (max(rj.values()) - first) if rj else float("nan"),
            "runs_per_s": len(lat) / max(1e-9, max(rj.values()) - first) if rj else float("nan"),
            "peak_rss_mib": peak,
            "idle_rss_mib": idle_rss,
            "rayjobs": len(lat),
            "operator_cpu_s": op_cpu,
            "api_requests_per_run": len(calls) / max(1, n),
        }, creates_took_s=round(created_s, 3), api_requests=dict(sorted(per_kind.items())))
        if len(lat) < n:
            report.error(case, "operator", f"only {len(lat)} of {n} RayJobs created within "
                         f"{p['timeout_s']} s; operator log tail: {op.logs()[-800:]}")
    finally:
        op.stop()
        kube.delete_namespace()
        kube.close()
