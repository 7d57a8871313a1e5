"""``raykube train --spec FILE``: the RayJob entrypoint (same code path as ``raykube run``).

It joins the Ray cluster it runs in (``RAY_ADDRESS``), trains or tunes, and reports
progress into the TrainingRun's status when ``RAYKUBE_TRAININGRUN=<namespace>/<name>``.
Serving is the operator's job on a cluster (a RayService), so nothing is served here.
"""

from __future__ import annotations

import argparse
import sys

OOM_HINT = ("; give its pods more memory: spec.scaling.memoryPerWorker (the Train workers' "
            "pods) or spec.scaling.head.memory (the driver's)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, metavar="FILE",
                   help="YAML file holding the TrainingRun (the operator mounts it)")
    p.add_argument("--storage", default=None,
                   help="storage root (default: $RAYKUBE_STORAGE, else ./runs)")


def _observers() -> list:
    import logging
    import os

    from raykube.display import RichDisplay

    out: list = [RichDisplay()]
    ref = os.environ.get("RAYKUBE_TRAININGRUN")
    if ref:
        try:
            namespace, name = ref.split("/", 1)
            from raykube.k8s_reporter import KubernetesReporter, storage_from_env

            out.append(KubernetesReporter(namespace, name, **storage_from_env()))
        except Exception as exc:  # progress reporting is best effort; training is not
            logging.getLogger(__name__).warning(
                "not reporting status to TrainingRun %s: %s", ref, exc)
    return out


def job_submission_id(env: dict[str, str] | None = None) -> str | None:
    """The Ray job this driver runs as (KubeRay's ``status.jobId``), from the job config
    Ray's job supervisor gives its driver; None outside a submitted job."""
    import json
    import os

    raw = (env if env is not None else os.environ).get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    try:
        value = (json.loads(raw or "{}").get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


def give_up(line: str) -> bool:
    """The run failed for a cause every attempt would meet (``raykube.transient``): on a
    cluster, ask the operator to cancel KubeRay's retries before exiting, and say what
    came of it. Outside one (no ``RAYKUBE_TRAININGRUN``) nothing to do: False."""
    from raykube.k8s_reporter import KubernetesReporter

    try:
        reporter = KubernetesReporter.from_env()
        if reporter is None:
            return False
        answer = reporter.stop_retries(line, job_id=job_submission_id())
    except Exception as exc:  # the failure line above is what matters
        print(f"raykube train: could not ask to cancel the retries: {exc}", file=sys.stderr)
        return True
    print("raykube train: " + {
        True: "not retried: a new attempt would fail the same way",
        False: "the operator answered too late to cancel the retry",
        None: "no answer from the operator: KubeRay retries as spec.failure.maxRetries says",
    }[answer], file=sys.stderr, flush=True)
    return True


def run(args: argparse.Namespace) -> int:
    import os

    from raykube.spec import InvalidTrainingRun, load_one

    try:
        tr = load_one(args.spec)
    except InvalidTrainingRun as exc:
        for e in exc.errors:
            print(f"{e.source or exc.source or args.spec}: {e.path}: {e.message}", file=sys.stderr)
        give_up(f"invalid TrainingRun: {exc.errors[0].path}: {exc.errors[0].message}"
                if exc.errors else f"invalid TrainingRun: {exc}")
        return 1
    storage = args.storage or os.environ.get("RAYKUBE_STORAGE") or "./runs"

    from raykube.data import DatasetUnavailable
    from raykube.local import init_ray, train_or_tune
    from raykube.train import RunDirConflict, StorageError, is_training_failure, training_failure
    from raykube.transient import retry_would_help

    # A RayJob's driver joins its cluster (RAY_ADDRESS), whose head runs the dashboard
    # KubeRay submits through; without an address, a Ray of its own, as `raykube run`.
    init_ray(address=os.environ.get("RAY_ADDRESS") or None, dashboard=tr.spec.tune is not None)
    try:
        outcome = train_or_tune(tr, storage, observers=_observers())
    except (DatasetUnavailable, StorageError, RunDirConflict) as exc:  # the pod log shows one clear line
        print(f"raykube train: {exc}", file=sys.stderr, flush=True)
        if not retry_would_help(exc) and give_up(str(exc)):
            # KubeRay's message (and so the TrainingRun's) quotes the log's last lines:
            # the cause goes last again, after what came of the request
            print(f"raykube train: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        if not is_training_failure(exc):
            raise
        # Ray's traceback for the log, then one line last: KubeRay's RayJob message (and
        # so the TrainingRun's) quotes the job log's last lines.
        import traceback

        traceback.print_exc()
        why = training_failure(exc)
        print(f"raykube train: training failed: {why}"
              + (OOM_HINT if "OutOfMemoryError" in why else ""), file=sys.stderr, flush=True)
        return 1
    print(f"best checkpoint: {outcome.best_checkpoint} "
          f"(valAccuracy {outcome.best_metrics.get('valAccuracy')})")
    return 0
