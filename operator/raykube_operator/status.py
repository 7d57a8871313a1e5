"""Pure status logic: KubeRay status -> TrainingRun conditions, phase and counters.

Nothing here does I/O or reads the clock: callers pass ``now`` (RFC 3339) and the
current status, and get back the new one. That keeps every mapping unit-testable and
makes the handlers thin.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` changes only when the
condition's *status* changes (a new reason or message alone keeps it), and
``observedGeneration`` records the spec generation the condition was computed from.
The phase is derived from the conditions only (``phase_of``), so it can never
contradict them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from raykube.events import NOTHING_TO_TRAIN
from raykube.render import GPU_RESOURCE, ROLE_LABEL, SERVE_ROLE, SUBMITTER_ROLE
from raykube.spec import gate_shortfall

# Condition types, in the order they are listed in status.conditions.
VALIDATED = "Validated"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
PROMOTED = "Promoted"
READY = "Ready"
SPEC_APPLIED = "SpecApplied"
CONDITION_ORDER = (VALIDATED, SPEC_APPLIED, RUNNING, SUCCEEDED, FAILED, PROMOTED, READY)

# KubeRay RayJob status.jobDeploymentStatus values (v1.x).
PENDING_DEPLOYMENT = {"", "New", "Initializing", "Waiting"}
ACTIVE_DEPLOYMENT = {"Running", "Retrying"}
SUSPENDED_DEPLOYMENT = {"Suspending", "Suspended"}
TERMINAL_DEPLOYMENT = {"Complete", "Failed", "ValidationFailed"}


def now_rfc3339(dt: datetime | None = None) -> str:
    """``2025-01-31T12:00:00Z``: the format metav1.Time uses."""
    dt = dt or datetime.now(timezone.utc)
    return dt.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------ conditions
def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    c = get_condition(conditions, type_)
    return bool(c and c.get("status") == "True")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str | bool,
    reason: str,
    message: str = "",
    *,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new condition list with ``type_`` set; lastTransitionTime kept unless status flips."""
    if isinstance(status, bool):
        status = "True" if status else "False"
    out = [copy.deepcopy(c) for c in conditions or [] if c.get("type") != type_]
    old = get_condition(conditions, type_)
    ltt = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else now
    new: dict[str, Any] = {"type": type_, "status": status, "reason": reason,
                           "message": message, "lastTransitionTime": ltt}
    if generation is not None:
        new["observedGeneration"] = int(generation)
    out.append(new)
    return sort_conditions(out)


def remove_condition(conditions: list[dict[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(c) for c in conditions or [] if c.get("type") != type_]


def sort_conditions(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {t: i for i, t in enumerate(CONDITION_ORDER)}
    return sorted(conditions, key=lambda c: (rank.get(c.get("type", ""), len(rank)), c.get("type", "")))


def phase_of(conditions: list[dict[str, Any]] | None) -> str:
    """The human phase, derived from conditions (first match wins).

    ``Validated=False`` means Failed only while nothing was started: an invalid *edit* of
    a run whose RayJob exists (possible without the CRD, or with a stale one) must not
    claim a training that goes on has failed; the phase keeps following the RayJob and
    the Validated condition's message says what is wrong with the edit."""
    validated = get_condition(conditions, VALIDATED)
    started = any(get_condition(conditions, t) is not None for t in (RUNNING, SUCCEEDED, FAILED))
    if validated is not None and validated.get("status") == "False" and not started:
        return "Failed"
    if is_true(conditions, FAILED):
        return "Failed"
    if is_true(conditions, READY):
        return "Serving"
    if is_true(conditions, SUCCEEDED):
        return "Succeeded"
    running = get_condition(conditions, RUNNING)
    if running is not None:
        if running.get("status") == "True":
            return "Running"
        if running.get("reason") == "Suspended":
            return "Suspended"
    return "Pending"


# ----------------------------------------------------------------------------- RayJob
@dataclass(frozen=True)
class JobState:
    """What one RayJob status means for us."""

    running: tuple[str, str, str]  # (status, reason, message) of the Running condition
    outcome: str | None  # "Succeeded", "Failed" or None while undecided
    reason: str
    message: str
    terminal: bool


def job_state(rayjob_status: dict[str, Any] | None, *, suspend: bool = False) -> JobState:
    """Interpret KubeRay's ``jobDeploymentStatus`` + ``jobStatus`` (+ reason/message).

    ``suspend``: the RayJob's ``spec.suspend``. A RayJob created suspended has no
    deployment status until KubeRay's first reconcile: that moment is suspended too, not
    "waiting for the Ray cluster" (a Pending Event for a run that never asked to start)."""
    st = rayjob_status or {}
    dep = st.get("jobDeploymentStatus") or ""
    if suspend and dep in ("", "New") and not int(st.get("failed") or 0):
        dep = "Suspended"
    job = st.get("jobStatus") or ""
    kr_reason = st.get("reason") or ""
    kr_msg = st.get("message") or ""
    failed = int(st.get("failed") or 0)

    if dep in TERMINAL_DEPLOYMENT:
        if dep == "Complete" and job == "SUCCEEDED":
            return JobState(("False", "Completed", "the Ray job finished"), "Succeeded",
                            "JobSucceeded", "the Ray job succeeded", True)
        reason = kr_reason or ("JobStopped" if job == "STOPPED" else "JobFailed")
        if dep == "ValidationFailed":
            reason = kr_reason or "ValidationFailed"
        detail = driver_line(kr_msg) or ray_oom_detail(kr_msg) or kuberay_explained(kr_msg) \
            or kr_msg or f"jobDeploymentStatus={dep}, jobStatus={job or 'unknown'}"
        return JobState(("False", "Completed", "the Ray job finished"), "Failed", reason,
                        failed_message(failed, detail), True)
    if dep == "Suspended" and not suspend:
        # asked to resume, and KubeRay has not acted yet: not "suspended" (on the real
        # node that read as a second Suspended Event, right after the resume)
        return JobState(("False", "Resuming", "resuming: KubeRay starts the Ray cluster "
                         "again; training resumes from the latest checkpoint"),
                        None, "Resuming", "resuming", False)
    if dep in SUSPENDED_DEPLOYMENT:
        return JobState(("False", "Suspended", "spec.suspend is true: the Ray cluster is "
                         "stopped; set it to false to resume from the latest checkpoint"),
                        None, "Suspended", "suspended", False)
    # KubeRay's retry goes Retrying -> "" -> Initializing -> Running while it replaces the
    # Ray cluster; with a failed attempt on record all of it is one retry, not a new start
    # (phase and attempts would otherwise flicker back to Pending and 1).
    if dep == "Retrying" or (failed > 0 and dep in ("", "New", "Initializing", "Waiting")):
        why = retry_cause(kr_msg)
        what = f"attempt {failed} failed" + (f": {why}" if why else "")
        return JobState(("True", "Retrying", f"{what}{RETRY_TAIL}"), None, "Retrying",
                        f"retrying: {what}", False)
    if dep == "Running":
        if job in ("", "PENDING"):
            return JobState(("True", "JobPending", "the Ray cluster is up; the job is being "
                             "submitted"), None, "JobPending",
                            "the Ray cluster is up; the job is being submitted", False)
        return JobState(("True", "JobRunning", "training is running"), None, "JobRunning",
                        "training is running", False)
    # "", New, Initializing, Waiting (or a value this operator does not know yet)
    reason = dep or "Created"
    return JobState(("False", reason, "waiting for the Ray cluster"
                     + (f" ({dep})" if dep else "")), None, reason, "waiting for the Ray cluster",
                    False)


DRIVER_PREFIX = "raykube train: "


def failed_message(failed: int, detail: str) -> str:
    """The message of a RayJob that failed for good after ``failed`` attempts."""
    return f"the Ray job failed after {max(failed, 1)} attempt(s): {detail}"


NOT_RETRIED = ("; not retried: a new attempt would fail the same way (fix that, then give "
               "spec.rerun a new value to run again)")
PERMANENT_REASON = "PermanentFailure"
"""The Failed condition's reason when the driver reported a cause a retry cannot fix."""
RETRYABLE_DEPLOYMENT = {"Initializing", "Running", "Waiting"}
"""RayJob deployment states in which the attempt that reported is still the RayJob's
current one: KubeRay has not yet seen it fail."""


def retry_cancellation(rayjob: dict[str, Any] | None,
                       report: dict[str, Any]) -> tuple[int | None, bool]:
    """The operator's answer to a driver's ``status.permanentFailure`` (pure).

    Returns ``(backoffLimit, cancelled)``: the ``spec.backoffLimit`` to give the RayJob
    (None: leave it) and whether KubeRay will then not retry the reporting attempt.
    KubeRay (``checkBackoffLimitAndUpdateStatusIfNeeded``) retries a failed attempt while
    ``failed < backoffLimit + 1``, counting this failure in ``failed``; with
    ``backoffLimit`` equal to the failures before it, this attempt is the last. Too late
    (False) when the RayJob is no longer running that attempt: another job id, or KubeRay
    has already seen it fail."""
    if rayjob is None:
        return None, False
    st = rayjob.get("status") or {}
    if (st.get("jobDeploymentStatus") or "") not in RETRYABLE_DEPLOYMENT:
        return None, False
    job_id = report.get("jobId")
    if job_id and st.get("jobId") and job_id != st["jobId"]:
        return None, False
    failed = int(st.get("failed") or 0)
    limit = (rayjob.get("spec") or {}).get("backoffLimit")
    if not isinstance(limit, int) or limit <= failed:
        return None, True  # already the last attempt (no backoffLimit: KubeRay never retries)
    return failed, True


RETRY_TAIL = "; KubeRay is starting a new Ray cluster that resumes from the latest checkpoint"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def retry_cause(kuberay_message: str, limit: int = 300) -> str | None:
    """Why the attempt KubeRay is retrying failed, in one line, or None.

    KubeRay writes the failed job's log tail into the RayJob's message as it goes to
    ``Retrying`` and clears it once the old Ray cluster is gone (a few seconds later).
    The TrainingRun showed that tail whole (20 lines of Ray's log, terminal colour codes
    included), then just "retrying". Here: the driver's own line, Ray's OOM kill, or
    else the error's own line (``raykube.terminal.error_line``: the log's last line that
    is no traceback frame)."""
    from raykube.terminal import error_line

    if not kuberay_message.strip():
        return None
    line = driver_line(kuberay_message, pointer=False) or ray_oom_detail(kuberay_message) \
        or kuberay_explained(kuberay_message) or error_line(ANSI_ESCAPE.sub("", kuberay_message))
    return line if len(line) <= limit else line[:limit - 1] + "…"


JOB_NOT_FOUND = "Submitter completed but Ray job not found in RayCluster."
"""KubeRay's message (``rayjob_controller.go``) when its submitter has given up and the
Ray cluster has no record of the job: the head that ran it was replaced (deleted, or its
whole RayCluster deleted and recreated) and the submitter's retries ran out before the
new head was up."""


def kuberay_explained(kuberay_message: str) -> str | None:
    """KubeRay's own message, where it is one that means more than it says, in words
    that say why (None otherwise)."""
    if kuberay_message.strip() == JOB_NOT_FOUND:
        return ("the job was lost with its Ray head, and KubeRay's job submitter gave up "
                f"before the new head was up (KubeRay: {JOB_NOT_FOUND})")
    return None


def driver_line(kuberay_message: str, *, pointer: bool = True) -> str | None:
    """The driver's own last word in a failed RayJob's message, or None.

    KubeRay's message for a failed job is Ray's "Job entrypoint command failed with exit
    code 1, last available logs (truncated to 20,000 chars):" and the job log's last
    lines, which for a Ray error are the tail of its traceback (for Ray's memory monitor,
    two paragraphs of advice, the figures cut off). ``raykube train`` ends a failed run
    with one line saying what failed (``raykube.train.training_failure``): that line
    leads, the rest stays in the RayJob (``kubectl describe rayjob``)."""
    lines = [ln.strip() for ln in kuberay_message.splitlines()
             if ln.strip().startswith(DRIVER_PREFIX)]
    if not lines:
        return None
    return f"{lines[-1]} (the job's last log lines: kubectl describe rayjob)" if pointer \
        else lines[-1]


OOM_HINT = ("give its pods more memory: spec.scaling.head.memory (the head: the driver, Ray "
            "Train's controller, the job supervisor) or spec.scaling.memoryPerWorker (the "
            "Train workers' pods)")


def ray_oom_detail(kuberay_message: str) -> str | None:
    """Ray's memory monitor's kill in one line, when it took the job down before the
    driver could say so itself (e.g. it killed the job supervisor or the Train controller
    in the head pod: KubeRay's message is then Ray's whole page of statistics and
    advice), or None."""
    from raykube.terminal import ray_oom_line

    line = ray_oom_line(kuberay_message)
    return f"{line}; {OOM_HINT} (Ray's full text: kubectl describe rayjob)" if line else None


# Container waiting reasons that do not resolve by waiting (kubelet's names).
STUCK_CONTAINER_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
    "CrashLoopBackOff"})


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why one Ray pod cannot run, in one line, or None: the scheduler's verdict on an
    unschedulable pod (no node fits; an unbound or missing PersistentVolumeClaim: a
    ReadWriteMany claim the default StorageClass cannot provision stays Pending here), or
    a container stuck in a state that waiting does not fix (image pull, bad config).

    KubeRay's own status cannot say this: its HeadPodReady condition reads the pod's
    Ready condition, which an unscheduled pod does not have (reason "Unknown")."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") not in ("Pending", None, ""):
        return None
    name = meta.get("name", "?")
    if (meta.get("labels") or {}).get(ROLE_LABEL) == SUBMITTER_ROLE:
        name = f"{name} (KubeRay's job submitter)"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            why = " ".join((cond.get("message") or cond.get("reason") or "").split())
            # the first sentence is the verdict; the rest is the scheduler's account of
            # preemption ("no new claims to deallocate, preemption: 0/1 nodes are
            # available: 1 Preemption is not helpful for scheduling."), no help here
            verdict = re.split(r"(?<=\.) (?=no new claims|preemption:)", why, maxsplit=1)[0]
            # kube-scheduler 1.36 repeats a claim's verdict: 'persistentvolumeclaim "x"
            # not found. not found.'
            verdict = re.sub(r"(\w[\w ]*)\. \1\.?$", r"\1.", verdict)
            hint = schedule_hint(pod, verdict)
            return f"pod {name} cannot be scheduled: " + (
                f"{verdict.rstrip('.')}; {hint}" if hint else verdict)
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_CONTAINER_REASONS:
            why = " ".join((waiting.get("message") or "").split())
            return (f"pod {name}: container {cs.get('name')} {waiting['reason']}"
                    + (f": {why}" if why else ""))
    return None


def pod_problem_age(pod: dict[str, Any], now: datetime) -> float:
    """Seconds ``pod_problem``'s problem has lasted, as the pod itself records it: since
    its ``PodScheduled`` condition turned False (the scheduler's verdict), else since the
    pod was created (a container that cannot pull its image has waited since it started);
    0 when neither can be read. Taken from the pod rather than from when the operator
    first saw it: an operator restarted while a pod waits would otherwise start the grace
    period again, say "waiting for the Ray cluster" meanwhile, and then name the pod in a
    second Warning."""
    since = (pod.get("metadata") or {}).get("creationTimestamp")
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            since = cond.get("lastTransitionTime") or since
    try:
        began = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if began.tzinfo is None:
        began = began.replace(tzinfo=timezone.utc)
    return max(0.0, (now - began).total_seconds())


def names_pod_wait(status: dict[str, Any] | None) -> bool:
    """Whether a TrainingRun's status names a pod that cannot run (its message, or a
    condition's: ``Ready`` while a serving pod waits)."""
    status = status or {}
    said = [status.get("message")] + [c.get("message") for c in status.get("conditions") or []]
    return any(_waits_for(m) is not None for m in said if m)


# What the scheduler names in its verdict, and what of the pod it is about.
_SCHEDULER_CAUSES = (
    ("Insufficient cpu", "cpu"), ("Insufficient memory", "memory"),
    (f"Insufficient {GPU_RESOURCE}", GPU_RESOURCE),
    ("didn't match Pod's node affinity/selector", "nodeSelector"),
    ("untolerated taint", "tolerations"),
    ("persistentvolumeclaim", "claim"), ("PersistentVolumeClaim", "claim"))
# Taints a node carries for its own state or role (kubelet's, kind's control plane): a
# pod's tolerations are not the thing to change for those.
_SYSTEM_TAINTS = ("node.kubernetes.io/", "node-role.kubernetes.io/")


def _request(pod: dict[str, Any], resource: str) -> str | None:
    """The Ray container's request (or limit: a GPU is asked as a limit) of one resource."""
    containers = (pod.get("spec") or {}).get("containers") or []
    res = (containers[0].get("resources") or {}) if containers else {}
    value = (res.get("requests") or {}).get(resource) or (res.get("limits") or {}).get(resource)
    return str(value) if value is not None else None


def schedule_field(labels: dict[str, str], cause: str) -> str | None:
    """The TrainingRun field behind one cause of a scheduler's refusal of a Ray pod, from
    the role raykube's render put on the pod (``oom_field``'s reading), or None: KubeRay's
    job submitter is sized by KubeRay's defaults, not by a field of ours, and placed with
    the head (``raykube.render._submitter_template``)."""
    role = labels.get(ROLE_LABEL)
    head, serve = labels.get("ray.io/node-type") == "head", role == SERVE_ROLE
    if role == SUBMITTER_ROLE:
        return f"spec.scaling.head.{cause}" if cause in ("nodeSelector", "tolerations") else None
    if cause in ("nodeSelector", "tolerations"):
        # the head's placement is its own (spec.scaling.head), not the workers'
        return f"spec.scaling.{'head.' if head else ''}{cause}"
    if cause == "claim":
        return "spec.checkpoint.storage.pvc.claimName"
    if cause == "memory":
        return oom_field(labels)
    if cause == "cpu":
        return ("spec.scaling.head.cpus" if head else "spec.serve.cpusPerReplica" if serve
                else "spec.scaling.cpusPerWorker")
    if cause == GPU_RESOURCE and not head:
        return "spec.serve.gpusPerReplica" if serve else "spec.scaling.gpusPerWorker"
    return None


def schedule_hint(pod: dict[str, Any], verdict: str) -> str:
    """Which TrainingRun fields put the pod where no node fits it, with what they ask:
    "spec.scaling.cpusPerWorker asks 8 CPU per pod". The scheduler's verdict names the
    node's shortfall (``Insufficient cpu``), not the field to change; on the real node a
    run with ``cpusPerWorker: 8`` said only that, and waits until a node fits (there is
    no deadline unless ``spec.activeDeadlineSeconds`` sets one)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    said: list[str] = []
    for words, cause in _SCHEDULER_CAUSES:
        if words not in verdict:
            continue
        if (field := schedule_field(labels, cause)) is None:
            continue
        if cause in ("cpu", "memory", GPU_RESOURCE):
            amount = _request(pod, cause)
            if cause == "cpu" and amount and amount.endswith("m") and amount[:-1].isdigit():
                amount = f"{int(amount[:-1]) / 1000:g}"  # "0.5 CPU", as the spec says it
            what = {"cpu": "CPU", "memory": "of memory"}.get(cause, "GPU")
            line = f"{field} asks {amount} {what} per pod" if amount else field
            if cause != GPU_RESOURCE and not field.startswith("spec.scaling.head."):
                # what the node has left is the shortfall: on a 2-CPU node the quickstart's
                # worker (1 CPU) waited for the head's 1 CPU, and lowering cpusPerWorker
                # did not help (the real-pods probe)
                line += f", beside the head's spec.scaling.head.{cause if cause == 'memory' else 'cpus'} and the node's other pods"
        elif cause == "nodeSelector":
            chosen = (pod.get("spec") or {}).get("nodeSelector") or {}
            if not chosen:
                continue  # an affinity that is not ours
            line = f"{field} asks for nodes with {', '.join(f'{k}={v}' for k, v in sorted(chosen.items()))}"
        elif cause == "tolerations":
            named = re.findall(r"untolerated taint\(?s?\)? ?\{([^:}]+)", verdict)
            keys = [k for k in named if not k.startswith(_SYSTEM_TAINTS)]
            if said or (named and not keys):
                continue  # beside a real shortfall, or a node's own state (not-ready)
            # kube-scheduler 1.36 names no taint ("1 node(s) had untolerated taint(s).")
            line = (f"{field} does not tolerate the taint {', '.join(keys)}" if keys else
                    f"{field} lists the taints the pods tolerate (kubectl describe nodes "
                    "shows the nodes' taints)")
        else:
            line = f"{field} names the claim (when unset, the operator's default)"
        if line not in said:
            said.append(line)
    return "; ".join(said)


@dataclass(frozen=True)
class Incident:
    """A fault seen in a Ray pod: ``key`` changes with each occurrence (the operator's
    memo of what it has announced), ``at`` is when it happened as the pod's status says
    (so an operator restarted mid-run can tell it from what ``status.lastIncident``
    holds), ``message`` one line naming the pod."""

    key: str
    reason: str  # OOMKilled | RayHeadLost | RayClusterLost
    message: str
    at: str


def _k8s_time(value: Any) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def pod_oom(pod: dict[str, Any], *, now: str) -> Incident | None:
    """An OOMKilled incident when a container of this Ray pod was OOM-killed (now, or
    before its last restart), else None.

    The kubelet restarts the container in place (KubeRay's Ray pods keep the default
    ``restartPolicy: Always``), Ray Train restarts its workers from the last checkpoint,
    and nothing in KubeRay's status says why: a run that keeps outgrowing its memory
    looks like one that keeps failing for no reason."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    limits = {c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
              for c in (pod.get("spec") or {}).get("containers") or []}
    for cs in status.get("containerStatuses") or []:
        for when in ("state", "lastState"):
            term = (cs.get(when) or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                name, limit = cs.get("name"), limits.get(cs.get("name"))
                restarts = int(cs.get("restartCount") or 0)
                key = f"{meta.get('uid')}/{name}/{restarts}/{term.get('finishedAt')}"
                return Incident(
                    key, "OOMKilled",
                    f"pod {meta.get('name', '?')}: container {name} was OOMKilled"
                    + (f" at its {limit} memory limit" if limit else "")
                    + (f" ({restarts} restart(s))" if restarts else ""),
                    term.get("finishedAt") or now)
    return None


def _deleted_at(meta: dict[str, Any], now: str) -> str:
    """When deletion was asked for: ``deletionTimestamp`` is that plus the grace period."""
    when = _k8s_time(meta.get("deletionTimestamp"))
    if when is None:
        return now
    return now_rfc3339(when - timedelta(seconds=int(meta.get("deletionGracePeriodSeconds") or 0)))


def _failed_at(status: dict[str, Any], now: str) -> str:
    """The latest container end or condition change a failed pod shows."""
    times = [(cs.get("state") or {}).get("terminated", {}).get("finishedAt")
             for cs in status.get("containerStatuses") or []]
    times += [c.get("lastTransitionTime") for c in status.get("conditions") or []]
    parsed = [t for t in map(_k8s_time, times) if t is not None]
    return now_rfc3339(max(parsed)) if parsed else now


def head_loss(pod: dict[str, Any], *, deleted: bool, now: str) -> Incident | None:
    """A RayHeadLost incident when this is a Ray head pod and the head is gone or
    restarting: the pod deleted (by hand, a drain, a preemption), failed (evicted), or its
    container restarted for a reason other than an OOM kill (``pod_oom`` names those).
    Whether it was the RayJob's head, lost while the job ran on it, is ``running_on``'s
    to say.

    Without GCS fault tolerance the job dies with its head: KubeRay's job submitter fails,
    its Kubernetes Job submits the same job ID to the new head, and the driver resumes
    from the latest checkpoint. Nothing in KubeRay's status says so, and the TrainingRun
    would sit at its last epoch for the minute that takes, for no reason it could see."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if (meta.get("labels") or {}).get("ray.io/node-type") != "head":
        return None
    name, uid = meta.get("name", "?"), meta.get("uid")
    if deleted or meta.get("deletionTimestamp"):
        at = _deleted_at(meta, now)
        return Incident(f"{uid}/deleted", "RayHeadLost",
                        f"the Ray head pod {name} was deleted at {at}", at)
    if status.get("phase") == "Failed":
        why = " ".join(f"{status.get('reason') or ''} {status.get('message') or ''}".split())
        at = _failed_at(status, now)
        return Incident(f"{uid}/failed", "RayHeadLost",
                        f"the Ray head pod {name} failed at {at}" + (f" ({why})" if why else ""),
                        at)
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("lastState") or {}).get("terminated") or {}
        restarts = int(cs.get("restartCount") or 0)
        if restarts and term and term.get("reason") != "OOMKilled":
            how = ", ".join(x for x in (term.get("reason"), f"exit code {term.get('exitCode')}"
                                        if term.get("exitCode") is not None else None) if x)
            at = term.get("finishedAt") or now
            return Incident(f"{uid}/{cs.get('name')}/{restarts}", "RayHeadLost",
                            f"the Ray head pod {name}: container {cs.get('name')} restarted "
                            f"at {at}" + (f" ({how})" if how else ""), at)
    return None


def cluster_loss(loss: Incident, pod: dict[str, Any], raycluster: dict[str, Any] | None
                 ) -> Incident:
    """``loss`` (a head pod deleted) as a RayClusterLost incident when the RayCluster that
    owned the pod is gone: absent, being deleted, or replaced by a new one of the same name
    (``raycluster`` as read after the head's deletion; KubeRay recreates a running
    RayJob's cluster at once, so only its uid tells). Else ``loss`` itself."""
    if loss.reason != "RayHeadLost" or not loss.key.endswith("/deleted"):
        return loss
    meta = pod.get("metadata") or {}
    cluster = (meta.get("labels") or {}).get("ray.io/cluster") or "?"
    owner = next((o.get("uid") for o in meta.get("ownerReferences") or []
                  if o.get("kind") == "RayCluster"), None)
    rc_meta = (raycluster or {}).get("metadata") or {}
    if raycluster is not None and not rc_meta.get("deletionTimestamp") and (
            owner is None or rc_meta.get("uid") == owner):
        return loss
    return Incident(f"{loss.key}/cluster", "RayClusterLost",
                    f"the Ray cluster {cluster} was deleted at {loss.at}", loss.at)


def head_loss_outcome(rayjob: dict[str, Any] | None) -> str:
    """What follows a Ray head lost mid-job (alone or with its cluster). KubeRay's job
    submitter (a Kubernetes Job) fails and runs again, submitting the job to the new head;
    if its own retries run out before that head is up (seen on a real node after
    ``kubectl delete raycluster``: KubeRay reported "Submitter completed but Ray job not
    found in RayCluster"), the attempt fails and a RayJob retry on a new cluster takes
    over, while ``spec.backoffLimit`` (``failure.maxRetries``) less ``status.failed``
    allows."""
    spec, status = (rayjob or {}).get("spec") or {}, (rayjob or {}).get("status") or {}
    limit, failed = int(spec.get("backoffLimit") or 0), int(status.get("failed") or 0)
    resubmit = "KubeRay submits the job again to the new head"
    if failed < limit:
        return (f"{resubmit} (or, if its submitter gives up first, retries the RayJob on a "
                f"new Ray cluster: retry {failed + 1} of {limit}), and training resumes "
                "from the latest checkpoint")
    return (f"{resubmit}, and training resumes from the latest checkpoint (if its "
            f"submitter gives up first, the run fails: no RayJob retry is left, "
            f"spec.failure.maxRetries: {limit})")


def incident_is_new(incident: Incident, last: dict[str, Any] | None) -> bool:
    """Whether ``incident`` came after the one ``status.lastIncident`` holds. An operator
    (re)starting sees every pod again, kills and restarts from before included: those
    were announced already, by the operator that wrote ``last``."""
    if not last:
        return True
    mine, theirs = _k8s_time(incident.at), _k8s_time(last.get("at"))
    if mine is None or theirs is None or mine > theirs:
        return True
    return mine == theirs and incident.message != last.get("message")


def incident_note(last: dict[str, Any] | None, cluster: str | None = None) -> str | None:
    """"last OOM kill: ..." / "last Ray head loss: ..." for ``status.lastIncident``;
    with ``cluster``, only when it happened there (a retry's new cluster starts clean)."""
    if not last or not last.get("message") or (
            cluster is not None and last.get("rayCluster") != cluster):
        return None
    what = {"OOMKilled": "OOM kill", "RayClusterLost": "Ray cluster loss"}.get(
        last.get("reason") or "", "Ray head loss")
    return f"last {what}: {last['message']}"


def incident_status(incident: Incident, cluster: str | None) -> dict[str, Any]:
    """``status.lastIncident`` for ``incident`` in ``cluster``."""
    return {"reason": incident.reason, "message": incident.message, "rayCluster": cluster,
            "at": incident.at}


def running_on(rayjob: dict[str, Any] | None, cluster: str) -> bool:
    """Whether this RayJob's job is running on ``cluster`` now: a head lost then is a
    fault, while one removed as the job ends, retries on a new cluster or is deleted is
    KubeRay tearing down."""
    meta, status = (rayjob or {}).get("metadata") or {}, (rayjob or {}).get("status") or {}
    return (rayjob is not None and not meta.get("deletionTimestamp")
            and status.get("rayClusterName") == cluster
            and status.get("jobDeploymentStatus") == "Running")


def oom_field(pod_labels: dict[str, str]) -> str:
    """The TrainingRun field that sizes this Ray pod's memory, from the role raykube's
    render put on its pod template (KubeRay labels a pod with its node type and cluster,
    not with the kind of object that made the cluster). Both heads, the training
    cluster's and the serving cluster's, are sized by ``spec.scaling.head``."""
    if pod_labels.get("ray.io/node-type") == "head":
        return "spec.scaling.head.memory"
    if pod_labels.get(ROLE_LABEL) == SERVE_ROLE:
        return "spec.serve.memoryPerReplica"
    return "spec.scaling.memoryPerWorker"


def attempts_of(rayjob_status: dict[str, Any] | None) -> int | None:
    """1 + retries: finished attempts (``failed`` + ``succeeded``) plus the running one."""
    st = rayjob_status or {}
    dep = st.get("jobDeploymentStatus") or ""
    done = int(st.get("failed") or 0) + int(st.get("succeeded") or 0)
    if dep in TERMINAL_DEPLOYMENT:
        return max(done, 1)
    if dep in ACTIVE_DEPLOYMENT or dep == "Initializing" or (
            int(st.get("failed") or 0) and dep in ("", "New", "Waiting")):
        return done + 1
    return done or None


def failed_trials_note(trials: dict[str, Any] | None) -> str:
    """A search that succeeded with some trials failed says so in its message: fewer
    trials were compared than were asked for (``status.trials``, written by the driver).
    A failed trial's checkpoints of the epochs it finished stay candidates for the best
    (``raykube.tune.summarize``)."""
    failed = int((trials or {}).get("failed") or 0)
    if failed <= 0:
        return ""
    total = (trials or {}).get("total")
    of = f" of {total}" if total else ""
    return (f"{failed}{of} trial(s) failed; the best is the best checkpoint any trial "
            "saved, theirs included (the errors: the driver's log, or trials[].error in "
            "the search's result.json)")


def cluster_left_running(rayjob: dict[str, Any]) -> str | None:
    """The Ray cluster of a RayJob that KubeRay failed for its ``activeDeadlineSeconds``
    while its Ray job may still run, else None.

    KubeRay (v1.6.2; open upstream, kuberay#2314) marks such a RayJob Failed with reason
    ``DeadlineExceeded`` and leaves the Ray job running until ``ttlSecondsAfterFinished``
    deletes the cluster (600 s by default here): on a real node the run went on training,
    writing checkpoints and reporting epochs for minutes after it said Failed."""
    s = rayjob.get("status") or {}
    if (s.get("jobDeploymentStatus"), s.get("reason")) != ("Failed", "DeadlineExceeded"):
        return None
    if s.get("jobStatus") in ("SUCCEEDED", "FAILED", "STOPPED") or (
            rayjob.get("spec") or {}).get("clusterSelector"):
        return None  # the job ended by itself; a cluster not the RayJob's is not ours to stop
    return s.get("rayClusterName") or None


def _said(conditions: list[dict[str, Any]] | None) -> list[tuple[Any, ...]]:
    """What conditions say (type, status, reason, message), not when or for which
    generation."""
    return [(c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
            for c in conditions or []]


def status_from_rayjob(
    rayjob: dict[str, Any],
    current: dict[str, Any] | None,
    *,
    now: str,
    generation: int | None,
    pod_problems: list[str] | None = None,
) -> dict[str, Any]:
    """The TrainingRun status fields to patch after the RayJob's status changed.

    Returns only the keys owned by this mapping (conditions, phase, rayJob, jobId,
    attempts, startTime, completionTime, message); progress/checkpoint/serving stay as
    they are. ``pod_problems``: ``pod_problem`` of the RayJob's pods that have one; while
    the job is not running they replace "waiting for the Ray cluster" with what it waits
    for (reason ``PodsPending``). The latest OOM kill or head loss in the RayJob's current
    Ray cluster (``status.lastIncident``) is noted in the message ("last OOM kill: ...")
    while the job is submitted, runs, retries or has failed.
    """
    cur = current or {}
    st = rayjob.get("status") or {}
    suspend = bool((rayjob.get("spec") or {}).get("suspend"))
    state = job_state(st, suspend=suspend)
    conds = cur.get("conditions") or []
    if (state.reason == "Retrying" and st.get("jobDeploymentStatus") != "Retrying"
            and (get_condition(conds, RUNNING) or {}).get("reason") != "Retrying"
            and cur.get("attempts") is not None
            and (attempts_of(st) or 0) <= int(cur["attempts"])):
        # a failed count with no new failure behind it: a suspended run resumed (or one
        # whose edit suspended it) starts its cluster again, it does not retry ("retrying:
        # attempt 1 failed" with no cause was a second Retrying Event, after the resume)
        state = job_state({**st, "failed": 0}, suspend=suspend)
    r_status, r_reason, r_msg = state.running
    message = state.message
    applied = get_condition(conds, SPEC_APPLIED) or {}
    if r_reason == "Suspended" and applied.get("reason") == SPEC_CHANGE_BEFORE_START:
        # the operator's suspend, not the user's: it resumes by itself with the edit
        r_msg = message = applied.get("message") or r_msg
    if r_reason == "Retrying" and r_msg.endswith(f"failed{RETRY_TAIL}"):
        # KubeRay has cleared the cause from the RayJob: keep what was seen of this attempt
        prev = get_condition(conds, RUNNING) or {}
        if prev.get("reason") == "Retrying" and (prev.get("message") or "").startswith(
                r_msg[:-len(RETRY_TAIL)] + ": "):
            r_msg, message = prev["message"], cur.get("message") or message
    if pod_problems and state.outcome is None and state.reason != "JobRunning" \
            and r_reason != "Suspended":
        problems = sorted(pod_problems)
        more = f" (and {len(problems) - 1} more pod(s))" if len(problems) > 1 else ""
        waiting = ("the Ray cluster is up; the job is not submitted yet"
                   if state.reason == "JobPending" else "waiting for the Ray cluster")
        message = f"{waiting}: {problems[0]}{more}"
        r_msg = message
        if r_status == "False" or state.reason == "JobPending":  # nothing runs yet
            r_status, r_reason = "False", "PodsPending"
    fail_msg = state.message
    succ_msg = state.message
    if state.outcome == "Succeeded" and (lost := failed_trials_note(cur.get("trials"))):
        message = succ_msg = f"{message}; {lost}"
    note = (cur.get("lastNote") or {}).get("message") or ""
    if state.outcome == "Succeeded" and note.endswith(NOTHING_TO_TRAIN):
        # the driver found the epochs already trained (a run re-created under the same
        # name): "succeeded" alone read as a run that trained
        message = succ_msg = f"{message}: {note}"
    permanent = cur.get("permanentFailure") or {}
    if state.outcome == "Failed" and permanent.get("retriesCancelled") and permanent.get("message"):
        # the driver's own line (KubeRay's message may be its submitter's, or cut)
        fail_msg = failed_message(int(st.get("failed") or 0),
                                  f"{permanent['message']}{NOT_RETRIED}")
        message = fail_msg
        state = replace(state, reason=PERMANENT_REASON)
    incident = incident_note(cur.get("lastIncident"), st.get("rayClusterName") or "")
    if incident and (state.outcome == "Failed"
                     or r_reason in ("Retrying", "JobRunning", "JobPending")):
        message = f"{message} ({incident})"
        fail_msg = f"{fail_msg} ({incident})"
    conds = set_condition(conds, RUNNING, r_status, r_reason, r_msg, now=now,
                          generation=generation)
    if state.outcome == "Succeeded":
        conds = set_condition(conds, SUCCEEDED, "True", state.reason, succ_msg, now=now,
                              generation=generation)
        conds = set_condition(conds, FAILED, "False", "JobSucceeded", succ_msg, now=now,
                              generation=generation)
    elif state.outcome == "Failed":
        conds = set_condition(conds, FAILED, "True", state.reason, fail_msg, now=now,
                              generation=generation)
        conds = set_condition(conds, SUCCEEDED, "False", state.reason,
                              "the Ray job failed (the Failed condition says why)", now=now,
                              generation=generation)
    else:  # a (re)started run: no outcome yet, so Unknown (metav1's "cannot tell yet"),
        # not False: a `kubectl wait --for=condition=Succeeded=False` must not fire on it
        for t in (SUCCEEDED, FAILED):
            if get_condition(conds, t) is not None:
                conds = set_condition(conds, t, "Unknown", state.reason,
                                      f"no outcome yet: {state.message}", now=now,
                                      generation=generation)

    if state.outcome == "Succeeded" and _said(conds) == _said(cur.get("conditions")) \
            and cur.get("message"):
        # no news: a later one (serving's) stays the last word. Not only the very same
        # conditions: a serve edit's new generation is no news of the RayJob, and it put
        # "the Ray job succeeded" back over "serving ..." (on the real node)
        message = cur["message"]
    out: dict[str, Any] = {
        "conditions": conds,
        "phase": phase_of(conds),
        "rayJob": (rayjob.get("metadata") or {}).get("name"),
        "message": message,
    }
    if st.get("jobId"):
        out["jobId"] = st["jobId"]
    attempts = attempts_of(st)
    if attempts is not None:
        # never backwards within one run (a rerun clears it first): a suspended RayJob
        # counts only its finished attempts, and a RayJob deleted and made again
        # (RayJobRecreated) starts KubeRay's counters at 0; the attempts made stay made
        out["attempts"] = max(attempts, int(cur.get("attempts") or 0))
    start = st.get("startTime")
    if start and not cur.get("startTime"):
        out["startTime"] = start
    if state.terminal:
        out["completionTime"] = st.get("endTime") or cur.get("completionTime") or now
    elif cur.get("completionTime"):
        out["completionTime"] = None  # a rerun / retry: not complete any more
    return out


# ------------------------------------------------------------------------ spec changes
SPEC_CHANGE_PENDING = "SpecChangePending"
SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
"""An older operator's name for ``SpecChangePending``: read as the same."""
SPEC_CHANGE_NOT_APPLIED = "SpecChangeNotApplied"
"""An older operator's end of a pending edit ("edit again to start a new run"): kept as
it was, not turned into a new run by an operator upgrade."""
SPEC_CHANGE_BEFORE_START = "SpecChangeBeforeStart"
"""A training edit made while the RayJob's Ray cluster was still coming up (its pods
Pending, perhaps for good: the edit may be the fix): nothing of the run runs yet, so
the operator suspends the RayJob (KubeRay deletes the cluster it was starting) and
resumes it with the edit, instead of waiting for a run that may never start."""
EDIT_PENDING = (SPEC_CHANGE_PENDING, SPEC_CHANGE_IGNORED, SPEC_CHANGE_BEFORE_START)
_WHILE_RUNNING = " changed while the RayJob is running"
_BEFORE_START = " changed before the Ray cluster came up"


def spec_change_before_start(fields: str) -> str:
    """``SpecApplied=False``'s message while the RayJob is suspended to take the edit."""
    return (f"{fields}{_BEFORE_START}: the RayJob is suspended (KubeRay deletes the Ray "
            "cluster it was starting) and then resumed with the edit")


def spec_change_pending(fields: str) -> str:
    """``SpecApplied=False``'s message for a training edit made while the RayJob runs."""
    return (f"{fields}{_WHILE_RUNNING}: not applied to this run (nor to KubeRay's retries "
            "of it); a new run with the spec as it is then starts once this one ends")


RERUN_WAITING = "WaitingForPreviousRayJob"
"""``SpecApplied=False``'s reason while a rerun waits for the finished run's RayJob to be
deleted (KubeRay's finalizer stops its Ray cluster first): the status itself says that a
new run is due, so the RayJob's DELETED event, the resync or a restarted operator starts
it (``plan_rayjob``'s ``rerun_pending``)."""
_CHANGED = " changed "


def spec_change_undone(fields: str) -> str:
    """``SpecApplied``'s message (and an Event) when a pending edit is edited back."""
    return (f"{fields} edited back before the edit was applied: the run goes on as it "
            "was (RayJob unchanged)")


def rerun_waiting(fields: str, when: str, job_name: str) -> str:
    """``SpecApplied=False``'s message while a rerun waits for the previous RayJob to go."""
    return (f"{fields}{_CHANGED}{when}: the new run starts once RayJob {job_name} of the "
            "previous run is deleted (KubeRay stops its Ray cluster first)")


# what follows the fields in each SpecApplied message that names them
_FIELDS_END = {SPEC_CHANGE_PENDING: _WHILE_RUNNING, SPEC_CHANGE_IGNORED: _WHILE_RUNNING,
               SPEC_CHANGE_BEFORE_START: _BEFORE_START,
               RERUN_WAITING: _CHANGED}


def named_fields(condition: dict[str, Any] | None,
                 reasons: Iterable[str] = tuple(_FIELDS_END)) -> list[str]:
    """The fields a ``SpecApplied`` condition of one of ``reasons`` names in its message
    (a pending edit's, a waiting rerun's): the status is the only place they are kept, so
    a restarted operator still says what a new run is for. Empty for any other reason."""
    condition = condition or {}
    message = condition.get("message") or ""
    end = _FIELDS_END.get(condition.get("reason") or "")
    if condition.get("reason") not in reasons or end is None or end not in message:
        return []
    return [f for f in message.split(end, 1)[0].split(", ") if f]


def pending_fields(condition: dict[str, Any] | None) -> list[str]:
    """The fields a pending edit's ``SpecApplied`` message names (empty: none pending)."""
    return named_fields(condition, EDIT_PENDING)


def edit_pending(status: dict[str, Any]) -> bool:
    """A training edit made while the RayJob ran waits for that run to end, which starts
    a new run with it (the status holds it, so a restarted operator still starts it)."""
    return (get_condition(status.get("conditions"), SPEC_APPLIED) or {}).get(
        "reason") in EDIT_PENDING


_NO_CAUSE = re.compile(r"attempt \d+ failed" + re.escape(RETRY_TAIL))
# What ``pod_problem`` says a pod waits for, without the detail after it.
_POD_WAIT = re.compile(r"(?P<lead>.*?): pod (?P<pod>\S+)(?: \(KubeRay's job submitter\))?"
                       r"(?: (?P<unscheduled>cannot be scheduled)"
                       r"|: container (?P<container>\S+) (?P<why>\w+))")
# kubelet alternates these while it backs off one failing pull
_SAME_WAIT = {"ImagePullBackOff": "ErrImagePull"}


def _waits_for(message: str | None) -> tuple[str, ...] | None:
    """The pod and the kind of wait a "waiting for the Ray cluster" message names, or
    None: the scheduler rewrites its verdict at each attempt (a node tainted for a moment
    under load adds "had untolerated taint(s)"), and kubelet flips ErrImagePull and
    ImagePullBackOff; neither is news to the reader of Events. What the scheduler says is
    short of (the CPU, the claim, ...: ``_SCHEDULER_CAUSES``, less a taint) is part of the
    wait: a claim made and then too little CPU is news (its Warning still named the
    claim, an operator probe)."""
    m = _POD_WAIT.match(message or "")
    if m is None:
        return None
    why = m["why"] or ""
    if m["unscheduled"]:
        said = message[m.end():]
        why = ",".join(sorted({cause for key, cause in _SCHEDULER_CAUSES
                               if key in said and cause != "tolerations"}))
    return (m["lead"], m["pod"], m["unscheduled"] or "", m["container"] or "",
            _SAME_WAIT.get(why, why))


def _same_wait(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> bool:
    """Two ``_waits_for`` of one wait: the same pod and kind of wait, for the same cause
    where both verdicts name one. A verdict that names only a taint (a node not ready for
    a moment: the scheduler then says nothing else) names none, and is the same wait as
    any other of that pod (it was a second Warning after an operator restart)."""
    if a is None or b is None:
        return a is b
    return a[:4] == b[:4] and (a[4] == b[4] or (bool(a[2]) and not (a[4] and b[4])))


def phase_event(current: dict[str, Any] | None,
                patch: dict[str, Any]) -> tuple[str, str, str] | None:
    """The Event to post after ``status_from_rayjob``'s ``patch`` over ``current``:
    (type, reason, message), or None. One when the phase or the message changed, except
    a retry already announced (same attempt) that has lost its cause: KubeRay clears the
    failed job's log from the RayJob, and after a pod-problem message the condition's
    message no longer holds it either; "retrying: attempt 1 failed" then said nothing
    the Retrying Event before it had not said better. Nor when the same pod still waits
    for the same thing in other words (``_waits_for``); the status message has them."""
    cur = current or {}
    old_phase, new_phase = cur.get("phase"), patch["phase"]
    if old_phase == new_phase and patch.get("message") == cur.get("message"):
        return None
    running = get_condition(patch["conditions"], RUNNING) or {}
    if (new_phase == old_phase == "Running" and running.get("reason") == "Retrying"
            and patch.get("attempts") == cur.get("attempts")
            and _NO_CAUSE.fullmatch(running.get("message") or "")):
        return None
    if old_phase == new_phase and (wait := _waits_for(patch.get("message"))) is not None \
            and _same_wait(wait, _waits_for(cur.get("message"))):
        return None
    if (old_phase == new_phase == "Pending" and _waits_for(cur.get("message")) is not None
            and (patch.get("message") or "").startswith("waiting for the Ray cluster")
            and _waits_for(patch.get("message")) is None):
        # a pod's problem gone back to the plain "waiting": no news (on the real node it
        # alternated with "Insufficient cpu", three Pending Events in 2 s)
        return None
    if running.get("reason") == "Suspended" and (get_condition(
            patch["conditions"], SPEC_APPLIED) or {}).get("reason") == SPEC_CHANGE_BEFORE_START:
        return None  # the operator's own suspend for an edit: its Event said so already
    failed = is_true(patch["conditions"], FAILED)
    reason = new_phase if new_phase != "Running" else running.get("reason", "Running")
    if _waits_for(patch.get("message")) is not None:
        # a pod that cannot run: a Warning (the scheduler's own FailedScheduling is one,
        # and ``kubectl get events --field-selector type=Warning`` is where people look)
        # (also during a retry, whose Running reason stays Retrying: the Event is the pods')
        return ("Warning", "PodsPending", patch.get("message") or new_phase)
    if new_phase == "Serving":
        # a rerun while the previous checkpoint serves: the news is the run's, not serving's
        reason = ("Failed" if failed else "Succeeded" if is_true(patch["conditions"], SUCCEEDED)
                  else running.get("reason") or "Pending")
    return ("Warning" if failed else "Normal", reason, patch.get("message") or new_phase)


def worker_failure_event(old: Any, new: Any) -> tuple[str, str, str] | None:
    """The Warning for a worker-group failure the driver reported in
    ``status.workerFailures`` (``old`` -> ``new``), or None: one per failure (a new
    ``at``), none when the field is cleared (a new attempt's driver starts its count at
    zero). The Event is what records it once that happens: on the real node a worker
    killed mid-attempt was in the status for that attempt only."""
    if not isinstance(new, dict) or not new.get("last"):
        return None
    if isinstance(old, dict) and (old.get("at"), old.get("count")) == (new.get("at"),
                                                                        new.get("count")):
        return None
    return ("Warning", "WorkerFailure", str(new["last"]))


# --------------------------------------------------------------------------- promotion
@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # GatePassed, GateNotMet, NoCheckpoint, ServeDisabled (+ the operator's CheckpointOutsideStorage)
    message: str
    checkpoint: str | None


def gate(serve: dict[str, Any] | None, checkpoint: dict[str, Any] | None) -> GateDecision:
    """Whether the best checkpoint may be served: ``valAccuracy >= serve.minAccuracy``.

    ``serve`` is the camelCase ``spec.serve`` (defaults applied), ``checkpoint`` the
    ``status.checkpoint`` the driver wrote ({uri, epoch, metrics}).
    """
    serve = serve or {}
    if not serve.get("enabled"):
        return GateDecision(False, "ServeDisabled", "spec.serve.enabled is false", None)
    threshold = float(serve.get("minAccuracy") or 0.0)
    uri = (checkpoint or {}).get("uri")
    if not uri:
        return GateDecision(False, "NoCheckpoint", "the run reported no checkpoint "
                            "(status.checkpoint.uri is empty)", None)
    metrics = (checkpoint or {}).get("metrics") or {}
    if (short := gate_shortfall(threshold, metrics)) is None:
        return GateDecision(True, "GatePassed", f"valAccuracy {float(metrics['valAccuracy']):.4f}"
                            f" >= serve.minAccuracy {threshold:g}; serving {uri}", uri)
    if "valAccuracy" not in metrics:
        return GateDecision(False, "GateNotMet", f"checkpoint {uri} has {short}", uri)
    return GateDecision(False, "GateNotMet", f"{short}: not promoted", uri)


# ------------------------------------------------------------------------- RayService
SERVE_APP = "classifier"
"""The Serve application's name in the rendered serveConfigV2 (raykube.render.serve_config)."""
_APP_FAILED = {"DEPLOY_FAILED": "ServeApplicationFailed", "UNHEALTHY": "ServeApplicationUnhealthy"}


def _app(service_status: dict[str, Any] | None) -> tuple[str | None, str]:
    """(status, message) of our Serve application in an active/pending service status."""
    apps = (service_status or {}).get("applicationStatuses") or {}
    app = apps.get(SERVE_APP)
    if not isinstance(app, dict):
        return None, ""
    msgs = [app.get("message") or ""] + [
        f"{name}: {d.get('message')}" for name, d in sorted(
            (app.get("serveDeploymentStatuses") or {}).items())
        if isinstance(d, dict) and d.get("message")]
    return app.get("status"), "; ".join(m for m in msgs if m)[:1000]


def rayservice_ready(rayservice: dict[str, Any]) -> tuple[bool, str, str]:
    """(ready, reason, message) from a KubeRay 1.7 RayService status.

    KubeRay's ``Ready`` condition only says that the serve Service has endpoints; serving
    also needs our Serve application RUNNING (``activeServiceStatus.applicationStatuses``).
    A failed application (an unreadable checkpoint, say) is reported with Serve's message.
    During a zero-downtime upgrade the previous cluster keeps serving: still ready, with
    reason ``UpgradeInProgress``. (Older KubeRay versions only report ``serviceStatus``.)
    """
    st = rayservice.get("status") or {}
    conds = st.get("conditions") or []
    ready_c = get_condition(conds, "Ready")
    endpoints = (ready_c or {}).get("status") == "True" if ready_c is not None else (
        st.get("serviceStatus") == "Running")
    app_status, app_message = _app(st.get("activeServiceStatus"))
    if is_true(conds, "UpgradeInProgress"):
        c = get_condition(conds, "UpgradeInProgress") or {}
        pending, pending_message = _app(st.get("pendingServiceStatus"))
        message = c.get("message") or "a new serve config is rolling out"
        if pending in _APP_FAILED:
            message += f"; the new application is {pending}: {pending_message}"
        # KubeRay (v1.6.2, seen on real pods) reports no applicationStatuses for the
        # active cluster while a new cluster comes up (a serve.replicas edit): with
        # endpoints, the previous cluster is what answers (421 of 421 requests then)
        if endpoints and (app_status == "RUNNING" or app_status is None):
            return True, "UpgradeInProgress", message + "; the previous config keeps serving"
        return False, "UpgradeInProgress", message
    if app_status in _APP_FAILED:
        return False, _APP_FAILED[app_status], app_message or f"application {SERVE_APP} is {app_status}"
    if not endpoints:
        reason = (ready_c or {}).get("reason") or "Deploying"
        return False, reason, (ready_c or {}).get("message") or "waiting for the RayService to become ready"
    if app_status != "RUNNING":
        return False, "ServeApplicationDeploying", (
            f"application {SERVE_APP} is {app_status or 'not deployed yet'}"
            + (f": {app_message}" if app_message else ""))
    return True, "ServeReady", ""


SERVE_CONFIG_UPDATING = "ServeConfigUpdating"
"""``Ready``'s reason while a new serve config rolls out on the cluster that serves."""


def _unobserved(rayservice: dict[str, Any]) -> bool:
    """KubeRay has not reconciled the RayService's latest spec yet: its status (and the
    application status in it) still describes the previous one."""
    seen = (rayservice.get("status") or {}).get("observedGeneration")
    generation = (rayservice.get("metadata") or {}).get("generation")
    return seen is not None and generation is not None and int(seen) < int(generation)


def serving_clusters(rayservice: dict[str, Any] | None) -> set[str]:
    """The Ray clusters a RayService serves from or brings up (active, pending)."""
    st = (rayservice or {}).get("status") or {}
    return {name for key in ("activeServiceStatus", "pendingServiceStatus")
            if (name := (st.get(key) or {}).get("rayClusterName"))}


NOT_SERVING = "not serving: the RayService is not ready"
"""Lead of the run's message once a served model stops being served."""

SERVE_WAITS = "a serving pod waits"
"""Lead of the ``Ready`` message (and, before anything serves, of the run's message)
while a pod of the RayService's clusters cannot run."""


def serving_from_rayservice(
    rayservice: dict[str, Any],
    current: dict[str, Any] | None,
    *,
    endpoint: str,
    checkpoint: str | None,
    now: str,
    generation: int | None,
    val_accuracy: float | None = None,
    pod_problems: list[str] | None = None,
) -> dict[str, Any]:
    """Status fields (conditions, phase, serving, rayService; the message when a
    checkpoint goes live) after a RayService change.

    ``val_accuracy``: the served checkpoint's, as it was promoted (the RayService's
    ``raykube.io/val-accuracy``): ``kubectl get tr`` shows it beside the last epoch's,
    which a later run (or a later, worse epoch) moves. ``pod_problems``: ``pod_problem``
    of the pods of the RayService's clusters that have one. KubeRay says only
    ``UpgradeInProgress`` (or not ready) while a new serving cluster's pods cannot be
    scheduled (``serve.cpusPerReplica: 8`` on the real node: Pending for good); the
    ``Ready`` message names the pod and the field, and before anything serves so does
    the run's message."""
    cur = current or {}
    ready, reason, message = rayservice_ready(rayservice)
    waits = None
    if pod_problems:
        problems = sorted(pod_problems)
        more = f" (and {len(problems) - 1} more pod(s))" if len(problems) > 1 else ""
        waits = f"{SERVE_WAITS}: {problems[0]}{more}"
    old = cur.get("serving") or {}
    if ((reason == "ServeApplicationDeploying" or (ready and _unobserved(rayservice)))
            and is_true(cur.get("conditions"), READY) and old.get("checkpoint")):
        # a new serveConfigV2 (a promotion, a serve edit): KubeRay applies it to the
        # running cluster and Serve replaces the replicas one by one; the old ones answer
        # meanwhile (``make e2e-local`` phase 6: no request failed). Not "not ready", and
        # not the new checkpoint yet: KubeRay may not even have read the new spec (its
        # status is still the old config's)
        ready, reason = True, SERVE_CONFIG_UPDATING
        message = "; ".join(m for m in (message, "rolling out in place: the running "
                                        "replicas answer until the new ones are up") if m)
    said = message or (f"serving {checkpoint} at {endpoint}" if ready else "")
    conds = set_condition(cur.get("conditions"), READY, ready, reason,
                          "; ".join(m for m in (said, waits) if m),
                          now=now, generation=generation)
    out: dict[str, Any] = {"conditions": conds, "phase": phase_of(conds),
                           "rayService": (rayservice.get("metadata") or {}).get("name")}
    if not ready and cur.get("phase") != "Serving":
        # nothing serves yet: the run's message is the wait, and then, once the pod
        # runs, no longer (it said "the Ray job succeeded" all the while before)
        if waits:
            out["message"] = waits
        elif (cur.get("message") or "").startswith(SERVE_WAITS):
            out["message"] = said or f"waiting for the RayService: {reason}"
    if not ready and is_true(cur.get("conditions"), READY):
        # it served and no longer does (KubeRay: ZeroServeEndpoints, a failed application):
        # the SERVING column and the message advertised a dead endpoint until the next
        # training news (an operator audit); ``Ready`` says why, and the next Ready brings
        # ``serving`` back
        out["serving"] = None
        if cur.get("phase") == "Serving" or (cur.get("message") or "").startswith("serving "):
            out["message"] = f"{NOT_SERVING}: {reason}" + (f": {message}" if message else "")
    if ready and reason in ("UpgradeInProgress", SERVE_CONFIG_UPDATING) and old:
        out["serving"] = old  # the previous checkpoint serves until the upgrade is done
    elif ready:
        same = old.get("checkpoint") == checkpoint
        since = old.get("since") if same and old.get("since") else now
        out["serving"] = {"endpoint": endpoint, "checkpoint": checkpoint, "since": since}
        if val_accuracy is not None:
            out["serving"]["valAccuracy"] = round(val_accuracy, SHOWN_DECIMALS)
        if not same or cur.get("phase") != "Serving":
            # the news now (it said "the Ray job succeeded" all the while it served)
            out["message"] = f"serving {checkpoint} at {endpoint}"
    return out


def serve_wait_event(current: dict[str, Any] | None,
                     patch: dict[str, Any]) -> tuple[str, str, str] | None:
    """A Warning when ``serving_from_rayservice``'s ``Ready`` names a pod wait it did not
    name before (another pod, or another kind of wait: ``_waits_for``), else None."""
    def wait(conditions: Any) -> tuple[str, tuple[str, ...] | None]:
        msg = (get_condition(conditions, READY) or {}).get("message") or ""
        at = msg.find(SERVE_WAITS + ": ")
        return (msg[at:], _waits_for(msg[at:])) if at >= 0 else ("", None)

    said, new = wait(patch.get("conditions"))
    if new is None or _same_wait(new, wait((current or {}).get("conditions"))[1]):
        return None
    return ("Warning", "ServePodsPending", said)


SHOWN_DECIMALS = 4
"""Decimals of a metric shown in a printer column (the reporter's ``PROGRESS_DECIMALS``)."""
