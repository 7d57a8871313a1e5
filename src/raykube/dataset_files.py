"""Checks on dataset files a user supplies: pre-seeded downloads and image folders.

A bad file must be one line naming it and saying what to do, found before any Ray
Train worker starts: inside the workers it is a "worker failure", retried
``maxWorkerFailures`` times with hundreds of lines of Ray logs, the file name buried.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import warnings
import zlib
from collections.abc import Iterable

log = logging.getLogger(__name__)


class BadDatasetFile(RuntimeError):
    """A dataset file exists but is unusable; the message names it and the fix."""


def md5_of(path: str) -> str:
    h = hashlib.md5()  # noqa: S324 - the checksum the dataset publishers give
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_checksum(path: str, expected: str | None, what_to_do: str) -> None:
    """Raise ``BadDatasetFile`` when ``path`` does not have the published md5."""
    if not expected or not os.path.isfile(path):
        return
    got = md5_of(path)
    if got != expected:
        raise BadDatasetFile(f"{path} fails its checksum (md5 {got}, expected {expected}): "
                             f"it is truncated or corrupt; {what_to_do}")


def gunzip(src: str, dst: str, what_to_do: str) -> None:
    """Unpack ``src`` (.gz) into ``dst`` atomically; a corrupt archive is a
    ``BadDatasetFile`` and leaves nothing behind (no ``.tmp``, no half file)."""
    tmp = dst + ".tmp"
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    except (OSError, EOFError, zlib.error) as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise BadDatasetFile(f"{src} is not a valid gzip file ({exc}): it is truncated or "
                             f"corrupt; {what_to_do}") from None


# ------------------------------------------------------------------- image folders
_CHECKED: dict[tuple, None] = {}


def check_images(files: Iterable[tuple[str, int, float]], mode: str, size: int) -> None:
    """Decode every image once (cheaply: JPEGs at reduced scale) and raise
    ``BadDatasetFile`` naming the first that cannot be read.

    ``files``: (path, size, mtime) of each local image; an unchanged folder is checked
    once per process (Tune trials, both splits).
    """
    from PIL import Image

    files = sorted(files)
    key = (tuple(files), mode, size)
    if key in _CHECKED:
        return
    for path, _, _ in files:
        try:
            with warnings.catch_warnings():
                # a 144-megapixel photo is a picture, not an attack, in a folder the user
                # made: Pillow's two-line DecompressionBombWarning reached the terminal
                # (past twice its limit Pillow raises, and the file is named below)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
            with img:
                img.draft(mode, (size, size))  # JPEG: decode at 1/2..1/8 scale
                img.load()
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise BadDatasetFile(f"{path} is not a readable image ({why}); remove or "
                                 "replace it") from None
    _CHECKED[key] = None
