"""Our CRD on the real API server: accepted, every bound and CEL rule enforced, kubectl
printer columns / explain / wait, and status-subresource semantics.

Violations are generated from the CRD itself (every minimum, maximum, pattern, enum, ...
in the schema), so a bound added to the spec is tested without touching this file; a CEL
rule added without a case below fails ``test_every_cel_rule_has_a_case``.
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import copy
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from raykube.spec import load_yaml_documents
from raykube.testing.fixtures import kube  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "k8s" / "base" / "crd.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
QUICKSTART = load_yaml_documents((REPO / "jobs" / "quickstart.yaml").read_text())[0]
TUNE = load_yaml_documents((REPO / "jobs" / "digits-tune.yaml").read_text())[0]


def base_doc(name: str = "v") -> dict[str, Any]:
    doc = copy.deepcopy(TUNE)
    doc["metadata"] = {"name": name}
    return doc


# ------------------------------------------------------------------ violations
def _bad_values(node: dict[str, Any]) -> list[tuple[str, Any]]:
    """(keyword, a value that violates it) for each bound on one schema node."""
    out: list[tuple[str, Any]] = []
    typ = node.get("type")
    if "minimum" in node:
        m = node["minimum"]
        out.append(("minimum", m - 1 if typ == "integer" else m - 0.5))
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        out.append(("exclusiveMinimum", node["exclusiveMinimum"]))
    if node.get("exclusiveMinimum") is True:
        out.append(("exclusiveMinimum", node["minimum"]))
    if "maximum" in node:
        m = node["maximum"]
        out.append(("maximum", m + 1 if typ == "integer" else m + 0.5))
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        out.append(("exclusiveMaximum", node["exclusiveMaximum"]))
    if node.get("exclusiveMaximum") is True:
        out.append(("exclusiveMaximum", node["maximum"]))
    if "maxLength" in node:
        out.append(("maxLength", "a" * (node["maxLength"] + 1)))
    if node.get("minLength", 0) > 0:
        out.append(("minLength", ""))
    if "pattern" in node:
        out.append(("pattern", "NOT VALID!"))
    if "enum" in node:
        out.append(("enum", "not-one-of-them"))
    if node.get("minItems", 0) > 0:
        out.append(("minItems", []))
    if "maxItems" in node:
        item = {"integer": 1, "number": 1.0, "string": "a"}.get(
            (node.get("items") or {}).get("type", ""), {})
        out.append(("maxItems", [item] * (node["maxItems"] + 1)))
    if node.get("minProperties", 0) > 0:
        out.append(("minProperties", {}))
    if "maxProperties" in node:
        if node.get("properties"):  # known fields (unknown ones would be pruned first)
            keys = list(node["properties"])[: node["maxProperties"] + 1]
            out.append(("maxProperties", {k: _sample(node["properties"][k]) for k in keys}))
        else:
            out.append(("maxProperties", {f"k{i}": "v" for i in range(node["maxProperties"] + 1)}))
    return out


def _sample(node: dict[str, Any]) -> Any:
    """A value of the node's type that violates none of its own bounds."""
    typ = node.get("type")
    if typ == "array":
        item = (node.get("items") or {}).get("type")
        return {"number": [0.1, 0.2], "integer": [1, 2]}.get(item, [1])
    return {"string": "a", "integer": 1, "number": 0.5, "boolean": True}.get(typ, {})


def _walk(node: dict[str, Any], path: tuple[str, ...]):
    for keyword, value in _bad_values(node):
        yield path, keyword, value
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, (*path, key))
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], (*path, "*"))
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], (*path, "[]"))


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> str:
    """Put ``value`` at ``path`` (creating what is missing); returns the API's field path."""
    cur: Any = doc
    shown = []
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if part == "[]":
            shown[-1] += "[0]"
            if last:
                cur[0] = value
            else:
                if not isinstance(cur[0], dict):
                    cur[0] = {}
                cur = cur[0]
            continue
        key = "x" if part == "*" else part  # a new map entry: the others stay valid
        shown.append(key)
        if last:
            cur[key] = value
        else:
            nxt_is_list = path[i + 1] == "[]"
            if not isinstance(cur.get(key), list if nxt_is_list else dict):
                cur[key] = [{}] if nxt_is_list else {}
            cur = cur[key]
    return ".".join(shown)


VIOLATIONS = [(".".join(p), kw, v) for p, kw, v in _walk(SCHEMA["properties"]["spec"], ("spec",))]


def dry_run(kube, doc: dict[str, Any]) -> tuple[int, str]:
    resp = kube.http.post(kube.path("TrainingRun"), params={"dryRun": "All"}, json=doc)
    return resp.status_code, resp.text


def test_crd_is_established_and_structural(kube):
    crd = kube.http.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                        "trainingruns.raykube.io").json()
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds.get("Established") == "True" and conds.get("NamesAccepted") == "True", conds
    assert "NonStructuralSchema" not in conds, crd["status"]["conditions"]
    status, text = dry_run(kube, base_doc())
    assert status == 201, text
    assert len(VIOLATIONS) > 60  # the walk found the schema's bounds


def test_the_default_namespace_storage_claim_binds(kube):
    """``make cluster-up`` (this control plane) installs the claim a TrainingRun applied to
    ``default`` mounts, as the kind overlay patches it. Base's claim alone asked for a
    20Gi storage class and stayed Pending, and so did every Ray pod of the README's
    quickstart (the scheduler: "pod has unbound immediate PersistentVolumeClaims")."""
    path = "/api/v1/namespaces/default/persistentvolumeclaims/raykube-storage"
    deadline = time.monotonic() + 30
    claim = kube.http.get(path).json()
    while claim.get("status", {}).get("phase") != "Bound" and time.monotonic() < deadline:
        time.sleep(0.5)
        claim = kube.http.get(path).json()
    assert claim["status"]["phase"] == "Bound", claim.get("status")
    assert claim["spec"]["volumeName"] == "raykube-storage-kind"


@pytest.mark.parametrize("path,keyword,value", VIOLATIONS,
                         ids=[f"{p}:{k}" for p, k, _ in VIOLATIONS])
def test_every_bound_is_enforced_by_the_api_server(kube, path, keyword, value):
    doc = base_doc()
    field = _set(doc, tuple(path.replace("[]", ".[]").replace("..", ".").split(".")), value)
    status, text = dry_run(kube, doc)
    assert status == 422, (status, text[:500])
    message = json.loads(text)["message"]
    # map entries may be shown as .x. or [x]
    assert field in message or field.replace(".x", "[x]") in message, (field, text[:800])


CEL_CASES = {
    "set either pvc or uri, not both":
        ("spec.checkpoint.storage", {"pvc": {"claimName": "c"}, "uri": "s3://bkt/p"}),
    "secretRef only applies with uri":
        ("spec.checkpoint.storage", {"pvc": {"claimName": "c"}, "secretRef": {"name": "s"}}),
    "uniform must be [low, high] with low < high":
        ("spec.tune.searchSpace.train.optimizer.lr", {"uniform": [0.5, 0.1]}),
    "loguniform must be [low, high] with 0 < low < high":
        ("spec.tune.searchSpace.train.optimizer.lr", {"loguniform": [0.0, 0.1]}),
    "randint must be [low, high) with low < high":
        ("spec.tune.searchSpace.train.optimizer.lr", {"randint": [5, 5]}),
    "secretRef only applies with an s3:// uri":
        ("spec.data.secretRef", {"dataset": "digits", "secretRef": {"name": "s"}}),
    # a map's keys have no schema of their own: only CEL bounds them (the head's map too)
    "a node selector key must be at most 317 characters (a DNS-subdomain prefix, '/', a "
    "name of at most 63)": ("spec.scaling.nodeSelector", {"k" * 318: "v"}),
    # Ray refuses a smaller share when the actor starts (differential probe)
    "must be 0 or at least 0.0001 (the smallest share of a GPU Ray takes)":
        ("spec.scaling.gpusPerWorker", 0.00005),
    # accepted by the API server's own name check (a DNS subdomain), refused by ours
    **{m["message"]: ("metadata.name", v) for m, v in zip(
        SCHEMA["x-kubernetes-validations"],
        ["a" * 41, "run.v2", "datasets", "quickstart-serve"], strict=True)},
    # 2 workers (the default, unset) x 513 concurrent trials: 1,026 pods' worth of workers
    "mode must be the metric's direction or left out: valAccuracy is better higher (max), "
    "valLoss is better lower (min), trainLoss is better lower (min), trainAccuracy is "
    "better higher (max)": ("spec.tune.mode", {"metric": "valLoss", "mode": "max"}),
    "scaling.workers x the concurrent trials (tune.maxConcurrentTrials, at most tune.trials) "
    "must be at most 1024 Train workers at once":
        ("spec.tune.maxConcurrentTrials", {"trials": 600, "maxConcurrentTrials": 513}),
}


def _cel_messages(node: Any) -> list[str]:
    out = []
    if isinstance(node, dict):
        out += [v["message"] for v in node.get("x-kubernetes-validations") or []
                if "message" in v]  # the quantity rule's messageExpression: below
        for v in node.values():
            out += _cel_messages(v)
    elif isinstance(node, list):
        for v in node:
            out += _cel_messages(v)
    return out


def _fractional_bounds(node: dict[str, Any], path: tuple[str, ...] = ()):
    """(path, minimum) of each number with a fractional minimum: a CEL rule, in place of
    the schema's ``minimum``."""
    for rule in node.get("x-kubernetes-validations") or [] if node.get("type") == "number" else []:
        m = re.fullmatch(r"self >= ([0-9.]+)", rule["rule"])
        if m and not float(m[1]).is_integer():
            assert "minimum" not in node, node  # beside the rule: two lines for one value
            yield ".".join(path), float(m[1])
    for key, child in (node.get("properties") or {}).items():
        yield from _fractional_bounds(child, (*path, key))
    if isinstance(node.get("items"), dict):
        yield from _fractional_bounds(node["items"], (*path, "[]"))


FRACTIONAL = [(p, v) for p, b in _fractional_bounds(SCHEMA["properties"]["spec"], ("spec",))
              for v in (0, -1, b / 2)]


def test_every_cel_rule_has_a_case():
    fractional = {f"must be at least {b:g}"
                  for _, b in _fractional_bounds(SCHEMA["properties"]["spec"], ("spec",))}
    assert fractional  # the CPU fields
    assert sorted(set(_cel_messages(SCHEMA)) - fractional) == sorted(CEL_CASES)


@pytest.mark.parametrize("path,value", FRACTIONAL, ids=[f"{p}={v}" for p, v in FRACTIONAL])
def test_a_fractional_minimum_refuses_whole_numbers(kube, path, value):
    """The API server compares a whole number with a fractional minimum cut to an
    integer: ``cpusPerWorker: 0`` passed ``minimum: 0.1``, and ``-1`` was told "greater
    than or equal to 0" (a differential probe). The CRD's CEL rule says the bound."""
    doc = base_doc()
    node = doc
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    status, text = dry_run(kube, doc)
    assert status == 422, (status, text[:500])
    msg = json.loads(text)["message"]
    assert path in msg and "must be at least 0.1" in msg, msg
    assert msg.count(path) == 1, msg  # 0.05 was refused twice: minimum and the rule


def test_the_fractional_minimums_are_found():
    assert {p for p, _ in FRACTIONAL} == {"spec.scaling.cpusPerWorker",
                                          "spec.scaling.head.cpus", "spec.serve.cpusPerReplica"}


@pytest.mark.parametrize("message", sorted(CEL_CASES))
def test_every_cel_rule_is_enforced_by_the_api_server(kube, message):
    where, value = CEL_CASES[message]
    doc = base_doc()
    if where == "metadata.name":
        doc["metadata"]["name"] = value
        field = where
    elif where == "spec.tune.mode":
        doc["spec"]["tune"].update(value)
        field = where
    elif where == "spec.tune.maxConcurrentTrials":
        doc["spec"].get("scaling", {}).pop("workers", None)
        doc["spec"]["tune"].update(value)
        field = where
    elif where == "spec.data.secretRef":
        doc["spec"]["data"] = value
        field = where
    elif where.startswith(("spec.scaling.", "spec.serve.")):
        section, key = where.split(".")[1:]
        doc["spec"].setdefault(section, {})[key] = value
        field = where
    elif where.startswith("spec.tune.searchSpace."):
        doc["spec"]["tune"]["searchSpace"] = {where.removeprefix("spec.tune.searchSpace."): value}
        field = "spec.tune.searchSpace[" + where.removeprefix("spec.tune.searchSpace.") + "]"
    else:
        doc["spec"]["checkpoint"]["storage"] = value
        field = where
    status, text = dry_run(kube, doc)
    assert status == 422, (status, text[:500])
    msg = json.loads(text)["message"]
    assert message in msg and field.split("[")[0] in msg, msg
    if where == "metadata.name":  # it said "<nil>: Invalid value" (differential probe)
        assert "metadata.name: Invalid value" in msg, msg


def _quantity_fields(node: dict[str, Any], path: tuple[str, ...] = ()):
    """The path of each string the quantity rule checks (a CEL rule, not a pattern)."""
    if any("messageExpression" in r for r in node.get("x-kubernetes-validations") or []):
        yield ".".join(path)
    for key, child in (node.get("properties") or {}).items():
        yield from _quantity_fields(child, (*path, key))


QUANTITIES = sorted(_quantity_fields(SCHEMA["properties"]["spec"], ("spec",)))


@pytest.mark.parametrize("path", QUANTITIES)
def test_a_quantity_that_is_not_one_is_refused_in_words(kube, path):
    """``memoryPerWorker: 2GB`` through kubectl: the API server's pattern error printed
    the regular expression (a fault probe on the real node). The CRD's CEL rule says what
    a quantity is, and what was given; a quantity still passes."""
    assert {"spec.scaling.memoryPerWorker", "spec.serve.memoryPerReplica",
            "spec.scaling.head.memory"} <= set(QUANTITIES)
    for value, refused in (("2GB", True), ("512 Mi", True), ("-2Gi", True), ("1.5Gi", False),
                           ("500M", False), ("2e9", False), ("+2Gi", False), (".5Gi", False)):
        doc = base_doc()
        node = doc
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        status, text = dry_run(kube, doc)
        if not refused:
            assert status in (200, 201), (value, text[:500])
            continue
        assert status == 422, (status, text[:500])
        msg = json.loads(text)["message"]
        assert f"{path}: Invalid value" in msg and "must be a Kubernetes quantity: a number " \
            "and a unit" in msg and f"(got '{value}')" in msg, msg
        assert "^\\+?(" not in msg and "[0-9]" not in msg, msg


def test_kubectl_apply_dry_run_names_the_field(kube):
    doc = base_doc("kubectl-bad")
    doc["spec"]["train"]["epochs"] = 0
    out = kube.cp.kubectl_run("apply", "--dry-run=server", "-n", kube.namespace, "-f", "-",
                              input=json.dumps(doc), check=False)
    assert out.returncode != 0
    assert "spec.train.epochs" in out.stderr and "greater than or equal to 1" in out.stderr, out.stderr


# -------------------------------------------------------------------- kubectl
def kubectl(kube, *args: str) -> subprocess.CompletedProcess[str]:
    return kube.cp.kubectl_run(*args, "-n", kube.namespace)


def test_printer_columns_explain_and_wait(kube):
    doc = copy.deepcopy(QUICKSTART)
    doc["metadata"] = {"name": "cols"}
    kube.create(doc)
    kube.patch_status("TrainingRun", "cols", {
        "phase": "Serving", "progress": {"epoch": 7, "valAccuracy": 0.975},
        "serving": {"endpoint": "http://cols-serve-svc.x:8000", "valAccuracy": 0.9812},
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "JobSucceeded",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    out = kubectl(kube, "get", "tr", "cols").stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "EPOCH", "VAL-ACC", "SERVED-ACC", "SERVING",
                              "AGE"], out
    assert out[1].split()[:6] == ["cols", "Serving", "7", "0.975", "0.9812",
                                  "http://cols-serve-svc.x:8000"]
    explain = kube.cp.kubectl_run("explain", "trainingrun.spec.scaling").stdout
    assert "workers" in explain and "cpusPerWorker" in explain and "DESCRIPTION" in explain
    assert "gpusPerWorker" in kube.cp.kubectl_run("explain", "tr.spec.scaling",
                                                  "--recursive").stdout
    waited = kubectl(kube, "wait", "--for=condition=Succeeded", "tr/cols", "--timeout=10s")
    assert "condition met" in waited.stdout


def test_status_subresource_semantics(kube):
    doc = copy.deepcopy(QUICKSTART)
    doc["metadata"] = {"name": "gen"}
    tr = kube.create(doc)
    assert tr["metadata"]["generation"] == 1 and "status" not in tr
    # a status write does not bump generation, and cannot change spec
    after = kube.patch("TrainingRun", "gen", {"status": {"phase": "Running"},
                                              "spec": {"suspend": True}}, subresource="status")
    assert after["metadata"]["generation"] == 1 and after["status"]["phase"] == "Running"
    assert after["spec"].get("suspend") in (None, False)
    # a write to the main resource cannot change status, and a spec edit bumps generation
    edited = kube.patch("TrainingRun", "gen", {"spec": {"suspend": True},
                                               "status": {"phase": "Failed"}})
    assert edited["metadata"]["generation"] == 2 and edited["status"]["phase"] == "Running"
    # metadata-only edits do not
    labelled = kube.patch("TrainingRun", "gen", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 2
    # a stale resourceVersion is a real 409
    from raykube.testing.kube import KubeError
    with pytest.raises(KubeError) as err:
        kube.patch("TrainingRun", "gen", {"metadata": {"resourceVersion": tr["metadata"][
            "resourceVersion"]}, "status": {"phase": "Pending"}}, subresource="status")
    assert err.value.status == 409
