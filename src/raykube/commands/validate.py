"""``raykube validate FILE...``: exit 0 when every file holds valid TrainingRuns."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files holding TrainingRuns, "
                   "directories of them (their .yaml, .yml and .json files), or - for stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="print no 'valid' lines: errors, and the notes on what a cluster "
                   "would refuse, only")


def run(args: argparse.Namespace) -> int:
    from raykube.spec import validate_files

    skipped: dict[str, list[str]] = {}
    cluster: dict[str, list] = {}
    results = validate_files(args.files, skipped, cluster)
    from raykube.commands._util import to_stdout

    return to_stdout("validate", lambda: _report(args, results, skipped, cluster))


def _report(args: argparse.Namespace, results: dict, skipped: dict[str, list[str]],
            cluster: dict[str, list]) -> int:
    bad = 0
    for path, errors in results.items():
        if errors:
            bad += 1
            for e in errors:
                print(f"{e.source or path}: {e.path}: {e.message}", file=sys.stderr)
        elif not args.quiet:
            beside = (f" (not TrainingRuns, not checked: {', '.join(skipped[path])})"
                      if skipped.get(path) else "")
            print(f"{path}: valid{beside}")
        for e in cluster.get(path, []):  # valid for `raykube run`, refused on a cluster
            print(f"{e.source or path}: note: {e.path}: {e.message}; valid for raykube "
                  "run, refused on a cluster (the operator, raykube render)", file=sys.stderr)
    if bad:
        print(f"{bad} of {len(results)} file(s) invalid", file=sys.stderr)
    return 1 if bad else 0
