"""``raykube crd [--out FILE] [--markdown]``: the TrainingRun CRD (or its reference table).

The CRD is generated from the pydantic models in ``raykube.spec``; ``k8s/base/crd.yaml``
is this command's output (``make crd``), and a test fails when the two drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--markdown", action="store_true",
                   help="print the spec reference as a Markdown table (for README.md)")


def run(args: argparse.Namespace) -> int:
    from raykube.crd import crd_yaml, markdown_reference

    if args.out is not None and not args.out.strip():  # `-o "$F"` with F unset: not stdout
        print("raykube crd: --out is empty: give a file, or leave the option out",
              file=sys.stderr)
        return 2
    text = markdown_reference() if args.markdown else crd_yaml()
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
        except OSError as exc:  # a directory, a file where a directory should be, no space
            print(f"raykube crd: cannot write {args.out}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    from raykube.commands._util import to_stdout

    return to_stdout("crd", lambda: sys.stdout.write(text) and 0)
