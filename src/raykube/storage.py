"""Files on the run storage: a local path or an ``s3://`` URI, through pyarrow.

One place for it because training, Tune and the datasets all read and write the same
storage (result.json, report.png, checkpoints, the image-folder listing) and must treat
local paths and object stores alike. pyarrow is imported lazily (it ships with Ray).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from typing import Any

from raykube.spec import location_problem

log = logging.getLogger(__name__)


class UnsupportedStorage(ValueError):
    """A location that is neither a path nor an ``s3://<bucket>`` URI (the message says
    which, in one line; ``raykube.spec.location_problem``)."""


def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for a URI or a (relative or absolute) local path.

    ``s3://`` goes through ``raykube.s3`` (endpoint, region and credentials from the AWS
    environment variables), never pyarrow's own URI parsing: that one ignores a custom
    endpoint for the region lookup and would ask amazonaws.com.
    """
    import pyarrow.fs as pafs

    from raykube import s3

    if problem := location_problem(str(uri)):
        raise UnsupportedStorage(problem)
    if s3.is_s3(uri):
        return s3.filesystem(uri)
    return pafs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))


def ray_storage(storage_path: str) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray Train/Tune's ``RunConfig``: an
    explicit filesystem for object stores (so Ray uses our endpoint and credentials),
    an absolute path and None (Ray's default) for local directories."""
    if "://" not in storage_path:
        return os.path.abspath(storage_path), None
    fs, path = filesystem(storage_path)
    return path, fs


class FolderUnreadable(OSError):
    """A folder that cannot be listed; the message says why in one line (without
    pyarrow's errno text). ``missing``: it is not there at all (never transient)."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def list_folder(uri: str) -> tuple[Any, str, list[Any]]:
    """``(filesystem, path, FileInfo of each entry)`` of the folder ``uri``, not
    recursive.

    One wording for the training data listing and ``raykube predict``'s: pyarrow says
    "[Errno 2] Path does not exist ... Detail: ..." for a missing local folder and for an
    s3:// prefix with nothing under it (object stores have no empty folders)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        path = path.rstrip("/")
        return fs, path, fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except FileNotFoundError:
        raise FolderUnreadable("no such folder" + (" (nothing under that prefix)"
                                                   if "://" in uri else ""),
                               missing=True) from None
    except OSError as exc:
        raise FolderUnreadable(f"cannot list it ({exc})", missing=False) from exc


def exists(uri: str) -> bool:
    """Whether a file or directory is there."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(uri: str, payload: bytes) -> None:
    """Write a file (parents created)."""
    fs, path = filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(payload)


def read_bytes(uri: str) -> bytes | None:
    """A file's bytes, or None when it does not exist."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def read_summary(uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """A run's or a search's ``result.json``: ``(document, None)``, ``(None, None)`` when
    there is none, or ``(None, note)`` when it is there but no JSON object.

    It is a summary written when a run ends; the checkpoints are the record. One cut
    short (a full disk, a copy gone wrong) or edited by hand failed every rerun of the
    run with a ``JSONDecodeError`` after Ray started, so it counts as absent and the
    note (one line, naming the file) says so, as for Ray Train's own checkpoint list
    (``raykube.resume.drop_unusable_train_snapshot``). A file that cannot be read at
    all (permissions, an object store that fails) still raises: writing the new one at
    the end of the run would fail the same way, after the training."""
    import json

    raw = read_bytes(uri)
    if raw is None:
        return None, None
    try:
        doc = json.loads(raw)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        what = "was empty" if not raw.strip() else f"could not be parsed ({len(raw)} bytes)"
    else:
        if isinstance(doc, dict):
            return doc, None
        what = "holds no JSON object"
    return None, (f"the run's summary {uri} {what}: ignored, as if absent (the checkpoints "
                  "on storage are the record)")


def checkpoint_uri(storage_path: str, path: str | None) -> str | None:
    """A Ray checkpoint's filesystem path as a URI users can pass on (``s3://...`` when
    the storage is remote; Ray's ``Checkpoint.path`` drops the scheme)."""
    if not path or "://" not in storage_path or "://" in path:
        return path or None
    return f"{storage_path.split('://', 1)[0]}://{path.lstrip('/')}"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded")


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk (or a spent quota): ENOSPC/EDQUOT from Python's own
    I/O, or from pyarrow, whose OSError carries the errno (and says it in its text:
    "Error writing bytes to file. Detail: [errno 28] No space left on device")."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    low = str(exc).lower()
    return isinstance(exc, OSError) and any(t in low for t in DISK_FULL_TEXTS)


def delete_dirs(uris: Iterable[str]) -> list[str]:
    """Delete each directory (a path or an ``s3://`` URI) with all it holds; return those
    deleted. A failure is a warning, not an error: the callers clean up after a finished
    run or search, whose result stands either way."""
    deleted = []
    for uri in uris:
        try:
            fs, path = filesystem(uri)
        except (OSError, ValueError) as exc:
            log.warning("could not delete %s: %s", uri, exc)
            continue
        if remove_tree(fs, path):
            deleted.append(uri)
    return deleted


def remove_tree(fs: Any, path: str) -> bool:
    """Delete the directory ``path`` on ``fs`` (a pyarrow filesystem) and all it holds;
    True if it was there and is gone. Best effort, as every caller is a clean-up: a
    failure is a warning, a directory already gone is not. A local directory goes through
    ``shutil.rmtree``, which never follows a symbolic link out of it."""
    import shutil

    import pyarrow.fs as pafs

    try:
        if isinstance(fs, pafs.LocalFileSystem):
            shutil.rmtree(path)
        else:
            fs.delete_dir(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not delete %s: %s", path, exc)
        return False
    return True
