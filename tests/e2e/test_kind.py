"""End to end on a real cluster: TrainingRun -> RayJob -> checkpoint -> RayService -> HTTP.

Opt-in: runs against the current kube context only when ``RAYKUBE_E2E=1``; otherwise it
is skipped with the reason saying how to run it. The cluster needs KubeRay v1.7.0, raykube
(CRD + operator) and the images, e.g. a kind cluster:

    make kind-up images kind-load deploy       # k8s/kind/*.sh
    RAYKUBE_E2E=1 .venv/bin/pytest tests/e2e -q     # or: make test-e2e

The flow is k8s/kind/e2e.sh's, under a unique name (so a run never collides with the
quickstart applied by hand) and cleaned up afterwards. Settings: RAYKUBE_E2E_NAMESPACE
(default "default", it needs the raykube-storage claim), RAYKUBE_E2E_TIMEOUT (seconds,
default 1800).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from raykube.ports import free_port

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("RAYKUBE_E2E_NAMESPACE", "default")
TIMEOUT = float(os.environ.get("RAYKUBE_E2E_TIMEOUT", "1800"))
EXPECTED = ["3", "7", "9"]  # labels of the digits in k8s/kind/predict-request.json

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("RAYKUBE_E2E") != "1",
        reason="needs a Kubernetes cluster with KubeRay and raykube installed: "
        "`make kind-up images kind-load deploy` then `RAYKUBE_E2E=1 pytest tests/e2e` "
        "(or `make test-e2e`); runs against the current kube context",
    ),
]


def kubectl(*args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["kubectl", "-n", NAMESPACE, *args], input=input, text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def get_tr(name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "trainingrun", name, "-o", "json").stdout)


@pytest.fixture(scope="module")
def cluster() -> str:
    if not shutil.which("kubectl"):
        pytest.fail("RAYKUBE_E2E=1 but kubectl is not installed")
    ctx = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True)
    if ctx.returncode != 0:
        pytest.fail(f"RAYKUBE_E2E=1 but no kube context: {ctx.stderr.strip()}")
    for crd in ("trainingruns.raykube.io", "rayjobs.ray.io", "rayservices.ray.io"):
        if kubectl("get", "crd", crd, check=False).returncode != 0:
            pytest.fail(f"CRD {crd} missing on {ctx.stdout.strip()}: run `make kind-up deploy`")
    return ctx.stdout.strip()


@pytest.fixture
def trainingrun(cluster: str):
    doc = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    yield name
    kubectl("delete", "trainingrun", name, "--wait=false", check=False)


def test_quickstart_trains_and_serves(trainingrun: str):
    name = trainingrun
    deadline = time.monotonic() + TIMEOUT
    phase = None
    while time.monotonic() < deadline:
        tr = get_tr(name)
        status = tr.get("status") or {}
        phase = status.get("phase")
        if phase == "Serving":
            break
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        assert phase != "Failed", f"TrainingRun failed: {json.dumps(conditions, indent=1)}"
        promoted = conditions.get("Promoted")
        assert not (phase == "Succeeded" and promoted and promoted["status"] == "False"), \
            f"not promoted: {promoted}"
        time.sleep(10)
    assert phase == "Serving", f"still {phase} after {TIMEOUT:.0f}s"
    kubectl("wait", f"trainingrun/{name}", "--for=condition=Ready", "--timeout=60s")

    tr = get_tr(name)
    status = tr["status"]
    assert status["progress"]["epoch"] == status["progress"]["epochs"] == 12
    assert status["checkpoint"]["metrics"]["valAccuracy"] >= 0.9  # the gate of the quickstart
    assert status["serving"]["endpoint"] == f"http://{name}-serve-svc.{NAMESPACE}:8000"
    owned = json.loads(kubectl("get", "rayjobs,rayservices", "-l", f"raykube.io/trainingrun={name}",
                               "-o", "json").stdout)["items"]
    assert sorted(o["kind"] for o in owned) == ["RayJob", "RayService"]
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == tr["metadata"]["uid"] for o in owned)

    import httpx

    port = free_port()
    pf = subprocess.Popen(["kubectl", "-n", NAMESPACE, "port-forward", f"svc/{name}-serve-svc",
                           f"{port}:8000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(30):
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        meta = httpx.get(f"{base}/metadata", timeout=10).json()
        print("metadata:", meta)
        body = (REPO / "k8s" / "kind" / "predict-request.json").read_bytes()
        resp = httpx.post(f"{base}/predict", content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
        assert resp.status_code == 200, resp.text
        labels = [p["label"] for p in resp.json()["predictions"]]
        print("predicted:", labels, "expected:", EXPECTED)
        assert sum(a == b for a, b in zip(labels, EXPECTED, strict=True)) >= 2, labels
        bad = httpx.post(f"{base}/predict", json={"instances": "nope"}, timeout=10)
        assert 400 <= bad.status_code < 500, bad.text
    finally:
        pf.terminate()
        pf.wait(timeout=10)
