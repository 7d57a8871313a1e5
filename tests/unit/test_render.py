"""Rendering TrainingRuns to KubeRay/RBAC objects: strict schemas, sizing, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s_schemas import validate_all
from raykube import render as R
from raykube.spec import (
    LABEL,
    InvalidTrainingRun,
    load_file,
    load_yaml_documents,
    parse_training_run,
)

REPO = Path(__file__).resolve().parents[2]
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))
CFG = R.RenderConfig()
OWNER = {"name": "x", "uid": "0b3c5a4e-0000-4000-8000-000000000001"}


def _run(**spec_over):
    doc = load_yaml_documents((REPO / "jobs" / "quickstart.yaml").read_text())[0]
    doc["spec"].update(spec_over)
    return parse_training_run(doc)


def _all(run, owner=None):
    return [*R.render_training(run, CFG, owner), R.render_rayservice(run, CFG, "s3://bkt/ck", owner)]


def _pods(rayjob):
    spec = rayjob["spec"].get("rayClusterSpec") or rayjob["spec"]["rayClusterConfig"]
    return spec["headGroupSpec"], spec["workerGroupSpecs"]


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_renders_strictly_valid_objects(path):
    for run in load_file(path):
        objs = _all(run, OWNER)
        assert [o["kind"] for o in objs] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding",
                                             "RayJob", "RayService"]
        assert validate_all(objs) == []
        for o in objs:
            assert o["metadata"]["labels"][LABEL] == run.name
            assert o["metadata"]["namespace"] == run.namespace
            ref, = o["metadata"]["ownerReferences"]
            assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
            assert ref["uid"] == OWNER["uid"] and ref["kind"] == "TrainingRun"


def test_no_owner_references_without_owner():
    objs = _all(_run())
    assert all("ownerReferences" not in o["metadata"] for o in objs)
    with pytest.raises(ValueError, match="uid"):
        R.render_rayjob(_run(), CFG, owner={"name": "x"})


def test_rayjob_contract():
    run = _run(activeDeadlineSeconds=3600, suspend=True, failure={"maxRetries": 5})
    job = R.render_rayjob(run, CFG)
    s = job["spec"]
    assert job["metadata"]["name"] == R.child_name(run) == "quickstart"
    assert s["entrypoint"] == "raykube train --spec /etc/raykube/trainingrun.yaml"
    # the quickstart is served: its training cluster goes as soon as the job finishes
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] == 0
    assert (s["activeDeadlineSeconds"], s["backoffLimit"], s["suspend"]) == (3600, 5, True)
    assert s["rayClusterSpec"]["rayVersion"] == "2.60.0"
    head, (group,) = _pods(job)
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert group["rayStartParams"]["num-cpus"] == "1"
    # one Train worker per pod: its slot (a Ray custom resource, quoted as KubeRay does)
    assert group["rayStartParams"]["resources"] == """'{"raykube_worker_slot":1}'"""
    for pod in (head["template"], group["template"]):
        c, = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env == {"RAYKUBE_STORAGE": "/mnt/raykube/default", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAYKUBE_TRAININGRUN": "default/quickstart",
                       "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                       "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_worker_niceness": "0",
                       "RAYKUBE_WORKER_RESOURCE": "raykube_worker_slot"}
        assert c["image"] == CFG.cpu_image
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
    # the driver runs on the head: only it gets the spec and the run's API token
    c, = head["template"]["spec"]["containers"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/mnt/raykube", "/etc/raykube"}
    assert head["template"]["spec"]["serviceAccountName"] == "quickstart-raykube"
    c, = group["template"]["spec"]["containers"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/mnt/raykube"}
    assert "serviceAccountName" not in group["template"]["spec"]
    assert group["template"]["spec"]["automountServiceAccountToken"] is False
    c, = group["template"]["spec"]["containers"]
    assert c["resources"]["limits"] == c["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}


def test_the_job_submitter_is_kuberays_own_with_the_runs_labels():
    """KubeRay takes a submitterPodTemplate as given and fills in the command and the
    job's address; ours is its default (image, resources) plus the run's labels, so
    that the operator's pod watch sees a submitter pod that cannot start."""
    job = R.render_rayjob(_run(image="example.com/raykube:custom"), CFG, OWNER)
    tpl = job["spec"]["submitterPodTemplate"]
    assert tpl["metadata"]["labels"] == {LABEL: "quickstart", R.ROLE_LABEL: R.SUBMITTER_ROLE}
    assert tpl["spec"]["restartPolicy"] == "Never"
    assert tpl["spec"]["automountServiceAccountToken"] is False
    c, = tpl["spec"]["containers"]
    head_c, = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert c["image"] == head_c["image"] == "example.com/raykube:custom"
    assert "command" not in c and "args" not in c  # KubeRay's `ray job submit ...`
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "200Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}}
    assert "nodeSelector" not in tpl["spec"] and "tolerations" not in tpl["spec"]


def test_the_job_submitter_goes_where_the_head_goes():
    """KubeRay gives its submitter no placement: on a node every pod needs a toleration
    for (the real node) the head and workers ran and the submitter sat Pending, so the job
    was never submitted. It takes the head's nodeSelector and tolerations, not the
    workers' (which may be GPU nodes)."""
    run = _run(scaling={"nodeSelector": {"pool": "gpu"},
                        "head": {"nodeSelector": {"pool": "cpu"},
                                 "tolerations": [{"key": "ml", "operator": "Exists"}]}})
    job = R.render_rayjob(run, CFG)
    spec = job["spec"]["submitterPodTemplate"]["spec"]
    assert spec["nodeSelector"] == {"pool": "cpu"}
    assert spec["tolerations"] == [{"key": "ml", "operator": "Exists"}]
    assert validate_all([job]) == []


def test_training_workers_stop_ray_when_deleted_and_no_other_pod_does():
    """KubeRay's Ray containers run bash as PID 1, which ignores SIGTERM: without a
    preStop hook a deleted training worker pod trains on for its grace period. The head
    and the serving pods keep KubeRay's behaviour (see ``STOP_RAY_FIRST``)."""
    job = R.render_rayjob(_run(), CFG)
    head, (group,) = _pods(job)
    c, = group["template"]["spec"]["containers"]
    assert c["lifecycle"] == {"preStop": {"exec": {
        "command": ["sh", "-c", "ray stop >/dev/null 2>&1 &"]}}}
    c["lifecycle"]["preStop"]["exec"]["command"].append("x")
    assert R.STOP_RAY_FIRST["preStop"]["exec"]["command"][-1].endswith("&")  # not shared
    assert "lifecycle" not in head["template"]["spec"]["containers"][0]
    svc = R.render_rayservice(_run(serve={"enabled": True}), CFG, "/c")
    head, (group,) = _pods(svc)
    assert all("lifecycle" not in g["template"]["spec"]["containers"][0] for g in (head, group))


def test_ttl_after_finished_defaults():
    assert R.render_rayjob(_run(serve={"enabled": False}), CFG)["spec"][
        "ttlSecondsAfterFinished"] == 600
    assert R.render_rayjob(_run(ttlSecondsAfterFinished=42), CFG)["spec"][
        "ttlSecondsAfterFinished"] == 42  # an explicit value wins, served or not


def test_spec_configmap_round_trips():
    run = _run()
    cm = R.render_spec_configmap(run, CFG)
    assert cm["metadata"]["name"] == "quickstart-spec"
    again = parse_training_run(yaml.safe_load(cm["data"]["trainingrun.yaml"]))
    assert again.spec == run.spec and again.name == run.name


def test_rbac_is_scoped_to_the_runs_own_status_and_rayjob():
    sa, role, binding = R.render_rbac(_run(), CFG)
    status, rayjob = role["rules"]
    assert status == {"apiGroups": ["raykube.io"], "resources": ["trainingruns/status"],
                      "resourceNames": ["quickstart"], "verbs": ["get", "patch"]}
    # read-only, and only the RayJob it runs in: whether KubeRay retries a failed attempt
    assert rayjob == {"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                      "resourceNames": [R.render_rayjob(_run(), CFG)["metadata"]["name"]],
                      "verbs": ["get"]}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "default"}]


def test_gpu_job_gets_gpus_and_the_cuda_image():
    run, = load_file(REPO / "jobs" / "cifar10-gpu.yaml")
    head, (group,) = _pods(R.render_rayjob(run, CFG))
    c, = group["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert c["image"] == CFG.gpu_image
    assert group["replicas"] == run.spec.scaling.workers
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        group["template"]["spec"]["tolerations"]
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    svc_head, (svc_group,) = _pods(R.render_rayservice(run, CFG, "s3://bkt/x"))
    assert svc_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_explicit_image_and_scheduling_constraints():
    run = _run(image="registry.local/mine:1", scaling={
        "workers": 3, "cpusPerWorker": 1.5, "memoryPerWorker": "3Gi",
        "nodeSelector": {"pool": "train"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]})
    job = R.render_rayjob(run, CFG)
    _, (group,) = _pods(job)
    pod = group["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.local/mine:1"
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "1500m", "memory": "3Gi"}
    assert group["rayStartParams"]["num-cpus"] == "2"
    assert pod["nodeSelector"] == {"pool": "train"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                   "effect": "NoSchedule"}]
    assert validate_all([job]) == []


def test_the_head_is_placed_by_its_own_fields_not_the_workers():
    """Workers on tainted GPU nodes, the head on a CPU pool: each pod gets only its own
    group's nodeSelector and tolerations, in the RayJob and in the RayService."""
    run = _run(scaling={
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "head": {"nodeSelector": {"pool": "cpu"},
                 "tolerations": [{"key": "system", "operator": "Equal", "value": "ray"}]}})
    for obj in (R.render_rayjob(run, CFG), R.render_rayservice(run, CFG, "s3://b/x")):
        head, (group,) = _pods(obj)
        assert head["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}
        assert head["template"]["spec"]["tolerations"] == [
            {"key": "system", "operator": "Equal", "value": "ray"}]
        assert group["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
        assert group["template"]["spec"]["tolerations"] == [
            {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
        assert validate_all([obj]) == []
    # unset: the head's pod says nothing of placement (and renders as before)
    head, (group,) = _pods(R.render_rayjob(_run(scaling={"nodeSelector": {"pool": "gpu"}}), CFG))
    assert "nodeSelector" not in head["template"]["spec"]
    assert "tolerations" not in head["template"]["spec"]


def _tune(max_concurrent, gpus=0.0, workers=2, trials=8):
    return _run(scaling={"workers": workers, "gpusPerWorker": gpus, "memoryPerWorker": "2Gi"},
                tune={"trials": trials, "maxConcurrentTrials": max_concurrent,
                      "searchSpace": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-1]}}})


def test_tune_sizes_the_cluster_for_concurrent_trials():
    job = R.render_rayjob(_tune(3), CFG)
    head, (group,) = _pods(job)
    assert group["replicas"] == 6  # 3 trials x 2 workers
    assert head["rayStartParams"]["num-cpus"] == "1"  # room for the trial drivers
    assert validate_all([job]) == []


def test_tune_never_sizes_for_more_trials_than_there_are():
    """``trials: 1, maxConcurrentTrials: 4`` kept three workers' pods idle all search
    long (and 1000 concurrent trials of 4 made 1000 worker pods)."""
    _, (group,) = _pods(R.render_rayjob(_tune(4, trials=1), CFG))
    assert group["replicas"] == 2  # 1 trial x 2 workers
    _, (group,) = _pods(R.render_rayjob(_tune(1000, trials=4), CFG))
    assert group["replicas"] == 8


def test_fractional_gpus_pack_trials_into_gpu_pods():
    _, (group,) = _pods(R.render_rayjob(_tune(4, gpus=0.5, workers=1), CFG))
    c, = group["template"]["spec"]["containers"]
    assert group["replicas"] == 2  # 4 workers at half a GPU: 2 pods of 1 GPU
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert group["rayStartParams"] == {"num-cpus": "2", "num-gpus": "1",
                                       "resources": """'{"raykube_worker_slot":2}'"""}
    assert R.pods_needed(5, 0.25) == (2, 4)
    assert R.pods_needed(1, 0.25) == (1, 1)
    assert R.pods_needed(3, 2.0) == (3, 1)


def test_s3_storage_uses_the_secret_and_no_volume():
    run = _run(checkpoint={"storage": {"uri": "s3://bucket/prefix/", "secretRef": {"name": "s3-creds"}}})
    job = R.render_rayjob(run, CFG)
    head = _pods(job)[0]
    svc = R.render_rayservice(run, CFG, "s3://bucket/prefix/default/x/best")
    groups = [head, *_pods(job)[1], _pods(svc)[0], *_pods(svc)[1]]
    assert len(groups) >= 4
    for group in groups:
        pod = group["template"]["spec"]
        c, = pod["containers"]
        # Named keys from the Secret, never envFrom (which would import every key of it).
        assert "envFrom" not in c
        from_secret = [e for e in c["env"] if "valueFrom" in e]
        assert from_secret == [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}},
            {"name": "AWS_SESSION_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SESSION_TOKEN", "optional": True}}},
            {"name": "AWS_ENDPOINT_URL", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ENDPOINT_URL", "optional": True}}},
            {"name": "AWS_REGION", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_REGION", "optional": True}}},
        ]
        assert "s3-creds" not in yaml.safe_dump({k: v for k, v in c.items() if k != "env"})
        assert {"name": "RAYKUBE_STORAGE", "value": "s3://bucket/prefix/default"} in c["env"]
        # only the training head (the driver) mounts the spec; nobody mounts a claim
        assert [v["name"] for v in pod.get("volumes") or []] == (["spec"] if group is head else [])
    assert validate_all([job, svc]) == []


def test_s3_secret_keys_are_what_raykube_reads():
    """The keys pods get are exactly the variables raykube.s3 builds its client from."""
    from raykube.s3 import S3Settings

    env = {k: f"v-{k}" for k, _ in R.SECRET_KEYS}
    env["AWS_ENDPOINT_URL"] = "http://minio:9000"
    got = S3Settings.from_env(env)
    assert (got.access_key, got.secret_key, got.session_token, got.endpoint, got.region) == (
        "v-AWS_ACCESS_KEY_ID", "v-AWS_SECRET_ACCESS_KEY", "v-AWS_SESSION_TOKEN",
        "http://minio:9000", "v-AWS_REGION")
    assert [k for k, optional in R.SECRET_KEYS if not optional] == \
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]


def test_custom_pvc_is_mounted():
    run = _run(checkpoint={"storage": {"pvc": {"claimName": "team-data", "mountPath": "/data"}}})
    head, _ = _pods(R.render_rayjob(run, CFG))
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": "team-data"}} in \
        head["template"]["spec"]["volumes"]
    assert R.storage_root(run) == "/data/default"


def test_rayservice_contract():
    run = _run(serve={"enabled": True, "replicas": 3, "cpusPerReplica": 0.5, "maxBatchSize": 8})
    svc = R.render_rayservice(run, CFG, "/mnt/raykube/default/quickstart/ckpt_7")
    cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    app, = cfg["applications"]
    assert app["import_path"] == "raykube.serve:app_builder" and app["route_prefix"] == "/"
    assert app["args"] == {"checkpoint": "/mnt/raykube/default/quickstart/ckpt_7", "maxBatchSize": 8,
                           "batchWaitTimeoutMs": 5.0, "maxRequestBytes": 4194304}
    dep, = app["deployments"]
    # each of the 3 pods is sized for one replica, and Ray may put no more there (an
    # incoming replica of a rolling update waits for the outgoing one to leave its pod)
    assert dep == {"name": "Classifier", "num_replicas": 3, "max_replicas_per_node": 1,
                   "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.0}}
    assert app["logging_config"] == {"enable_access_log": False}
    head, (group,) = _pods(svc)
    assert group["replicas"] == 3
    # Every Ray pod of a RayService runs Serve's HAProxy ingress with a short drain.
    for pod in (head, group):
        env = {e["name"]: e["value"] for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 5
        # HAProxy: one thread, no per-request metrics datagrams unless asked for.
        assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"
        # a client that stops sending is dropped after 60 s, not Ray's 3600 s
        assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "60"
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
    metered = R.render_rayservice(run, R.RenderConfig(serve_request_metrics=True), "x")
    m_head, m_groups = _pods(metered)
    for pod in (m_head, *m_groups):
        env = {e["name"]: e["value"] for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"
    assert R.RenderConfig.from_env({"RAYKUBE_SERVE_REQUEST_METRICS": "true"}).serve_request_metrics
    logged = R.render_rayservice(run, R.RenderConfig(serve_access_log=True), "x")
    assert yaml.safe_load(logged["spec"]["serveConfigV2"])["applications"][0][
        "logging_config"] == {"enable_access_log": True}
    assert R.serve_endpoint(run) == "http://quickstart-serve-svc.default:8000"
    # the previous serving cluster goes 15 s after an upgrade, not KubeRay's 60 s
    assert svc["spec"]["rayClusterDeletionDelaySeconds"] == 15
    # a new checkpoint changes the serve config and the hash; nothing else
    other = R.render_rayservice(run, CFG, "/mnt/raykube/default/quickstart/ckpt_9")
    assert other["metadata"]["annotations"] != svc["metadata"]["annotations"]
    assert other["spec"]["rayClusterConfig"] == svc["spec"]["rayClusterConfig"]


@pytest.mark.parametrize("gpus, replicas, pods, per_pod", [
    (0.0, 3, 3, 1), (1.0, 2, 2, 1), (0.5, 3, 2, 2), (0.25, 2, 1, 2), (0.3, 7, 3, 3)])
def test_serving_pods_hold_the_replicas_they_are_sized_for(gpus, replicas, pods, per_pod):
    run = _run(serve={"enabled": True, "replicas": replicas, "gpusPerReplica": gpus})
    svc = R.render_rayservice(run, CFG, "x")
    dep, = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    _, (group,) = _pods(svc)
    assert (group["replicas"], dep["max_replicas_per_node"]) == (pods, per_pod)


def test_rendering_is_deterministic():
    a = R.dump_yaml(_all(_tune(2), OWNER))
    b = R.dump_yaml(_all(_tune(2), OWNER))
    assert a == b
    h1 = R.render_rayservice(_run(), CFG, "x")["metadata"]["annotations"][R.SPEC_HASH_ANNOTATION]
    assert h1 == R.render_rayservice(_run(), CFG, "x")["metadata"]["annotations"][R.SPEC_HASH_ANNOTATION]


def test_render_config_from_env():
    cfg = R.RenderConfig.from_env({"RAYKUBE_CPU_IMAGE": "me/cpu:1", "RAYKUBE_GPU_TOLERATION": "false",
                                   "RAYKUBE_DEFAULT_PVC": "shared", "UNRELATED": "x"})
    assert (cfg.cpu_image, cfg.gpu_toleration, cfg.default_pvc) == ("me/cpu:1", False, "shared")
    assert cfg.gpu_image == R.RenderConfig().gpu_image
    job = R.render_rayjob(_run(), cfg)
    head, _ = _pods(job)
    assert head["template"]["spec"]["containers"][0]["image"] == "me/cpu:1"
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": "shared"}} in \
        head["template"]["spec"]["volumes"]


def test_render_config_booleans_read_like_every_raykube_flag():
    """On/off words in any case; a value that is neither keeps the setting's default
    (``raykube.flags``), as RAYKUBE_VERBOSE and RAYKUBE_PRESTART_TRAIN_WORKERS do."""
    from raykube.flags import env_flag

    for raw, want in [("OFF", False), (" no ", False), ("0", False), ("Yes", True),
                      ("on", True), ("maybe", True), ("", True)]:
        assert R.RenderConfig.from_env({"RAYKUBE_GPU_TOLERATION": raw}).gpu_toleration is want, raw
        assert env_flag("X", True, {"X": raw}) is want, raw
    assert R.RenderConfig.from_env({"RAYKUBE_SERVE_REQUEST_METRICS": "maybe"}).serve_request_metrics is False
    assert env_flag("UNSET", False, {}) is False


def test_render_imports_neither_torch_nor_ray():
    code = ("import sys, raykube.render, raykube.crd, raykube.commands.render; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_render_prints_every_job(capsys):
    from raykube.cli import main

    assert main(["render", *map(str, JOB_FILES)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert validate_all(docs) == []
    assert all("ownerReferences" not in d["metadata"] for d in docs)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("RayJob") == len(JOB_FILES)
    services = [d for d in docs if d["kind"] == "RayService"]
    assert services  # each serves its own run's best checkpoint
    for s in services:
        name = s["metadata"]["labels"][LABEL]
        args = yaml.safe_load(s["spec"]["serveConfigV2"])["applications"][0]["args"]
        # its own best/, which exists once the RayJob beside it has trained: it waits
        assert args["checkpoint"] == f"/mnt/raykube/default/{name}/best", args
        assert args["waitForTraining"] is True, args
    assert main(["render", str(JOB_FILES[0]), "--checkpoint", "s3://bkt/best",
                 "--checkpoint-secret", "s3-creds"]) == 0
    (svc,) = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d["kind"] == "RayService"]
    args = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["args"]
    # a checkpoint named on purpose is there already: a missing one fails at once
    assert args["checkpoint"] == "s3://bkt/best" and "waitForTraining" not in args, args


def test_cli_render_overrides_and_errors(tmp_path, capsys):
    from raykube.cli import main

    assert main(["render", str(REPO / "jobs" / "quickstart.yaml"), "--no-serve", "-n", "ml",
                 "--image", "me/img:2"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert "RayService" not in [d["kind"] for d in docs]
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "image"] == "me/img:2"
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "jobs" / "quickstart.yaml").read_text().replace("workers: 2", "workers: 0"))
    assert main(["render", str(bad)]) == 1
    assert "spec.scaling.workers" in capsys.readouterr().err
    # a checkpoint the RayService's replicas could not read is refused here, not in pods
    assert main(["render", str(REPO / "jobs" / "quickstart.yaml"), "--serve",
                 "--checkpoint", "gs://b/best"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(
        "raykube render: --checkpoint 'gs://b/best': gs:// storage is not supported")


def test_a_replica_change_reaches_the_serving_pods():
    """KubeRay leaves replicas out of the RayService's cluster hash (kuberay#2333): the count
    is also in the pod template, so a change is a cluster change KubeRay rolls out."""
    def template(replicas):
        run = _run(serve={"enabled": True, "replicas": replicas})
        svc = R.render_rayservice(run, CFG, "s3://bkt/ck")
        _, (group,) = _pods(svc)
        return group["replicas"], group["template"]["metadata"]["annotations"]
    assert template(1) == (1, {"raykube.io/serve-replicas": "1"})
    assert template(3) == (3, {"raykube.io/serve-replicas": "3"})


def test_rayservice_has_its_own_name_and_serve_service():
    """Not the RayJob's name: both KubeRay controllers would own <name>-head-svc."""
    run = _run()
    svc = R.render_rayservice(run, CFG, "s3://bkt/ck")
    assert svc["metadata"]["name"] == "quickstart-serve" != R.render_rayjob(run, CFG)["metadata"]["name"]
    assert svc["spec"]["serveService"]["metadata"]["name"] == "quickstart-serve-svc"
    assert R.serve_endpoint(run) == "http://quickstart-serve-svc.default:8000"


def _templates(obj):
    """Every pod template of a RayJob or RayService (head, worker groups, submitter)."""
    head, groups = _pods(obj)
    out = [head["template"], *(g["template"] for g in groups)]
    return out + ([obj["spec"]["submitterPodTemplate"]] if obj["kind"] == "RayJob" else [])


def _render_cli(capsys, *argv):
    from raykube.cli import main

    rc = main(["render", *argv])
    out, err = capsys.readouterr()
    return rc, [d for d in yaml.safe_load_all(out) if d], err


def _s3_env(obj):
    """Per pod template: the names of the env entries taken from a Secret, and the Secrets."""
    out = []
    for t in _templates(obj):
        c, = t["spec"]["containers"]
        refs = [e for e in c.get("env") or [] if "valueFrom" in e]
        out.append(([e["name"] for e in refs],
                    {e["valueFrom"]["secretKeyRef"]["name"] for e in refs}))
    return out


def test_an_s3_checkpoint_of_a_run_on_a_volume_gets_the_named_secret(tmp_path, capsys):
    """``--checkpoint s3://...`` for a run whose storage is a volume: its serving pods had no
    S3 credentials and no endpoint (the run has no secretRef: the spec allows none with a
    volume), so each replica failed at start, in its pod. Refused without a Secret, named by
    --checkpoint-secret; with one, every serving pod takes the same keys, by name, as the
    pods of a run on s3:// storage get from its secretRef (one builder, s3_secret_env)."""
    quickstart = str(REPO / "jobs" / "quickstart.yaml")
    rc, docs, err = _render_cli(capsys, quickstart, "--serve", "--checkpoint", "s3://bkt/best")
    assert (rc, docs) == (2, [])
    assert err.count("\n") == 1 and "--checkpoint-secret NAME" in err, err
    assert err.startswith("raykube render: --checkpoint 's3://bkt/best': the serving pods of "
                          "quickstart get no S3 credentials or endpoint"), err

    rc, docs, err = _render_cli(capsys, quickstart, "--serve", "--checkpoint", "s3://bkt/best",
                                "--checkpoint-secret", "s3-creds")
    assert rc == 0, err
    svc, = [d for d in docs if d["kind"] == "RayService"]
    keys = [k for k, _ in R.SECRET_KEYS]
    assert _s3_env(svc) == [(keys, {"s3-creds"})] * 2
    for t in _templates(svc):  # the run's volume stays mounted (RAYKUBE_STORAGE is on it)
        assert t["spec"]["volumes"] == [{"name": "storage", "persistentVolumeClaim":
                                         {"claimName": "raykube-storage"}}]
    assert svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][
        0]["env"][-len(keys):] == R.s3_secret_env("s3-creds")
    # the training pods are as before: training writes to the volume
    job, = [d for d in docs if d["kind"] == "RayJob"]
    assert all(names == [] for names, _ in _s3_env(job))
    assert validate_all(docs) == []


def test_checkpoint_secret_is_refused_where_it_would_do_nothing_or_clash(tmp_path, capsys):
    quickstart = str(REPO / "jobs" / "quickstart.yaml")
    for argv in (["--serve", "--checkpoint-secret", "s3-creds"],
                 ["--serve", "--checkpoint", "/mnt/raykube/x/best", "--checkpoint-secret", "s"]):
        rc, docs, err = _render_cli(capsys, quickstart, *argv)
        assert (rc, docs) == (2, []) and err == (
            "raykube render: --checkpoint-secret only applies with an s3:// --checkpoint (a "
            "checkpoint in the run's own storage is read as the run's pods read it)\n"), err
    rc, _, err = _render_cli(capsys, quickstart, "--serve", "--checkpoint", "s3://bkt/best",
                             "--checkpoint-secret", "S3_Creds")
    assert rc == 2 and err.startswith("raykube render: --checkpoint-secret 'S3_Creds': a "
                                      "lowercase RFC 1123 subdomain"), err
    # a run on s3:// storage: its pods take the S3 settings from its secretRef already
    doc = load_yaml_documents((REPO / "jobs" / "quickstart.yaml").read_text())[0]
    doc["spec"]["checkpoint"] = {"storage": {"uri": "s3://bkt/runs", "secretRef": {"name": "own"}}}
    on_s3 = tmp_path / "on-s3.yaml"
    on_s3.write_text(yaml.safe_dump(doc))
    rc, _, err = _render_cli(capsys, str(on_s3), "--serve", "--checkpoint", "s3://other/best",
                             "--checkpoint-secret", "s3-creds")
    assert rc == 2 and "already take their S3 settings from checkpoint.storage.secretRef " \
        "'own'" in err, err
    for extra in ([], ["--checkpoint-secret", "own"]):
        rc, docs, err = _render_cli(capsys, str(on_s3), "--serve", "--checkpoint",
                                    "s3://other/best", *extra)
        assert rc == 0, err
        svc, = [d for d in docs if d["kind"] == "RayService"]
        assert _s3_env(svc) == [([k for k, _ in R.SECRET_KEYS], {"own"})] * 2
    with pytest.raises(ValueError, match="secretRef 'own'"):
        R.render_rayservice(parse_training_run(doc), CFG, "s3://other/b", checkpoint_secret="x")
    # s3:// storage without a secretRef (a node role): the checkpoint is read the same way
    del doc["spec"]["checkpoint"]["storage"]["secretRef"]
    on_s3.write_text(yaml.safe_dump(doc))
    rc, docs, err = _render_cli(capsys, str(on_s3), "--serve", "--checkpoint", "s3://other/b")
    assert rc == 0, err


def test_rendered_objects_are_marked_as_not_the_operators(capsys):
    """``raykube render`` prints objects that Argo CD, Flux or kubectl manage: they said
    ``app.kubernetes.io/managed-by: raykube``, as the operator's children do, and nothing
    told the operator they were not its own. They carry ``raykube.io/rendered-by:
    raykube-render`` instead, on every object and pod template (the operator's watches
    skip it: tests/unit/test_operator_plan.py); the operator's children are unchanged."""
    rc, docs, err = _render_cli(capsys, *map(str, JOB_FILES))
    assert rc == 0, err
    templates = [t for d in docs if d["kind"] in ("RayJob", "RayService") for t in _templates(d)]
    assert len(templates) > len(docs) / 2
    for d in docs:
        labels = d["metadata"]["labels"]
        assert R.MANAGED_BY_LABEL not in labels, d["metadata"]
        assert labels[R.RENDERED_LABEL] == R.RENDERED_BY and labels[LABEL]
    for t in templates:
        assert t["metadata"]["labels"][R.RENDERED_LABEL] == R.RENDERED_BY, t["metadata"]
    for obj in _all(_run(), OWNER):  # the operator's: as they always were
        assert obj["metadata"]["labels"] == {LABEL: "quickstart", R.MANAGED_BY_LABEL: "raykube"}
        if obj["kind"] in ("RayJob", "RayService"):
            assert all(R.RENDERED_LABEL not in t["metadata"]["labels"] for t in _templates(obj))


def test_in_storage_is_on_the_runs_volume_or_under_its_uri():
    """What the operator asks before it renders the live RayService again for an edited
    spec: a checkpoint outside the run's storage now (checkpoint.storage edited) is not
    readable by pods rendered for it."""
    on_volume = _run()
    on_s3 = _run(checkpoint={"storage": {"uri": "s3://bkt/runs/", "secretRef": {"name": "s"}}})
    assert R.in_storage("/mnt/raykube/default/quickstart/best", on_volume)
    assert R.in_storage("s3://bkt/runs/default/quickstart/checkpoint_000003", on_s3)
    assert not R.in_storage("/mnt/raykube/default/quickstart/best", on_s3)
    assert not R.in_storage("s3://bkt/runs/default/quickstart/best", on_volume)
    assert R.in_storage("/mnt/raykube/other-ns/quickstart/best", on_volume)  # mounted whole
    assert not R.in_storage("/mnt/raykubex/default/quickstart/best", on_volume)
    assert not R.in_storage("s3://bkt/runs-old/default/q/best", on_s3)


def test_a_checkpoint_on_another_claim_at_the_same_mount_path_is_not_in_storage():
    """``claimName`` edited, ``mountPath`` kept (here the default one): a checkpoint
    written on the previous claim has a path under the same mount path, and passed the
    path check, though pods rendered for the new claim cannot read it. The storage it
    was written to (``status.checkpoint.storage``, a RayService's annotation) says so;
    without it (written before it was recorded) the path decides, as before."""
    old_claim = _run()
    new_claim = _run(checkpoint={"storage": {"pvc": {"claimName": "other"}}})
    moved = _run(checkpoint={"storage": {"pvc": {"claimName": "raykube-storage",
                                                 "mountPath": "/data"}}})
    on_s3 = _run(checkpoint={"storage": {"uri": "s3://bkt/runs/", "secretRef": {"name": "s"}}})
    assert R.storage_id(old_claim, CFG) == "pvc/raykube-storage"  # the default claim
    assert R.storage_id(old_claim, R.RenderConfig(default_pvc="shared")) == "pvc/shared"
    assert R.storage_id(new_claim, CFG) == "pvc/other"
    assert R.storage_id(moved, CFG) == "pvc/raykube-storage"  # same files, other path
    assert R.storage_id(on_s3, CFG) == "s3://bkt/runs"
    ckpt = "/mnt/raykube/default/quickstart/checkpoint_000003"
    written_to = R.storage_id(old_claim, CFG)
    assert R.in_storage(ckpt, old_claim, CFG, written_to)
    assert not R.in_storage(ckpt, new_claim, CFG, written_to)
    assert R.in_storage(ckpt, new_claim, CFG)  # not recorded: the path only
    assert R.in_storage(ckpt, new_claim, CFG, "pvc/other")
    assert not R.in_storage(ckpt, moved, CFG, written_to)  # the path still counts
    assert R.in_storage("s3://bkt/runs/default/q/best", on_s3, CFG, "s3://bkt/runs/")
    assert not R.in_storage("s3://bkt/runs/default/q/best", on_s3, CFG, "s3://bkt/other")


def test_the_operators_rayjob_tells_the_driver_its_storage_id():
    """The driver does not know the operator's default claim: the operator's RayJob
    says which storage its checkpoints are on (RAYKUBE_STORAGE_ID, the reporter's
    ``status.checkpoint.storage``). Not what ``raykube render`` prints, nor the
    RayService's pods: their output is as it was."""
    cfg = R.RenderConfig(default_pvc="shared")
    for run, want in ((_run(), "pvc/shared"),
                      (_run(checkpoint={"storage": {"pvc": {"claimName": "c2"}}}), "pvc/c2"),
                      (_run(checkpoint={"storage": {"uri": "s3://bkt/p", "secretRef": {
                          "name": "s"}}}), "s3://bkt/p")):
        head, (group,) = _pods(R.render_rayjob(run, cfg, OWNER))
        for pod in (head, group):
            env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
            assert env["RAYKUBE_STORAGE_ID"] == want, env
        for obj in (R.render_rayjob(run, cfg), R.render_rayservice(run, cfg, "/x", OWNER)):
            for t in _templates(obj):
                names = [e["name"] for e in t["spec"]["containers"][0].get("env", [])]
                assert "RAYKUBE_STORAGE_ID" not in names, (obj["kind"], names)


def test_served_storage_id_is_the_claim_the_rayservice_mounts():
    """A RayService promoted before ``raykube.io/checkpoint-storage`` was written: the
    claim its pods mount is the one its checkpoint is read from."""
    cfg = R.RenderConfig(default_pvc="shared")
    svc = R.render_rayservice(_run(), cfg, "/mnt/raykube/default/quickstart/best", OWNER)
    assert R.served_storage_id(svc) == "pvc/shared"
    other = _run(checkpoint={"storage": {"pvc": {"claimName": "c2", "mountPath": "/d"}}})
    assert R.served_storage_id(R.render_rayservice(other, cfg, "/d/x", OWNER)) == "pvc/c2"
    on_s3 = _run(checkpoint={"storage": {"uri": "s3://bkt/p", "secretRef": {"name": "s"}}})
    assert R.served_storage_id(R.render_rayservice(on_s3, cfg, "s3://bkt/p/x", OWNER)) is None
    assert R.served_storage_id({}) is None


def test_an_s3_image_folder_of_a_run_on_a_volume_gets_its_data_secret():
    """``data.uri: s3://...`` with checkpoints on a volume: the spec allowed no secretRef
    there (``checkpoint.storage.secretRef`` only applies with an s3:// storage uri), so
    the pods had no way to get credentials (differential probe). ``data.secretRef``
    gives every pod, training and serving, the same keys by name."""
    data = {"dataset": "image-folder", "uri": "s3://bkt/images", "secretRef": {"name": "data"}}
    run = _run(data=data)
    keys = [k for k, _ in R.SECRET_KEYS]

    def secrets(run):  # per pod template of the RayJob and the RayService
        return [_s3_env(o) for o in _all(run) if o["kind"] in ("RayJob", "RayService")]

    # the same pods as those of a run on s3:// storage get its secretRef (not the submitter)
    on_s3 = _run(data=data, checkpoint={"storage": {"uri": "s3://bkt/runs",
                                                    "secretRef": {"name": "data"}}})
    assert secrets(run) == secrets(on_s3)
    assert sum(env == (keys, {"data"}) for obj in secrets(run) for env in obj) >= 3
    with pytest.raises(ValueError, match="from data.secretRef 'data', not 'x'"):
        R.render_rayservice(_run(data=data), CFG, "s3://other/b", checkpoint_secret="x")


@pytest.mark.parametrize("data,storage,words", [
    ({"dataset": "digits", "secretRef": {"name": "s"}}, None,
     "only applies with an s3:// data.uri"),
    ({"dataset": "image-folder", "uri": "/data/images", "secretRef": {"name": "s"}}, None,
     "only applies with an s3:// data.uri"),
    ({"dataset": "image-folder", "uri": "s3://bkt/images", "secretRef": {"name": "data"}},
     {"uri": "s3://bkt/runs", "secretRef": {"name": "ckpt"}},
     "'data': the pods take their S3 settings from one Secret, checkpoint.storage.secretRef "
     "'ckpt'"),
])
def test_a_data_secret_where_it_cannot_serve_is_refused(data, storage, words):
    doc = load_yaml_documents((REPO / "jobs" / "quickstart.yaml").read_text())[0]
    doc["spec"]["data"] = data
    if storage:
        doc["spec"]["checkpoint"] = {"storage": storage}
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    assert [e.path for e in info.value.errors] == ["spec.data.secretRef"]
    assert words in str(info.value)


@pytest.mark.parametrize("var,value,words", [
    ("RAYKUBE_DEFAULT_MOUNT_PATH", "/etc/raykube", "reserved"),
    ("RAYKUBE_DEFAULT_MOUNT_PATH", "mnt/x", "absolute"),
    ("RAYKUBE_CPU_IMAGE", "Bad Image", "not a valid image reference"),
    ("RAYKUBE_GPU_IMAGE", " img:1", "whitespace"),
    ("RAYKUBE_IMAGE_PULL_POLICY", "Sometimes", "Always, IfNotPresent, Never"),
    ("RAYKUBE_DEFAULT_PVC", "Bad_PVC", "RFC 1123"),
    ("RAYKUBE_RUN_SERVICE_ACCOUNT_SUFFIX", "-Ray", "lowercase"),
])
def test_a_render_setting_kubernetes_would_refuse_is_refused_when_read(var, value, words):
    """Each was accepted, and every run then failed blaming its own spec."""
    with pytest.raises(ValueError) as info:
        R.RenderConfig.from_env({var: value})
    assert str(info.value).startswith(f"{var}={value!r}: ") and words in str(info.value)
    assert R.RenderConfig.from_env({}).problems() == []


def test_every_shipped_operator_config_passes_the_render_settings_check():
    """The operator refuses a bad RAYKUBE_* render setting at start: the values that
    k8s/base/config.env and each overlay set must pass (or the Deployment never starts)."""
    import re
    from pathlib import Path

    k8s = Path(__file__).resolve().parents[2] / "k8s"
    base = dict(line.split("=", 1) for line in (k8s / "base" / "config.env").read_text()
                .splitlines() if line and not line.startswith("#"))
    assert base["RAYKUBE_CPU_IMAGE"]
    for overlay in sorted((k8s / "overlays").glob("*/kustomization.yaml")):
        env = {**base, **dict(m.groups() for m in re.finditer(
            r"^\s*- (RAYKUBE_[A-Z_]+)=(.*)$", overlay.read_text(), re.M))}
        assert R.RenderConfig.from_env(env).problems() == [], overlay
