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

    text = markdown_reference() if args.markdown else crd_yaml()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
