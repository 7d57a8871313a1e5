"""What every benchmark suite shares: machine info, statistics, child processes, writers.

A suite collects its figures in a :class:`Report` (results per case and variant, ratios
computed from those results, goals checked against the ratios) and writes it as
``bench.json`` (the record), ``table.md`` (for humans and the README) and ``chart.png``.

Every variant runs in its own child process (:func:`run_child`) so thread pools, Ray's
processes and imported state of one variant never leak into the next one's timings.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = 1

# Children inherit these unless the caller overrides them: no telemetry, no network, and
# no BLAS/OpenMP pool larger than what the variant asks for.
CHILD_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "PYTHONUNBUFFERED": "1",
}
# Not set here: RAY_worker_niceness. raykube sets it to 0 itself (raykube.render.TRAIN_ENV,
# applied by `raykube run` and in the pods), so the bench measures what a user gets.


# --------------------------------------------------------------------------- statistics
def median(values: Iterable[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(vals) if vals else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return float("nan")
    if len(vals) == 1:
        return vals[0]
    pos = (len(vals) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN when either is missing or the denominator is 0."""
    try:
        n, d = float(numerator), float(denominator)
    except (TypeError, ValueError):
        return float("nan")
    if not (math.isfinite(n) and math.isfinite(d)) or d == 0:
        return float("nan")
    return n / d


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


# ------------------------------------------------------------------------------ machine
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def gpu_info() -> dict[str, Any] | None:
    """Name and count of CUDA devices, or None (imports torch: call from children/CLI)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {
        "count": torch.cuda.device_count(),
        "name": torch.cuda.get_device_name(0),
        "cuda": torch.version.cuda,
    }


def machine_info(*, with_gpu: bool = True) -> dict[str, Any]:
    """What the figures were measured on: CPU, memory, GPU, load and package versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "gpu": gpu_info() if with_gpu else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": {
            d: _version(d)
            for d in ("raykube", "torch", "torchvision", "ray", "kopf", "fastapi", "uvicorn", "httpx")
        },
    }


def machine_line(m: dict[str, Any]) -> str:
    """One line describing the machine, for tables."""
    gpu = m.get("gpu")
    gpu_txt = f"{gpu['count']}x {gpu['name']}" if gpu else "no GPU"
    v = m.get("versions", {})
    load = m.get("load_average")
    return (
        f"{m.get('cpus_usable')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, {gpu_txt}; "
        f"Python {m.get('python')}, torch {v.get('torch')}, ray {v.get('ray')}"
        + (f"; load average at start {load[0]}" if load else "")
    )


# ------------------------------------------------------------------------------- report
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


@dataclass
class Goal:
    """A target a ratio or figure is checked against, e.g. ``>= 0.9``."""

    op: str  # ">=", "<=", ">" or "<"
    target: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"goal operator must be one of {', '.join(_OPS)}, got {self.op!r}")

    def met(self, value: float) -> bool | None:
        if value is None or not math.isfinite(value):
            return None
        return _OPS[self.op](value, self.target)

    def __str__(self) -> str:
        return f"{self.op} {self.target:g}"


@dataclass
class Report:
    """The results of one suite run, and how they are written out."""

    suite: str
    quick: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    # Metrics shown in the table, in order: name -> (column title, format).
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)
    primary: str | None = None  # the metric drawn in the chart

    # -- collecting
    def add(self, case: str, variant: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Record one variant's figures for one case (medians, plus raw series if given)."""
        row = {"case": case, "variant": variant, "metrics": dict(metrics), **extra}
        self.results = [
            r for r in self.results if not (r["case"] == case and r["variant"] == variant)
        ]
        self.results.append(row)
        return row

    def get(self, case: str, variant: str, metric: str) -> float:
        for r in self.results:
            if r["case"] == case and r["variant"] == variant:
                v = r["metrics"].get(metric)
                return float(v) if v is not None else float("nan")
        return float("nan")

    def error(self, case: str, variant: str, message: str) -> None:
        """A variant that failed: recorded (and shown), never silently dropped."""
        self.errors.append({"case": case, "variant": variant, "error": message})

    def add_ratio(
        self,
        case: str,
        metric: str,
        numerator: str,
        denominator: str,
        *,
        goal: Goal | None = None,
        label: str | None = None,
    ) -> float:
        """Ratio of two variants' measured ``metric`` for ``case`` (from :meth:`add`).

        Where both variants were measured in the same interleaved rounds (``rounds=``
        rows whose runs carry a ``round`` index), the ratio is the median of the
        per-round ratios: the two runs of a round ran minutes apart, so pairing them
        cancels the machine's drift between rounds, which on a shared 2-vCPU host is
        larger than the gaps measured. The ratio of the medians is kept beside it.
        """
        num = self.get(case, numerator, metric)
        den = self.get(case, denominator, metric)
        of_medians = ratio(num, den)
        per_round = self._paired(case, numerator, denominator, metric)
        value = median(per_round) if len(per_round) > 1 else of_medians
        self.ratios.append(
            {
                "case": case,
                "metric": metric,
                "numerator": numerator,
                "denominator": denominator,
                "numerator_value": num,
                "denominator_value": den,
                "value": value,
                "per_round": per_round,
                "ratio_of_medians": of_medians,
                "label": label or f"{numerator} / {denominator}",
                "goal": str(goal) if goal else None,
                "met": goal.met(value) if goal else None,
            }
        )
        return value

    def _paired(self, case: str, numerator: str, denominator: str, metric: str) -> list[float]:
        """Per-round ratios of ``metric`` for the rounds both variants completed."""
        def by_round(variant: str) -> dict[int, float]:
            for r in self.results:
                if r["case"] == case and r["variant"] == variant:
                    return {run["round"]: run["metrics"][metric] for run in r.get("rounds") or []
                            if "round" in run and run["metrics"].get(metric) is not None}
            return {}

        a, b = by_round(numerator), by_round(denominator)
        pairs = [ratio(a[i], b[i]) for i in sorted(set(a) & set(b))]
        return [x for x in pairs if math.isfinite(x)]

    def add_check(self, name: str, value: float, goal: Goal, unit: str = "", note: str = "") -> None:
        """A figure (not a ratio) checked against a goal, e.g. p99 latency < 2 s."""
        self.checks.append(
            {"name": name, "value": value, "unit": unit, "goal": str(goal), "met": goal.met(value),
             "note": note}
        )

    # -- writing
    def to_dict(self) -> dict[str, Any]:
        return _finite(
            {
                "schema": SCHEMA,
                "suite": self.suite,
                "quick": self.quick,
                "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
                "duration_s": round(time.time() - self.started, 2),
                "machine": self.machine,
                "params": self.params,
                "results": self.results,
                "ratios": self.ratios,
                "checks": self.checks,
                "errors": self.errors,
                "notes": self.notes,
            }
        )

    def markdown(self) -> str:
        return render_markdown(self.to_dict(), self.columns)

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write bench.json, table.md and chart.png into ``out_dir``; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        data["columns"] = {k: list(v) for k, v in self.columns.items()}
        paths = {"json": out / "bench.json", "markdown": out / "table.md", "chart": out / "chart.png"}
        paths["json"].write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        paths["markdown"].write_text(render_markdown(data, self.columns))
        render_chart(data, self.primary, self.columns, paths["chart"])
        return paths


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int | float):
        return format(value, fmt)
    return str(value)


def render_markdown(data: dict[str, Any], columns: dict[str, tuple[str, str]] | None = None) -> str:
    """The suite's tables: figures per case/variant, ratios vs goals, checks, errors."""
    columns = columns or {k: tuple(v) for k, v in (data.get("columns") or {}).items()}
    if not columns:  # every metric seen, in order of appearance
        for r in data["results"]:
            for k in r["metrics"]:
                columns.setdefault(k, (k, ".4g"))
    lines = [f"### `{data['suite']}`{' (quick)' if data.get('quick') else ''}", ""]
    lines.append(f"Machine: {machine_line(data.get('machine') or {})}.")
    lines.append("")
    if data["results"]:
        head = ["case", "variant", *[title for title, _ in columns.values()]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for r in data["results"]:
            cells = [r["case"], r["variant"]]
            cells += [_fmt(r["metrics"].get(k), fmt) for k, (_, fmt) in columns.items()]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if data["ratios"] or data["checks"]:
        lines.append("| comparison | measured | goal | met |")
        lines.append("|---|---|---|---|")
        for q in data["ratios"]:
            title = columns.get(q["metric"], (q["metric"], ""))[0]
            met = {True: "yes", False: "**no**", None: "–"}[q["met"]]
            rounds = q.get("per_round") or []
            each = (f" (rounds {', '.join(format(x, '.2f') for x in rounds)})"
                    if len(rounds) > 1 else "")
            lines.append(
                f"| {q['case']}: {title} {q['label']} | {_fmt(q['value'], '.2f')}x{each} | "
                f"{q['goal'] + 'x' if q['goal'] else '–'} | {met} |"
            )
        for c in data["checks"]:
            met = {True: "yes", False: "**no**", None: "–"}[c["met"]]
            lines.append(
                f"| {c['name']} | {_fmt(c['value'], '.3g')} {c['unit']} | {c['goal']} {c['unit']} | {met} |"
            )
        lines.append("")
    for e in data.get("errors", []):
        lines.append(f"- FAILED {e['case']} / {e['variant']}: {e['error']}")
    for n in data.get("notes", []):
        lines.append(f"- {n}")
    return "\n".join(lines).rstrip() + "\n"


def render_chart(
    data: dict[str, Any],
    primary: str | None,
    columns: dict[str, tuple[str, str]],
    path: Path,
) -> Path:
    """A bar chart of the primary metric per case and variant (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    metric = primary or next((k for r in results for k in r["metrics"]), None)
    cases = list(dict.fromkeys(r["case"] for r in results)) or ["(no results)"]
    fig, axes = plt.subplots(1, len(cases), figsize=(max(4.5, 4.2 * len(cases)), 3.8), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        rows = [r for r in results if r["case"] == case and metric]
        names = [r["variant"] for r in rows]
        vals = [r["metrics"].get(metric) or 0.0 for r in rows]
        bars = ax.bar(range(len(vals)), vals, color=[f"C{i}" for i in range(len(vals))])
        ax.set_xticks(range(len(vals)), names, rotation=20, ha="right", fontsize=8)
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
        ax.set_title(case, fontsize=9)
        if metric:
            ax.set_ylabel(columns.get(metric, (metric, ""))[0], fontsize=8)
    fig.suptitle(f"raykube bench {data['suite']}" + (" (quick)" if data.get("quick") else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ child processes
class ChildError(RuntimeError):
    """A benchmark child process failed; the message carries its stderr tail."""


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # children start their own Ray, never join another one
    env.update(CHILD_ENV)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_child(
    module: str,
    mode: str,
    payload: dict[str, Any],
    *,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m <module> <mode> <payload-file>`` and return the dict it wrote.

    The child calls :func:`child_main`, which writes its return value as JSON to the
    result file. A non-zero exit or a timeout raises :class:`ChildError` with the tail of
    the child's output.
    """
    with tempfile.TemporaryDirectory(prefix="raykube-bench-") as tmp:
        req = Path(tmp) / "request.json"
        res = Path(tmp) / "result.json"
        req.write_text(json.dumps({**payload, "_result_file": str(res), "_t_launch": time.time()}))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", module, mode, str(req)],
                env=env or child_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stderr or b"")[-2000:]
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            raise ChildError(f"{module} {mode}: timed out after {timeout:.0f} s\n{tail}") from exc
        if proc.returncode != 0 or not res.exists():
            raise ChildError(
                f"{module} {mode}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        return json.loads(res.read_text())


def child_main(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> int:
    """Entry point of a suite module run as a child: ``python -m MODULE MODE REQUEST``."""
    if len(sys.argv) != 3 or sys.argv[1] not in handlers:
        print(f"usage: python -m ... {{{','.join(handlers)}}} REQUEST.json", file=sys.stderr)
        return 2
    payload = json.loads(Path(sys.argv[2]).read_text())
    result = handlers[sys.argv[1]](payload)
    Path(payload["_result_file"]).write_text(json.dumps(_finite(result)))
    return 0


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float | None:
    """Current resident set size (VmRSS) of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def write_summary(out_dir: str | os.PathLike[str]) -> Path:
    """Concatenate every suite's table.md under ``out_dir`` into SUMMARY.md."""
    from raykube.bench import SUITES

    out = Path(out_dir)
    parts = ["# raykube benchmarks", ""]
    for suite in SUITES:
        table = out / suite / "table.md"
        if table.exists():
            parts += [table.read_text(), ""]
    path = out / "SUMMARY.md"
    path.write_text("\n".join(parts).rstrip() + "\n")
    return path
