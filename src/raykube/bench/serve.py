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
a separate load-generator process (async httpx, 127.0.0.1 only): first one request at a
time (latency p50/p99), then ``concurrency`` requests in flight (saturated requests/s).
Both phases are bounded in request count and in time and stop by themselves.
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

MODULE = "raykube.bench.serve"
FULL = {"latency_requests": 600, "saturation_requests": 3000, "concurrency": 32,
        "phase_timeout_s": 60, "warmup": 30}
QUICK = {"latency_requests": 150, "saturation_requests": 600, "concurrency": 32,
         "phase_timeout_s": 25, "warmup": 15}
ADDED_P50_GOAL_MS = 3.0
BATCHED_GOAL = Goal(">=", 0.8)


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

    from raykube.serve import start_local, stop_local
    from raykube.spec import ServeSpec

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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    }
    report.primary = "requests_per_s"
    case = "cifar10-cnn"
    tmp = tempfile.mkdtemp(prefix="raykube-bench-serve-")
    ckpt = make_checkpoint(os.path.join(tmp, "checkpoint"))
    p["checkpoint"] = ckpt
    load_env = child_env(OMP_NUM_THREADS="1")

    def load(variant: str, base: str) -> None:
        try:
            out = run_child(MODULE, "load", {**p, "url": f"{base}/predict"}, timeout=timeout,
                            env=load_env)
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
    port = _free_port()
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
    port = _free_port()
    proc = _popen("raykube-server", {**p, "port": port}, tmp, stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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
                    raise ChildError(f"raykube server exited with {proc.returncode}")
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
    for variant in ("raykube", "raykube-batched", "fastapi"):
        added = report.get(case, variant, "p50_ms") - direct
        if variant.startswith("raykube"):
            report.add_check(f"{case}: {variant} p50 added over the direct call", added,
                             Goal("<=", ADDED_P50_GOAL_MS), unit="ms")
        else:
            report.notes.append(f"fastapi p50 added over the direct call: {added:.2f} ms "
                                "(HTTP + JSON alone).")
    report.add_ratio(case, "requests_per_s", "raykube-batched", "fastapi", goal=BATCHED_GOAL)
    report.add_ratio(case, "requests_per_s", "raykube", "fastapi")
    report.add_ratio(case, "p50_ms", "raykube", "fastapi")
    report.notes.append(
        f"Body: one 3x32x32 instance as JSON. Latency: {p['latency_requests']} sequential "
        f"requests after {p['warmup']} warm-up; saturation: up to {p['saturation_requests']} "
        f"requests with {p['concurrency']} in flight (each phase at most "
        f"{p['phase_timeout_s']} s), from a separate process (httpx, 127.0.0.1). The load "
        "generator shares the machine's CPUs with the server under test.")
    return report


if __name__ == "__main__":
    raise SystemExit(child_main({"load": _load_child, "direct": _direct_child,
                                 "fastapi-server": _fastapi_server,
                                 "raykube-server": _raykube_server}))
