"""The ``serve`` suite: raykube's Ray Serve app vs a direct call and a plain FastAPI app.

One checkpoint of the CIFAR-10 tutorial CNN (random weights: speed does not depend on
them) is served by

- ``direct``: the model called in-process (no HTTP), 1 torch thread;
- ``fastapi``: a plain FastAPI app on uvicorn (one process, 1 torch thread), what a user
  would write by hand: parse JSON, one model call per request;
- ``raykube``: ``raykube.serve`` on a local Ray (Serve proxy + one replica), batching off
  (``maxBatchSize: 1``);
- ``raykube-batched``: the same with dynamic batching (``maxBatchSize: 32``,
  ``batchWaitTimeoutMs: 5``, the defaults).

Every HTTP variant gets the same ``{"instances": [<one 3x32x32 example>]}`` requests from
``wrk`` (Debian's package; C, event-driven, so the client is not the bottleneck; 127.0.0.1
only): first one connection, one request at a time, for ``latency_s`` (latency p50/p99),
then ``concurrency`` connections for ``saturation_s`` (saturated requests/s). The CPU the
client used is reported (seconds of CPU per second of wall time). Without ``wrk`` on the
PATH an async httpx client in a separate process stands in (and the report says so).

raykube serves with the settings ``raykube serve`` uses (``raykube.local.apply_ray_env``):
Serve's HAProxy ingress and throughput-optimised mode, access logs off.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from raykube.bench.common import (
    ChildError,
    Goal,
    Report,
    child_env,
    child_main,
    machine_info,
    percentile,
    run_child,
)
from raykube.ports import free_port

MODULE = "raykube.bench.serve"
FULL = {"latency_requests": 600, "saturation_requests": 3000, "concurrency": 32,
        "phase_timeout_s": 60, "warmup": 30, "latency_s": 20, "saturation_s": 20}
QUICK = {"latency_requests": 150, "saturation_requests": 600, "concurrency": 32,
         "phase_timeout_s": 25, "warmup": 15, "latency_s": 8, "saturation_s": 8}
P50_GOAL = Goal("<=", 1.3)  # raykube p50 / FastAPI p50, one request at a time
THROUGHPUT_GOAL = Goal(">=", 0.8)  # raykube-batched req/s / FastAPI req/s, saturated


# ------------------------------------------------------------------------- fixtures
def make_checkpoint(directory: str) -> str:
    """A CIFAR-10 CNN checkpoint in raykube's format (random weights)."""
    import torch

    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model
    from raykube.spec import parse_spec

    spec = parse_spec({"model": {"name": "cifar-cnn"}, "data": {"dataset": "cifar10"}}).spec
    torch.manual_seed(0)
    model = build_model(spec.model, (3, 32, 32), 10)
    save_checkpoint(directory, model=model, optimizer=None, epoch=1, spec=spec.to_dict(),
                    class_names=[f"c{i}" for i in range(10)], input_shape=(3, 32, 32),
                    metrics={"valAccuracy": 0.1})
    return directory


def request_body(seed: int = 0) -> bytes:
    """One instance of the CIFAR-10 shape, as the JSON body every variant receives."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).round(3)
    return json.dumps({"instances": x.tolist()}).encode()


# ------------------------------------------------------------------ load generator
async def _load(url: str, body: bytes, p: dict[str, Any]) -> dict[str, Any]:
    import httpx

    headers = {"content-type": "application/json"}
    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=p["concurrency"], max_keepalive_connections=p["concurrency"])
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        async def one() -> float:
            t = time.perf_counter()
            r = await client.post(url, content=body, headers=headers)
            dt = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            return dt

        for _ in range(p["warmup"]):
            await one()
        # Phase 1: one request at a time.
        lat, errors = [], 0
        deadline = time.perf_counter() + p["phase_timeout_s"]
        while len(lat) < p["latency_requests"] and time.perf_counter() < deadline:
            try:
                lat.append(await one())
            except Exception:
                errors += 1
        out["latency_s"] = lat
        # Phase 2: `concurrency` requests in flight until the count or the time runs out.
        sat: list[float] = []
        sat_errors = 0
        remaining = p["saturation_requests"]
        deadline = time.perf_counter() + p["phase_timeout_s"]

        async def worker() -> None:
            nonlocal remaining, sat_errors
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                try:
                    sat.append(await one())
                except Exception:
                    sat_errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(p["concurrency"])))
        out["saturation_seconds"] = time.perf_counter() - t0
        out["saturation_s"] = sat
        out["errors"] = errors + sat_errors
    return out


def _load_child(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_load(p["url"], request_body(), p))


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("RAYKUBE_WRK_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_seconds(text: str) -> float:
    import re

    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (s), request and error counts from ``wrk --latency``."""
    import re

    res: dict[str, Any] = {"percentiles": {}}
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"^(50|75|90|99)(?:\.0+)?%\s+(\S+)$", line)
        if m:
            res["percentiles"][int(m.group(1))] = _wrk_seconds(m.group(2))
        elif line.startswith("Requests/sec:"):
            res["requests_per_s"] = float(line.split(":", 1)[1])
        elif re.match(r"^\d+ requests in ", line):
            res["requests"] = int(line.split()[0])
        elif line.startswith("Non-2xx or 3xx responses:"):
            res["non_2xx"] = int(line.split(":", 1)[1])
        elif line.startswith("Socket errors:"):
            res["socket_errors"] = sum(int(x) for x in re.findall(r"\d+", line))
    if "requests_per_s" not in res or 50 not in res["percentiles"]:
        raise ChildError(f"could not read wrk's output:\n{out[-800:]}")
    return res


def _wrk(url: str, body_file: str, script: str, *, connections: int, seconds: float,
         threads: int = 1) -> dict[str, Any]:
    """One wrk run; also the CPU it used (user + system seconds per wall second)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "--timeout", "30s", "-s", script, url],
        capture_output=True, text=True, timeout=seconds + 60,
        env={**os.environ, "RAYKUBE_WRK_BODY": body_file})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise ChildError(f"wrk failed ({proc.returncode}): {proc.stderr[-500:]}")
    res = parse_wrk(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["client_cpu"] = cpu / wall if wall > 0 else float("nan")
    return res


def wrk_load(url: str, p: dict[str, Any], tmp: str) -> dict[str, Any]:
    """Warm-up, one-at-a-time latency, then saturation, with wrk."""
    body_file = os.path.join(tmp, "body.json")
    with open(body_file, "wb") as f:
        f.write(request_body())
    script = os.path.join(tmp, "post.lua")
    with open(script, "w") as f:
        f.write(_WRK_SCRIPT)
    _wrk(url, body_file, script, connections=1, seconds=1)  # warm-up
    lat = _wrk(url, body_file, script, connections=1, seconds=p["latency_s"])
    sat = _wrk(url, body_file, script, connections=p["concurrency"], seconds=p["saturation_s"])
    return {"p50_ms": lat["percentiles"][50] * 1000, "p99_ms": lat["percentiles"][99] * 1000,
            "requests": lat.get("requests", 0) + sat.get("requests", 0),
            "requests_per_s": sat["requests_per_s"],
            "saturated_p50_ms": sat["percentiles"][50] * 1000,
            "saturated_p99_ms": sat["percentiles"][99] * 1000,
            "errors": sum(r.get("non_2xx", 0) + r.get("socket_errors", 0) for r in (lat, sat)),
            "client_cpu": sat["client_cpu"]}


def _direct_child(p: dict[str, Any]) -> dict[str, Any]:
    """The model called in-process: the floor any server adds its overhead to."""
    import numpy as np
    import torch

    from raykube.checkpoint import load_model

    torch.set_num_threads(1)
    model, _ = load_model(p["checkpoint"])
    x = np.asarray(json.loads(request_body())["instances"], dtype=np.float32)
    lat = []
    with torch.inference_mode():
        for i in range(p["warmup"] + p["latency_requests"]):
            t = time.perf_counter()
            torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
            if i >= p["warmup"]:
                lat.append(time.perf_counter() - t)
    return {"latency_s": lat}


# ------------------------------------------------------------------------- servers
def _fastapi_server(p: dict[str, Any]) -> dict[str, Any]:
    import uvicorn

    from raykube.bench.fastapi_baseline import fastapi_app

    uvicorn.run(fastapi_app(p["checkpoint"]), host="127.0.0.1", port=p["port"],
                log_level="warning", access_log=False)
    return {}


def _raykube_server(p: dict[str, Any]) -> dict[str, Any]:
    """Ray + Serve for the life of this process; redeploys on ``deploy N`` lines on stdin
    and prints ``READY <url>``; exits on EOF."""
    import ray

    from raykube.local import apply_ray_env
    from raykube.serve import start_local, stop_local
    from raykube.spec import ServeSpec

    apply_ray_env()  # as `raykube serve`: HAProxy ingress, short drain
    ray.init(address="local", num_cpus=p.get("cpus", 2), include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "deploy":
                spec = ServeSpec.model_validate({"maxBatchSize": int(parts[1]),
                                                 "batchWaitTimeoutMs": float(parts[2])})
                url = start_local(p["checkpoint"], spec, port=p["port"])
                print(f"READY {url}", flush=True)
            elif parts[0] == "stop":
                stop_local()
                print("STOPPED", flush=True)
    finally:
        try:
            stop_local()
        finally:
            ray.shutdown()
    return {}


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    raise ChildError(f"{url} did not answer within {timeout:.0f} s")


def _popen(mode: str, payload: dict[str, Any], tmp: str, **kw: Any) -> subprocess.Popen:
    req = os.path.join(tmp, f"{mode}.json")
    with open(req, "w") as f:
        json.dump({**payload, "_result_file": os.path.join(tmp, f"{mode}.result")}, f)
    return subprocess.Popen([sys.executable, "-m", MODULE, mode, req], env=child_env(
        OMP_NUM_THREADS="1"), text=True, **kw)


def _last_error(log_path: str) -> str:
    """The last line of a child's stderr that is not a traceback frame (Ray's INFO lines
    included: the reason is usually last)."""
    from raykube.terminal import error_line

    try:
        with open(log_path, errors="replace") as f:
            text = f.read()[-20000:]
    except OSError as exc:
        return f"(no log: {exc})"
    return (error_line(text) or "(nothing on stderr)")[:500]


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        if proc.stdin:
            proc.stdin.close()
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _metrics(out: dict[str, Any]) -> dict[str, Any]:
    lat = out.get("latency_s") or []
    m = {
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "requests": len(lat),
    }
    if "saturation_s" in out:
        sat = out["saturation_s"]
        m.update(
            requests_per_s=len(sat) / out["saturation_seconds"] if out["saturation_seconds"] else None,
            saturated_p50_ms=percentile(sat, 50) * 1000,
            saturated_p99_ms=percentile(sat, 99) * 1000,
            errors=out.get("errors", 0),
        )
        m["requests"] += len(sat)
    return m


def run_suite(*, quick: bool = False, params: dict[str, Any] | None = None,
              timeout: float = 600) -> Report:
    p = {**(QUICK if quick else FULL), **(params or {})}
    report = Report("serve", quick=quick, params=dict(p), machine=machine_info())
    report.columns = {
        "p50_ms": ("p50 (ms)", ".2f"),
        "p99_ms": ("p99 (ms)", ".2f"),
        "requests_per_s": ("req/s (saturated)", ".0f"),
        "saturated_p50_ms": ("p50 saturated (ms)", ".1f"),
        "saturated_p99_ms": ("p99 saturated (ms)", ".1f"),
        "errors": ("errors", "d"),
        "client_cpu": ("client CPU (cores)", ".2f"),
    }
    report.primary = "requests_per_s"
    case = "cifar10-cnn"
    tmp = tempfile.mkdtemp(prefix="raykube-bench-serve-")
    ckpt = make_checkpoint(os.path.join(tmp, "checkpoint"))
    p["checkpoint"] = ckpt
    load_env = child_env(OMP_NUM_THREADS="1")

    use_wrk = shutil.which("wrk") is not None and not p.get("httpx")

    def load(variant: str, base: str) -> None:
        try:
            if use_wrk:
                report.add(case, variant, wrk_load(f"{base}/predict", p, tmp))
            else:
                out = run_child(MODULE, "load", {**p, "url": f"{base}/predict"},
                                timeout=timeout, env=load_env)
                report.add(case, variant, _metrics(out))
        except ChildError as exc:
            report.error(case, variant, str(exc).strip().splitlines()[0])
            report.notes.append(f"{variant} failure detail: {str(exc)[-1500:]}")

    # direct
    try:
        report.add(case, "direct", _metrics(run_child(MODULE, "direct", p, timeout=timeout,
                                                      env=load_env)))
    except ChildError as exc:
        report.error(case, "direct", str(exc).strip().splitlines()[0])
    # fastapi
    port = free_port()
    proc = _popen("fastapi-server", {**p, "port": port}, tmp, stdout=subprocess.DEVNULL,
                  stderr=subprocess.PIPE)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", proc, 60)
        load("fastapi", f"http://127.0.0.1:{port}")
    except ChildError as exc:
        report.error(case, "fastapi", str(exc))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    # raykube (one Ray for both configurations)
    port = free_port()
    server_log = os.path.join(tmp, "raykube-server.log")  # why it exited, if it does
    with open(server_log, "w") as log_file:
        proc = _popen("raykube-server", {**p, "port": port}, tmp, stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=log_file)
    try:
        for variant, batch, wait_ms in (("raykube", 1, 0.0), ("raykube-batched", 32, 5.0)):
            assert proc.stdin and proc.stdout
            proc.stdin.write(f"deploy {batch} {wait_ms}\n")
            proc.stdin.flush()
            line = ""
            deadline = time.monotonic() + 180
            while not line.startswith("READY") and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    raise ChildError(f"raykube server exited with {proc.returncode} at "
                                     f"'deploy {batch}': {_last_error(server_log)}")
            if not line.startswith("READY"):
                raise ChildError("raykube server did not become ready")
            load(variant, line.split()[1])
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            while not proc.stdout.readline().startswith("STOPPED"):
                if proc.poll() is not None:
                    break
    except ChildError as exc:
        report.error(case, "raykube", str(exc))
    finally:
        _stop(proc)

    shutil.rmtree(tmp, ignore_errors=True)
    direct = report.get(case, "direct", "p50_ms")
    added = {v: report.get(case, v, "p50_ms") - direct
             for v in ("fastapi", "raykube", "raykube-batched")}
    report.notes.append("p50 added over the direct call: " + ", ".join(
        f"{v} {ms:.2f} ms" for v, ms in added.items()) + ".")
    report.add_ratio(case, "p50_ms", "raykube", "fastapi", goal=P50_GOAL)
    report.add_ratio(case, "p50_ms", "raykube-batched", "fastapi", goal=P50_GOAL)
    report.add_ratio(case, "p99_ms", "raykube", "fastapi")
    report.add_ratio(case, "requests_per_s", "raykube-batched", "fastapi", goal=THROUGHPUT_GOAL)
    report.add_ratio(case, "requests_per_s", "raykube", "fastapi")
    if use_wrk:
        how = (f"wrk 1 thread: latency {p['latency_s']} s at 1 connection, saturation "
               f"{p['saturation_s']} s at {p['concurrency']} connections, after 1 s of warm-up "
               "(client CPU: wrk's CPU seconds per second during saturation)")
    else:
        how = (f"httpx (wrk not found): {p['latency_requests']} sequential requests after "
               f"{p['warmup']} warm-up; up to {p['saturation_requests']} requests with "
               f"{p['concurrency']} in flight")
    report.notes.append(
        f"Body: one 3x32x32 instance as JSON. Load: {how}, 127.0.0.1. The load generator "
        "shares the machine's CPUs with the server under test. raykube: Serve's HAProxy "
        "ingress (RAY_SERVE_ENABLE_HA_PROXY=1, RAY_SERVE_THROUGHPUT_OPTIMIZED=1), access "
        "logs off, as `raykube serve` runs it.")
    return report


if __name__ == "__main__":
    raise SystemExit(child_main({"load": _load_child, "direct": _direct_child,
                                 "fastapi-server": _fastapi_server,
                                 "raykube-server": _raykube_server}))
