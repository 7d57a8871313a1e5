"""The operator's start with bad credentials, no API server or missing RBAC, on the real
control plane: one line naming the problem, exit code 2, no traceback, no wait beyond
``RAYKUBE_API_WAIT`` (``raykube_operator.preflight``). And the RBAC we ship passes.

Every case runs the unmodified ``python -m raykube_operator`` against the real API server
(real authentication, real RBAC, real SelfSubjectAccessReviews); the unreachable server is
a free port on 127.0.0.1 where nothing listens.
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from raykube.ports import free_port
from raykube.testing.fixtures import kube  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def start(kubeconfig: Path | str, *args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The operator until it exits (it must: every case here is fatal)."""
    full = {**os.environ, "KUBECONFIG": str(kubeconfig), "RAYKUBE_LIVENESS": "off",
            "RAYKUBE_API_WAIT": "1", **(env or {})}
    full.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run([sys.executable, "-m", "raykube_operator", *args], env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The operator's verdict: exit 2, and stderr's last line says it; no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("raykube operator: "), out[-3000:]
    return last


def service_account(kube, name: str, rules: list[dict[str, Any]] | None = None, *,
                    cluster_role: str | None = None) -> tuple[str, str]:
    """A ServiceAccount in the module's namespace, bound there to ``rules`` (a Role) or to
    ``cluster_role`` (a RoleBinding): its kubeconfig path and user name."""
    ns = kube.namespace
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}]
    ref = None
    if rules is not None:
        objs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                     "metadata": {"name": name, "namespace": ns}, "rules": rules})
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    elif cluster_role:
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
               "name": cluster_role}
    if ref:
        objs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": name, "namespace": ns}, "roleRef": ref,
                     "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
    kube.cp.apply_objects(objs)
    path = kube.cp.workdir / "preflight" / f"{ns}-{name}.kubeconfig"
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(kube.cp.kubeconfig_for(name, ns, path)), f"system:serviceaccount:{ns}:{name}"


def operator_rules() -> list[dict[str, Any]]:
    """The rules of the ClusterRole we ship (k8s/base/rbac.yaml)."""
    docs = yaml.safe_load_all((REPO / "k8s" / "base" / "rbac.yaml").read_text())
    role = next(d for d in docs if d and d["kind"] == "ClusterRole")
    return role["rules"]


def test_unreachable_api_server_is_one_line_after_the_wait(kube, tmp_path):
    port = free_port()  # nothing listens there
    cfg = tmp_path / "kubeconfig"
    kube.cp.write_kubeconfig(cfg, "token")
    doc = json.loads(cfg.read_text())
    doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    cfg.write_text(json.dumps(doc))
    t0 = time.monotonic()
    proc = start(cfg, "-A", env={"RAYKUBE_API_WAIT": "3"})
    took = time.monotonic() - t0
    line = one_line(proc)
    assert f"cannot reach the API server at https://127.0.0.1:{port}" in line
    assert "Connection refused" in line
    # it waited (and said so on one line per attempt) before giving up
    assert "waiting for the API server" in proc.stderr
    assert took >= 3, took


def test_a_rejected_token_is_one_line(kube, tmp_path):
    cfg = kube.cp.write_kubeconfig(tmp_path / "kubeconfig", "not-a-valid-token")
    line = one_line(start(cfg, "-A"))
    assert "rejected the operator's credentials (401 Unauthorized)" in line


def test_no_credentials_at_all_is_one_line(tmp_path):
    proc = start(tmp_path / "missing-kubeconfig", "-A", env={"HOME": str(tmp_path)})
    line = one_line(proc)
    assert "no usable Kubernetes credentials" in line and "missing-kubeconfig" in line


def test_a_certificate_authority_of_another_server_is_one_line(kube, tmp_path):
    cfg = kube.cp.write_kubeconfig(tmp_path / "kubeconfig", kube.cp.tokens["admin"])
    doc = json.loads(cfg.read_text())
    # any valid CA that did not sign this API server's certificate: certifi's first root
    import certifi

    pem = Path(certifi.where()).read_text()
    first = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index("-----END CERTIFICATE-----")]
    import base64

    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        (first + "-----END CERTIFICATE-----\n").encode()).decode()
    cfg.write_text(json.dumps(doc))
    line = one_line(start(cfg, "-A"))
    assert "TLS with the API server" in line and "certificate verify failed" in line


def test_an_identity_without_rbac_is_named_and_refused(kube):
    cfg, user = service_account(kube, "nobody")
    line = one_line(start(cfg, "-A"))
    assert user in line and "holds none of the operator's permissions" in line
    assert "k8s/base/rbac.yaml" in line


def test_one_missing_permission_is_named_with_its_namespace(kube):
    """The shipped rules in a Role, less ``delete`` on RayJobs: the line names exactly that
    (and where), not the rest."""
    rules = []
    for r in operator_rules():
        r = dict(r)
        if r["apiGroups"] == ["ray.io"] and "rayjobs" in r["resources"]:
            rules.append({**r, "resources": ["rayservices"]})
            rules.append({**r, "resources": ["rayjobs"],
                          "verbs": [v for v in r["verbs"] if v != "delete"]})
        else:
            rules.append(r)
    cfg, user = service_account(kube, "almost", rules)
    line = one_line(start(cfg, "-n", kube.namespace))
    assert f"{user} may not delete rayjobs.ray.io in namespace {kube.namespace}" in line
    for other in ("trainingruns", "configmaps", "rayservices", "pods"):
        assert other not in line.split(" (watching")[0], line


def test_the_shipped_role_bound_in_one_namespace_starts_there_but_not_cluster_wide(kube):
    """The ClusterRole of k8s/base through a RoleBinding: enough for ``-n <that
    namespace>`` (the operator starts and watches; listing CRDs cluster-wide is missing,
    which kopf copes with: a warning), refused for ``-A``."""
    cfg, user = service_account(kube, "scoped", cluster_role="raykube-operator")
    line = one_line(start(cfg, "-A"))
    assert f"{user} holds none of the operator's permissions (watching cluster-wide" in line
    assert "--namespace" in line

    out = run_until_watching(kube, cfg, user, "-n", kube.namespace)
    warning = next(ln for ln in out.splitlines() if "raykube_operator.preflight" in ln
                   or f"{user} may not" in ln)
    assert "list, watch customresourcedefinitions.apiextensions.k8s.io" in warning, out
    assert "list, watch namespaces" in warning and "ClusterRoleBinding" in warning, out
    assert "Traceback" not in out, out
    # the start-up line says what -n asked (it said "all" whatever -n was)
    assert f"raykube operator configured: namespaces=['{kube.namespace}']" in out, out


def test_a_role_from_before_rayclusters_were_read_still_starts_with_a_warning(kube):
    """The shipped rules less ``get rayclusters`` (a ClusterRole older than the operator
    image): the operator starts and watches, and says once what it costs (a deleted
    RayCluster is announced as a head loss) instead of refusing to start."""
    rules = [r for r in operator_rules() if "rayclusters" not in r["resources"]]
    assert len(rules) == len(operator_rules()) - 1
    cfg, user = service_account(kube, "older", rules)
    out = run_until_watching(kube, cfg, user, "-n", kube.namespace)
    warning = next(ln for ln in out.splitlines() if "rayclusters" in ln)
    assert f"{user} may not delete, get rayclusters.ray.io in namespace {kube.namespace}: " \
        in warning, out
    assert "a job past its activeDeadlineSeconds trains on until KubeRay deletes its " \
        "cluster" in warning and "announced as a head loss" in warning, out
    assert "Traceback" not in out, out


def test_a_role_that_reads_rayclusters_but_may_not_delete_them_says_what_that_costs(kube):
    """The ClusterRole of the release before deadline stops (``get`` only): one warning
    naming the verb missing and its cost alone."""
    rules = [r if "rayclusters" not in r["resources"] else {**r, "verbs": ["get"]}
             for r in operator_rules()]
    cfg, user = service_account(kube, "getonly", rules)
    out = run_until_watching(kube, cfg, user, "-n", kube.namespace)
    warning = next(ln for ln in out.splitlines() if "rayclusters" in ln)
    assert f"{user} may not delete rayclusters.ray.io in namespace {kube.namespace}: a job " \
        "past its activeDeadlineSeconds trains on until KubeRay deletes its cluster" \
        in warning, out
    assert "head loss" not in warning and "Traceback" not in out, out


def test_the_shipped_deployment_identity_starts_cluster_wide(kube):
    """The Deployment's ServiceAccount with the ClusterRoleBinding of k8s/base, ``-A`` (as
    the Deployment runs it): every check passes, nothing is warned."""
    from raykube.testing.real_kube import OPERATOR_SA, OPERATOR_USER

    path = kube.cp.workdir / "preflight" / "deployment.kubeconfig"
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = str(kube.cp.kubeconfig_for(*reversed(OPERATOR_SA), path))
    out = run_until_watching(kube, cfg, OPERATOR_USER, "-A")
    assert "raykube_operator.pre" not in out and "Traceback" not in out, out


def run_until_watching(kube, kubeconfig: str, user: str, *args: str) -> str:
    """Start the operator, wait until the API server sees ``user`` watch TrainingRuns (its
    audit log), stop it; its output."""
    env = {**os.environ, "KUBECONFIG": kubeconfig, "RAYKUBE_LIVENESS": "off",
           "PYTHONUNBUFFERED": "1"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    since = time.time() - 1
    proc = subprocess.Popen([sys.executable, "-m", "raykube_operator", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        watching = False
        while time.monotonic() < deadline and proc.poll() is None and not watching:
            time.sleep(0.5)
            watching = any(c.verb == "watch" and c.plural == "trainingruns"
                           for c in kube.calls(user=user, since=since))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert watching and alive, out[-3000:]
    return out


@pytest.mark.parametrize("var,value", [("RAYKUBE_RETRY_DELAY", "soon"),
                                        ("RAYKUBE_MAX_WORKERS", "-3"),
                                        ("RAYKUBE_MAX_WORKERS", "inf"),  # was a traceback
                                        ("RAYKUBE_RESYNC_SECONDS", "nan"),  # was accepted
                                        ("RAYKUBE_LOG_LEVEL", "LOUD"),
                                        # kopf: 48 lines, "Unsupported scheme: foo", exit 1
                                        ("RAYKUBE_LIVENESS", "foo"),
                                        ("RAYKUBE_LIVENESS", "http://127.0.0.1:notaport/healthz"),
                                        # render settings: accepted, and every run then
                                        # failed blaming its own spec (an operator probe)
                                        ("RAYKUBE_DEFAULT_MOUNT_PATH", "/etc/raykube"),
                                        ("RAYKUBE_CPU_IMAGE", "Bad Image"),
                                        ("RAYKUBE_IMAGE_PULL_POLICY", "Sometimes"),
                                        ("RAYKUBE_DEFAULT_PVC", "Bad_PVC")])
def test_a_bad_setting_is_one_line(var, value, tmp_path):
    line = one_line(start(tmp_path / "unused", "-A", env={var: value}, timeout=30))
    assert var in line


def test_a_bad_liveness_flag_is_one_line(tmp_path):
    """``--liveness=foo`` was kopf's 43 lines with two tracebacks ("Unsupported scheme"),
    exit 1, once it had logged in. Now: one line, before any Kubernetes API is needed
    (the kubeconfig here does not exist)."""
    proc = start(tmp_path / "unused", "-A", "--liveness=foo", timeout=30)
    assert one_line(proc) == ("raykube operator: --liveness='foo': expected "
                              "http://HOST:PORT/PATH (e.g. http://127.0.0.1:8080/healthz), "
                              "or 'off'")
    assert proc.stderr.count("\n") == 1 and not proc.stdout, proc.stderr


def test_a_liveness_port_in_use_is_one_line_before_kubernetes(tmp_path):
    """A second operator started locally on the first one's health port was kopf's
    ``Health reporter has failed: [Errno 98] ... address already in use``: 64 lines, two
    tracebacks, exit 1. The port is tried before the API server is asked anything: the
    kubeconfig here does not exist (that check would be the line otherwise)."""
    import socket

    with socket.socket() as held:  # the other operator's endpoint
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        url = f"http://127.0.0.1:{port}/healthz"
        proc = start(tmp_path / "unused", "-A", f"--liveness={url}", timeout=30)
    assert one_line(proc) == (f"raykube operator: --liveness={url!r}: 127.0.0.1:{port} is "
                              f"in use (another operator?): pick another port, or 'off'")
    assert proc.stderr.count("\n") == 1 and not proc.stdout, proc.stderr
