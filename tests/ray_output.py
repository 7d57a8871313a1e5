"""What a command printed, without what the test session's shared Ray printed meanwhile.

The integration tests share one Ray instance, whose raylet and actors forward their logs
to the stderr of the process that started it (log_to_driver), this one: e.g. the raylet's
"is over 95% full" on a nearly full disk, in the middle of a test that checks that a
command says what went wrong in one line. Those lines are not the command's output."""

from __future__ import annotations

import re

RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|[^)]*pid=\d+[^)]*)\)")


def command_lines(err: str) -> list[str]:
    """The non-blank lines of ``err`` that are not forwarded from Ray's processes."""
    return [line for line in err.splitlines()
            if line.strip() and not RAY_FORWARDED.match(line)]
