"""KubernetesReporter (real kubernetes client, KUBECONFIG) against the real API server."""

# ruff: noqa: F811  (pytest fixtures imported from raykube.testing.fixtures)
from __future__ import annotations

import pytest

from raykube.k8s_reporter import KubernetesReporter
from raykube.spec import parse_spec
from raykube.testing.fixtures import kube  # noqa: F401


@pytest.fixture
def kubeconfig(kube, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return kube


def test_reporter_patches_progress_and_best_checkpoint(kubeconfig):
    kube = kubeconfig
    kube.create({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                 "metadata": {"name": "rep"}, "spec": {
                     "model": {"name": "mlp"}, "data": {"dataset": "digits"}}})
    run = parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"},
                      "train": {"epochs": 3}}, name="rep")
    rep = KubernetesReporter.from_env({"RAYKUBE_TRAININGRUN": f"{kube.namespace}/rep"}, min_interval=3600)
    rep.on_start(run)
    rep.on_epoch({"epoch": 1, "trainLoss": 1.0, "valLoss": 0.9, "valAccuracy": 0.6}, "/c/1", None)
    tr = kube.get("TrainingRun", "rep")
    assert tr["status"]["progress"]["epoch"] == 1 and tr["status"]["checkpoint"]["uri"] == "/c/1"
    # rate-limited: the next epochs are held back ...
    rep.on_epoch({"epoch": 2, "trainLoss": 0.5, "valLoss": 0.4, "valAccuracy": 0.9}, "/c/2", None)
    rep.on_epoch({"epoch": 3, "trainLoss": 0.4, "valLoss": 0.5, "valAccuracy": 0.8}, "/c/3", None)
    assert kube.get("TrainingRun", "rep")["status"]["progress"]["epoch"] == 1
    assert rep.patches == 1
    # ... and flushed at the end: last progress, best checkpoint (epoch 2 by valAccuracy)
    rep.on_end({})
    st = kube.get("TrainingRun", "rep")["status"]
    assert st["progress"]["epoch"] == 3 and st["progress"]["epochs"] == 3
    assert st["checkpoint"] == {"uri": "/c/2", "epoch": 2, "metrics": {
        "epoch": 2.0, "trainLoss": 0.5, "valLoss": 0.4, "valAccuracy": 0.9}}
    assert rep.failures == 0


def test_the_reported_checkpoint_keeps_its_storage(kubeconfig):
    """In the operator's RayJob the driver says which storage its checkpoint is on
    (RAYKUBE_STORAGE_ID): the CRD keeps ``status.checkpoint.storage`` (the API server
    prunes a field its schema does not name) and the stored object is valid under it."""
    from k8s_schemas import validate_strict

    kube = kubeconfig
    spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
    kube.create({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                 "metadata": {"name": "rep-storage"}, "spec": spec})
    rep = KubernetesReporter.from_env({
        "RAYKUBE_TRAININGRUN": f"{kube.namespace}/rep-storage",
        "RAYKUBE_STORAGE": f"/mnt/raykube/{kube.namespace}",
        "RAYKUBE_STORAGE_ID": "pvc/other"}, min_interval=0)
    rep.on_start(parse_spec(spec, name="rep-storage"))
    uri = f"/mnt/raykube/{kube.namespace}/rep-storage/checkpoint_000000"
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.5}, uri, None)
    tr = kube.get("TrainingRun", "rep-storage")
    assert tr["status"]["checkpoint"]["storage"] == "pvc/other", tr["status"]
    assert tr["status"]["checkpoint"]["uri"] == uri
    assert validate_strict({k: tr[k] for k in ("apiVersion", "kind", "metadata", "spec",
                                               "status")}) == []


def test_reporter_never_raises_when_api_is_unreachable(tmp_path, monkeypatch):
    cfg = tmp_path / "kubeconfig"
    cfg.write_text("apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n"
                   "    server: http://127.0.0.1:9\nusers:\n- name: x\n  user: {}\n"
                   "contexts:\n- name: x\n  context: {cluster: x, user: x}\ncurrent-context: x\n")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    rep = KubernetesReporter("default", "nowhere", min_interval=0)
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/c/1", None)
    rep.on_end({})
    assert rep.failures >= 1 and rep.patches == 0


def test_reporter_publishes_the_best_tune_trial(kubeconfig):
    """A Tune result (tune.py's result.json shape) fills status.bestTrial and the
    checkpoint the operator will serve, and the trials by state; progress ends on the
    best trial (kubectl get tr's Epoch and Val-Acc columns), not the last to report. The
    stored object stays valid under our CRD (a field missing from it would be pruned)."""
    from k8s_schemas import validate_strict

    kube = kubeconfig
    doc = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}, "train": {"epochs": 3},
           "tune": {"trials": 4, "searchSpace": {"train.optimizer.lr": {"choice": [0.1, 0.01]}}}}
    kube.create({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                 "metadata": {"name": "tuned"}, "spec": doc})
    rep = KubernetesReporter.from_env({"RAYKUBE_TRAININGRUN": f"{kube.namespace}/tuned"}, min_interval=3600)
    rep.on_start(parse_spec(doc, name="tuned"))
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.7}, "/t/a/1", "a")
    rows = [{"trial": "a", "status": "RUNNING"}, {"trial": "b", "status": "RUNNING"}]
    rep.on_trials(rows)  # rate-limited: nothing new has ended
    assert rep.patches == 1
    # A trial's failure is sent at once, whatever the rate limit.
    rep.on_trials([{"trial": "a", "status": "ERROR"}, {"trial": "b", "status": "RUNNING"},
                   {"trial": "c", "status": "PENDING"}])
    assert rep.patches == 2
    assert kube.get("TrainingRun", "tuned")["status"]["trials"] == {
        "total": 4, "running": 1, "finished": 0, "stopped": 0, "failed": 1, "pending": 2}
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.3}, "/t/d/1", "d")  # the last to report
    rep.on_end({"best_checkpoint": "/t/b/3",
                "best_metrics": {"epoch": 3, "valAccuracy": 0.95, "valLoss": 0.2},
                "best_trial": {"trialId": "b", "config": {"train.optimizer.lr": 0.01},
                               "metric": 0.95},
                "trials": [{"trial": "a", "status": "ERROR"}, {"trial": "b", "status": "TERMINATED"},
                           {"trial": "c", "status": "TERMINATED"}, {"trial": "d", "status": "STOPPED"}]})
    tr = kube.get("TrainingRun", "tuned")
    st = tr["status"]
    assert st["bestTrial"] == {"trialId": "b", "config": {"train.optimizer.lr": 0.01}, "metric": 0.95}
    assert st["checkpoint"]["uri"] == "/t/b/3" and st["checkpoint"]["epoch"] == 3
    assert st["trials"] == {"total": 4, "running": 0, "finished": 2, "stopped": 1, "failed": 1,
                            "pending": 0}
    progress = {k: v for k, v in st["progress"].items() if k != "updatedAt"}
    assert progress == {"trial": "b", "epoch": 3, "epochs": 3, "valAccuracy": 0.95, "valLoss": 0.2}
    assert validate_strict({k: tr[k] for k in ("apiVersion", "kind", "metadata", "spec", "status")}) == []


def test_a_refused_patch_is_logged_on_one_line(kube, tmp_path, monkeypatch, caplog):
    """A token that may not patch the TrainingRun (403 from the real API server): one
    warning line with the status and the API server's message, no response headers."""
    kube.cp.apply_objects([{"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": "no-status", "namespace": kube.namespace}}])
    cfg = kube.cp.kubeconfig_for("no-status", kube.namespace, tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rep = KubernetesReporter(kube.namespace, "someone-else", min_interval=0)
    with caplog.at_level("WARNING", logger="raykube.k8s_reporter"):
        rep.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/c/1", None)
    assert rep.failures == 1 and rep.patches == 0
    [line] = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "HTTP response headers" not in line, line
    assert "403 Forbidden: " in line and "cannot patch resource" in line, line


def test_a_server_that_never_answers_costs_the_deadline_not_a_hang(tmp_path, monkeypatch):
    """Stands in for an API server behind a firewall that drops packets: a socket that
    accepts and never answers. The patch gives up at the reporter's deadline (without
    one it waited as long as the test let it: killed after 40 s)."""
    import socket
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    cfg = tmp_path / "kubeconfig"
    cfg.write_text("apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n"
                   f"    server: http://127.0.0.1:{port}\nusers:\n- name: x\n  user: {{}}\n"
                   "contexts:\n- name: x\n  context: {cluster: x, user: x}\ncurrent-context: x\n")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rep = KubernetesReporter("default", "silent", min_interval=0, request_timeout=(1.0, 1.0))
    t0 = time.monotonic()
    try:
        rep.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/c/1", None)
    finally:
        srv.close()
    assert rep.failures == 1 and rep.patches == 0
    assert time.monotonic() - t0 < 10


def test_no_trainingrun_is_said_once_and_not_retried(kubeconfig, caplog):
    """A RayJob rendered for GitOps (``raykube render``) runs with no TrainingRun behind
    it: the first patch's 404 is one warning, and the reporter stops (before, a warning
    and a request at every epoch)."""
    kube = kubeconfig
    rep = KubernetesReporter(kube.namespace, "rendered-only", min_interval=0)
    with caplog.at_level("WARNING", logger="raykube.k8s_reporter"):
        for epoch in (1, 2, 3):
            rep.on_epoch({"epoch": epoch, "valAccuracy": 0.5}, f"/c/{epoch}", None)
        rep.on_end({"best_checkpoint": "/c/3", "best_metrics": {"epoch": 3, "valAccuracy": 0.5}})
    assert rep.gone and rep.failures == 1 and rep.patches == 0
    [line] = [r.getMessage() for r in caplog.records]
    assert "rendered-only does not exist (404 Not Found" in line, line
    calls = [c for c in kube.calls(user="admin")
             if c.plural == "trainingruns" and c.name == "rendered-only"
             and c.namespace == kube.namespace]
    assert len(calls) == 1, calls


def test_a_worker_failure_is_in_the_status_at_once(kubeconfig):
    """Ray Train's worker-group failure (here the line train.py's failure callback gives
    its observers) reaches status.workerFailures without waiting for the rate limit or
    the next epoch, counted; the CRD keeps the field (the API server would prune one it
    does not know)."""
    kube = kubeconfig
    kube.create({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                 "metadata": {"name": "rep-fail"}, "spec": {
                     "model": {"name": "mlp"}, "data": {"dataset": "digits"}}})
    rep = KubernetesReporter.from_env({"RAYKUBE_TRAININGRUN": f"{kube.namespace}/rep-fail"},
                                      min_interval=3600)
    rep.on_start(parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"}},
                            name="rep-fail"))
    rep.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/c/1", None)
    rep.on_epoch({"epoch": 2, "valAccuracy": 0.6}, "/c/2", None)  # held back
    first = ("worker failure (rank 1: OutOfMemoryError: Task was killed due to the node "
             "running low on memory.); restarting the workers from the last checkpoint "
             "(retry 1 of 3)")
    rep.on_failure(first)
    st = kube.get("TrainingRun", "rep-fail")["status"]
    assert st["workerFailures"]["count"] == 1 and st["workerFailures"]["last"] == first
    assert st["workerFailures"]["at"].endswith("Z")
    assert st["progress"]["epoch"] == 2  # what was held back went with it
    rep.on_failure("worker failure (rank 0: RuntimeError: boom); no retries left "
                   "(failure.maxWorkerFailures=1)")
    st = kube.get("TrainingRun", "rep-fail")["status"]
    assert st["workerFailures"]["count"] == 2 and "no retries left" in st["workerFailures"]["last"]
    assert rep.patches == 3


def test_a_new_attempts_driver_clears_the_last_attempts_worker_failures(kubeconfig):
    """status.workerFailures counts the current attempt's: a retried or resumed run
    (after a suspend, whose workers stop first) starts a new driver with Ray Train's
    whole budget, and with the first epoch the old attempt's failures are gone."""
    kube = kubeconfig
    spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
    kube.create({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                 "metadata": {"name": "rep-again"}, "spec": spec})
    env = {"RAYKUBE_TRAININGRUN": f"{kube.namespace}/rep-again"}
    first = KubernetesReporter.from_env(env, min_interval=3600)
    first.on_start(parse_spec(spec, name="rep-again"))
    first.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/c/1", None)
    first.on_failure("worker failure (rank 0: WorkerHealthCheckFailedError: The actor died "
                     "because its node has died.); restarting the workers from the last "
                     "checkpoint (retry 1 of 3)")
    assert kube.get("TrainingRun", "rep-again")["status"]["workerFailures"]["count"] == 1
    second = KubernetesReporter.from_env(env, min_interval=3600)  # the next attempt's
    second.on_start(parse_spec(spec, name="rep-again"))
    second.on_epoch({"epoch": 2, "valAccuracy": 0.6}, "/c/2", None)
    st = kube.get("TrainingRun", "rep-again")["status"]
    assert "workerFailures" not in st and st["progress"]["epoch"] == 2, st
    second.on_failure("worker failure (rank 1: RuntimeError: boom); restarting the workers "
                      "from the last checkpoint (retry 1 of 3)")
    assert kube.get("TrainingRun", "rep-again")["status"]["workerFailures"]["count"] == 1


def test_a_failed_attempt_says_in_the_run_directory_whether_kuberay_retries_it(
        kube, tmp_path, monkeypatch, capsys, caplog):
    """``raykube train``'s ``record_failure`` as the driver runs it in a rendered RayJob:
    with the token of the driver's own ServiceAccount and the Role ``raykube render``
    gives it, on the real API server (RBAC enforced). It reads its RayJob and writes
    ``failed.json``: final once ``status.failed`` has reached ``spec.backoffLimit``. The
    RayJob is one this test writes, ``status.failed`` included, standing in for KubeRay's
    count (KubeRay does not act in this namespace). A Role rendered before the RayJob
    rule: one warning line, and a failure that is not called final."""
    import logging
    import time

    from raykube import render as R
    from raykube import run_failure
    from raykube.commands.train import record_failure

    run = parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"}},
                     name="failing", namespace=kube.namespace)
    cfg = R.RenderConfig()
    rbac = R.render_rbac(run, cfg)
    kube.cp.apply_objects(rbac)
    rayjob = R.render_rayjob(run, cfg)
    rayjob["spec"]["suspend"] = True
    rayjob["spec"]["backoffLimit"] = 2
    kube.create(rayjob)
    sa = rbac[0]["metadata"]["name"]
    monkeypatch.setenv("KUBECONFIG", str(kube.cp.kubeconfig_for(sa, kube.namespace,
                                                                tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("RAYKUBE_TRAININGRUN", f"{kube.namespace}/failing")
    run_dir = str(tmp_path / "runs" / kube.namespace / "failing")

    def attempt(failed: int | None) -> run_failure.RunFailure:
        if failed is not None:
            kube.patch_status("RayJob", "failing", {"failed": failed})
        assert record_failure(run_dir, "training failed: boom", permanent=False) is True
        got = run_failure.read(run_dir)
        assert got is not None and got.message == "training failed: boom"
        return got

    first = attempt(None)
    assert (first.final, first.outcome) == (False, "KubeRay retries it: retry 1 of 2")
    assert "this attempt failed (KubeRay retries it: retry 1 of 2): said in " \
           f"{run_dir}/failed.json" in capsys.readouterr().err
    assert (attempt(1).final, attempt(1).outcome) == (False, "KubeRay retries it: retry 2 of 2")
    last = attempt(2)
    assert (last.final, last.outcome) == (
        True, "no RayJob retry is left, spec.failure.maxRetries: 2")
    assert "the run failed for good" in capsys.readouterr().err

    # the Role as rendered before it could read the RayJob (the same field manager: the
    # rules are replaced). The API server's RBAC informer takes a moment to see it.
    kube.cp.apply_objects([{**rbac[1], "rules": rbac[1]["rules"][:1]}])
    deadline = time.monotonic() + 30
    while True:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raykube.k8s_reporter"):
            unknown = attempt(None)
        if unknown.outcome != last.outcome or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (unknown.final, unknown.outcome) == (
        False, "whether KubeRay retries it is not known here")
    [line] = [r.getMessage() for r in caplog.records if r.name == "raykube.k8s_reporter"]
    assert line.startswith(f"could not read RayJob {kube.namespace}/failing to tell whether "
                           "KubeRay retries this attempt: 403 Forbidden: "), line
    assert "\n" not in line


def test_a_rendered_rayjobs_driver_says_no_trainingrun_can_cancel_the_retries(
        kubeconfig, monkeypatch, capsys):
    """A cause every attempt would meet, in a RayJob of ``raykube render`` (no TrainingRun,
    no operator): the driver says that KubeRay retries it anyway, not that an operator
    did not answer (there is none to answer), and does not wait for one."""
    import time

    from raykube.commands.train import give_up

    monkeypatch.setenv("RAYKUBE_TRAININGRUN", f"{kubeconfig.namespace}/rendered-only-2")
    started = time.monotonic()
    assert give_up("image-folder /nope: cannot list it") is True
    assert time.monotonic() - started < 20  # STOP_RETRIES_WAIT_S is 30 s
    assert capsys.readouterr().err.splitlines()[-1] == (
        "raykube train: no TrainingRun to ask to cancel KubeRay's retries (a rendered RayJob): "
        "KubeRay retries as its backoffLimit says, and each attempt fails the same way")


def test_the_drivers_note_is_in_the_status_and_nothing_to_train_in_the_message(kubeconfig):
    """A run re-created under a name whose directory already held more epochs trained
    nothing and said only "the Ray job succeeded" (the real-pods probe; the driver's log
    alone said why). The driver's note reaches status.lastNote at once (the CRD keeps
    it), and the operator's success message carries it."""
    from raykube.events import notify
    from raykube_operator import status as st

    kube = kubeconfig
    spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
    kube.create({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                 "metadata": {"name": "rep-note"}, "spec": spec})
    rep = KubernetesReporter.from_env({"RAYKUBE_TRAININGRUN": f"{kube.namespace}/rep-note"},
                                      min_interval=3600)
    rep.on_start(parse_spec(spec, name="rep-note"))
    note = ("/mnt/raykube/default/rep-note already has 100 epochs (asked for 12): "
            "nothing to train")
    notify([rep], note)  # as train.py tells its observers
    status = kube.get("TrainingRun", "rep-note")["status"]
    assert status["lastNote"]["message"] == note and status["lastNote"]["at"].endswith("Z")
    done = {"metadata": {"name": "rep-note"}, "status": {
        "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1}}
    out = st.status_from_rayjob(done, status, now="2026-12-06T00:00:00Z", generation=1)
    assert out["message"] == f"the Ray job succeeded: {note}", out["message"]
    assert st.phase_event({}, out)[2] == out["message"]
    # another attempt's driver starts without the last one's note
    again = KubernetesReporter.from_env({"RAYKUBE_TRAININGRUN": f"{kube.namespace}/rep-note"},
                                        min_interval=3600)
    again.on_start(parse_spec(spec, name="rep-note"))
    again.on_epoch({"epoch": 1, "valAccuracy": 0.5}, "/c/1", None)
    assert "lastNote" not in kube.get("TrainingRun", "rep-note")["status"]
