"""``raykube run FILE``: train (tune, serve) a TrainingRun on this machine's embedded Ray."""

from __future__ import annotations

import argparse
import sys

from raykube.commands._util import flag_errors, port_number, with_examples

FLAGS = {"scaling.workers": "--workers", "train.epochs": "--epochs"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    with_examples(p, """
raykube run jobs/quickstart.yaml                 # train, then answer one request
raykube run jobs/quickstart.yaml --epochs 20     # continue the same run to 20 epochs
raykube run jobs/quickstart.yaml --serve         # keep serving until Ctrl-C
raykube run my-run.yaml --storage /data/runs --workers 4

Re-running a finished run trains nothing; an interrupted one (Ctrl-C, a crash)
continues from its last checkpoint in <storage>/<name>/.
""")
    p.add_argument("file", metavar="FILE", help="YAML file holding one TrainingRun")
    p.add_argument("--storage", default=None,
                   help="storage root; the run directory is <storage>/<name>/ (default: "
                   "<checkpoint.storage.uri>/<namespace> when the spec names an s3:// URI, "
                   "as on a cluster, else ./runs)")
    p.add_argument("--workers", type=int, help="override spec.scaling.workers")
    p.add_argument("--epochs", type=int, help="override spec.train.epochs")
    p.add_argument("--serve", action="store_true",
                   help="keep the model served after the demo request (until Ctrl-C)")
    p.add_argument("--port", type=port_number, default=8000,
                   help="HTTP port of the local server (default 8000)")


def local_storage(tr, flag: str | None) -> str:  # noqa: ANN001 (TrainingRun; lazy import)
    """The storage root of a local run: ``--storage`` when given; else the spec's own
    ``checkpoint.storage.uri`` laid out as on a cluster (``<uri>/<namespace>``, so
    ``raykube run`` and the operator share checkpoints and ``best/``); else ./runs (a
    spec's PVC exists only in a cluster)."""
    if flag:
        return flag
    if tr.spec.checkpoint.storage.uri:
        from raykube.render import storage_root

        return storage_root(tr)
    return "./runs"


def _fail(message: str) -> int:
    print(f"raykube run: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    import os
    import time

    from pydantic import ValidationError
    from rich.console import Console

    from raykube.spec import InvalidTrainingRun, apply_overrides, load_one, parse_training_run

    console = Console()
    try:
        tr = load_one(args.file)
        overrides = {k: v for k, v in (("scaling.workers", args.workers),
                                       ("train.epochs", args.epochs)) if v is not None}
        if overrides:
            # Re-parse the whole TrainingRun: the cross-field checks (e.g. a Tune
            # scheduler's gracePeriod <= train.epochs) must see the overridden values.
            spec = apply_overrides(tr.spec, overrides)
            tr = parse_training_run({**tr.to_dict(), "spec": spec.to_dict()},
                                    source=f"{args.file} (with {' '.join(map(FLAGS.get, overrides))})")
    except InvalidTrainingRun as exc:
        for e in exc.errors:
            print(f"{exc.source or args.file}: {e.path}: {e.message}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # a bad override
        for line in flag_errors(exc, FLAGS):
            print(f"{args.file}: {line}", file=sys.stderr)
        return 1

    from raykube.data import DatasetUnavailable
    from raykube.train import RunDirConflict, StorageError, check_resumable, check_storage

    storage = local_storage(tr, args.storage)
    # Everything a user can get wrong is checked before Ray starts and training runs:
    # the storage, what it already holds, and the port the model will be served on.
    try:
        check_resumable(check_storage(storage, tr.name), tr.spec)
        if tr.spec.data.uri and tr.spec.data.uri.startswith("s3://"):
            from raykube import s3

            try:
                s3.check(tr.spec.data.uri)
            except s3.S3Unavailable as exc:
                raise OSError(f"data.uri {exc}") from None
        if tr.spec.serve.enabled:
            from raykube.serve import ensure_port_free

            ensure_port_free("127.0.0.1", args.port)
    except (OSError, RunDirConflict) as exc:
        return _fail(str(exc))

    from raykube.display import RichDisplay
    from raykube.local import (
        curl_command,
        demo_request,
        describe_answer,
        gate_passed,
        init_ray,
        local_cpus,
        train_or_tune,
        validation_example,
    )

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_ray(num_cpus=local_cpus(tr))
    try:
        outcome = train_or_tune(tr, storage, observers=[RichDisplay(console)])
    except (DatasetUnavailable, StorageError, RunDirConflict) as exc:
        return _fail(str(exc))
    acc = outcome.best_metrics.get("valAccuracy")
    acc_text = f"{acc:.4f}" if isinstance(acc, float) else str(acc)
    console.print(f"best checkpoint: [bold]{outcome.best_checkpoint}[/] (valAccuracy {acc_text})")

    serve = tr.spec.serve
    if not serve.enabled:
        return 0
    if not gate_passed(tr, outcome.best_metrics):
        console.print(f"[yellow]not served[/]: valAccuracy {acc_text} is below "
                      f"serve.minAccuracy {serve.min_accuracy}")
        return 0
    from raykube.serve import start_local, stop_local

    try:
        url = start_local(str(outcome.best_checkpoint), serve, port=args.port, quiet=True)
    except (OSError, RuntimeError, TimeoutError) as exc:  # e.g. the port got taken meanwhile
        return _fail(f"trained, but could not serve {outcome.best_checkpoint}: {exc} "
                     f"(try: raykube serve {outcome.best_checkpoint} --port ...)")
    try:
        instance, truth = validation_example(tr, storage)
        answer = demo_request(url, instance)
        console.print(f"served at [bold]{url}[/]\n  question: one validation example, "
                      f"true label [bold]{truth}[/]\n  answer:   {describe_answer(answer)}")
        if args.serve:
            from raykube.commands._util import stop_on_sigterm

            stop_on_sigterm()
            console.print("serving until Ctrl-C. Try:\n" + curl_command(url, instance))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_local()
    return 0
