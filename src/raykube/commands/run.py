"""``raykube run FILE``: train (tune, serve) a TrainingRun on this machine's embedded Ray."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="YAML file holding one TrainingRun")
    p.add_argument("--storage", default="./runs",
                   help="storage root; the run directory is <storage>/<name>/ (default ./runs)")
    p.add_argument("--workers", type=int, help="override spec.scaling.workers")
    p.add_argument("--epochs", type=int, help="override spec.train.epochs")
    p.add_argument("--serve", action="store_true",
                   help="keep the model served after the demo request (until Ctrl-C)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the local server")


def run(args: argparse.Namespace) -> int:
    import os
    import time

    from rich.console import Console

    from raykube.spec import InvalidTrainingRun, apply_overrides, load_one

    console = Console()
    try:
        tr = load_one(args.file)
        overrides = {k: v for k, v in (("scaling.workers", args.workers),
                                       ("train.epochs", args.epochs)) if v is not None}
        if overrides:
            tr = tr.model_copy(update={"spec": apply_overrides(tr.spec, overrides)})
    except InvalidTrainingRun as exc:
        for e in exc.errors:
            print(f"{exc.source or args.file}: {e.path}: {e.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # pydantic errors from a bad override
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1

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
    if tr.spec.tune is not None:
        from raykube.tune import TrialTable

        display = TrialTable(console)
    else:
        display = RichDisplay(console)
    outcome = train_or_tune(tr, args.storage, observers=[display])
    acc = outcome.best_metrics.get("valAccuracy")
    console.print(f"best checkpoint: [bold]{outcome.best_checkpoint}[/] (valAccuracy {acc})")

    serve = tr.spec.serve
    if not serve.enabled:
        return 0
    if not gate_passed(tr, outcome.best_metrics):
        console.print(f"[yellow]not served[/]: valAccuracy {acc} is below serve.minAccuracy "
                      f"{serve.min_accuracy}")
        return 0
    try:
        from raykube.serve import start_local, stop_local
    except ImportError as exc:
        console.print(f"[red]serving unavailable[/] ({exc})")
        return 1
    url = start_local(str(outcome.best_checkpoint), serve, port=args.port)
    try:
        instance, truth = validation_example(tr, args.storage)
        answer = demo_request(url, instance)
        console.print(f"served at [bold]{url}[/]\n  question: one validation example, "
                      f"true label [bold]{truth}[/]\n  answer:   {describe_answer(answer)}")
        if args.serve:
            console.print("serving until Ctrl-C. Try:\n" + curl_command(url, instance))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_local()
    return 0
