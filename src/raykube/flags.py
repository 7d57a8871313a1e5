"""On/off settings read from environment variables, spelt the same way everywhere
(``RAYKUBE_VERBOSE``, ``RAYKUBE_PRESTART_TRAIN_WORKERS``, the operator's boolean
``RAYKUBE_*`` render settings)."""

from __future__ import annotations

import os
from collections.abc import Mapping

ON = frozenset({"1", "true", "yes", "on"})
OFF = frozenset({"0", "false", "no", "off"})


def parse_flag(raw: str | None, default: bool) -> bool:
    """``raw`` as on (1/true/yes/on) or off (0/false/no/off), case and surrounding spaces
    ignored; ``default`` when it is unset, empty or neither."""
    text = (raw or "").strip().lower()
    if text in ON:
        return True
    if text in OFF:
        return False
    return default


def env_flag(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """The variable ``name`` of ``environ`` (this process's environment by default) as
    on/off (:func:`parse_flag`)."""
    return parse_flag((os.environ if environ is None else environ).get(name), default)
