"""``raykube predict CHECKPOINT --out FILE``: batch inference over a dataset with Ray Data.

Without ``--data`` the checkpoint's own validation split is classified, so the accuracy
printed is the one training reported. Writes one Parquet or CSV file (row i = example i
of the split) and prints accuracy and a per-class table when the data has labels.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from raykube.commands._util import with_examples

    with_examples(p, """
raykube predict runs/quickstart/best --out preds.parquet       # its validation split
raykube predict runs/cifar10-cnn/best --data ./my-images --out preds.csv
""")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="checkpoint directory (holding checkpoint.pt) or s3:// URI")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="predictions file: .parquet (with all probabilities) or .csv")
    p.add_argument("--data", metavar="SOURCE",
                   help="TrainingRun YAML, dataset name (digits, fashion-mnist, cifar10, "
                   "synthetic), or an image folder / s3:// URI (default: the checkpoint's "
                   "own data)")
    p.add_argument("--split", choices=["train", "val", "all"],
                   help="which examples (default val; all for an image folder)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per model call")
    p.add_argument("--concurrency", type=int, default=1,
                   help="predictor actors (each loads the model once)")
    p.add_argument("--gpus-per-actor", type=float,
                   help="GPUs per predictor actor (default: 1 when the cluster has GPUs)")
    p.add_argument("--cpus-per-actor", type=float,
                   help="CPUs per predictor actor (default: 1, less when the actors would "
                   "otherwise hold every CPU of the cluster)")
    p.add_argument("--cache-dir", help="dataset cache (default: <storage>/datasets)")
    p.add_argument("--storage", help="storage root (default $RAYKUBE_STORAGE or ./runs)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's own output here instead of in a log file")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from raykube.checkpoint import load_model, read_meta
    from raykube.data import DatasetUnavailable
    from raykube.predict import (
        PredictError,
        check_data,
        check_out,
        meta_mismatch,
        predict,
        print_report,
    )
    from raykube.serve import resolve_checkpoint
    from raykube.spec import InvalidTrainingRun, TrainingRunSpec, location_problem

    user_errors = (PredictError, InvalidTrainingRun, DatasetUnavailable, OSError, ValueError)
    if args.batch_size < 1 or args.concurrency < 1:
        print("raykube predict: --batch-size and --concurrency must be at least 1",
              file=sys.stderr)
        return 2
    if args.num_cpus is not None and args.num_cpus < 1:  # Ray's own words came after start-up
        print(f"raykube predict: --num-cpus {args.num_cpus}: must be at least 1", file=sys.stderr)
        return 2
    for flag, share in (("--cpus-per-actor", args.cpus_per_actor),
                        ("--gpus-per-actor", args.gpus_per_actor)):
        if share is not None and not share >= 0:  # also NaN
            print(f"raykube predict: {flag} {share:g}: must be 0 or more", file=sys.stderr)
            return 2
    for flag, value in (("CHECKPOINT", args.checkpoint), ("--data", args.data),
                        ("--storage", args.storage), ("--cache-dir", args.cache_dir),
                        ("--out", args.out)):
        if value is not None and not value.strip():  # "$UNSET_VAR": ./ is not meant
            print(f"raykube predict: {flag} is empty", file=sys.stderr)
            return 2
        if value and flag not in ("--out", "CHECKPOINT") and (problem := location_problem(value)):
            print(f"raykube predict: {flag} {problem}", file=sys.stderr)
            return 2
    try:
        # A broken checkpoint, an --out or --data it cannot use: one line now, before
        # Ray starts (seconds), not a failing actor pool once Ray is up.
        local = resolve_checkpoint(args.checkpoint)
        _, meta = load_model(local)  # checkpoint.pt's own metadata: what serve reports
        mismatch = meta_mismatch(local, read_meta(local), meta)  # a broken meta.json too
        check_out(args.out)
        note, listing = check_data(TrainingRunSpec.model_validate(meta.spec), meta, args.data)
    except user_errors as exc:
        print(f"raykube predict: {exc}", file=sys.stderr)
        return 2
    made = os.path.dirname(os.path.abspath(args.out))
    made = None if os.path.isdir(made) else f"--out: {made} does not exist: it is made"
    for line in (mismatch, note, made):  # made: a mistyped folder was made without a word
        if line:
            print(f"raykube predict: note: {line}", file=sys.stderr)

    import ray

    from raykube import terminal

    started = False
    if not ray.is_initialized():
        from raykube.commands._util import sigterm_as_ctrl_c

        # `kill`/a container stop: "interrupted" and 130, not Ray's silent 15; set before
        # Ray starts (our own Ray keeps it through ray.init), again after a joined one
        sigterm_as_ctrl_c()
        if not terminal.verbose(args.verbose):
            terminal.divert(terminal.default_log("predict"))
        # RAY_ADDRESS (e.g. inside a Ray cluster) connects to it; otherwise our own Ray.
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, configure_logging=False)
        else:
            from raykube.ray_local import init_local_ray

            init_local_ray(num_cpus=args.num_cpus, include_dashboard=False,
                           configure_logging=False)
        started = True
        sigterm_as_ctrl_c()
    try:
        outcome = predict(args.checkpoint, out=args.out, data=args.data, split=args.split,
                          batch_size=args.batch_size, concurrency=args.concurrency,
                          gpus_per_actor=args.gpus_per_actor,
                          cpus_per_actor=args.cpus_per_actor, cache_dir=args.cache_dir,
                          storage=args.storage, meta=meta, listing=listing,
                          notify=lambda note: print(f"raykube predict: {note}",
                                                    file=terminal.err()))
    except (PredictError, InvalidTrainingRun, DatasetUnavailable, FileNotFoundError) as exc:
        print(f"raykube predict: {exc}", file=terminal.err())
        return 2
    finally:
        if started:
            from raykube.ray_local import shutdown_local_ray

            shutdown_local_ray()
    from rich.console import Console

    print_report(outcome, Console(file=terminal.out(), soft_wrap=True))
    return 0
