"""The driver's status reporter without an API server (a recording stand-in for the
client); against the real API server and CRD: tests/integration/test_operator_reporter.py."""

from __future__ import annotations

from raykube.k8s_reporter import KubernetesReporter, storage_from_env


class _Api:
    def __init__(self):
        self.statuses = []

    def patch_namespaced_custom_object_status(self, group, version, ns, plural, name, body,
                                              **_):
        self.statuses.append(body["status"])


POD_ENV = {"RAYKUBE_TRAININGRUN": "default/quickstart",
           "RAYKUBE_STORAGE": "/mnt/raykube/default", "RAYKUBE_STORAGE_ID": "pvc/other"}


def _reporter(env):
    api = _Api()
    return KubernetesReporter.from_env(env, api=api, min_interval=0), api


def test_the_checkpoint_says_which_storage_it_is_on():
    """In the operator's RayJob (RAYKUBE_STORAGE_ID): ``status.checkpoint.storage``, at
    each better epoch and at the end, so that the operator can tell a checkpoint of the
    claim now named from one of the previous claim mounted at the same path."""
    rep, api = _reporter(POD_ENV)
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.5},
                 "/mnt/raykube/default/quickstart/checkpoint_000000", None)
    assert api.statuses[-1]["checkpoint"]["storage"] == "pvc/other"
    rep.on_end({"bestCheckpoint": "/mnt/raykube/default/quickstart/checkpoint_000000",
                "bestMetrics": {"epoch": 1, "valAccuracy": 0.5}})
    assert api.statuses[-1]["checkpoint"] == {
        "uri": "/mnt/raykube/default/quickstart/checkpoint_000000", "storage": "pvc/other",
        "epoch": 1, "metrics": {"epoch": 1.0, "valAccuracy": 0.5}}


def test_no_storage_where_the_pod_does_not_say_or_the_checkpoint_is_elsewhere():
    """Pods of an older operator (no RAYKUBE_STORAGE_ID), or a checkpoint outside
    ``RAYKUBE_STORAGE`` (``raykube train --storage`` elsewhere): the field is not
    written, and the operator goes by the path as before."""
    older = {k: v for k, v in POD_ENV.items() if k != "RAYKUBE_STORAGE_ID"}
    rep, api = _reporter(older)
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/mnt/raykube/default/q/c1", None)
    assert "storage" not in api.statuses[-1]["checkpoint"]
    rep, api = _reporter(POD_ENV)
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/elsewhere/default/q/c1", None)
    rep.on_epoch({"epoch": 2, "valAccuracy": 0.6}, "/mnt/raykube/defaultx/q/c2", None)
    assert [s["checkpoint"].get("storage") for s in api.statuses] == [None, None]
    assert storage_from_env({}) == {"storage": None, "storage_root": None}


def test_progress_is_shown_to_four_decimals_and_the_checkpoint_keeps_every_digit():
    """`kubectl get tr`'s VAL-ACC column (type number) printed 0.9498607242339833; the
    gate reads status.checkpoint.metrics, which keeps the value as measured."""
    rep, api = _reporter(POD_ENV)
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.9498607242339833, "valLoss": 0.123456789,
                  "trainLoss": 0.3}, "/mnt/raykube/default/quickstart/checkpoint_000000", None)
    status = api.statuses[-1]
    assert {k: v for k, v in status["progress"].items() if k != "updatedAt"} == {
        "epoch": 1, "valAccuracy": 0.9499, "valLoss": 0.1235, "trainLoss": 0.3}
    assert status["checkpoint"]["metrics"]["valAccuracy"] == 0.9498607242339833
