"""YAML read as kubectl reads it.

kubectl (sigs.k8s.io/yaml) parses YAML with go-yaml v2 and sends the result to the API
server as JSON. PyYAML follows YAML 1.1, and the two disagree on plain scalars often
enough for ``raykube validate`` to pass a file the API server refuses, or the reverse (a
differential probe of 575 TrainingRuns against the real API server found 47 such cases):

========================  =====================  ====================
written                   kubectl                PyYAML
========================  =====================  ====================
``08``, ``0800``          8, 800                 the string
``0o17``, ``0X1F``        15, 31                 the string
``-.5``, ``.5e3``         -0.5, 500.0            the string
``1:30``, ``12:30``       the string             90, 750 (base 60)
``2026-12-05``            the string             a date
``=``                     the string             an error
``epochs: 10.0``          10 (JSON has no 10.0)  10.0, a float
========================  =====================  ====================

``Loader`` resolves every plain scalar with go-yaml v2's own rules (its ``resolve.go``),
and ``as_api_server_stores`` turns whole-number floats into the integers the API server
stores. A key repeated in one mapping stays an error (kubectl's strict decoding warns;
PyYAML would silently keep the last value, so ``epochs: 3`` above ``epochs: 12`` would
vanish).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from typing import Any

import yaml

_TAG = "tag:yaml.org,2002:"
BOOL, NULL, INT, FLOAT, STR, MERGE = (f"{_TAG}{t}" for t in (
    "bool", "null", "int", "float", "str", "merge"))

_WORDS: dict[str, tuple[str, Any]] = {
    **{w: (BOOL, True) for w in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE",
                                 "on", "On", "ON")},
    **{w: (BOOL, False) for w in ("n", "N", "no", "No", "NO", "false", "False", "FALSE",
                                  "off", "Off", "OFF")},
    **{w: (NULL, None) for w in ("", "~", "null", "Null", "NULL")},
    **{w: (FLOAT, math.nan) for w in (".nan", ".NaN", ".NAN")},
    **{w: (FLOAT, math.inf) for w in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")},
    **{w: (FLOAT, -math.inf) for w in ("-.inf", "-.Inf", "-.INF")},
    "<<": (MERGE, "<<"),
}
"""go-yaml v2's ``resolveMap``: the words it reads as booleans, null, infinities, NaN."""

_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
"""Go's ``strconv.ParseInt(s, 0, 64)`` syntax: a sign, then hex, octal (``0o17`` or a
leading 0: ``017`` is 15), binary or decimal (``08`` is none of them)."""
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
"""go-yaml v2's ``yamlStyleFloat``: what it reads as a float once no integer fits."""
_DATE_START = re.compile(r"[0-9]{4}-")


def go_int(text: str) -> int | None:
    """``text`` as Go's ``strconv.ParseInt(text, 0, ...)`` reads it (any size), or None."""
    m = _GO_INT.fullmatch(text)
    if m is None:
        return None
    sign, digits = m.groups()
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXoObB":
        value = int(digits[1:], 8)  # a leading 0: octal, as in C and Go
    else:
        value = int(digits, 0)
    return -value if sign == "-" else value


def resolve_plain(text: str) -> tuple[str, Any]:
    """(tag, value) of a plain (unquoted, untagged) scalar, by go-yaml v2's ``resolve``.

    A timestamp (``2026-12-05``) stays its string: sigs.k8s.io/yaml hands the API server
    the text as written (``rerun: 2026-12-05`` is a string on the cluster)."""
    if text in _WORDS:
        return _WORDS[text]
    hint = text[:1]
    if hint == ".":
        try:
            return FLOAT, float(text)
        except ValueError:
            return STR, text
    if hint not in set("+-0123456789"):
        return STR, text
    if _DATE_START.match(text):
        return STR, text
    plain = text.replace("_", "")
    if (value := go_int(plain)) is not None:
        return INT, value
    if _YAML_STYLE_FLOAT.fullmatch(plain):
        return FLOAT, float(plain)
    return STR, text  # 1:30 (no base 60), 1.2.3, 0x, 1e


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with go-yaml v2's reading of plain scalars (see the module)
    and duplicate keys refused."""

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return resolve_plain(value)[0]
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # "<<" merges may legitimately be overridden
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found duplicate key {key_node.value!r}", key_node.start_mark)
            seen.add(key_node.value)
        self.flatten_mapping(node)  # "<<" merges, as SafeConstructor.construct_mapping
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            # each key as JSON writes it before the dict is built: 1 and yes (True) were
            # one key to Python, two ("1", "true") to kubectl
            key = json_key(self.construct_object(key_node, deep=deep))
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found unhashable key", key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def construct_binary_text(self, node: yaml.ScalarNode) -> str:
        """``!!binary``: go-yaml decodes it into a string (JSON then replaces bytes that
        are no UTF-8), where PyYAML made bytes."""
        return self.construct_yaml_binary(node).decode("utf-8", "replace")

    def construct_go_scalar(self, node: yaml.ScalarNode) -> Any:
        """A number, boolean or null: go-yaml's value of the scalar, also a tagged one
        (``!!float 3`` is 3.0, ``!!int 0x1F`` 31). A tag its text does not fit is
        go-yaml's error, in its words (``!!int 08``: PyYAML raised a ValueError, printed
        as a traceback)."""
        text = self.construct_scalar(node)
        tag, value = resolve_plain(text)
        if tag == node.tag:
            return value
        if node.tag == FLOAT and tag == INT:
            return float(value)
        short = {t: f"!!{t.removeprefix(_TAG)}" for t in (tag, node.tag)}
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot decode {short[tag]} `{text}` as a {short[node.tag]}",
            node.start_mark)


for _tag in (INT, FLOAT, BOOL, NULL):
    Loader.add_constructor(_tag, Loader.construct_go_scalar)
Loader.add_constructor(f"{_TAG}binary", Loader.construct_binary_text)


class Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes every string kubectl (or PyYAML) would read back as
    something else. PyYAML quotes only what YAML 1.1 reads as another type, so it wrote
    ``rack: 08``, ``rerun: 1e5`` and ``key: y`` plain: kubectl reads them as 8, 100000.0
    and true, and ``raykube train`` refused the very spec the operator had put in its
    ConfigMap (``nodeSelector.rack: must be a string``)."""

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == STR:
            return resolve_plain(value)[0]  # not a str to go-yaml: not implicit, so quoted
        return tag


def json_key(key: Any) -> Any:
    """A mapping key as sigs.k8s.io/yaml writes it into JSON: ``1`` is ``"1"``, ``yes``
    is ``"true"`` (``nodeSelector: {1: a}`` reaches the API server as ``{"1": "a"}``).
    Null and other keys stay as they are: kubectl refuses them, and so does validation."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(f"{key:g}", f"{key:g}")
    return key


MAX_INT64 = 2**63 - 1


def as_api_server_stores(doc: Any) -> Any:
    """``doc`` with each whole-number float of int64's range as the integer the API
    server stores for it: kubectl sends ``epochs: 10.0`` as the JSON number ``10``
    (JSON has no 10.0), which an integer field takes. A float field takes the integer
    as well, so ``lr: 1.0`` is unaffected."""
    if isinstance(doc, dict):
        return {k: as_api_server_stores(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [as_api_server_stores(v) for v in doc]
    if (isinstance(doc, float) and math.isfinite(doc) and doc.is_integer()
            and -MAX_INT64 - 1 <= doc <= MAX_INT64):
        return int(doc)
    return doc
