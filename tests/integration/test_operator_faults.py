"""The operator against the kmock HTTP emulator, for faults a real API server cannot
produce on demand: a 429/5xx/409 injected on one chosen request, and TrainingRuns that no
CRD schema would let through (no CRD installed, or a stale one). Everything else runs on
the real control plane (test_operator*.py).
"""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import time

import pytest

from operator_helpers import CHILD_KINDS, children, cond, events, good_spec, status_is_valid, tr_doc
from raykube.testing.fixtures import kmock_kube, kmock_operator  # noqa: F401


@pytest.fixture(scope="module")
def kube(kmock_kube):
    return kmock_kube


@pytest.fixture(scope="module")
def operator(kmock_operator):
    return kmock_operator


@pytest.fixture(autouse=True)
def operator_logs(operator):
    yield
    print(operator.logs()[-8000:])


def test_transient_api_errors_are_retried(kube, operator):
    faults = [kube.inject("create", "rayjobs", 500), kube.inject("create", "configmaps", 429),
              kube.inject("patch", "trainingruns", 409, subresource="status"),
              kube.inject("create", "serviceaccounts", 503)]
    name = "flaky"
    kube.create(tr_doc(name))
    kube.wait_condition(name, "Validated", timeout=30)
    kube.wait_for(lambda: len(children(kube, name)) == len(CHILD_KINDS), what="children")
    assert [f.hits for f in faults] == [1, 1, 1, 1]


def test_a_throttled_start_is_logged_as_a_warning(kube, operator):
    """The API server's priority and fairness (or its "storage is (re)initializing" just
    after a start) answers 429 and kopf retries: it logged that at ERROR."""
    fault = kube.inject("list", "trainingruns", 429)
    # kmock keeps the start-up checks' SelfSubjectReviews and refuses the next start's
    # (409): the restarted operator skips them
    operator.env["RAYKUBE_PREFLIGHT"] = "0"
    operator.restart()
    kube.wait_for(lambda: fault.hits == 1, what="the throttled list")
    kube.create(tr_doc("after-429"))
    kube.wait_condition("after-429", "Validated", timeout=30)
    said = [line for line in operator.logs().splitlines() if "APITooManyRequestsError" in line]
    assert said and all("[WARNING" in line and "will retry" in line for line in said), said
    assert not [line for line in operator.logs().splitlines() if "[ERROR" in line]


# ------------------------------------------------------------------ malformed input
def _bad(spec_edit):
    def make(name):
        doc = tr_doc(name)
        spec_edit(doc)
        return doc
    return make


MALFORMED = {
    "no-spec": (lambda d: d.pop("spec"), "spec"),
    "spec-list": (lambda d: d.update(spec=[1, 2]), "spec"),
    "spec-null": (lambda d: d.update(spec=None), "spec"),
    "model-str": (lambda d: d["spec"].update(model="mlp"), "spec.model"),
    "deep-type": (lambda d: d["spec"]["train"]["optimizer"].update(lr="fast"),
                  "spec.train.optimizer.lr"),
    "hidden-str": (lambda d: d["spec"]["model"]["options"].update(hidden="128"),
                   "spec.model.options.hidden"),
    "unknown": (lambda d: d["spec"]["scaling"].update(gpus=1), "spec.scaling.gpus"),
    "long-name": (lambda d: d["metadata"].update(name="x" * 50), "metadata.name"),
    "junk-status": (lambda d: d.update(status={"phase": "Serving", "junk": [1]},
                                       extra={"a": 1}) or d["spec"].update(suspend="yes"),
                    "spec.suspend"),
}


def test_malformed_trainingruns_fail_cleanly_and_recover_when_fixed(kube, operator):
    names = {}
    for key, (edit, _field) in MALFORMED.items():
        doc = tr_doc(f"bad-{key}")
        edit(doc)
        names[key] = doc["metadata"]["name"]
        kube.create(doc)
    for key, (_edit, field) in MALFORMED.items():
        name = names[key]
        tr = kube.wait_condition(name, "Validated", "False", reason="InvalidSpec")
        msg = cond(tr, "Validated")["message"]
        assert field in msg, (key, msg)
        assert tr["status"]["phase"] == "Failed", (key, tr["status"])
        assert status_is_valid(tr) == [], (key, status_is_valid(tr))
        kube.wait_for(lambda n=name: any(e.get("reason") == "InvalidSpec"
                                         for e in events(kube, n)), what=f"{key} event")
    # the operator keeps serving valid TrainingRuns after all that, without a retry loop
    # on the bad ones (a permanent problem is reported once, not hammered)
    def bad_writes():
        return sum(1 for c in kube.operator_calls() if c.verb == "patch"
                   and c.name in names.values())
    writes = bad_writes()
    kube.create(tr_doc("after-bad"))
    kube.wait_object("RayJob", "after-bad")
    time.sleep(1.0)
    assert operator.proc.poll() is None and bad_writes() == writes
    for name in names.values():
        assert children(kube, name) == [], name
    # fixing the spec starts the run, and the stale error goes away
    for key in ("no-spec", "spec-list", "model-str", "deep-type", "junk-status"):
        name = names[key]
        # RFC 7386 replaces a list/scalar by an object; kmock cannot: null it first
        kube.patch("TrainingRun", name, {"spec": None})
        kube.patch("TrainingRun", name, {"spec": good_spec()})
        tr = kube.wait_condition(name, "Validated", "True")
        kube.wait_object("RayJob", name)
        tr = kube.wait_object("TrainingRun", name,
                              where=lambda o: o["status"].get("phase") == "Pending")
        assert tr["status"]["message"].startswith("the spec is valid now"), tr["status"]
        assert status_is_valid(tr) == [], status_is_valid(tr)


