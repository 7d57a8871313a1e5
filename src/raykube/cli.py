"""The ``raykube`` command line.

Each sub-command lives in ``raykube.commands.<name>`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen command's module is
imported, and those modules import torch/ray inside ``run``: ``raykube validate`` and
``raykube render`` start in a fraction of a second and work without the training extras.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys

# name -> one-line help. Order is the order of `raykube --help`.
COMMANDS: dict[str, str] = {
    "validate": "check TrainingRun files; exit 1 on any error",
    "run": "train (and optionally tune and serve) a TrainingRun on this machine",
    "train": "the in-cluster entrypoint the RayJob runs (same code path as run)",
    "serve": "serve a checkpoint over HTTP on this machine until Ctrl-C",
    "predict": "batch inference over a dataset with Ray Data",
    "render": "print the KubeRay objects a TrainingRun becomes (for GitOps)",
    "crd": "print the TrainingRun CustomResourceDefinition",
    "bench": "benchmarks against plain PyTorch / DDP / DataLoader / FastAPI baselines",
}


def _command_module(name: str):
    return importlib.import_module(f"raykube.commands.{name.replace('-', '_')}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` set, only that sub-command's module is loaded."""
    from raykube import __version__

    parser = argparse.ArgumentParser(
        prog="raykube",
        description="Train and serve PyTorch models on Kubernetes (or this machine) "
        "from one TrainingRun resource.",
    )
    parser.add_argument("--version", action="version", version=f"raykube {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _command_module(name).add_arguments(p)
    return parser


INTERRUPTIBLE = ("run", "serve", "predict")
"""Commands that end on SIGTERM as on Ctrl-C (``interrupted``, exit 130, what is saved
said), from their first line: each set that up only just before Ray started, so a
``kill`` while a run checked its storage or prepared its data ended it with exit 143 and
no word."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from raykube import terminal

    if args.command in INTERRUPTIBLE:
        from raykube.commands._util import sigterm_as_ctrl_c

        sigterm_as_ctrl_c()  # from the start: before Ray, a kill ended it without a word
    try:
        return int(_command_module(args.command).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=terminal.err())
        return 130
    except BrokenPipeError:
        # the reader went away (`raykube validate dir | head -1`): stop without a word, as
        # `yes | head` does, and without Python's own complaint when it flushes at exit
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as exc:
        if terminal.log_path() is None:  # nothing diverted: the traceback is the report
            raise
        # Ray's output is in the log: the details go there, one line here.
        import traceback

        try:
            traceback.print_exc()  # into the log (stderr is diverted)
            sys.stderr.flush()
        except OSError:  # the log's disk is full (often the very error): one line still
            pass
        print(f"raykube {args.command}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
              f" (details in {terminal.log_path()})", file=terminal.err())
        return 1
    finally:
        terminal.restore()


def entry() -> int:
    """The ``raykube`` command: ``main``, then the rest of the exit (stopping Ray, its
    exit hooks) with Ctrl-C ignored. A user pressing Ctrl-C again and again while an
    interrupted run stopped Ray got a ``KeyboardInterrupt`` traceback from Ray's exit
    hook and exit 1, with Ray's agents left behind for a minute."""
    try:
        code = main()
    except KeyboardInterrupt:  # again, while main() was stopping Ray
        from raykube import terminal

        print("interrupted", file=terminal.err())
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(entry())
