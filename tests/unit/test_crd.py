"""The generated TrainingRun CRD: committed == generated, structural, strict, readable."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8s_schemas import validate_strict
from raykube import crd as crdmod
from raykube.spec import load_yaml_documents

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "k8s" / "base" / "crd.yaml"
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))


def _schema() -> dict:
    return crdmod.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_models():
    assert COMMITTED.exists(), "k8s/base/crd.yaml missing: run `raykube crd --out k8s/base/crd.yaml`"
    assert COMMITTED.read_text() == crdmod.crd_yaml(), (
        "k8s/base/crd.yaml drifted from raykube.spec: run `make crd` "
        "(raykube crd --out k8s/base/crd.yaml)")


def test_crd_is_a_valid_customresourcedefinition():
    assert validate_strict(yaml.safe_load(COMMITTED.read_text())) == []


def _structural_errors(node: dict, path: str) -> list[str]:
    """The rules of a structural schema (+ ours: descriptions, no defaults/refs)."""
    errs = []
    for bad in ("$ref", "anyOf", "oneOf", "allOf", "not", "const", "default", "nullable",
                "title", "$defs"):
        if bad in node:
            errs.append(f"{path}: {bad} not allowed")
    open_ = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if "type" not in node and not open_:
        errs.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        errs.append(f"{path}: both properties and additionalProperties")
    if node.get("type") == "object" and not node.get("properties") and \
            "additionalProperties" not in node and not open_ and path != "metadata":
        errs.append(f"{path}: object without properties prunes everything")
    for name, sub in (node.get("properties") or {}).items():
        p = f"{path}.{name}" if path else name
        if not sub.get("description") and p != "metadata":
            errs.append(f"{p}: no description")
        errs += _structural_errors(sub, p)
    if isinstance(node.get("additionalProperties"), dict):
        errs += _structural_errors(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        errs += _structural_errors(node["items"], f"{path}[]")
    return errs


def test_schema_is_structural_and_fully_described():
    assert _structural_errors(_schema(), "") == []


def test_crd_names_columns_and_status():
    spec = crdmod.build_crd()["spec"]
    assert spec["names"]["shortNames"] == ["tr"]
    assert "raykube" in spec["names"]["categories"]
    v = spec["versions"][0]
    assert v["subresources"] == {"status": {}}
    cols = {c["name"].upper(): c["jsonPath"] for c in v["additionalPrinterColumns"]}
    assert cols == {"PHASE": ".status.phase", "EPOCH": ".status.progress.epoch",
                    "VAL-ACC": ".status.progress.valAccuracy",
                    "SERVED-ACC": ".status.serving.valAccuracy",
                    "SERVING": ".status.serving.endpoint", "AGE": ".metadata.creationTimestamp",
                    "MESSAGE": ".status.message"}
    # only under -o wide: the default view stays narrow
    assert [c["name"] for c in v["additionalPrinterColumns"] if c.get("priority")] == ["Message"]


def test_schema_keeps_the_models_constraints():
    s = _schema()["properties"]["spec"]
    scaling = s["properties"]["scaling"]["properties"]
    assert scaling["workers"]["minimum"] == 1 and scaling["workers"]["type"] == "integer"
    # a fractional minimum is a CEL rule alone (the API server cuts the schema's to an integer)
    assert scaling["cpusPerWorker"]["x-kubernetes-validations"] == [
        {"rule": "self >= 0.1", "message": "must be at least 0.1"}]
    assert "minimum" not in scaling["cpusPerWorker"] and "exclusiveMinimum" not in scaling["cpusPerWorker"]
    # a quantity: a CEL rule that says what one is (a pattern's error prints the regex)
    (rule,) = scaling["memoryPerWorker"]["x-kubernetes-validations"]
    assert rule["rule"].startswith("self.matches(r'^\\+?(") and "pattern" not in scaling[
        "memoryPerWorker"] and scaling["memoryPerWorker"]["maxLength"] == 64
    assert s["required"] == ["model", "data"]
    assert s["properties"]["model"]["properties"]["name"]["enum"] == ["mlp", "cifar-cnn", "resnet18"]
    assert s["properties"]["tune"]["properties"]["metric"]["enum"][0] == "valAccuracy"
    assert "Default: 2." in scaling["workers"]["description"]
    storage = s["properties"]["checkpoint"]["properties"]["storage"]
    assert any("pvc" in r["rule"] and "uri" in r["rule"] for r in storage["x-kubernetes-validations"])
    # open values only where the type is open
    choice = s["properties"]["tune"]["properties"]["searchSpace"]["additionalProperties"]
    assert choice["properties"]["choice"]["items"] == {"x-kubernetes-preserve-unknown-fields": True}
    best = _schema()["properties"]["status"]["properties"]["bestTrial"]["properties"]["config"]
    assert best["x-kubernetes-preserve-unknown-fields"] is True


def test_missing_description_fails_generation():
    from pydantic import Field

    from raykube.spec import _Model

    class Bad(_Model):
        """A model."""

        ok: int = Field(default=1, description="Fine.")
        undocumented: int = 2

    with pytest.raises(crdmod.SchemaGenerationError, match="undocumented"):
        crdmod.openapi_schema(Bad, "spec")


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_validates_against_the_crd(path):
    for doc in load_yaml_documents(path.read_text()):
        assert validate_strict(doc) == []


def test_crd_rejects_what_the_api_server_would():
    doc = load_yaml_documents((REPO / "jobs" / "quickstart.yaml").read_text())[0]
    doc["spec"]["scaling"]["worker"] = 3
    doc["spec"]["train"]["epochs"] = 0
    doc["spec"]["model"]["name"] = "vgg"
    errors = validate_strict(doc)
    assert any("'worker' was unexpected" in e for e in errors), errors
    assert any("spec.train.epochs" in e for e in errors), errors
    assert any("spec.model.name" in e for e in errors), errors


def test_markdown_reference():
    md = crdmod.markdown_reference()
    assert md.startswith("| Field | Type | Default | Description |")
    assert "| `spec.scaling.gpusPerWorker` | number (≥ 0.0, ≤ 16) | `0.0` |" in md
    assert "| `spec.model.name` |" in md and "required" in md
    readme = REPO / "README.md"
    text = readme.read_text()
    section = text.split("<!-- BEGIN REFERENCE -->\n", 1)[1].split("<!-- END REFERENCE -->", 1)[0]
    assert section.strip() == md.strip(), "README's TrainingRun reference is stale: run `make crd`"


def test_no_description_says_the_same_thing_twice():
    """Issue 15 #17: a field's title ("The network.") was printed before its type's own
    docstring ("Which network to train."): kubectl explain read each twice."""
    from raykube.crd import build_crd

    def walk(node, path=""):
        if isinstance(node, dict):
            desc = node.get("description", "")
            first = desc.split(". ")[0].rstrip(".")
            if node.get("properties") and len(first.split()) <= 3 and ". " in desc:
                raise AssertionError(f"{path}: title-like sentence before the text: {desc!r}")
            for k, v in node.get("properties", {}).items():
                walk(v, f"{path}.{k}")
            if "items" in node:
                walk(node["items"], f"{path}[]")

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    walk(schema["properties"]["spec"], "spec")
    walk(schema["properties"]["status"], "status")
    assert schema["properties"]["spec"]["properties"]["model"]["description"].startswith(
        "Which network to train.")
