"""Keep Ray's output off the user's terminal: raykube's lines there, Ray's in a log file.

Ray, its C++ core, its worker processes (forwarded to the driver) and the libraries it
loads all write to the process's stdout/stderr: token-auth and deprecation warnings,
"View the dashboard at ...", progress bars, access logs, shutdown complaints. Filtering
them line by line is a losing game, so the local commands (``raykube run``, ``serve``,
``predict``) divert file descriptors 1 and 2 into a log file before Ray starts, and
write their own lines to the saved terminal streams (``out()``, ``err()``). The path is
printed once. ``-v`` or ``RAYKUBE_VERBOSE=1`` leaves everything on the terminal.

In-cluster (``raykube train``) nothing is diverted: the pod log is the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import TextIO

from raykube.flags import env_flag

VERBOSE_ENV = "RAYKUBE_VERBOSE"

_state: dict[str, object] = {}


def verbose(flag: bool = False) -> bool:
    """Whether Ray's output should stay on the terminal (``-v`` or RAYKUBE_VERBOSE)."""
    return flag or env_flag(VERBOSE_ENV)


def out() -> TextIO:
    """Where raykube's own output goes: the terminal's stdout, diverted or not."""
    return _state.get("out") or sys.stdout  # type: ignore[return-value]


def err() -> TextIO:
    """Where raykube's own error lines go: the terminal's stderr, diverted or not."""
    return _state.get("err") or sys.stderr  # type: ignore[return-value]


def log_path() -> str | None:
    """The file Ray's output goes to, once diverted."""
    return _state.get("path")  # type: ignore[return-value]


def _real_fds() -> bool:
    """Only a process whose stdout/stderr are file descriptors 1 and 2 is diverted (not
    one under pytest's capsys, nor a process that already has Ray running)."""
    try:
        if sys.stdout.fileno() != 1 or sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):
        return False
    ray = sys.modules.get("ray")
    return not (ray is not None and getattr(ray, "is_initialized", lambda: False)())


def divert(path: str, *, announce: str = "Ray's output goes to {path} (-v shows it here)") -> bool:
    """Send fds 1 and 2 (Ray's output and everything else's) to ``path``; keep the
    terminal for ``out()``/``err()``. Returns False (and does nothing) when not possible
    or already done."""
    if "path" in _state or not _real_fds():
        return False
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    _state.update(
        path=path, saved=(saved_out, saved_err),
        # Live for the rest of the process (closed fds are restored by restore()).
        out=open(saved_out, "w", buffering=1, encoding=enc, errors="replace", closefd=False),  # noqa: SIM115
        err=open(saved_err, "w", buffering=1, encoding=enc, errors="replace", closefd=False))  # noqa: SIM115
    if announce:
        print(announce.format(path=path), file=err(), flush=True)
    _warnings_to_terminal()
    return True


class _OneLine(logging.Formatter):
    """raykube's own warnings on the terminal: the message only (tracebacks stay in the
    log, which the root logger's handlers or Python's last resort still write)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"warning: {record.getMessage()}"


def _warnings_to_terminal() -> None:
    handler = logging.StreamHandler(err())
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_OneLine())
    logging.getLogger("raykube").addHandler(handler)
    _state["handler"] = handler


def restore() -> None:
    """Stop Ray (while its shutdown chatter still goes to the log), then put the
    terminal back on fds 1 and 2 (in-process callers, such as tests)."""
    if "path" not in _state:
        return
    _shutdown_ray()
    handler = _state.get("handler")
    if handler is not None:
        logging.getLogger("raykube").removeHandler(handler)  # type: ignore[arg-type]
    for std in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # into the log: its disk may be full
            std.flush()
    saved_out, saved_err = _state["saved"]  # type: ignore[misc]
    for stream in ("out", "err"):
        with contextlib.suppress(Exception):
            _state[stream].flush()  # type: ignore[union-attr]
    os.dup2(saved_out, 1)
    os.dup2(saved_err, 2)
    os.close(saved_out)
    os.close(saved_err)
    _state.clear()


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    if "ray.serve" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["ray.serve"].shutdown()
    from raykube.ray_local import shutdown_local_ray

    with contextlib.suppress(Exception):
        shutdown_local_ray()


def default_log(command: str) -> str:
    """A log path for commands without a run directory (serve, predict)."""
    import tempfile

    base = os.path.join(tempfile.gettempdir(), f"raykube-{os.getuid()}")
    return os.path.join(base, f"{command}-{os.getpid()}.log")


def error_line(text: str) -> str:
    """The line of an error's text that says what went wrong: its last line that is not
    a traceback frame (Ray's and Tune's errors carry the remote traceback in their text,
    the exception's own line last). "" when there is none."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not ln.startswith((" ", "\t", "Traceback")) and "^^^" not in ln]
    return lines[-1] if lines else ""


_RAY_OOM = re.compile(r"(\d+) worker\(s\) were killed due to the node running low on memory"
                      r".*?was ([\d.]+\s*[KMGT]?B) used / ([\d.]+\s*[KMGT]?B) limit", re.S)
_RAY_OOM_VICTIM = re.compile(r"Selected to kill: \(.*?task name=(?:[\w-]*:)?([\w.]+?)"
                             r"(?:\.__init__)?,")


def ray_oom_line(text: str) -> str | None:
    """Ray's memory monitor's kill, from its text, in one line: how many workers, which
    (the task or actor names Ray lists), and the node's figures; None for another error.
    Why: Ray's text is a page (object-store statistics, a process table, two paragraphs
    of advice) and the figures that matter are in its first line."""
    m = _RAY_OOM.search(text)
    if m is None:
        return None
    victims = list(dict.fromkeys(_RAY_OOM_VICTIM.findall(text)))
    which = f" ({', '.join(victims)})" if victims else ""
    return (f"OutOfMemoryError: Ray's memory monitor killed {m[1]} worker(s){which}: the "
            f"node had {m[2]} in use of its {m[3]} limit")
