"""The cluster path: serveConfigV2 as rendered for a RayService, deployed through Serve's
declarative config API (what KubeRay does), then upgraded to a new checkpoint in place
while requests keep being answered.

Serve's rolling update stops an outdated replica before starting its successor, so with
one replica requests wait (queued at the proxy) for a few seconds during the switch;
none may fail.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from raykube.spec import parse_spec

pytestmark = pytest.mark.integration

PORT = 8766


def test_rendered_serve_config_deploys_and_upgrades_without_downtime(ray_session,
                                                                      tmp_path):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema
    from test_serve import SPEC, train_digits_checkpoint

    from raykube.render import serve_config
    from raykube.serve import wait_healthy

    first = train_digits_checkpoint(tmp_path / "checkpoint_a", epochs=1)
    second = train_digits_checkpoint(tmp_path / "checkpoint_b", epochs=2)
    run = parse_spec({**SPEC, "serve": {"enabled": True, "maxBatchSize": 4,
                                        "batchWaitTimeoutMs": 1.0, "cpusPerReplica": 0.5}},
                     name="digits")
    serve.shutdown()  # declarative apps cannot join imperatively deployed ones
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    base = f"http://127.0.0.1:{PORT}"
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        client.deploy_apps(ServeDeploySchema.model_validate(serve_config(run, first)),
                           _blocking=True)
        wait_healthy(base)
        meta = httpx.get(f"{base}/metadata", timeout=60).json()
        assert meta["checkpoint"] == first and meta["epoch"] == 1
        assert meta["batching"] == {"maxBatchSize": 4, "batchWaitTimeoutMs": 1.0}

        # Upgrade: same app, new checkpoint; keep sending requests meanwhile.
        statuses: list[int] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    r = c.post(f"{base}/predict", json={"instances": [[0.0] * 64]})
                    statuses.append(r.status_code)
                    time.sleep(0.02)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        client.deploy_apps(ServeDeploySchema.model_validate(serve_config(run, second)))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if httpx.get(f"{base}/metadata", timeout=60).json()["checkpoint"] == second:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        stop.set()
        t.join(30)
        assert httpx.get(f"{base}/metadata", timeout=60).json()["epoch"] == 2
        assert statuses and set(statuses) == {200}, f"non-200 during upgrade: {set(statuses)}"
    finally:
        serve.shutdown()


def test_a_rendered_service_applied_beside_its_training_serves_once_the_run_finishes(
        ray_session, tmp_path):
    """``raykube render`` output applied at once (GitOps): the RayService's replicas start
    before the RayJob beside it has trained. Deployed through Serve's declarative API as
    KubeRay does, the application keeps starting while ``best/`` is missing, and while
    it is there but the run has not written ``result.json`` (``best/`` may be half
    copied), then serves the model with no redeploy. Before, each replica failed at start
    until Serve gave up on the application (DEPLOY_FAILED)."""
    import json
    import shutil

    from ray import serve
    from ray.serve.schema import ServeDeploySchema
    from test_serve import SPEC, train_digits_checkpoint

    from raykube.render import serve_config
    from raykube.serve import TRAINING_POLL_S, wait_healthy

    trained = train_digits_checkpoint(tmp_path / "trained", epochs=1)
    run_dir = tmp_path / "runs" / "default" / "digits"
    best = run_dir / "best"
    run = parse_spec({**SPEC, "serve": {"enabled": True, "cpusPerReplica": 0.5}}, name="digits")
    config = serve_config(run, str(best), wait_for_training=True)
    serve.shutdown()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    base = f"http://127.0.0.1:{PORT}"

    def replica_log() -> str:
        import ray

        logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
        return "".join(f.read_text(errors="replace")
                       for f in sorted(logs.glob("replica_classifier_Classifier_*.log")))

    def starting_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            app = serve.status().applications.get("classifier")
            assert app is not None and app.status == "DEPLOYING", app
            try:  # Serve's proxy holds a request for an app that is not up yet
                r = httpx.get(f"{base}/metadata", timeout=2)
            except httpx.TimeoutException:
                continue
            assert r.status_code != 200, r.text
            time.sleep(1.0)

    try:
        from ray.serve.context import _get_global_client

        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        starting_for(3 * TRAINING_POLL_S)  # no run directory at all yet
        # what the replica says, where Serve keeps a replica's log (ray logs, RayService pods)
        assert f"waiting for the training run in {run_dir} to finish: {best} is served once " \
               "its result.json exists" in replica_log(), replica_log()
        shutil.copytree(trained, best)
        starting_for(2 * TRAINING_POLL_S)  # best/ there, the run not finished
        (run_dir / "result.json").write_text(json.dumps({"best_checkpoint": str(best)}))
        wait_healthy(base, timeout_s=60 + 2 * TRAINING_POLL_S)
        meta = httpx.get(f"{base}/metadata", timeout=60).json()
        assert meta["checkpoint"] == str(best) and meta["epoch"] == 1, meta
        r = httpx.post(f"{base}/predict", json={"instances": [[0.0] * 64]}, timeout=60)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text
        assert f"the training run in {run_dir} has finished" in replica_log(), replica_log()
    finally:
        serve.shutdown()


def test_a_rendered_service_whose_run_failed_for_good_fails_naming_the_runs_reason(
        ray_session, tmp_path):
    """The RayJob beside the RayService failed for good: its driver wrote ``failed.json``
    (``raykube.run_failure``). Deployed through Serve's declarative API as KubeRay does,
    the application ends ``DEPLOY_FAILED`` with the run's reason in its message, where
    before it stayed ``DEPLOYING`` for ever. The failure is from before the replicas
    waited, so the first replica gives it the grace period (10 s here, through the serving
    pods' environment; 5 minutes by default) and Serve's next tries believe it at once:
    one replica says it waits, not three."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema
    from test_serve import SPEC

    from raykube import run_failure
    from raykube.render import serve_config

    run_dir = tmp_path / "runs" / "default" / "digits"
    run_failure.record(str(run_dir), run_failure.RunFailure(
        message="data.path /data/digits: no such directory", at="2026-01-01T00:00:00Z",
        final=True, outcome="a new attempt would fail the same way"))
    run = parse_spec({**SPEC, "serve": {"enabled": True, "cpusPerReplica": 0.5}}, name="digits")
    config = serve_config(run, str(run_dir / "best"), wait_for_training=True)
    [app] = config["applications"]
    app.setdefault("runtime_env", {}).setdefault("env_vars", {})[run_failure.GRACE_ENV] = "10"
    serve.shutdown()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        import ray
        from ray.serve.context import _get_global_client

        logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
        before = set(logs.glob("replica_classifier_Classifier_*.log"))
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        deadline = time.monotonic() + 180
        status = None
        while time.monotonic() < deadline:
            status = serve.status().applications.get("classifier")
            if status is not None and status.status not in ("NOT_STARTED", "DEPLOYING"):
                break
            time.sleep(1.0)
        assert status is not None and status.status == "DEPLOY_FAILED", status
        message = status.deployments["Classifier"].message
        assert (f"TrainingRunFailed: the training run in {run_dir} failed for good at "
                "2026-01-01T00:00:00Z (a new attempt would fail the same way): data.path "
                "/data/digits: no such directory; there is no model to serve") in message, message
        said = [f.read_text(errors="replace") for f in
                set(logs.glob("replica_classifier_Classifier_*.log")) - before]
        assert len(said) >= 3, said  # Serve's 3 tries
        waited = [t for t in said if "this replica fails once that has stood 10 s" in t]
        assert len(waited) == 1, said
    finally:
        serve.shutdown()
