"""Small helpers the command modules share: argument types, error formatting, signals.

Light imports only (argparse, signal): ``raykube validate --help`` must stay instant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn


def port_number(text: str) -> int:
    """argparse type: a TCP port a server can listen on (1-65535).

    Port 0 would make Ray Serve pick a random port nobody is told about, and anything
    above 65535 fails deep inside Ray after it started: refuse both up front.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def flag_errors(exc: Any, flags: Mapping[str, str]) -> list[str]:
    """One line per error of a pydantic ``ValidationError`` raised by command-line
    overrides, naming the flag (``--epochs 0: must be >= 1``) rather than pydantic's
    multi-line dump. ``flags``: dotted field path -> flag name."""
    lines = []
    for e in exc.errors():
        path = ".".join(str(p) for p in e.get("loc", ()))
        flag = flags.get(path, path or "value")
        shown = f"{flag} {e['input']!r}" if "input" in e and not isinstance(e["input"], dict) \
            else flag
        lines.append(f"{shown}: {e['msg'][0].lower()}{e['msg'][1:]}")
    return lines


def sigterm_as_ctrl_c() -> None:
    """Make SIGTERM (``kill``, a container stop, systemd) end a command as Ctrl-C does:
    re-sent to this process as SIGINT, so whichever handler Ctrl-C has at that moment
    runs: Tune's (it saves the search state and returns) or Python's
    ``KeyboardInterrupt`` (a run says what is saved and exits 130; ``serve`` stops Serve
    and Ray in its ``finally``).

    ``ray.init`` sets its own handler (a bare ``sys.exit(15)``: a ``kill`` ended the
    command without a word, and a search with no state saved). Set this before
    ``raykube.ray_local.init_local_ray``, which keeps it through Ray's start; after a
    plain ``ray.init`` (joining a Ray), set it again."""
    def _as_sigint(signum: int, frame: Any) -> None:  # noqa: ARG001
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            # Started with SIGINT ignored (`cmd &` in a script, nohup): a SIGINT would
            # do nothing and SIGTERM with it (a `raykube serve &` nothing could stop
            # but SIGKILL), or, at SIG_DFL, end the process before any cleanup
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, _as_sigint)


def wait_for_interrupt() -> NoReturn:
    """Block this (main) thread until Ctrl-C or SIGTERM raises ``KeyboardInterrupt``.

    Not ``time.sleep``: a signal sent to the process goes to any one of its threads that
    does not block it, and Ray's C++ threads (gRPC's, the core worker's) do not. When one
    of them takes the SIGINT, CPython only marks the Python handler as due; a main thread
    asleep in ``time.sleep`` is not woken and sleeps on, so Ctrl-C seemed ignored (a
    `raykube serve` that did not stop, now and then; reproduced by sending SIGINT to one
    of those threads with ``tgkill``). CPython's C handler also writes the signal to the
    wakeup fd, whichever thread ran it: waiting on that fd wakes this thread, which then
    runs the handler. The timeout is a backstop should something replace the fd.
    """
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        while True:
            select.select([r], [], [], 1.0)  # a due handler runs on the way back
            with contextlib.suppress(BlockingIOError):
                os.read(r, 512)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)


def with_examples(p: argparse.ArgumentParser, examples: str) -> None:
    """Append an 'examples:' block to a sub-command's --help, kept as written."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n" + "\n".join(f"  {line}" if line else ""
                                         for line in examples.strip("\n").splitlines())


def local_path(text: str) -> str:
    """argparse type for a storage path: ``~`` expanded (the shell does not expand it in
    ``--storage=~/runs``), a ``file://`` URI turned into its path; other URIs
    (``s3://``) are kept as they are (and checked by ``raykube.spec.location_problem``
    where they are used, for a one-line error in the command's own words)."""
    from raykube.spec import file_uri_path

    if not text.strip():  # `--storage "$UNSET_VAR"`: not the default in disguise
        raise argparse.ArgumentTypeError("is empty (leave the flag out for the default)")
    text = file_uri_path(text)
    return text if "://" in text else os.path.expanduser(text)


def resolve_data_uri(run: Any, spec_file: str) -> Any:
    """Relative ``data.uri`` and ``data.cacheDir`` are relative to the spec file, as a
    reader of the file expects (and as kustomize and docker-compose resolve them), not
    to the working directory the command happens to run in."""
    import os

    if spec_file == "-":
        return run
    base = os.path.dirname(os.path.abspath(spec_file))
    update = {}
    for field in ("uri", "cache_dir"):
        value = getattr(run.spec.data, field)
        if value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            update[field] = os.path.normpath(os.path.join(base, value))
        elif value and value.startswith("~"):
            update[field] = os.path.expanduser(value)
    if not update:
        return run
    data = run.spec.data.model_copy(update=update)
    return run.model_copy(update={"spec": run.spec.model_copy(update={"data": data})})


def to_stdout(command: str, write: Callable[[], int]) -> int:
    """``write()`` (which prints the command's output and returns its exit code), with a
    stdout that cannot take it (a full disk behind a redirect) said in one line instead
    of a traceback. A reader that left (``| head``) is cli.main's: it ends quietly."""
    try:
        code = write()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(f"raykube {command}: cannot write the output: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
