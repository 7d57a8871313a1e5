"""``raykube bench SUITE|all [--quick] [--out DIR]``: benchmarks against plain baselines.

Suites: train (Ray Train vs plain PyTorch and DDP), ingest (Ray Data vs DataLoader),
serve (Ray Serve vs a direct call and FastAPI), operator (TrainingRuns -> RayJobs).
Each writes ``DIR/<suite>/{bench.json,table.md,chart.png}``; ``DIR/SUMMARY.md`` collects
the tables. Exit status 1 when a variant failed to run (a missed goal is a finding, not
a failure: it is reported in the tables).
"""

from __future__ import annotations

import argparse
import sys

SUITES = ("train", "ingest", "serve", "operator")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=[*SUITES, "all"], help="what to measure (all: every suite)")
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes (the whole of `all` takes a few minutes)")
    p.add_argument("--out", default="bench-out", metavar="DIR",
                   help="output directory (default: bench-out/)")
    p.add_argument("--runs", type=int, default=None,
                   help="operator: number of TrainingRuns (default: 200 and 1000; --quick 50)")
    p.add_argument("--case", action="append", default=None, metavar="NAME",
                   help="train: only this case (cifar10-cnn, fashion-mnist-mlp, "
                   "cifar10-cnn-gpu); repeatable")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="train: interleaved rounds per variant (default: 3; --quick 1); "
                   "more rounds narrow the per-round ratios on a noisy machine")


def _run_one(suite: str, args: argparse.Namespace):
    if suite == "train":
        from raykube.bench import train

        return train.run_suite(quick=args.quick, cases=args.case,
                               params={"rounds": args.rounds} if args.rounds else None)
    if suite == "ingest":
        from raykube.bench import ingest

        return ingest.run_suite(quick=args.quick)
    if suite == "serve":
        from raykube.bench import serve

        return serve.run_suite(quick=args.quick)
    from raykube.bench import operator

    return operator.run_suite(quick=args.quick,
                              params={"runs": args.runs} if args.runs else None)


def problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the arguments, before minutes of measuring (an unknown case
    was a traceback, ``--rounds 0`` and an ``--out`` that is a file started measuring)."""
    import os

    from raykube.bench.train import CASES, GPU_CASE

    known = [*CASES, GPU_CASE]
    out = [f"--case {c!r}: one of {', '.join(known)}" for c in args.case or []
           if c not in known]
    out += [f"{flag} {value}: must be at least 1" for flag, value in (
        ("--rounds", args.rounds), ("--runs", args.runs)) if value is not None and value < 1]
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        out.append(f"--out {args.out}: a file, not a folder")
    return out


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from raykube.bench.common import write_summary

    if errors := problems(args):
        for line in errors:
            print(f"raykube bench: {line}", file=sys.stderr)
        return 2
    from raykube.bench.train import GPU_CASE

    if args.case and set(args.case) <= {GPU_CASE}:
        import torch

        if not torch.cuda.is_available():
            print(f"raykube bench: --case {GPU_CASE}: no CUDA GPU on this machine, so "
                  "there is nothing to measure", file=sys.stderr)
            return 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out = Path(args.out)
    failed = 0
    for suite in SUITES if args.suite == "all" else (args.suite,):
        print(f"== raykube bench {suite}{' --quick' if args.quick else ''}", flush=True)
        try:
            report = _run_one(suite, args)
        except Exception as exc:
            from raykube.testing.control_plane import ControlPlaneError

            if not isinstance(exc, ControlPlaneError):
                raise
            # the operator suite's real control plane: "etcd is missing: run make
            # cluster-bins first" came as a traceback
            print(f"raykube bench {suite}: {exc}", file=sys.stderr)
            return 2
        paths = report.write(out / suite)
        print(report.markdown(), flush=True)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
        failed += len(report.errors)
    summary = write_summary(out)
    print(f"summary: {summary}")
    if failed:
        print(f"{failed} variant(s) failed to run; see the tables", file=sys.stderr)
    return 1 if failed else 0
