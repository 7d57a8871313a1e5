"""The Kubernetes manifests under k8s/ (no cluster needed).

- every YAML under k8s/ and jobs/ parses;
- every object of every kustomize build (base and overlays) validates strictly (core
  kinds against Kubernetes' schemas, our CRD against itself, KubeRay kinds against
  v1.7.0), and the plain KubeRay manifests too;
- the operator Deployment meets the restricted Pod Security Standard, and its settings
  are names the code reads, with defaults that agree with ``raykube render``;
- the operator's RBAC grants exactly the API verbs its code uses;
- the plain KubeRay manifests are what ``raykube render`` prints today;
- the Argo CD health check (Lua, run with Lua 5.1 like Argo CD's interpreter) maps
  TrainingRun statuses to the right health, and Flux's healthCheckExprs (evaluated by
  Flux's own code: build/bin/fluxcel, ``make fluxcel-build``) map them to the same, on
  the same cases and on every combination of conditions;
- the kind scripts are valid bash and agree with the overlays.

kustomize: ``kubectl kustomize`` (kubectl >= 1.27) or a ``kustomize`` binary on PATH, or
``RAYKUBE_KUSTOMIZE=/path/to/kustomize``. Missing, the tests fail (not skip) and say so;
so do the Flux tests without build/bin/fluxcel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s_schemas import validate_all, validate_strict
from raykube.render import RenderConfig, render_rbac
from raykube.spec import LABEL, PVCStorage, load_one, load_yaml_documents
from raykube_operator.rbac import PERMISSIONS
from raykube_operator.status import phase_of

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ["base", "overlays/kind", "overlays/local", "overlays/gpu"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
KUBERAY_VERSION = "1.7.0"


# ------------------------------------------------------------------------ kustomize
@cache
def kustomize_command() -> list[str]:
    import os

    explicit = os.environ.get("RAYKUBE_KUSTOMIZE")
    if explicit:
        return [explicit, "build"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                             text=True, timeout=60)
        if out.returncode == 0:
            info = json.loads(out.stdout)
            minor = int(re.sub(r"\D", "", info["clientVersion"]["minor"]) or 0)
            if minor >= 27:  # kustomize v5 (labels, configMapGenerator merge)
                return [kubectl, "kustomize"]
    pytest.fail("no kustomize: install kubectl >= 1.27 (https://kubernetes.io/docs/tasks/tools/) "
                "or kustomize v5 (https://kubectl.docs.kubernetes.io/installation/kustomize/), "
                "or set RAYKUBE_KUSTOMIZE=/path/to/kustomize")


@cache
def build(overlay: str) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run([*kustomize_command(), str(K8S / overlay)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"kustomize build {overlay} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def one(objs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_config(objs) -> dict[str, str]:
    return one(objs, "ConfigMap")["data"]


# ---------------------------------------------------------------------------- parse
def _yaml_files() -> list[Path]:
    return sorted(p for root in (K8S, REPO / "jobs") for p in root.rglob("*")
                  if p.suffix in (".yaml", ".yml"))


def test_every_yaml_file_parses():
    files = _yaml_files()
    assert len(files) >= 15, files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} holds no document"
        for d in docs:
            assert isinstance(d, dict) and "kind" in d, f"{path}: not a Kubernetes-style object"


# ------------------------------------------------------------ strict validation
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate_strictly(overlay):
    objs = build(overlay)
    kinds = Counter(o["kind"] for o in objs)
    for kind in ("Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                 "ClusterRoleBinding", "ConfigMap", "Deployment", "PersistentVolumeClaim"):
        assert kinds[kind] >= 1, f"{overlay}: no {kind}"
    ids = Counter((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs)
    assert not [i for i, n in ids.items() if n > 1], "duplicate objects"
    errors = validate_all(objs)
    assert errors == [], "\n".join(errors)


def test_the_crd_is_ours_and_validates_a_trainingrun():
    crd = one(build("base"), "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "trainingruns.raykube.io"
    assert crd["spec"]["names"]["shortNames"] == ["tr"]
    committed = yaml.safe_load((K8S / "base" / "crd.yaml").read_text())
    assert crd["spec"] == committed["spec"], "kustomize must not alter the CRD's schema"
    for job in sorted((REPO / "jobs").glob("*.yaml")):
        for doc in load_yaml_documents(job.read_text()):  # YAML as the API server reads it
            assert validate_strict(doc) == [], job


# ------------------------------------------------------------------- the operator
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_deployment_is_restricted_and_probed(overlay):
    objs = build(overlay)
    dep = one(objs, "Deployment", "raykube-operator")
    ns = dep["metadata"]["namespace"]
    assert ns == "raykube-system"
    namespace = one(objs, "Namespace", ns)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sa = one(objs, "ServiceAccount", pod["serviceAccountName"])
    assert sa["metadata"]["namespace"] == ns
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "add" not in sc["capabilities"]
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][key]), key
    # /tmp is the only writable path: an emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]]
    # The probes hit kopf's liveness endpoint, on the address the operator is told to serve.
    (liveness,) = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--liveness=")]
    m = re.fullmatch(r"http://0\.0\.0\.0:(\d+)(/\S*)", liveness)
    assert m, liveness
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        get = probe["httpGet"]
        assert get["path"] == m.group(2)
        assert ports.get(get["port"], get["port"]) == int(m.group(1))
    # The operator's CLI accepts these arguments.
    from raykube_operator.__main__ import build_parser

    build_parser().parse_args(c["args"])
    # The ConfigMap it reads exists (kustomize appended the content hash to both names).
    (ref,) = [e["configMapRef"]["name"] for e in c["envFrom"]]
    cm = one(objs, "ConfigMap")
    assert cm["metadata"]["name"] == ref and cm["metadata"]["namespace"] == ns


def _code_env_names() -> set[str]:
    from raykube_operator import config as operator_config_module

    names = {f"RAYKUBE_{f.name.upper()}" for f in dataclasses.fields(RenderConfig)}
    names |= set(re.findall(r'"(RAYKUBE_[A-Z_]+)"', Path(operator_config_module.__file__).read_text()))
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_settings_are_read_by_the_code(overlay):
    """A misspelt key would be ignored silently by the operator: every key must be a
    setting the code reads, and the values must parse."""
    from raykube_operator.config import OperatorConfig

    data = operator_config(build(overlay))
    deployment_only = {"RAYKUBE_KUBERAY_VERSION"}  # read by k8s/kind/up.sh (checked below)
    unknown = set(data) - _code_env_names() - deployment_only
    assert not unknown, f"{overlay}: settings no code reads: {sorted(unknown)}"
    cfg = OperatorConfig.from_env(data)
    assert cfg.render.cpu_image == data["RAYKUBE_CPU_IMAGE"]
    assert cfg.render.gpu_image == data["RAYKUBE_GPU_IMAGE"]
    assert data["RAYKUBE_KUBERAY_VERSION"] == KUBERAY_VERSION
    assert "$RAYKUBE_KUBERAY_VERSION" in (K8S / "kind" / "up.sh").read_text()


def test_defaults_live_in_one_place_and_agree_with_raykube_render():
    """The operator (k8s/base) and `raykube render` (RenderConfig) use the same images and
    Ray version; images are tagged with the project version; Ray matches pyproject."""
    objs = build("base")
    data = operator_config(objs)
    defaults = RenderConfig()
    assert data["RAYKUBE_CPU_IMAGE"] == defaults.cpu_image
    assert data["RAYKUBE_GPU_IMAGE"] == defaults.gpu_image
    assert data["RAYKUBE_RAY_VERSION"] == defaults.ray_version
    ray_pin = next(r for r in PYPROJECT["project"]["optional-dependencies"]["train"]
                   if r.startswith("ray["))
    assert ray_pin.endswith(f"=={defaults.ray_version}")
    image = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    repo = defaults.cpu_image.rsplit(":", 1)[0]
    assert image == f"{repo}:{VERSION}-operator"
    assert defaults.cpu_image == f"{repo}:{VERSION}-cpu"
    assert defaults.gpu_image == f"{repo}:{VERSION}-cuda"
    # No other file pins the KubeRay version by hand.
    for path in (K8S / "kind").glob("*.sh"):
        assert "1.7.0" not in path.read_text(), f"{path}: use $RAYKUBE_KUBERAY_VERSION"


# ----------------------------------------------------------------------- overlays
def test_shared_storage_claim_is_rwx_and_the_spec_default():
    pvc = one(build("base"), "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == PVCStorage().claim_name == RenderConfig().default_pvc
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    run = load_one(REPO / "jobs" / "quickstart.yaml")
    assert pvc["metadata"]["namespace"] == run.namespace  # where the quickstart runs


def test_kind_overlay_uses_local_images_and_a_shared_host_path():
    objs = build("overlays/kind")
    data = operator_config(objs)
    dep = one(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "raykube/raykube:dev-operator"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert data["RAYKUBE_CPU_IMAGE"] == "raykube/raykube:dev-cpu"
    assert data["RAYKUBE_GPU_IMAGE"] == "raykube/raykube:dev-cuda"
    assert data["RAYKUBE_IMAGE_PULL_POLICY"] == "IfNotPresent"
    load = (K8S / "kind" / "load.sh").read_text()
    assert '"$REGISTRY/raykube:$TAG-cpu"' in load and '"$REGISTRY/raykube:$TAG-operator"' in load
    lib = (K8S / "kind" / "lib.sh").read_text()
    assert 'REGISTRY="${REGISTRY:-raykube}"' in lib and 'TAG="${TAG:-dev}"' in lib
    # The claim binds to the hostPath volume, and that path is the node mount of up.sh.
    pv, pvc = one(objs, "PersistentVolume"), one(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pvc["spec"]["storageClassName"] == pv["spec"]["storageClassName"] == ""
    assert pv["spec"]["claimRef"] == {"namespace": pvc["metadata"]["namespace"],
                                      "name": pvc["metadata"]["name"]}
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["capacity"]["storage"] == pvc["spec"]["resources"]["requests"]["storage"]
    assert f"containerPath: {pv['spec']['hostPath']['path']}" in (K8S / "kind" / "up.sh").read_text()
    small = c["resources"]["limits"]["memory"]
    assert small.endswith("Mi") and int(small[:-2]) <= 256


def test_local_overlay_never_pulls_and_binds_the_node_host_path():
    """k8s/overlays/local (make e2e-local's real node): images are loaded into the node's
    containerd, never pulled; the claim binds the hostPath of this machine."""
    objs = build("overlays/local")
    data = operator_config(objs)
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "raykube/raykube:dev-operator" and c["imagePullPolicy"] == "Never"
    assert data["RAYKUBE_CPU_IMAGE"] == "raykube/raykube:dev-cpu"
    assert data["RAYKUBE_IMAGE_PULL_POLICY"] == "Never"
    pv, pvc = one(objs, "PersistentVolume"), one(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {"namespace": pvc["metadata"]["namespace"],
                                      "name": pvc["metadata"]["name"]}
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["capacity"]["storage"] == pvc["spec"]["resources"]["requests"]["storage"]
    assert f"STORAGE={pv['spec']['hostPath']['path']}" in (K8S / "local" / "e2e.sh").read_text()
    assert c["resources"]["requests"]["cpu"] == "20m"  # the node has 2 cores for everything


def test_gpu_overlay_defaults_to_the_cuda_image():
    data = operator_config(build("overlays/gpu"))
    cfg = RenderConfig.from_env(data)
    assert cfg.cpu_image == cfg.gpu_image == RenderConfig().gpu_image
    assert cfg.gpu_toleration is True


# ---------------------------------------------------------------------------- RBAC
OPERATOR_API_USAGE: dict[tuple[str, str], frozenset[str]] = PERMISSIONS
"""The operator's API usage, declared in one place (raykube_operator.rbac, which the
operator's integration tests check against every request the real operator makes to the
API emulator). Here it is compared with k8s/base/rbac.yaml (exactly), and with the
operator's sources (nothing they touch is missing)."""


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_rbac_grants_exactly_what_the_operator_uses():
    objs = build("base")
    role = one(objs, "ClusterRole", "raykube-operator")
    grants = _grants(role["rules"])
    assert all("*" not in v for v in grants.values()) and ("*", "*") not in grants
    extra = {k: sorted(v - OPERATOR_API_USAGE.get(k, set())) for k, v in grants.items()}
    missing = {k: sorted(v - grants.get(k, set())) for k, v in OPERATOR_API_USAGE.items()}
    assert not {k: v for k, v in extra.items() if v}, "granted but unused"
    assert not {k: v for k, v in missing.items() if v}, "used but not granted"
    binding = one(objs, "ClusterRoleBinding", "raykube-operator")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "raykube-operator"}
    dep = one(objs, "Deployment")
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": dep["spec"]["template"]["spec"]["serviceAccountName"],
                                    "namespace": dep["metadata"]["namespace"]}]


def test_every_rbac_rule_says_why():
    lines = (K8S / "base" / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[i - 1].strip().startswith("#"), f"rbac.yaml:{i + 1}: rule without a comment"


def test_operator_can_grant_the_driver_role_without_escalation():
    """The operator creates the driver's Role: RBAC lets it only if it holds every
    permission in it (no `escalate` verb is granted)."""
    run = load_one(REPO / "jobs" / "quickstart.yaml")
    grants = _grants(one(build("base"), "ClusterRole")["rules"])
    (role,) = [o for o in render_rbac(run, RenderConfig()) if o["kind"] == "Role"]
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert set(rule["verbs"]) <= grants.get((group, res), set()), (group, res)


def test_the_operator_code_uses_nothing_beyond_the_declared_usage():
    """Static guard on the operator's sources: every resource it watches (kopf
    decorators), every kind it reads/writes (Kube calls, rendered children) and every
    verb of the Kube client is covered by OPERATOR_API_USAGE. A new API call without an
    RBAC rule fails here rather than with a 403 on a cluster."""
    from raykube.render import render_rayservice, render_training
    from raykube_operator import kube as kube_module
    from raykube_operator.kube import PLURALS

    src = "\n".join(p.read_text() for p in (REPO / "operator" / "raykube_operator").glob("*.py"))
    declared = {res for _, res in OPERATOR_API_USAGE}
    # kopf handlers on other resources: kopf.on.X("group", "version", "plural", ...);
    # all but kopf.on.event store kopf's bookkeeping on the object (patch)
    for how, group, plural in re.findall(
            r'kopf\.on\.(\w+)\(\s*"([^"]*)",\s*"[^"]+",\s*"([^"]+)"', src):
        needs = {"list", "watch"} | (set() if how == "event" else {"patch"})
        assert needs <= OPERATOR_API_USAGE[(group, plural)], plural
    # Kinds named in Kube calls: kube.verb(<api>, "Kind", ...)
    verbs = {"get": "get", "create": "create", "patch": "patch", "delete": "delete"}
    for verb, kind in re.findall(r'kube\.(get|create|patch|delete)\(\s*\w+,\s*"(\w+)"', src):
        assert verbs[verb] in next(v for (g, r), v in OPERATOR_API_USAGE.items()
                                   if r == PLURALS[kind]), (verb, kind)
    # Children the operator applies: whatever render produces.
    run = load_one(REPO / "jobs" / "quickstart.yaml")
    cfg = RenderConfig()
    for obj in [*render_training(run, cfg), render_rayservice(run, cfg, "/x")]:
        plural = PLURALS[obj["kind"]]
        group = obj["apiVersion"].rpartition("/")[0]
        assert {"get", "create", "patch"} <= OPERATOR_API_USAGE[(group, plural)], obj["kind"]
    # The Kube client's HTTP methods are all accounted for.
    methods = set(re.findall(r'self\.request\("(\w+)"', Path(kube_module.__file__).read_text()))
    assert methods <= {"GET", "POST", "PATCH", "DELETE"}, methods
    if "subresource=\"status\"" in src or "subresource='status'" in src:
        assert "trainingruns/status" in declared
    # Kinds the client knows but RBAC does not cover must not be written by the code.
    for kind, plural in PLURALS.items():
        if not any(r == plural for _, r in OPERATOR_API_USAGE):
            assert not re.search(rf'"{kind}"', src.replace("PLURALS", "")) or kind in (
                "TrainingRun", "RayCluster", "Secret", "PersistentVolumeClaim", "Event"), kind


# ------------------------------------------------------------------ plain KubeRay
def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kuberay_generate", K8S / "kuberay" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plain_kuberay_manifests_are_the_current_render(monkeypatch):
    monkeypatch.chdir(REPO)
    for name, content in _generator().generate().items():
        committed = (K8S / "kuberay" / name).read_text()
        assert committed == content, (f"k8s/kuberay/{name} is stale: run "
                                      f"`{sys.executable} k8s/kuberay/generate.py`")


def test_plain_kuberay_manifests_validate_and_match_the_quickstart():
    objs = [d for name in ("quickstart.yaml", "raycluster.yaml")
            for d in yaml.safe_load_all((K8S / "kuberay" / name).read_text()) if d]
    errors = validate_all(objs)
    assert errors == [], "\n".join(errors)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "RayJob",
                            "RayService", "RayCluster"])
    for o in objs:
        assert o["metadata"]["labels"][LABEL] == "quickstart"
        assert "ownerReferences" not in o["metadata"]  # no operator: nothing owns them
    job, cluster = one(objs, "RayJob"), one(objs, "RayCluster")
    assert cluster["spec"] == job["spec"]["rayClusterSpec"]
    run = load_one(REPO / "jobs" / "quickstart.yaml")
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert sum(g.get("replicas", 0) for g in workers) == run.spec.scaling.workers
    assert job["spec"]["backoffLimit"] == run.spec.failure.max_retries


# -------------------------------------------------------------------------- GitOps
def test_argocd_config_embeds_the_health_check_verbatim():
    cm = yaml.safe_load((K8S / "gitops" / "argocd-cm.yaml").read_text())
    lua = (K8S / "gitops" / "trainingrun-health.lua").read_text()
    assert cm["data"]["resource.customizations.health.raykube.io_TrainingRun"] == lua


def test_gitops_examples_point_at_real_paths():
    apps = [d for d in yaml.safe_load_all((K8S / "gitops" / "argocd-application.yaml").read_text()) if d]
    flux = [d for d in yaml.safe_load_all((K8S / "gitops" / "flux.yaml").read_text()) if d]
    paths = [a["spec"]["source"]["path"] for a in apps]
    paths += [k["spec"]["path"] for k in flux if k["kind"] == "Kustomization"]
    for p in paths:
        assert (REPO / p).is_dir(), p
    include = apps[1]["spec"]["source"]["directory"]["include"]
    assert (REPO / paths[1] / include).is_file()
    (checks,) = [k["spec"]["healthCheckExprs"] for k in flux if "healthCheckExprs" in k["spec"]]
    assert checks[0]["kind"] == "TrainingRun" and checks[0]["apiVersion"] == "raykube.io/v1alpha1"


def _lua_health():
    """obj -> (health, message): trainingrun-health.lua in one Lua 5.1 runtime."""
    try:
        import lupa.lua51 as lupa  # Argo CD runs health checks with gopher-lua (Lua 5.1)
    except ImportError:
        pytest.fail("lupa is missing (dev extra): pip install 'lupa>=2.4'")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    fn = lua.execute("return function() " + (K8S / "gitops" / "trainingrun-health.lua").read_text()
                     + "\nend")

    def to_lua(v):
        if isinstance(v, dict):
            return lua.table_from({k: to_lua(x) for k, x in v.items()})
        if isinstance(v, list):
            return lua.table_from([to_lua(x) for x in v])
        return v

    def health(obj: dict[str, Any]) -> tuple[str, str]:
        lua.globals().obj = to_lua(obj)
        hs = fn()
        return hs["status"], hs["message"]

    return health


def _health(obj: dict[str, Any]) -> tuple[str, str]:
    return _lua_health()(obj)


def _tr(status=None, generation=1, serve=True):
    obj = {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "q", "namespace": "default", "generation": generation},
           "spec": {"serve": {"enabled": serve}}}
    if status is not None:
        obj["status"] = status
    return obj


def _c(type_, status, reason="R", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


# (status, _tr keywords, Argo CD health, words of its message): the Lua test's cases, run
# through Flux's healthCheckExprs too.
HEALTH_CASES = [
    (None, {}, "Progressing", "operator"),
    ({"observedGeneration": 1, "conditions": [_c("Validated", "False", "InvalidSpec",
                                                 "spec.train.epochs: must be >= 1")]},
     {}, "Degraded", "spec.train.epochs"),
    ({"observedGeneration": 1, "conditions": [_c("Validated", "True"), _c("Running", "True")],
      "progress": {"epoch": 3, "epochs": 12, "valAccuracy": 0.8125}},
     {}, "Progressing", "epoch 3/12, valAccuracy 0.812"),
    ({"observedGeneration": 1, "conditions": [_c("Validated", "True"),
                                              _c("Failed", "True", "JobFailed", "OOMKilled")]},
     {}, "Degraded", "OOMKilled"),
    ({"observedGeneration": 1, "conditions": [_c("Succeeded", "True"), _c("Promoted", "True"),
                                              _c("Ready", "False", "NotReady", "rolling out")]},
     {}, "Progressing", "rolling out"),
    ({"observedGeneration": 1, "conditions": [_c("Succeeded", "True")]},
     {}, "Progressing", "promotion"),
    ({"observedGeneration": 1, "conditions": [_c("Succeeded", "True")]},
     {"serve": False}, "Healthy", "succeeded"),
    ({"observedGeneration": 1, "conditions": [_c("Succeeded", "True"),
                                              _c("Promoted", "False", "GateNotMet", "0.85 < 0.9")]},
     {}, "Healthy", "0.85 < 0.9"),
    ({"observedGeneration": 1, "serving": {"endpoint": "http://q-serve-svc.default:8000"},
      "conditions": [_c("Succeeded", "True"), _c("Promoted", "True"), _c("Ready", "True")]},
     {}, "Healthy", "http://q-serve-svc.default:8000"),
    ({"observedGeneration": 1, "conditions": [_c("Running", "False", "Suspended")]},
     {}, "Suspended", "Suspended"),
    ({"observedGeneration": 1, "conditions": [_c("Ready", "True")]},
     {"generation": 2}, "Progressing", "generation 2"),
]


@pytest.mark.parametrize(("status", "kw", "health", "words"), HEALTH_CASES)
def test_argocd_health_check(status, kw, health, words):
    got, message = _health(_tr(status, **kw))
    assert got == health, message
    assert words.lower() in message.lower(), message


# Flux: the TrainingRun healthCheckExprs of k8s/gitops/flux.yaml, evaluated by Flux's own
# code (github.com/fluxcd/pkg/runtime/cel, as kustomize-controller calls it) in
# tests/gitops/fluxcel, built by `make fluxcel-build`. Argo CD's health -> Flux's status;
# Flux has no Suspended, and a suspended run is a stable state someone chose: Current.
FLUXCEL = REPO / "tests" / "gitops" / "fluxcel"
FLUX_STATUS = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress",
               "Suspended": "Current"}


def _fluxcel() -> Path:
    """build/bin/fluxcel, checked to be the build of the current tests/gitops/fluxcel (the
    cache directory build.sh names after Flux's runtime version and the source's hash)."""
    runtime = re.search(r"^\s*github\.com/fluxcd/pkg/runtime (v\S+)$",
                        (FLUXCEL / "go.mod").read_text(), re.M)[1]
    digest = hashlib.sha256(b"".join((FLUXCEL / name).read_bytes()
                                     for name in ("main.go", "go.mod", "go.sum"))).hexdigest()[:12]
    binary = REPO / "build" / "bin" / "fluxcel"
    how = ("build it with `make fluxcel-build` (tests/gitops/fluxcel/build.sh; needs Go >= 1.26 "
           "and the Go module proxy the first time, then cached in ~/.cache/raykube/bin)")
    if not binary.exists():
        pytest.fail(f"{binary} is missing: {how}")
    built = binary.resolve().parent.name
    if built != f"fluxcel-{runtime}-{digest}":
        pytest.fail(f"{binary} is {built}, not the build of the current source "
                    f"(fluxcel-{runtime}-{digest}): {how}")
    return binary


def _flux(objs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Flux's status (and the expression error, if any) for each object."""
    flux = [d for d in yaml.safe_load_all((K8S / "gitops" / "flux.yaml").read_text()) if d]
    (checks,) = [k["spec"]["healthCheckExprs"] for k in flux if "healthCheckExprs" in k["spec"]]
    proc = subprocess.run([str(_fluxcel())], input=json.dumps({"healthCheckExprs": checks,
                                                               "objects": objs}),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(got) == len(objs), proc.stdout
    return got


def _flux_disagreements(objs: list[dict[str, Any]]) -> list[str]:
    lua = _lua_health()
    wrong = []
    for obj, flux in zip(objs, _flux(objs), strict=True):
        health, message = lua(obj)
        if "status" not in obj:
            # Flux makes the object's top-level fields the expressions' variables, so with
            # no status at all (before the operator first writes it) any expression errs:
            # Unknown, which Flux keeps polling as it does InProgress (no CEL can avoid it).
            ok = flux["status"] == "Unknown" and "no such attribute(s): status" in flux["error"]
            want = "Unknown (no such attribute status)"
        else:
            want = FLUX_STATUS[health]
            ok = flux["status"] == want and not flux["error"]
        if not ok:
            wrong.append(f"Argo CD {health} ({message}) -> Flux {flux['status']} {flux['error']}, "
                         f"want {want}: {json.dumps(obj.get('status'))}, "
                         f"generation {obj['metadata']['generation']}, spec {json.dumps(obj['spec'])}")
    return wrong


def _as_written(obj: dict[str, Any]) -> dict[str, Any]:
    """obj with the status.phase the operator writes beside the conditions (derived from
    them: Flux's expressions could read it, the Lua does not)."""
    if "conditions" in obj.get("status", {}):
        obj["status"] = {**obj["status"], "phase": phase_of(obj["status"]["conditions"])}
    return obj


def test_flux_health_checks_map_the_argocd_cases():
    objs = [_as_written(_tr(status, **kw)) for status, kw, _, _ in HEALTH_CASES]
    wrong = _flux_disagreements(objs)
    assert not wrong, f"{len(wrong)} of {len(objs)}:\n" + "\n".join(wrong)


def test_flux_health_checks_agree_with_argocd_on_every_combination():
    # Each condition absent or in each status that matters (one of each type, as the API
    # server keeps them), serve on, off or not given, the spec observed or not yet.
    statuses = {"Validated": [None, "True", "False"], "Failed": [None, "True", "False"],
                "Ready": [None, "True", "False"], "Succeeded": [None, "True", "False"],
                "Promoted": [None, "True", "False"],
                "Running": [None, ("True", "JobRunning"), ("False", "Suspended"),
                            ("Unknown", "Suspended"), ("False", "Completed")]}
    objs = []
    for combo in itertools.product(*statuses.values()):
        conditions = [_c(type_, *(value if isinstance(value, tuple) else (value,)))
                      for type_, value in zip(statuses, combo, strict=True) if value is not None]
        for serve, (generation, observed) in itertools.product(
                [True, False, None], [(1, 1), (2, 1), (1, None)]):
            status = {"conditions": conditions}
            if observed is not None:
                status["observedGeneration"] = observed
            obj = _as_written(_tr(status, generation=generation, serve=serve))
            if serve is None:
                obj["spec"] = {}
            objs.append(obj)
    objs += [_tr({}), _tr({"observedGeneration": 1}), _as_written(_tr({"conditions": []}))]
    wrong = _flux_disagreements(objs)
    assert not wrong, f"{len(wrong)} of {len(objs)}, e.g.:\n" + "\n".join(wrong[:10])


# ------------------------------------------------------------------- kind scripts
def test_kind_scripts_are_strict_bash_and_check_their_tools():
    bash = shutil.which("bash")
    assert bash
    lib = (K8S / "kind" / "lib.sh").read_text()
    assert "set -euo pipefail" in lib
    needs = {"up.sh": ["need_docker", "need_kind", "need_helm", "need_kubectl"],
             "load.sh": ["need_docker", "need_kind"], "deploy.sh": ["need_kubectl"],
             "e2e.sh": ["need_kubectl"], "down.sh": ["need_kind"]}
    for name, tools in needs.items():
        path = K8S / "kind" / name
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), name
        assert 'source "$(dirname "$0")/lib.sh"' in text, name
        assert path.stat().st_mode & 0o111, f"{name} is not executable"
        for tool in tools:
            assert tool in text, f"{name} does not check {tool}"
        proc = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    deploy = (K8S / "kind" / "deploy.sh").read_text()
    assert 'OVERLAY="${OVERLAY:-k8s/overlays/kind}"' in deploy
    up = (K8S / "kind" / "up.sh").read_text()
    assert "kuberay/kuberay-operator" in up and '--version "$RAYKUBE_KUBERAY_VERSION"' in up


def test_kind_script_reports_a_missing_tool(tmp_path):
    """With kind absent from PATH, down.sh stops with a message naming it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "cat", "grep"):
        src = shutil.which(tool)
        if src:
            (bindir / tool).symlink_to(src)
    proc = subprocess.run([str(bindir / "bash"), str(K8S / "kind" / "down.sh")],
                          capture_output=True, text=True, env={"PATH": str(bindir)}, timeout=30)
    assert proc.returncode != 0
    assert "'kind' is not installed" in proc.stderr


def test_e2e_request_is_three_digit_images():
    body = json.loads((K8S / "kind" / "predict-request.json").read_text())
    assert set(body) == {"images"} and len(body["images"]) == 3
    e2e = (K8S / "kind" / "e2e.sh").read_text()
    assert 'EXPECTED="3 7 9"' in e2e
    assert "--for=condition=Ready" in e2e
