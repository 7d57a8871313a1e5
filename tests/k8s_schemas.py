"""Strict schema validation of Kubernetes objects, as the API server would see them.

``validate_strict(obj) -> list[str]`` returns every problem found (empty: valid). The API
server silently *prunes* unknown fields of structural schemas, so a misspelt field would
vanish on a cluster instead of failing; here an unknown field is an error everywhere.

Three families:

- core kinds (ConfigMap, ServiceAccount, Role, Deployment, CustomResourceDefinition, ...):
  the ``-strict`` JSON schemas shipped by the ``kubernetes-validate`` package for
  Kubernetes ``K8S_VERSION`` (all errors are collected, not only the first);
- KubeRay kinds (RayJob, RayCluster, RayService): the ``openAPIV3Schema`` of the KubeRay
  v1.7.0 CRDs (``../shared/kuberay/v1.7.0`` or ``build/kuberay/v1.7.0``);
- TrainingRun: our generated CRD, ``k8s/base/crd.yaml`` (or ``raykube.crd.build_crd()``
  while the file does not exist yet).

CRD schemas are OpenAPI v3 (draft-4 flavoured: boolean ``exclusiveMinimum``) with
Kubernetes extensions; they are turned into JSON Schema by ``strict_schema``: every
object with ``properties`` and neither ``additionalProperties`` nor
``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``;
``x-kubernetes-int-or-string`` becomes integer-or-string; ``nullable`` admits null;
``x-kubernetes-list-type: map``/``set`` items must be unique by key. The object's
``metadata`` is checked against the real (strict) ObjectMeta schema, plus a required
``name``. CEL rules (``x-kubernetes-validations``) are not evaluated here.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
import yaml
from kubernetes_validate import utils as kv

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.35.0"
"""Kubernetes version whose schemas core kinds are checked against (kind's current line)."""

KUBERAY_DIRS = (REPO.parent / "shared" / "kuberay" / "v1.7.0", REPO / "build" / "kuberay" / "v1.7.0")
KUBERAY_FILES = ("ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml", "ray.io_rayservices.yaml")
TRAININGRUN_CRD = REPO / "k8s" / "base" / "crd.yaml"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# ------------------------------------------------------------------------ public API
def validate_strict(obj: Any) -> list[str]:
    """All schema errors of one object (``[]`` when valid); unknown fields are errors."""
    if not isinstance(obj, dict):
        return [f"(document): expected a mapping, got {type(obj).__name__}"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["(document): apiVersion and kind are required strings"]
    group = api_version.split("/")[0] if "/" in api_version else ""
    if group in ("ray.io", "raykube.io"):
        kinds = _kuberay_kinds() if group == "ray.io" else _trainingrun_kinds()
        crd = kinds.get((api_version, kind))
        if crd is None:
            return [f"{kind}: no CRD known for apiVersion {api_version!r} (known: "
                    f"{', '.join(sorted(f'{a} {k}' for a, k in kinds))})"]
        errors = _errors(crd, obj)
    else:
        validator = _core_validator(api_version, kind)
        if validator is None:
            return [f"{kind}: no Kubernetes {K8S_VERSION} schema for apiVersion {api_version!r}"]
        errors = _errors(validator, obj)
    errors.extend(_metadata_errors(obj.get("metadata"), check_schema=group in ("ray.io", "raykube.io")))
    name = (obj.get("metadata") or {}).get("name", "?") if isinstance(obj.get("metadata"), dict) else "?"
    return [f"{kind}/{name}: {e}" for e in errors]


def validate_all(objs: Iterable[dict[str, Any]]) -> list[str]:
    """Errors of several objects, concatenated."""
    return [e for o in objs for e in validate_strict(o)]


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD openAPIV3Schema made into a strict JSON Schema (draft 4); input untouched."""
    return _strict(copy.deepcopy(schema))


def crd_validator(crd: dict[str, Any], version: str | None = None) -> jsonschema.Validator:
    """Strict validator for objects of a CRD (its storage version unless ``version``)."""
    versions = crd["spec"]["versions"]
    v = next(x for x in versions if (x["name"] == version if version else x.get("storage")))
    schema = strict_schema(v["schema"]["openAPIV3Schema"])
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [f"{group}/{v['name']}"]}
    props["kind"] = {"type": "string", "enum": [kind]}
    props["metadata"] = {"type": "object"}  # checked by _metadata_errors
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    return _CRDValidator(schema)


def _kinds(crds: Iterable[dict[str, Any]]) -> dict[tuple[str, str], jsonschema.Validator]:
    out: dict[tuple[str, str], jsonschema.Validator] = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served", True):
                out[(f"{group}/{v['name']}", kind)] = crd_validator(crd, v["name"])
    return out


@functools.cache
def _kuberay_kinds() -> dict[tuple[str, str], jsonschema.Validator]:
    return _kinds(kuberay_crds())


@functools.cache
def _trainingrun_kinds() -> dict[tuple[str, str], jsonschema.Validator]:
    return _kinds([trainingrun_crd()])


def kuberay_dir() -> Path:
    for d in KUBERAY_DIRS:
        if (d / "ray.io_rayjobs.yaml").exists():
            return d
    raise FileNotFoundError("KubeRay v1.7.0 CRDs not found in " + " or ".join(map(str, KUBERAY_DIRS))
                            + " (run `make kuberay-crds`)")


def kuberay_crds() -> list[dict[str, Any]]:
    d = kuberay_dir()
    return [_load_yaml(d / f) for f in KUBERAY_FILES]


def trainingrun_crd() -> dict[str, Any]:
    """The committed CRD (what `kubectl apply -k k8s/base` installs)."""
    if TRAININGRUN_CRD.exists():
        return _load_yaml(TRAININGRUN_CRD)
    from raykube.crd import build_crd  # not generated yet: use the models directly

    return build_crd()


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the KubeRay CRDs are 60k lines
    return yaml.load(path.read_text(), Loader=loader)


# --------------------------------------------------------------------- CRD -> schema
def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_strict(v) if k in ("items", "allOf", "anyOf", "oneOf", "not") else v)
           for k, v in node.items()}
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(node["additionalProperties"])
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("type") == "object" and not preserve and "additionalProperties" not in node:
        # Structural pruning keeps only declared properties; a bare object keeps nothing
        # (except an embedded resource's apiVersion/kind/metadata).
        out["additionalProperties"] = False
        if node.get("x-kubernetes-embedded-resource"):
            for k in ("apiVersion", "kind"):
                out.setdefault("properties", {}).setdefault(k, {"type": "string"})
            out.setdefault("properties", {}).setdefault("metadata", {"type": "object"})
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = sorted({*(t if isinstance(t, list) else [t]), "null"})
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _unique_by_keys(validator, keys, instance, schema):
    if not isinstance(instance, list):
        return
    seen: set[tuple] = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(repr(item.get(k)) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(
                f"duplicate entry for list-map keys {dict(zip(keys, (item.get(k) for k in keys), strict=True))}")
        seen.add(key)


def _list_type(validator, list_type, instance, schema):
    if list_type == "set" and isinstance(instance, list):
        reprs = [repr(i) for i in instance]
        if len(set(reprs)) != len(reprs):
            yield jsonschema.ValidationError("duplicate entries in a list of type set")


_CRDValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"x-kubernetes-list-map-keys": _unique_by_keys, "x-kubernetes-list-type": _list_type},
)


# ------------------------------------------------------------------------ core kinds
@functools.cache
def _k8s_definitions() -> tuple[str, referencing.Registry]:
    version = f"v{K8S_VERSION}-local-strict"
    defs = kv.schema_contents(f"kubernetes-json-schema/{version}/_definitions.json", K8S_VERSION)
    return version, referencing.Resource.from_contents(defs) @ referencing.Registry()


@functools.cache
def _core_validator(api_version: str, kind: str) -> jsonschema.Validator | None:
    version, registry = _k8s_definitions()
    # rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1 (kubernetes-validate's file naming)
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv.schema_contents(f"kubernetes-json-schema/{version}/{kind.lower()}-{api}.json",
                                    K8S_VERSION)
    except FileNotFoundError:
        return None
    schema = dict(schema)
    # The generated schemas do not require these; the API server does.
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _object_meta_validator() -> jsonschema.Validator:
    _, registry = _k8s_definitions()
    ref = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    return jsonschema.Draft202012Validator({"$ref": ref}, registry=registry)


def _metadata_errors(meta: Any, *, check_schema: bool) -> list[str]:
    """ObjectMeta checks; the schema part only for custom kinds (core schemas embed it)."""
    if not isinstance(meta, dict):
        return ["metadata: is required (a mapping)"]
    errors = []
    if check_schema:
        errors = [f"metadata.{e}".replace("metadata.(root)", "metadata")
                  for e in _errors(_object_meta_validator(), meta)]
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        errors.append("metadata.name: is required")
    elif isinstance(name, str) and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        errors.append(f"metadata.name: {name!r} is not a valid DNS subdomain name")
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if isinstance(values, dict):
            for k, v in values.items():
                if not isinstance(v, str):
                    errors.append(f"metadata.{field}[{k}]: value must be a string, got {v!r}")
                if field == "labels" and isinstance(v, str) and len(v) > 63:
                    errors.append(f"metadata.labels[{k}]: value longer than 63 characters")
    return errors


def _path(err: jsonschema.ValidationError) -> str:
    out = ""
    for p in err.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def _errors(validator: jsonschema.Validator, instance: Any) -> list[str]:
    found = []
    for err in validator.iter_errors(instance):
        # anyOf/oneOf: report the most relevant sub-error rather than the blanket message.
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        found.append(f"{_path(best)}: {best.message}")
    return sorted(set(found))
