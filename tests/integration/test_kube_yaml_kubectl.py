"""A TrainingRun file reads the same to ``raykube validate`` as to kubectl and the API
server (``raykube.kube_yaml``): a differential probe of 575 TrainingRuns found 47 that one
side took and the other refused, most from plain scalars PyYAML (YAML 1.1) and go-yaml v2
read differently (``rerun: 12:30`` was 750 here and "12:30" on the cluster; ``epochs: 08``
a string here and 8 there). Real kubectl, real API server, our CRD."""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import json

import pytest

from raykube.spec import InvalidTrainingRun, load_yaml_documents, parse_training_run
from raykube.testing.fixtures import kube  # noqa: F401

SCALARS = [
    "08", "09", "0800", "010", "007", "00", "0o17", "-0o17", "0O17", "0x1F", "0X1F", "0b101",
    "0B101", "1_000", "0x_1F", "0.5_5", "1:30", "1:30:00", "-1:30", "12:30", "0:30",
    "190:20:30", "-.5", "+.5", ".5", "+1.", "1.", "1e3", "1E3", "1e+3", "-1e-3", ".5e3", "0e0",
    "-0.0", "2.0", "1e20", "9223372036854775807", "+12", "-0", "y", "Y", "n", "N", "yes", "on",
    "off", "no", "True", "FALSE", "~", "null", "NULL", "2026-12-05", "2026-12-05 10:00:00",
    "2026-12-05T10:00:00Z", "0.0.1", "1e", "e3", "0x", "1.2.3", "=", "a:b", "!!float 3",
    "!!str 08", "!!binary aGVsbG8=",
]


def _kubectl_json(kube, text: str) -> dict:
    out = kube.cp.kubectl_run("apply", "--dry-run=client", "-o", "json", "-n", kube.namespace,
                              "-f", "-", input=text)
    return json.loads(out.stdout)


def _doc(body: str) -> str:
    return ("apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: yaml-read}\n"
            "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n" + body)


def test_plain_scalars_read_as_kubectl_reads_them(kube):
    listed = "".join(f"        - {s}\n" for s in SCALARS)
    text = _doc(f"  tune:\n    searchSpace:\n      x:\n        choice:\n{listed}"
                "  scaling:\n    nodeSelector: {1: a, yes: b}\n")
    theirs = _kubectl_json(kube, text)["spec"]
    ours = load_yaml_documents(text)[0]["spec"]
    got = ours["tune"]["searchSpace"]["x"]["choice"]
    # kubectl prints 1e20 as 100000000000000000000, which the API server, past int64,
    # stores as the float it is
    want = [float(w) if type(w) is int and abs(w) > 2**63 - 1 else w
            for w in theirs["tune"]["searchSpace"]["x"]["choice"]]
    differ = [(s, w, g) for s, w, g in zip(SCALARS, want, got, strict=True)
              if (type(w), w) != (type(g), g)]
    assert differ == [], differ
    assert ours["scaling"]["nodeSelector"] == theirs["scaling"]["nodeSelector"] == {
        "1": "a", "true": "b"}


@pytest.mark.parametrize("body,field,value", [
    ("  rerun: 12:30\n", ("rerun",), "12:30"),  # base 60 for PyYAML: 750, refused
    ("  train: {epochs: 08}\n", ("train", "epochs"), 8),  # a string for PyYAML, refused
    ("  train: {epochs: 0o10, seed: 0o777}\n", ("train", "seed"), 511),
    ("  scaling: {workers: 2.0}\n", ("scaling", "workers"), 2),  # JSON's 2: an integer
    ("  rerun: =\n", ("rerun",), "="),  # PyYAML: 'could not determine a constructor'
])
def test_what_the_api_server_takes_validates(kube, body, field, value):
    """Each was refused by ``raykube validate`` and run by the cluster."""
    text = _doc(body)
    out = kube.cp.kubectl_run("apply", "--dry-run=server", "-n", kube.namespace, "-f", "-",
                              input=text, check=False)
    assert out.returncode == 0, out.stderr
    run = parse_training_run(load_yaml_documents(text)[0])
    node = run.spec.model_dump(by_alias=False)
    for key in field:
        node = node[key]
    assert node == value


@pytest.mark.parametrize("body,field", [
    ("  rerun: 0800\n", "spec.rerun"),  # 800 for kubectl: no string
    ("  rerun: -.5\n", "spec.rerun"),
    ("  train: {epochs: 1:30}\n", "spec.train.epochs"),  # a string for kubectl
])
def test_what_the_api_server_refuses_does_not_validate(kube, body, field):
    """Each was valid to ``raykube validate`` and refused by ``kubectl apply``."""
    text = _doc(body)
    out = kube.cp.kubectl_run("apply", "--dry-run=server", "-n", kube.namespace, "-f", "-",
                              input=text, check=False)
    assert out.returncode != 0 and field in out.stderr, out.stderr
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(load_yaml_documents(text)[0])
    assert [e.path for e in info.value.errors] == [field]


@pytest.mark.parametrize("value,words", [
    ("!!int 08", "cannot decode !!float `08` as a !!int"),
    ("!!int abc", "cannot decode !!str `abc` as a !!int"),
    ("!!bool maybe", "cannot decode !!str `maybe` as a !!bool"),
    ("!!float 1:30", "cannot decode !!str `1:30` as a !!float"),
])
def test_a_tag_its_text_does_not_fit_is_a_yaml_error_for_both(kube, value, words, tmp_path,
                                                               capsys):
    """PyYAML raised a ValueError or KeyError for these (a traceback from ``raykube
    validate``); kubectl refuses the file, and so does raykube, in go-yaml's words."""
    from raykube.cli import main

    text = _doc(f"  train: {{epochs: {value}}}\n")
    out = kube.cp.kubectl_run("apply", "--dry-run=client", "-o", "json", "-n", kube.namespace,
                              "-f", "-", input=text, check=False)
    assert out.returncode != 0 and words in out.stderr, out.stderr
    f = tmp_path / "tagged.yaml"
    f.write_text(text)
    assert main(["validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


def test_what_we_write_kubectl_reads_back_as_written(kube):
    """``raykube render`` and the operator's spec ConfigMap write YAML that kubectl and
    ``raykube train`` read again. PyYAML's dumper wrote ``rack: 08``, ``rerun: 1e5`` and
    ``y`` plain (strings to YAML 1.1), which kubectl reads as 8, 100000.0 and true: the
    rendered RayJob's nodeSelector was refused, and the driver refused the spec the
    operator had written for it (a new-user probe)."""
    from raykube import render

    strings = [s for s in SCALARS if not s.startswith("!!")]
    run = parse_training_run(load_yaml_documents(_doc(
        "  rerun: '1e5'\n  scaling:\n    nodeSelector: {rack: '08', 'y': 'n'}\n"))[0])
    (cm,) = [o for o in render.render_training(run, render.RenderConfig())
             if o["kind"] == "ConfigMap"]
    # the driver's read of the spec the operator writes
    spec_text = cm["data"][render.SPEC_FILE]
    again = parse_training_run(load_yaml_documents(spec_text)[0])
    assert again.spec.rerun == "1e5"
    assert again.spec.scaling.node_selector == {"rack": "08", "y": "n"}
    # kubectl's read of what we write, for every awkward scalar
    data = {f"k{i}": s for i, s in enumerate(strings)} | {"08": "y", "n": "1e5"}
    text = render.dump_yaml([{"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "written"}, "data": data}])
    assert _kubectl_json(kube, text)["data"] == data
    assert load_yaml_documents(text)[0]["data"] == data
