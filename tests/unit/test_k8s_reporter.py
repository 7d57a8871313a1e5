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


def _search(metric: str = "valAccuracy"):
    from pathlib import Path

    from raykube.spec import load_yaml_documents, parse_training_run

    doc, = load_yaml_documents((Path(__file__).resolve().parents[2] / "jobs" /
                                "digits-tune.yaml").read_text())
    doc["spec"]["tune"].update(metric=metric, maxConcurrentTrials=2)
    rep, api = _reporter(POD_ENV)
    rep.on_start(parse_training_run(doc))
    return rep, api


def test_a_searchs_progress_is_its_best_epoch_so_far_not_the_last_trial_to_report():
    """Two trials at once: their epochs interleave. The Epoch and Val-Acc columns follow
    the best epoch by tune.metric (what the search would choose now), so they do not jump
    1, 1, 2, 2 between trials with the accuracy rising and falling with them."""
    rep, api = _search()
    reports = [("a", 1, 0.60), ("b", 1, 0.70), ("a", 2, 0.65), ("b", 2, 0.80),
               ("a", 3, 0.85), ("b", 3, 0.79)]
    shown = []
    for trial, epoch, acc in reports:
        rep.on_epoch({"epoch": epoch, "valAccuracy": acc, "trainLoss": 0.5}, None, trial)
        progress = api.statuses[-1].get("progress") if api.statuses else None
        shown.append((progress["trial"], progress["epoch"]) if progress else None)
    # each patch sent holds the leader; a report that does not lead changes nothing
    assert shown == [("a", 1), ("b", 1), ("b", 1), ("b", 2), ("a", 3), ("a", 3)], shown
    assert [s["progress"]["valAccuracy"] for s in api.statuses if "progress" in s] == [
        0.6, 0.7, 0.8, 0.85]


def test_a_search_ranked_by_a_loss_leads_with_the_lowest():
    rep, api = _search("valLoss")
    for trial, epoch, loss in [("a", 1, 0.9), ("b", 1, 0.5), ("a", 2, 0.7)]:
        rep.on_epoch({"epoch": epoch, "valLoss": loss}, None, trial)
    assert [(s["progress"]["trial"], s["progress"]["valLoss"]) for s in api.statuses
            if "progress" in s] == [("a", 0.9), ("b", 0.5)]
