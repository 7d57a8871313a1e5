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
            from raykube.k8s_reporter import KubernetesReporter

            out.append(KubernetesReporter(namespace, name))
        except Exception as exc:  # progress reporting is best effort; training is not
            logging.getLogger(__name__).warning(
                "not reporting status to TrainingRun %s: %s", ref, exc)
    return out


def run(args: argparse.Namespace) -> int:
    import os

    from raykube.spec import InvalidTrainingRun, load_one

    try:
        tr = load_one(args.spec)
    except InvalidTrainingRun as exc:
        for e in exc.errors:
            print(f"{e.source or exc.source or args.spec}: {e.path}: {e.message}", file=sys.stderr)
        return 1
    storage = args.storage or os.environ.get("RAYKUBE_STORAGE") or "./runs"

    from raykube.data import DatasetUnavailable
    from raykube.local import init_ray, train_or_tune
    from raykube.train import RunDirConflict, StorageError, is_training_failure, training_failure

    # A RayJob's driver joins its cluster (RAY_ADDRESS), whose head runs the dashboard
    # KubeRay submits through; without an address, a Ray of its own, as `raykube run`.
    init_ray(address=os.environ.get("RAY_ADDRESS") or None, dashboard=tr.spec.tune is not None)
    try:
        outcome = train_or_tune(tr, storage, observers=_observers())
    except (DatasetUnavailable, StorageError, RunDirConflict) as exc:  # the pod log shows one clear line
        print(f"raykube train: {exc}", file=sys.stderr)
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
