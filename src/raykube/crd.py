"""The TrainingRun CustomResourceDefinition, generated from the pydantic models.

``raykube.spec`` is the single source of truth; this module turns its JSON Schema into a
*structural* OpenAPI v3 schema the API server accepts and enforces:

- ``$ref`` inlined, ``anyOf [X, null]`` collapsed to ``X`` (an absent optional field is
  how Kubernetes spells "unset"; a null is pruned by the API server),
- ``const`` -> ``enum``, numeric bounds in OpenAPI 3.0 form (``exclusiveMinimum: true``),
- ``required`` by camelCase name, lengths, patterns, item/property counts kept,
- no ``default`` in the schema: the API server would write defaults *into* the user's
  object (GitOps drift); defaults are resolved when rendering and are shown in each
  field's description instead,
- ``x-kubernetes-preserve-unknown-fields`` only where the type is open (``Any``),
- a description on every field (generation fails when one is missing, so that
  ``kubectl explain trainingrun.spec.scaling`` always reads well),
- CEL ``x-kubernetes-validations`` for the cross-field rules the API server can check
  cheaply (storage pvc XOR uri, one distribution per search dimension, sane bounds).

The remaining semantic checks (``raykube.spec.semantic_errors``) run in the operator,
which reports them as the ``Validated=False`` condition. Spec changes while a run is
going are *not* refused by the CRD: the operator decides what they mean (see its docs).

This module imports neither torch nor ray (the operator image has neither).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from raykube.k8s_rules import QUANTITY_PATTERN, QUANTITY_RULE
from raykube.spec import (
    _DNS_LABEL,
    GPU_SHARE_RULE,
    GROUP,
    KIND,
    LABEL_KEY_MAX,
    LABEL_VALUE_MAX,
    MAX_NAME_LENGTH,
    MAX_WORKERS,
    METRICS,
    MIN_GPU_SHARE,
    PLURAL,
    RESERVED_NAMES,
    RESERVED_SUFFIX,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ScalingSpec,
    TrainingRunSpec,
    TrainingRunStatus,
    TuneSpec,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
CATEGORIES = ["all", "raykube"]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Pending, Running, Succeeded, Failed, Serving or Suspended."},
    {"name": "Epoch", "type": "integer", "jsonPath": ".status.progress.epoch",
     "description": "Last finished epoch."},
    {"name": "Val-Acc", "type": "number", "jsonPath": ".status.progress.valAccuracy",
     "description": "Validation accuracy of the last epoch."},
    {"name": "Served-Acc", "type": "number", "jsonPath": ".status.serving.valAccuracy",
     "description": "Validation accuracy of the checkpoint being served."},
    {"name": "Serving", "type": "string", "jsonPath": ".status.serving.endpoint",
     "description": "In-cluster URL of the model's HTTP API."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # -o wide: why a run is Pending or Failed without `kubectl describe`
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1,
     "description": "The last notable event, for humans."},
]

# Extra schema for fields whose Python type is wider than what is accepted (the models
# check these in validators, with friendlier messages; the API server needs an enum).
_OVERRIDES: dict[str, dict[str, Any]] = {
    "spec.tune.metric": {"enum": list(METRICS)},
    "spec.checkpoint.scoreMetric": {"enum": list(METRICS)},
}


def _default(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].default


# Train workers at once (the rule of ``spec._tune_checks``): the CRD carries
# no defaults, so the rule falls back to the models' own.
_WORKERS = (f"(has(self.scaling) && has(self.scaling.workers) ? self.scaling.workers : "
            f"{_default(ScalingSpec, 'workers')})")
_TRIALS = f"(has(self.tune.trials) ? self.tune.trials : {_default(TuneSpec, 'trials')})"
_AT_ONCE = (f"(has(self.tune.maxConcurrentTrials) ? self.tune.maxConcurrentTrials : "
            f"{_default(TuneSpec, 'max_concurrent_trials')})")

_METRIC = f"(has(self.metric) ? self.metric : '{_default(TuneSpec, 'metric')}')"

# CEL rules (x-kubernetes-validations) by schema path; "*" = each value of a map.
_CEL: dict[str, list[dict[str, str]]] = {
    "spec": [
        {"rule": f"!has(self.tune) || {_WORKERS} * ({_TRIALS} < {_AT_ONCE} ? {_TRIALS} : "
                 f"{_AT_ONCE}) <= {MAX_WORKERS}",
         "message": f"scaling.workers x the concurrent trials (tune.maxConcurrentTrials, at "
                    f"most tune.trials) must be at most {MAX_WORKERS} Train workers at once",
         "fieldPath": ".tune.maxConcurrentTrials"},
    ],
    "spec.tune": [
        {"rule": f"!has(self.mode) || self.mode == "
                 f"({_METRIC} in {sorted(m for m, d in METRICS.items() if d == 'min')} ? "
                 "'min' : 'max')",
         "message": "mode must be the metric's direction or left out: "
                    + ", ".join(f"{m} is better {'higher (max)' if d == 'max' else 'lower (min)'}"
                                for m, d in METRICS.items()),
         "fieldPath": ".mode"},
    ],
    **{path: [{"rule": f"self == 0.0 || self >= {MIN_GPU_SHARE!r}", "message": GPU_SHARE_RULE}]
       for path in ("spec.scaling.gpusPerWorker", "spec.serve.gpusPerReplica")},
    "spec.data": [
        {"rule": "!has(self.secretRef) || (has(self.uri) && self.uri.startsWith('s3://'))",
         "message": "secretRef only applies with an s3:// uri", "fieldPath": ".secretRef"},
    ],
    "spec.checkpoint.storage": [
        {"rule": "!(has(self.pvc) && has(self.uri))",
         "message": "set either pvc or uri, not both"},
        {"rule": "!has(self.secretRef) || has(self.uri)",
         "message": "secretRef only applies with uri"},
    ],
    # a label key's length (the API server checks a map's keys only through CEL)
    **{f"spec.scaling{head}.nodeSelector": [
        {"rule": f"self.all(k, size(k) <= {LABEL_KEY_MAX})",
         "message": f"a node selector key must be at most {LABEL_KEY_MAX} characters "
                    "(a DNS-subdomain prefix, '/', a name of at most 63)"}]
       for head in ("", ".head")},
    # "exactly one of" and "choice not empty" are min/maxProperties and minItems (_LIMITS):
    # CEL cannot name `choice` at all (its items are untyped, x-kubernetes-preserve-
    # unknown-fields, so the field is left out of CEL's type: "undefined field 'choice'"
    # and the API server refuses the whole CRD).
    "spec.tune.searchSpace.*": [
        {"rule": "!has(self.uniform) || (size(self.uniform) == 2 && self.uniform[0] < self.uniform[1])",
         "message": "uniform must be [low, high] with low < high"},
        {"rule": "!has(self.loguniform) || (size(self.loguniform) == 2 && "
                 "self.loguniform[0] > 0.0 && self.loguniform[0] < self.loguniform[1])",
         "message": "loguniform must be [low, high] with 0 < low < high"},
        {"rule": "!has(self.randint) || (size(self.randint) == 2 && self.randint[0] < self.randint[1])",
         "message": "randint must be [low, high) with low < high"},
    ],
}

_NAME_RULES = [{**rule, "fieldPath": ".metadata.name"} for rule in [
    {"rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
     "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters (children add "
                "suffixes such as -serve-svc and KubeRay's -raycluster-xxxxx, and KubeRay "
                "caps RayJob and RayService names at 47)"},
    {"rule": f"self.metadata.name.matches('{_DNS_LABEL}')",
     "message": "metadata.name must be a DNS label (lower-case letters, digits and '-', "
                "starting with a letter): it names the run's Services"},
    *({"rule": f"self.metadata.name != '{reserved}'",
       "message": f"metadata.name {reserved!r} is reserved: {why}"}
      for reserved, why in RESERVED_NAMES.items()),
    {"rule": f"!self.metadata.name.endsWith('{RESERVED_SUFFIX}')",
     "message": f"metadata.name must not end in {RESERVED_SUFFIX!r}: run <x>'s RayService is "
                f"named <x>{RESERVED_SUFFIX}, and KubeRay would give both the same Services"},
]]

# Sizes that bound CEL cost estimation (the API server refuses rules whose worst case
# is too expensive on unbounded lists/maps).
_LIMITS: dict[str, dict[str, int]] = {
    # label keys and values (their words come from the operator's check: the spec's
    # label_problems and toleration_problems); here they bound the object's size
    **{f"spec.scaling{head}{field}": {"maxLength": bound}
       for head in ("", ".head")
       for field, bound in ((".nodeSelector.*", LABEL_VALUE_MAX),
                            (".tolerations[].key", LABEL_KEY_MAX),
                            (".tolerations[].value", LABEL_VALUE_MAX))},
    "spec.tune.searchSpace": {"maxProperties": 64},
    "spec.tune.searchSpace.*": {"minProperties": 1, "maxProperties": 1},
    "spec.tune.searchSpace.*.choice": {"minItems": 1, "maxItems": 1000},
    "spec.tune.searchSpace.*.uniform": {"maxItems": 2},
    "spec.tune.searchSpace.*.loguniform": {"maxItems": 2},
    "spec.tune.searchSpace.*.randint": {"maxItems": 2},
}


def _fractional_bound_rules(node: dict[str, Any]) -> list[dict[str, str]]:
    """CEL for a number's fractional ``minimum``/``maximum``, which it takes out of
    ``node``: the API server compares a whole number with the bound cut to an integer, so
    ``cpusPerWorker: 0`` passed ``minimum: 0.1`` (and ``-1`` was told "greater than or
    equal to 0"); kept beside the rule, ``0.05`` was refused twice, in two lines."""
    if node.get("type") != "number":
        return []
    rules = []
    for key, strict, op, word in (("minimum", "exclusiveMinimum", ">", "more than"),
                                  ("maximum", "exclusiveMaximum", "<", "less than")):
        bound = node.get(key)
        if bound is None or float(bound).is_integer():
            continue
        if not node.pop(strict, None):
            op, word = op + "=", "at least" if key == "minimum" else "at most"
        del node[key]
        rules.append({"rule": f"self {op} {float(bound)!r}", "message": f"must be {word} {bound:g}"})
    return rules


class SchemaGenerationError(ValueError):
    """The models cannot be expressed as a structural schema (or lack a description)."""


# ------------------------------------------------------------------------ public API
def openapi_schema(model: type[BaseModel], path: str, *, defaults: bool = False) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a model, rooted at ``path`` (e.g. ``spec``).

    ``defaults=True`` keeps ``default`` values (for the Markdown reference only; the CRD
    never carries them).
    """
    js = model.model_json_schema(by_alias=True, mode="validation")
    defs = js.pop("$defs", {})
    return _Converter(defs, defaults).convert(js, path, top=True)


def build_crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of TrainingRun."""
    spec = openapi_schema(TrainingRunSpec, "spec")
    status = openapi_schema(TrainingRunStatus, "status")
    root = {
        "type": "object",
        "description": "A TrainingRun trains (optionally tunes) a PyTorch model with Ray "
        "Train on KubeRay, checkpoints it to shared storage every epoch, and serves the best "
        "checkpoint with Ray Serve once it passes the accuracy gate.",
        "required": ["spec"],
        # The API server checks only that a custom resource's name is a DNS subdomain;
        # ours names Services and KubeRay objects, which need a shorter DNS label.
        "x-kubernetes-validations": _NAME_RULES,
        "properties": {
            "apiVersion": {"type": "string", "description": "raykube.io/v1alpha1."},
            "kind": {"type": "string", "description": "TrainingRun."},
            # name declared so that the rules above can point at it (fieldPath): the
            # API server said "<nil>: Invalid value" without it
            "metadata": {"type": "object", "properties": {"name": {
                "type": "string", "description": "The run's name: a DNS label of at most "
                f"{MAX_NAME_LENGTH} characters (it names the run's RayJob, RayService and "
                "Services)."}}},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "raykube", "app.kubernetes.io/part-of": "raykube"},
            "annotations": {"raykube.io/generated-by": "raykube crd (from raykube.spec); do not edit"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def crd_yaml() -> str:
    """``build_crd()`` as the YAML committed in k8s/base/crd.yaml."""
    import yaml

    header = ("# Generated by `raykube crd` from src/raykube/spec.py. Do not edit: change the\n"
              "# models and run `make crd` (a test fails when this file drifts).\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)


def markdown_reference() -> str:
    """The TrainingRun ``spec`` reference as a Markdown table (for README.md)."""
    spec = openapi_schema(TrainingRunSpec, "spec", defaults=True)
    lines = ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    for path, node, required in _walk(spec, "spec", True):
        default = "required" if required else (
            f"`{json.dumps(node['default'])}`" if "default" in node else "")
        desc = (node.get("description", "").replace("|", "\\|").replace("\n", " ")
                .replace("<", "&lt;").replace(">", "&gt;"))
        lines.append(f"| `{path}` | {_type_text(node)} | {default} | {desc} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ conversion
class _Converter:
    def __init__(self, defs: dict[str, Any], defaults: bool):
        self.defs = defs
        self.defaults = defaults

    def convert(self, node: dict[str, Any], path: str, *, top: bool = False,
                field_desc: str | None = None) -> dict[str, Any]:
        node = dict(node)
        desc_parts = [field_desc] if field_desc else []
        default = node.pop("default", None) if "default" in node else _MISSING
        node.pop("title", None)
        if "description" in node:
            desc_parts.append(node.pop("description"))
        node = self._unwrap(node, path, desc_parts)
        out: dict[str, Any] = {}

        if "const" in node:
            node.setdefault("enum", [node.pop("const")])
        if node.get("type") is None and not node.get("enum"):
            if node:
                raise SchemaGenerationError(f"{path}: unsupported schema {node}")
            out["x-kubernetes-preserve-unknown-fields"] = True  # Any: an open value
        elif "type" in node:
            out["type"] = node["type"]
        t = out.get("type")

        if t == "object":
            props = node.get("properties") or {}
            if props:
                out["properties"] = {}
                for name, sub in props.items():
                    out["properties"][name] = self.convert(sub, f"{path}.{name}")
                if node.get("required"):
                    out["required"] = list(node["required"])
            ap = node.get("additionalProperties")
            if isinstance(ap, dict):
                if props:
                    raise SchemaGenerationError(f"{path}: both properties and additionalProperties")
                out["additionalProperties"] = self.convert(ap, f"{path}.*", field_desc="")
            elif ap is True or (not props and ap is None):
                out["x-kubernetes-preserve-unknown-fields"] = True
            for k in ("minProperties", "maxProperties"):
                if k in node:
                    out[k] = node[k]
        elif t == "array":
            out["items"] = self.convert(node.get("items", {}), f"{path}[]", field_desc="")
            for k in ("minItems", "maxItems"):
                if k in node:
                    out[k] = node[k]
        elif t in ("integer", "number"):
            for k in ("minimum", "maximum"):
                if k in node:
                    out[k] = node[k]
            for k, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                if k in node:
                    out[bound] = node[k]
                    out[k] = True
        elif t == "string":
            for k in ("minLength", "maxLength", "pattern", "format"):
                if k in node:
                    out[k] = node[k]
            if out.get("pattern") == QUANTITY_PATTERN:
                # a CEL rule, not the pattern: the API server's pattern error prints the
                # regular expression ("should match '^[0-9]+(\.[0-9]+)?(Ki|...'") to a
                # user who wrote 2GB
                del out["pattern"]
                out.setdefault("x-kubernetes-validations", []).append({
                    "rule": f"self.matches(r'{QUANTITY_PATTERN}')",
                    "messageExpression": f"'{QUANTITY_RULE} (got \\'' + self + '\\')'"})
        elif t not in ("boolean", None):
            raise SchemaGenerationError(f"{path}: unsupported type {t!r}")
        if "enum" in node:
            out["enum"] = list(node["enum"])
            if t is None:
                out["type"] = _enum_type(node["enum"], path)

        out.update(_OVERRIDES.get(path, {}))
        out.update(_LIMITS.get(path, {}))
        rules = [*out.pop("x-kubernetes-validations", []), *_CEL.get(path, []),
                 *_fractional_bound_rules(out)]
        if rules:
            out["x-kubernetes-validations"] = rules

        desc = " ".join(_sentence(p) for p in _dedupe(desc_parts) if p)
        if not desc and not top and not path.endswith(("[]", ".*")):
            raise SchemaGenerationError(f"{path}: field has no description; add one in "
                                        "raykube.spec (kubectl explain shows it)")
        if default is not _MISSING and default is not None:
            if self.defaults:
                out["default"] = default
            elif "default" not in desc.lower() and not isinstance(default, (dict, list)):
                desc += f" Default: {json.dumps(default)}."
        if desc:
            out = {"description": desc.strip(), **out}
        return out

    def _unwrap(self, node: dict[str, Any], path: str, desc_parts: list[str]) -> dict[str, Any]:
        """Resolve $ref / single allOf and drop the null branch of an Optional."""
        while True:
            if "$ref" in node:
                ref = node.pop("$ref").rsplit("/", 1)[-1]
                target = dict(self.defs[ref])
                target.pop("title", None)
                if "description" in target:
                    desc_parts.append(target.pop("description"))
                node = {**target, **node}
                continue
            if "allOf" in node and len(node["allOf"]) == 1:
                node = {**node.pop("allOf")[0], **node}
                continue
            if "anyOf" in node:
                branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
                if len(branches) != 1:
                    raise SchemaGenerationError(f"{path}: unions are not structural "
                                                f"({len(branches)} non-null branches)")
                node = {**branches[0], **node}
                continue
            return node


_MISSING = object()


def _enum_type(values: list[Any], path: str) -> str:
    kinds = {type(v) for v in values}
    if kinds == {str}:
        return "string"
    if kinds <= {int} and bool not in kinds:
        return "integer"
    raise SchemaGenerationError(f"{path}: enum of mixed types {values}")


def _dedupe(parts: list[str | None]) -> list[str]:
    """Drop empty parts and parts another one already says ("The head." vs "The head (...)").

    A field's title-like description ("The network.", "Retries.": three words or fewer)
    followed by its type's own docstring ("Which network to train. ...") says the same
    thing twice in ``kubectl explain``: the docstring alone is kept.
    """
    texts = [" ".join(p.split()) for p in parts if p and p.strip()]
    if len(texts) > 1 and len(texts[0].rstrip(".").split()) <= 3:
        texts = texts[1:]
    out: list[str] = []
    for i, t in enumerate(texts):
        core = t.rstrip(".").lower()
        if any(j != i and o.lower().startswith(core) and (len(o) > len(t) or j < i)
               for j, o in enumerate(texts)):
            continue
        out.append(t)
    return out


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?", ")")) else text + "."


# ------------------------------------------------------------------------- markdown
def _walk(node: dict[str, Any], path: str, required: bool):
    """(path, node, required) for every field below ``node``, depth first."""
    for name, sub in (node.get("properties") or {}).items():
        p = f"{path}.{name}"
        yield p, sub, name in (node.get("required") or [])
        yield from _walk(sub, p, False)
        if sub.get("type") == "array" and sub["items"].get("properties"):
            yield from _walk(sub["items"], f"{p}[]", False)
        if isinstance(sub.get("additionalProperties"), dict) and sub["additionalProperties"].get("properties"):
            yield from _walk(sub["additionalProperties"], f"{p}.<key>", False)


def _type_text(node: dict[str, Any]) -> str:
    t = node.get("type", "any")
    if t == "array":
        text = f"list of {_type_text(node['items'])}"
    elif t == "object" and isinstance(node.get("additionalProperties"), dict):
        text = f"map of {_type_text(node['additionalProperties'])}"
    else:
        text = t
    if "enum" in node:
        text += ": " + ", ".join(f"`{v}`" for v in node["enum"])
    bounds = []
    if "minimum" in node:
        bounds.append(f"{'>' if node.get('exclusiveMinimum') else '≥'} {node['minimum']}")
    if "maximum" in node:
        bounds.append(f"{'<' if node.get('exclusiveMaximum') else '≤'} {node['maximum']}")
    if bounds:
        text += " (" + ", ".join(bounds) + ")"
    return text
