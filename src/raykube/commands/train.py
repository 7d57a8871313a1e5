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
    if answer is None and reporter.gone:  # `raykube render`'s RayJob: no TrainingRun, no operator
        said = ("no TrainingRun to ask to cancel KubeRay's retries (a rendered RayJob): KubeRay "
                "retries as its backoffLimit says, and each attempt fails the same way")
    else:
        said = {
            True: "not retried: a new attempt would fail the same way",
            False: "the operator answered too late to cancel the retry",
            None: "no answer from the operator: KubeRay retries as spec.failure.maxRetries says",
        }[answer]
    print(f"raykube train: {said}", file=sys.stderr, flush=True)
    return True


def clear_failure(run_dir: str) -> None:
    """A new attempt starts: the last one's ``failed.json`` no longer says how the run
    ends (``raykube.run_failure``). A store that cannot be reached now is the run's own
    first error, in its words: here only a line saying what is left behind."""
    from raykube import run_failure
    from raykube.k8s_reporter import api_error_line

    try:
        if run_failure.clear(run_dir):
            print(f"raykube train: a new attempt: removed the last one's "
                  f"{run_dir}/{run_failure.FAILED_FILE}", file=sys.stderr, flush=True)
    except Exception as exc:
        print(f"raykube train: could not remove {run_dir}/{run_failure.FAILED_FILE} "
              f"({api_error_line(exc)}): serving that waits on this run may take an "
              "earlier attempt's failure for this one's", file=sys.stderr, flush=True)


def record_failure(run_dir: str, line: str, *, permanent: bool) -> bool:
    """Write ``failed.json`` for the serving that waits on this run: the failure, and
    whether KubeRay retries it (read from this driver's RayJob). Best effort: the
    failure line the caller prints last is what matters. True when a line was printed
    (outside a RayJob nothing is done)."""
    from raykube import run_failure
    from raykube.k8s_reporter import KubernetesReporter, api_error_line

    reporter = KubernetesReporter.from_env()
    if reporter is None:  # not a RayJob's driver: no serving waits on this run
        return False
    rayjob = None if permanent else reporter.rayjob()
    final, outcome = run_failure.attempt_outcome(permanent, rayjob)
    failure = run_failure.RunFailure(message=line[:1000], at=run_failure.now(), final=final,
                                     outcome=outcome)
    where = f"{run_dir}/{run_failure.FAILED_FILE}"
    try:
        run_failure.record(run_dir, failure)
    except Exception as exc:
        print(f"raykube train: could not write {where} ({api_error_line(exc)})",
              file=sys.stderr, flush=True)
        return True
    print(f"raykube train: {'the run failed for good' if final else 'this attempt failed'} "
          f"({outcome}): said in {where}", file=sys.stderr, flush=True)
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
    from raykube.train import (
        RunDirConflict,
        StorageError,
        actor_died_line,
        is_training_failure,
        run_dir_for,
        training_failure,
    )
    from raykube.transient import retry_would_help

    run_dir = run_dir_for(storage, tr.name)
    if os.environ.get("RAYKUBE_TRAININGRUN"):  # a RayJob's driver (rendered or the operator's)
        clear_failure(run_dir)

    # A RayJob's driver joins its cluster (RAY_ADDRESS), whose head runs the dashboard
    # KubeRay submits through; without an address, a Ray of its own, as `raykube run`.
    init_ray(address=os.environ.get("RAY_ADDRESS") or None, dashboard=tr.spec.tune is not None)
    try:
        outcome = train_or_tune(tr, storage, observers=_observers())
    except (DatasetUnavailable, StorageError, RunDirConflict) as exc:  # the pod log shows one clear line
        print(f"raykube train: {exc}", file=sys.stderr, flush=True)
        permanent = not retry_would_help(exc)
        said = permanent and give_up(str(exc))
        if not isinstance(exc, StorageError):  # the store itself failed: nothing to write to
            said = record_failure(run_dir, str(exc), permanent=permanent) or said
        if said:
            # KubeRay's message (and so the TrainingRun's) quotes the log's last lines:
            # the cause goes last again, after what came of the request
            print(f"raykube train: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        if not is_training_failure(exc):
            # Train's controller killed (an OOM kill in its pod): Ray's text carries colour
            # codes and the actor's repr, which the TrainingRun's message would quote
            line = (actor_died_line(exc) if type(exc).__name__ == "ActorDiedError"
                    else f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            record_failure(run_dir, line[:300], permanent=False)
            raise
        # Ray's traceback for the log, then one line last: KubeRay's RayJob message (and
        # so the TrainingRun's) quotes the job log's last lines.
        import traceback

        traceback.print_exc()
        why = training_failure(exc)
        record_failure(run_dir, f"training failed: {why}", permanent=False)
        print(f"raykube train: training failed: {why}"
              + (OOM_HINT if "OutOfMemoryError" in why else ""), file=sys.stderr, flush=True)
        return 1
    print(f"best checkpoint: {outcome.best_checkpoint} "
          f"(valAccuracy {outcome.best_metrics.get('valAccuracy')})")
    return 0
