"""Online inference: a Ray Serve application answering HTTP JSON requests.

One deployment, ``Classifier``, built from a raykube checkpoint (local directory or a
remote URI such as ``s3://bucket/run/checkpoint_000004``, downloaded once per node),
loaded with ``weights_only=True`` and put on the GPU when the replica has one.

HTTP API (route prefix ``/``, port 8000):

- ``POST /predict`` with ``{"instances": [...]}`` (each instance nested in the model's
  input shape, e.g. ``[1, 8, 8]``, or flat with the same number of values) or
  ``{"images": ["<base64 PNG/JPEG>", ...]}`` (decoded, resized and normalised exactly as
  in training) -> ``{"predictions": [{"class", "label", "probabilities"}], ...}``.
- ``GET /healthz`` and ``GET /metadata``.

Why a plain ``__call__`` on a starlette Request rather than a FastAPI ingress: the body
is read and parsed exactly once, validated with vectorised numpy checks, and every
problem becomes a 4xx JSON ``{"error": ...}`` without framework layers in between;
that keeps the added latency per request small and the error answers uniform.

Why validation happens before batching: ``@serve.batch`` runs requests of many
callers in one model call, so one malformed request must never reach it (it would fail
every request of the batch). Only arrays of the right shape, dtype and finiteness are
enqueued. A request that finds the replica idle skips the batch queue (waiting
``batchWaitTimeoutMs`` for company that is not coming only adds latency); under
concurrent load requests are batched.

Why images are decoded on threads: a PNG or JPEG decodes at full size before it is resized
to the model's input, and a 16 KB PNG can hold 16 M pixels. On the event loop one such
request held every other request of the replica, ``/healthz`` included (the kubelet's
probe). Images are decoded on ``IMAGE_DECODE_THREADS`` threads, after their headers are
checked against ``MAX_IMAGE_PIXELS`` each and ``MAX_REQUEST_PIXELS`` in all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from raykube.spec import ServeSpec, file_uri_path, location_problem

_orjson: Any
try:
    import orjson as _orjson
except ImportError:  # an image built before raykube required it: the standard library
    _orjson = None

log = logging.getLogger("raykube.serve")
replica_log = logging.getLogger("ray.serve")
"""What a replica says about itself: Serve's own logger, which Ray Serve writes to the
replica's log file (``logs/serve/replica_<app>_<deployment>_<id>.log``, what ``ray logs``
and a RayService's users read). Our "raykube" loggers are not set up in a replica: their
INFO lines were dropped there."""


def _replica_says(msg: str, *args: Any) -> None:
    """``replica_log.info`` written out at once: with ``RAY_SERVE_THROUGHPUT_OPTIMIZED``
    Serve buffers a replica's log records (1,000 of them, or until an ERROR), so a line
    about a replica that waits would only show long after it mattered. Rare lines only."""
    replica_log.info(msg, *args)
    for handler in replica_log.handlers:
        handler.flush()

APP_NAME = "raykube"
DEPLOYMENT_NAME = "Classifier"
DEFAULT_MAX_INSTANCES = 1024
MAX_IMAGE_PIXELS = 4096 * 4096
"""Larger images are refused before decoding (a small PNG can inflate enormously)."""
MAX_REQUEST_PIXELS = 4 * MAX_IMAGE_PIXELS
"""The most pixels the images of one request may hold together (width x height summed
over them, read from each image's header): more is refused before any image is decoded.
64 Mi pixels: 1,024 images of 256x256 (so of 224x224: the instance limit at ImageNet's
size), 64 of 1024x1024, or 4 at the per-image limit; decoding that many costs well under
a second of one core. Without it, a body under maxRequestBytes held 192 black 4096x4096
PNGs (~16 KB each: 3.2 G pixels) and one request cost a replica ~9 s of decoding."""
BODY_GRACE_S = 10.0
BODY_MIN_BYTES_PER_S = 64 * 1024
"""A request body must arrive within ``BODY_GRACE_S`` plus its size at
``BODY_MIN_BYTES_PER_S`` (a 4 MiB body: 74 s; a 100 kB one: 11.5 s), else 408. HAProxy's
timeouts count silence, not progress, and Ray's ingress passes half-sent bodies on: 300
clients each sending one byte every 20 s held all of a replica's request slots (and its
/healthz) for as long as they kept it up (a probe). Now each holds one for seconds."""
IMAGE_DECODE_THREADS = 4
"""Threads per replica that decode and resize request images (Pillow releases the GIL
meanwhile): the event loop keeps answering /healthz and other requests. Few, so that
concurrent image requests queue for CPU and memory instead of all decoding at once."""
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
"""What a request image may be: the formats training reads from an image folder
(``data.IMAGE_EXTENSIONS``). Only PNG and JPEG were, so a model trained on a folder of
WebP images was refused its own files (422)."""
FORMATS_WORDS = ", ".join(IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1]}"
INLINE_MAX_S = 0.002
"""Models answering a full batch faster than this run on the event loop (see __init__)."""


# ------------------------------------------------------------------ checkpoint access
def resolve_checkpoint(checkpoint: str | os.PathLike[str]) -> str:
    """A local directory holding the checkpoint ``checkpoint`` names.

    Local paths (and ``file://`` URIs) are used in place; an ``s3://`` URI is downloaded
    with Ray Train's Checkpoint (pyarrow filesystems) into a per-URI directory under the
    temp dir, once per node: replicas and Ray Data actors on one node share the copy
    (Ray's file lock serialises the download). Any other URI is a one-line
    ``UnsupportedStorage`` (``raykube.spec.location_problem``).
    """
    from raykube.storage import UnsupportedStorage

    text = file_uri_path(str(checkpoint))
    if problem := location_problem(text):
        raise UnsupportedStorage(f"checkpoint {problem}")
    if "://" not in text:
        path = Path(text).expanduser()
        if not path.exists():
            if copy := pruned_copy(str(path)):
                return copy
            raise FileNotFoundError(f"checkpoint {text}: no such file or directory"
                                    f"{_unfinished_run_hint(path)}")
        return str(path)
    from ray.train import Checkpoint

    from raykube.storage import filesystem

    text = text.rstrip("/")
    if text.startswith("s3://"):
        from raykube import s3

        try:  # one line, in seconds, when it cannot be had
            s3.require_file(f"{text}/checkpoint.pt")
        except s3.S3Unavailable as exc:
            if exc.transient or not (copy := pruned_copy(text)):
                raise
            text = copy
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "raykube-checkpoints" / digest
    if not (target / "checkpoint.pt").exists():
        fs, path = filesystem(text)
        # Download next to the target and rename: a download cut short (endpoint gone
        # mid-way) must never pass for a complete copy on the next call.
        partial = target.with_name(f"{digest}.partial-{os.getpid()}")
        Checkpoint(path, filesystem=fs).to_directory(str(partial))
        if not (partial / "checkpoint.pt").exists():
            raise FileNotFoundError(f"checkpoint {text}: no checkpoint.pt in it")
        try:
            partial.rename(target)
        except OSError:  # another process on this node finished first
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def pruned_copy(checkpoint: str) -> str | None:
    """``<run>/best`` when ``checkpoint`` is a ``<run>/checkpoint_epoch_NNNN`` that is gone
    and ``best/`` is its copy (the same epoch); else None.

    The operator promotes the concrete checkpoint directory, and a later run of the same
    TrainingRun (an edit, a rerun) keeps only ``checkpoint.keep`` of them: once it saved
    that many at least as good, the served one was deleted while it still served, and a
    replica started then (a pod replaced, Serve restarting one) failed with "no such
    file or directory" until the new run was promoted, or forever if it failed. The run
    that wrote it copied it to ``best/`` when it finished, and ``best/`` changes only
    when a later run finishes: the epoch in its meta.json says whether it still is that
    checkpoint."""
    import re

    from raykube.checkpoint import META_FILE
    from raykube.resume import CHECKPOINT_PREFIX
    from raykube.storage import filesystem

    m = re.fullmatch(rf"(?P<run>.+)/{CHECKPOINT_PREFIX}(?P<epoch>\d+)/?", checkpoint)
    if m is None:
        return None
    best = f"{m['run']}/best"  # raykube.train.BEST_DIR (that module imports torch and Ray)
    try:
        fs, path = filesystem(f"{best}/{META_FILE}")
        with fs.open_input_stream(path) as f:
            epoch = json.loads(f.read()).get("epoch")
    except Exception:  # no best/ (yet), unreadable: there is no copy to serve
        return None
    if epoch != int(m["epoch"]):
        return None
    log.warning("checkpoint %s is gone (a later run keeps only checkpoint.keep of them); "
                "serving its copy %s (epoch %s)", checkpoint, best, epoch)
    return best


def _unfinished_run_hint(best: Path) -> str:
    """What to serve instead of a run's ``best/`` that is not there yet: the run writes it
    when it finishes, and its per-epoch checkpoints exist before that (a run still
    training, or one that was interrupted)."""
    from raykube.resume import checkpoint_dirs

    run_dir = best.parent
    if best.name != "best" or not run_dir.is_dir():
        return ""
    saved = checkpoint_dirs(str(run_dir))
    if not saved:
        return f"; the run in {run_dir} has no checkpoint yet (best/ is written when it finishes)"
    return (f"; the run in {run_dir} has not finished (best/ is written when it does): its "
            f"latest checkpoint is {saved[-1]}")


TRAINING_POLL_S = 5.0
"""How often a replica waiting for training looks for the run's ``result.json``."""
TRAINING_WAIT_LOG_S = 300.0
"""How often it says, in its log, that it is still waiting."""


class TrainingRunFailed(RuntimeError):
    """The run a replica waits for failed for good (``raykube.run_failure``): one line."""


def wait_for_training(checkpoint: str, *, poll_s: float = TRAINING_POLL_S,
                      log_every_s: float = TRAINING_WAIT_LOG_S,
                      believe_after_s: float | None = None) -> float:
    """Block until the training run whose ``<run dir>/best`` ``checkpoint`` names has
    finished, and return the seconds waited (0.0 when it had already).

    ``raykube render`` puts the RayService beside the RayJob that trains its model (one
    commit for GitOps), so its replicas can start long before ``best`` exists. A run
    writes its ``result.json`` after ``best``, so that file is the sign that ``best`` is
    whole. Waiting here, in the replica's constructor, is how Ray Serve and KubeRay
    expect a slow start to look: Serve keeps the replica starting (a slow ``__init__`` is
    a warning, not a failure), KubeRay keeps the RayService not ready and its Service
    without endpoints, and the replica serves the new model as soon as it is there.
    Otherwise, every replica failed at start until Serve gave up on the application.

    An unsupported URI, refused credentials or a missing bucket are raised at once (one
    line), as without waiting; a store that does not answer for a moment is waited out.
    A run that failed for good says so in its ``failed.json``: ``TrainingRunFailed`` (one
    line, the run's reason) at once when it failed while this replica waited, else once it
    has stood ``believe_after_s`` (``run_failure.believe_after_s()``, 5 minutes) since a
    replica of this cluster first saw it: the file of an earlier attempt, which a new one
    removes as it starts, must not fail a replica started beside it.
    """
    from raykube import run_failure
    from raykube.storage import UnsupportedStorage, read_bytes
    from raykube.train import RESULT_FILE

    if believe_after_s is None:
        believe_after_s = run_failure.believe_after_s()

    text = file_uri_path(str(checkpoint)).rstrip("/")
    if problem := location_problem(text):
        raise UnsupportedStorage(f"checkpoint {problem}")
    run_dir = text.rsplit("/", 1)[0] if "/" in text else "."
    marker = f"{run_dir}/{RESULT_FILE}"
    if "://" not in text:
        marker = str(Path(marker).expanduser().absolute())
    from raykube import s3

    started = time.monotonic()
    waiting_since = time.time()
    sightings: dict[run_failure.RunFailure, float] = {}  # this replica's own
    said = None
    failure_said = None
    while True:
        unreadable = ""
        failure = None
        try:
            if s3.is_s3(text):
                s3.check(run_dir)  # one line for credentials, bucket, endpoint
            if read_bytes(marker) is not None:
                break
            failure = run_failure.read(run_dir)
        except OSError as exc:
            if not (getattr(exc, "transient", False) or s3.unreachable(exc)):
                raise
            unreadable = f"; it cannot be read now: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        now = time.monotonic()
        if failure is not None and failure.final:
            wall = time.time()
            seen = run_failure.first_seen(run_dir, failure, sightings.setdefault(failure, wall))
            if run_failure.is_believed(failure, waiting_since=waiting_since, first_seen=seen,
                                       now=wall, grace_s=believe_after_s):
                run_failure.tell_believed(run_dir, failure)
                raise TrainingRunFailed(failure.line(run_dir))
        if failure is not None and failure != failure_said:
            _replica_says("the training run in %s: %s at %s (%s): %s", run_dir,
                          "it failed for good" if failure.final else "an attempt failed",
                          failure.at, failure.outcome, failure.message)
            if failure.final:  # from before this replica waited: perhaps an earlier attempt's
                _replica_says("this replica fails once that has stood %.0f s unless a new "
                              "attempt starts and removes %s/%s first", believe_after_s,
                              run_dir, run_failure.FAILED_FILE)
            failure_said = failure
        if said is None or now - said >= log_every_s:
            _replica_says("waiting for the training run in %s to finish: %s is served once "
                          "its %s exists (looked for every %g s; %.0f s so far%s)", run_dir,
                          text, RESULT_FILE, poll_s, now - started, unreadable)
            said = now
        time.sleep(poll_s)
    waited = time.monotonic() - started
    if said is not None:
        _replica_says("the training run in %s has finished (waited %.0f s): loading %s",
                      run_dir, waited, text)
    return waited if said is not None else 0.0


# ------------------------------------------------------------------ request validation
class RequestError(Exception):
    """A bad request: becomes a 4xx JSON answer ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class InputSpec:
    """What a valid request looks like for one model (shape, limits, preprocessing)."""

    def __init__(self, input_shape: list[int] | tuple[int, ...], class_names: list[str],
                 spec: Any, *, max_instances: int = DEFAULT_MAX_INSTANCES):
        self.input_shape = tuple(int(x) for x in input_shape)
        self.flat_size = math.prod(self.input_shape)
        # [8, 8] for a one-channel [1, 8, 8]: a grey image as its rows, as most
        # tutorials hold it (None where the shape has no size-1 axis to leave out)
        bare = tuple(d for d in self.input_shape if d != 1)
        self.bare_shape = bare if bare != self.input_shape and bare else None
        self.class_names = list(class_names)
        self.spec = spec  # TrainingRunSpec, for image preprocessing
        self.max_instances = max_instances
        self._info = None

    # -- instances ---------------------------------------------------------------
    def instances_to_array(self, instances: Any, *, raw: bytes = b"") -> np.ndarray:
        """Validate ``instances`` (parsed JSON) into a float32 (N, *input_shape) array.

        Accepted: a non-empty list of instances, each nested in the input shape, in it
        without its size-1 axes (``[8, 8]`` for ``[1, 8, 8]``), or flat with
        prod(input_shape) numbers. Refused with a message: other types, ragged
        lists, strings/booleans/nulls, NaN or infinity, more than max_instances.
        """
        self._check_list("instances", instances)
        # JSON true/false would silently become 1/0 inside a numeric array; the only
        # place they can appear in an {"instances": ...} body is among the numbers.
        if raw and (b"true" in raw or b"false" in raw):
            raise RequestError(422, "instances must hold numbers only (found a boolean)")
        if raw and raw.count(b'"') == 2 and b"null" not in raw:
            # Only the key is quoted and there are no nulls or booleans: every leaf is a
            # number, so convert straight to float32 (the checks below still apply).
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    fast = np.asarray(instances, dtype=np.float32)
            except (ValueError, TypeError, OverflowError):
                fast = None  # ragged, an object, a huge integer: the path below says which
            if fast is not None and np.isfinite(fast).all():
                return self._checked(fast)  # else the path below names what is wrong
        try:
            arr = np.asarray(instances)
        except (ValueError, TypeError):
            raise RequestError(422, "instances are ragged: every instance must have shape "
                               f"{list(self.input_shape)} (or {self.flat_size} flat "
                               "numbers)") from None
        if arr.dtype.kind not in "iuf":
            what = {"b": "a boolean", "U": "a string", "S": "a string"}.get(
                arr.dtype.kind, "a non-numeric value (null, object or out-of-range number)")
            raise RequestError(422, f"instances must hold numbers only (found {what})")
        return self._checked(arr)

    def _checked(self, arr: np.ndarray) -> np.ndarray:
        """A numeric array -> float32 (N, *input_shape), or the 422 saying why not."""
        shape = arr.shape[1:]
        if shape != self.input_shape:
            if (arr.ndim == 2 and shape[0] == self.flat_size) or shape == self.bare_shape:
                arr = arr.reshape((arr.shape[0], *self.input_shape))
            else:
                bare = f"{list(self.bare_shape)}, or " if self.bare_shape else ""
                raise RequestError(422, f"each instance must have shape "
                                   f"{list(self.input_shape)} (or {bare}{self.flat_size} "
                                   f"flat numbers); got {list(shape)}")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(np.float32, copy=False)
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(np.argwhere(~finite.reshape(len(arr), -1).all(axis=1))[0][0])
            raise RequestError(422, f"instances[{bad}] holds NaN or infinity (or a number "
                               "too large for float32)")
        return np.ascontiguousarray(arr)

    # -- images ------------------------------------------------------------------
    def images_to_array(self, images: Any) -> np.ndarray:
        """Decode base64 PNG/JPEG images and preprocess them exactly as in training.

        Two passes: every image's header first (base64, format, size: the per-image and
        per-request pixel limits), so an over-limit request is refused before any image
        is decoded; then the decoding. Slow for large images: the replica calls this on
        a decode thread, never on its event loop."""
        opened = self._open_images(images)
        out = []
        for i, img in enumerate(opened):
            x = self._decode_image(i, img)
            if x.shape != self.input_shape:  # preprocessing must match the model
                raise RequestError(422, f"images[{i}] preprocessed to shape {list(x.shape)}, "
                                   f"the model expects {list(self.input_shape)}")
            out.append(x)
        return np.stack(out)

    def _open_images(self, images: Any) -> list[Any]:
        """The images as lazily opened PIL images (headers read, nothing decoded), after
        the per-image (``MAX_IMAGE_PIXELS``) and per-request (``MAX_REQUEST_PIXELS``)
        pixel limits: a 422 naming the limit otherwise."""
        from PIL import Image, UnidentifiedImageError

        self._check_list("images", images)
        if len(self.input_shape) != 3:
            raise RequestError(422, f"this model takes {self.flat_size}-number feature "
                               "vectors, not images: send \"instances\"")
        opened = []
        total = 0
        for i, item in enumerate(images):
            if not isinstance(item, str):
                raise RequestError(422, f"images[{i}] must be a base64 string, got "
                                   f"{_json_type(item)}")
            data = item.split(",", 1)[1] if item.startswith("data:") else item
            # Line-wrapped base64 (`base64` without -w0, MIME, many clients) is valid
            # base64: whitespace carries nothing, so it is dropped before strict decoding.
            data = "".join(data.split())
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(422, f"images[{i}] is not valid base64") from None
            try:
                img = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # the header only
            except Image.DecompressionBombError:  # Pillow's own guard, before ours can
                raise RequestError(422, f"images[{i}] is more than {MAX_IMAGE_PIXELS} "
                                   "pixels; at most that many are accepted") from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                raise RequestError(422, f"images[{i}] is not a decodable image "
                                   f"({FORMATS_WORDS} expected)") from None
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise RequestError(422, f"images[{i}] is {w}x{h} pixels; at most "
                                   f"{MAX_IMAGE_PIXELS} pixels are accepted")
            total += w * h
            opened.append(img)
        if total > MAX_REQUEST_PIXELS:
            raise RequestError(422, f"images hold {total} pixels in all; at most "
                               f"{MAX_REQUEST_PIXELS} per request: send fewer or smaller "
                               "images")
        return opened

    def _decode_image(self, i: int, img: Any) -> np.ndarray:
        """One opened image, decoded and preprocessed: float32 (C, H, W)."""
        from PIL import Image

        from raykube.data import DatasetInfo, preprocess_image

        if self._info is None:
            self._info = DatasetInfo(input_shape=self.input_shape,
                                     class_names=self.class_names)
        try:
            img.load()
            return np.asarray(preprocess_image(img, self._info, self.spec), dtype=np.float32)
        except Image.DecompressionBombError:
            raise RequestError(422, f"images[{i}] is more than {MAX_IMAGE_PIXELS} "
                               "pixels; at most that many are accepted") from None
        except (OSError, SyntaxError, ValueError):
            raise RequestError(422, f"images[{i}] is not a decodable image "
                               f"({FORMATS_WORDS} expected)") from None
        finally:
            img.close()

    def _check_list(self, key: str, value: Any) -> None:
        if not isinstance(value, list):
            raise RequestError(422, f"{key} must be a list, got {_json_type(value)}")
        if not value:
            raise RequestError(422, f"{key} is empty: send at least one")
        if len(value) > self.max_instances:
            raise RequestError(422, f"{key} holds {len(value)} items; at most "
                               f"{self.max_instances} per request")

    # -- body ----------------------------------------------------------------------
    def parse_body(self, body: bytes, content_type: str | None) -> np.ndarray:
        """The whole validation of a ``POST /predict`` body: bytes -> model input."""
        key, value = self.parse_request(body, content_type)
        if key == "images":
            return self.images_to_array(value)
        return self.instances_to_array(value, raw=body)

    def parse_request(self, body: bytes, content_type: str | None) -> tuple[str, Any]:
        """A body's content type and JSON checked: ``("instances", ...)`` or
        ``("images", ...)`` with the parsed value, for ``instances_to_array`` (fast) or
        ``images_to_array`` (slow for large images: the replica runs it on a thread)."""
        media, _, params = (content_type or "").partition(";")
        media = media.strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            raise RequestError(415, f"content-type must be application/json, got {media!r}")
        if (charset := _charset(params)) not in (None, "utf-8", "utf8", "us-ascii"):
            # JSON is UTF-8 (RFC 8259 8.1): latin-1 bytes were read as UTF-8 and failed
            # (or, worse, decoded as something else)
            raise RequestError(415, f"charset {charset!r} is not accepted: JSON is UTF-8 "
                               "(send charset=utf-8, or none)")
        if not body:
            raise RequestError(400, "empty body: send a JSON object with \"instances\" or "
                               "\"images\"")
        doc = _loads(body)
        if not isinstance(doc, dict):
            raise RequestError(422, f"body must be a JSON object, got {_json_type(doc)}")
        unknown = sorted(set(doc) - {"instances", "images"})
        if unknown:
            # a few, each cut short: 200,000 keys were all said back (a 2 MB answer)
            named = ", ".join(repr(k if len(k) <= 40 else k[:40] + "...") for k in unknown[:5])
            more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
            raise RequestError(422, f"unknown key(s) {named}{more}: send \"instances\" or "
                               "\"images\"")
        if "instances" in doc and "images" in doc:
            raise RequestError(422, "send either \"instances\" or \"images\", not both")
        if "instances" in doc:
            return "instances", doc["instances"]
        if "images" in doc:
            return "images", doc["images"]
        raise RequestError(422, "missing key: send \"instances\" (numbers) or \"images\" "
                           "(base64 PNG/JPEG)")


def _loads(body: bytes) -> Any:
    """Parse a request body: orjson (3x the standard library's speed on a CIFAR-sized
    instance: ~140 vs ~410 us, most of a request's parsing), and where it refuses what
    the standard library accepts (NaN literals, raw line breaks inside strings, very
    large integers or deep nesting) the standard library decides, so answers are the
    same either way. strict=False: raw line breaks inside a string are accepted, which
    is what ``-d "{\"images\": [\"$(base64 < img.png)\"]}"`` sends (base64 wraps at 76)."""
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass
    try:
        # UTF-8 only (RFC 8259): json.loads on bytes also took UTF-16 and UTF-32
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not valid JSON: not UTF-8 text (byte {exc.start})"
                           ) from None
    try:
        return json.loads(text, strict=False)
    except RecursionError:
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        if "sys.set_int_max_str_digits" in str(exc):  # Python's advice, not a client's
            raise RequestError(400, "body holds an integer of more than "
                               f"{sys.get_int_max_str_digits()} digits") from None
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


def _charset(params: str) -> str | None:
    """The ``charset`` parameter of a content-type's parameters (lower-case), or None."""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                          type(value).__name__)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":"), allow_nan=False).encode(),
                    status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


# ------------------------------------------------------------------------ deployment
class ServeAppArgs(BaseModel):
    """``args`` of the serve application (serveConfigV2), camelCase as in the spec."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    checkpoint: str = Field(min_length=1, description="Checkpoint directory or URI.")
    maxBatchSize: int = Field(default=32, ge=1, le=4096)
    batchWaitTimeoutMs: float = Field(default=5.0, ge=0.0, le=10000)
    maxRequestBytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    maxInstances: int = Field(default=DEFAULT_MAX_INSTANCES, ge=1)
    waitForTraining: bool = Field(default=False, description=(
        "The checkpoint is <run dir>/best of a run that may still be training: each "
        "replica waits for the run's result.json before it loads it."))
    replicas: int | None = Field(default=None, ge=1, description="Overrides num_replicas.")
    cpusPerReplica: float | None = Field(default=None, gt=0)
    gpusPerReplica: float | None = Field(default=None, ge=0)


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=256)
class Classifier:
    """Serves one checkpoint. Construct through ``build_app`` / ``app_builder``."""

    def __init__(self, checkpoint: str, max_batch_size: int = 32,
                 batch_wait_timeout_ms: float = 5.0,
                 max_request_bytes: int = 4 * 1024 * 1024,
                 max_instances: int = DEFAULT_MAX_INSTANCES, wait_for_run: bool = False):
        import torch

        from raykube.checkpoint import load_model
        from raykube.spec import TrainingRunSpec

        self.checkpoint = str(checkpoint)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if wait_for_run:
            wait_for_training(self.checkpoint)
        local = resolve_checkpoint(checkpoint)
        model, meta = load_model(local, map_location=self.device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        spec = TrainingRunSpec.model_validate(meta.spec)
        self.inputs = InputSpec(meta.input_shape, meta.class_names, spec,
                                max_instances=max_instances)
        self.max_request_bytes = int(max_request_bytes)
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_ms = float(batch_wait_timeout_ms)
        self._batched.set_max_batch_size(self.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.batch_wait_timeout_ms / 1000.0)
        self._torch = torch
        self._active = 0  # /predict requests in this replica (read, queued or running)
        self.stats = {"requests": 0, "instances": 0, "errors": 0, "disconnects": 0,
                      "modelCalls": 0, "batchedCalls": 0, "largestBatch": 0,
                      "started": time.time()}
        # Warm up with a full batch and time it. A model slower than INLINE_MAX_S per
        # batch runs on one worker thread: torch releases the GIL, so the event loop keeps
        # reading and validating the next requests (filling the next batch) meanwhile.
        # Faster models run inline: the thread hand-off would cost more than the model.
        warm = np.zeros((self.max_batch_size, *self.inputs.input_shape), np.float32)
        self._forward(warm)
        t0 = time.perf_counter()
        self._forward(warm)
        self._inline = time.perf_counter() - t0 < INLINE_MAX_S
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="raykube-model")
        self._decoder = ThreadPoolExecutor(IMAGE_DECODE_THREADS,
                                           thread_name_prefix="raykube-decode")
        self._metadata = self._build_metadata()
        _replica_says("serving %s (%s, epoch %s) on %s", self.checkpoint, spec.model.name,
                      meta.epoch, self.device)

    # -- model ---------------------------------------------------------------------
    def _forward(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, non_blocking=True)
            probs = torch.softmax(self.model(t).float(), dim=1)
            return probs.cpu().numpy()

    async def _run(self, x: np.ndarray) -> np.ndarray:
        if self._inline:
            return self._forward(x)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._forward, x)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One model call for the requests of a batch (sizes set in __init__)."""
        x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        probs = await self._run(x)
        self.stats["modelCalls"] += 1
        self.stats["batchedCalls"] += len(arrays) > 1
        self.stats["largestBatch"] = max(self.stats["largestBatch"], len(arrays))
        bounds = np.cumsum([len(a) for a in arrays])[:-1]
        return np.split(probs, bounds)

    async def predict_array(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for a validated (N, *input_shape) float32 array."""
        # Behind Serve's HAProxy ingress the replica's own HTTP server hands over whole
        # requests, so reading and parsing never yield: without this, a request would
        # always find itself alone. Two loop turns let requests already on the sockets
        # be read and counted (microseconds when none are).
        for _ in range(2):
            await asyncio.sleep(0)
        if self._active == 1:  # no other request in this replica: do not wait for company
            probs = await self._run(x)
            self.stats["modelCalls"] += 1
            return probs
        return await self._batched(x)

    def _answer(self, probs: np.ndarray) -> dict[str, Any]:
        classes = probs.argmax(axis=1).tolist()
        names = self.inputs.class_names
        return {
            "predictions": [{"class": c, "label": names[c], "probabilities": p}
                            for c, p in zip(classes, probs.tolist(), strict=True)],
            "checkpoint": self.checkpoint,
            "model": self._metadata["model"],
            "epoch": self.meta.epoch,
        }

    # -- HTTP ----------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):  # an app mounted under a route prefix
            path = path[len(root):]
        path = path.rstrip("/") or "/"
        method = request.method
        try:
            if path == "/predict":
                if method != "POST":
                    raise RequestError(405, f"{method} /predict: use POST")
                return await self._predict(request)
            if path in ("/healthz", "/metadata", "/"):
                if method not in ("GET", "HEAD"):
                    raise RequestError(405, f"{method} {path}: use GET")
                if path == "/healthz":
                    return _json({"status": "ok", "checkpoint": self.checkpoint})
                return _json(self.metadata())
            raise RequestError(404, f"no route {path}: use POST /predict, GET /healthz or "
                               "GET /metadata")
        except RequestError as exc:
            self.stats["errors"] += 1
            answer = _error(exc.status, exc.message)
            if exc.status == 405:  # RFC 9110 15.5.6: a 405 says what the route takes
                answer.headers["Allow"] = "POST" if path == "/predict" else "GET, HEAD"
            return answer
        except ClientDisconnect:
            # the client went away mid-body: nobody to answer, and no fault of ours (it
            # was logged with a traceback and counted as an error, 3,498 times in a
            # probe of stalled uploads)
            self.stats["disconnects"] += 1
            return Response(status_code=499)
        except Exception as exc:  # a bug of ours: answer 500, keep the replica alive
            log.exception("request failed")
            self.stats["errors"] += 1
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def _predict(self, request: Request) -> Response:
        # Requests still being read count too: they are the company a batch waits for.
        self._active += 1
        try:
            body = await self._read_body(request)
            key, value = self.inputs.parse_request(body, request.headers.get("content-type"))
            if key == "images":  # decoding may take long: off the event loop
                loop = asyncio.get_running_loop()
                x = await loop.run_in_executor(self._decoder, self.inputs.images_to_array,
                                               value)
            else:
                x = self.inputs.instances_to_array(value, raw=body)
            probs = await self.predict_array(x)
        finally:
            self._active -= 1
        self.stats["requests"] += 1
        self.stats["instances"] += len(x)
        return _json(self._answer(probs))

    async def _read_body(self, request: Request) -> bytes:
        # A compressed body would otherwise be answered "not valid JSON" (its first
        # byte); RFC 9110 15.5.16: 415 for a content coding the server does not take.
        coding = (request.headers.get("content-encoding") or "identity").strip().lower()
        if coding != "identity":
            raise RequestError(415, f"content-encoding {coding!r} is not accepted: send "
                               "the JSON uncompressed")
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise RequestError(400, "invalid content-length header") from None
            if size > limit:
                raise RequestError(413, f"request body is {size} bytes; the limit is {limit}"
                                   " (maxRequestBytes)")
        chunks: list[bytes] = []
        received = [0]

        async def receive() -> None:
            async for chunk in request.stream():
                received[0] += len(chunk)
                if received[0] > limit:
                    raise RequestError(413, f"request body exceeds {limit} bytes "
                                       "(maxRequestBytes)")
                chunks.append(chunk)

        allowed = BODY_GRACE_S + (size if declared is not None else limit) / BODY_MIN_BYTES_PER_S
        try:
            await asyncio.wait_for(receive(), allowed)
        except asyncio.TimeoutError:  # (TimeoutError itself from Python 3.11)
            of = f" of {size}" if declared is not None else ""
            raise RequestError(408, f"request body too slow: {received[0]}{of} bytes in "
                               f"{allowed:.0f} s") from None
        return b"".join(chunks)

    def _build_metadata(self) -> dict[str, Any]:
        spec = self.inputs.spec
        return {
            "model": spec.model.name,
            "modelOptions": spec.model.options.to_dict(),
            "dataset": spec.data.dataset,
            "checkpoint": self.checkpoint,
            "epoch": self.meta.epoch,
            "metrics": self.meta.metrics,
            "classes": self.inputs.class_names,
            "inputShape": list(self.inputs.input_shape),
            "device": self.device,
            "modelThread": not self._inline,
            "batching": {"maxBatchSize": self.max_batch_size,
                         "batchWaitTimeoutMs": self.batch_wait_timeout_ms},
            "limits": {"maxRequestBytes": self.max_request_bytes,
                       "maxInstances": self.inputs.max_instances},
        }

    def metadata(self) -> dict[str, Any]:
        """Static metadata plus this replica's counters (per replica, not global)."""
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:
            replica = None
        return {**self._metadata, "replica": replica, "stats": dict(self.stats)}


def build_app(checkpoint: str, *, max_batch_size: int = 32, batch_wait_timeout_ms: float = 5.0,
              max_request_bytes: int = 4 * 1024 * 1024,
              max_instances: int = DEFAULT_MAX_INSTANCES, replicas: int | None = None,
              cpus_per_replica: float | None = None,
              gpus_per_replica: float | None = None,
              wait_for_run: bool = False) -> serve.Application:
    """The bound application; options left None keep the deployment's defaults (so a
    serveConfigV2 ``deployments:`` section can still set them). ``wait_for_run``: each
    replica first waits for the run of ``<run dir>/best`` to finish (``wait_for_training``)."""
    options: dict[str, Any] = {
        # Enough concurrent requests per replica to fill a batch (Serve's default is 5).
        "max_ongoing_requests": max(256, 2 * max_batch_size),
    }
    if replicas is not None:
        options["num_replicas"] = replicas
    actor: dict[str, Any] = {}
    if cpus_per_replica is not None:
        actor["num_cpus"] = cpus_per_replica
    if gpus_per_replica:
        actor["num_gpus"] = gpus_per_replica
    if actor:
        options["ray_actor_options"] = actor
    return Classifier.options(**options).bind(
        checkpoint, max_batch_size, batch_wait_timeout_ms, max_request_bytes, max_instances,
        wait_for_run)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (``import_path: raykube.serve:app_builder``).

    ``args``: ``checkpoint`` (required: directory or URI), ``maxBatchSize``,
    ``batchWaitTimeoutMs``, ``maxRequestBytes``, ``maxInstances``, ``replicas``,
    ``cpusPerReplica``, ``gpusPerReplica``, ``waitForTraining``. Unknown keys are refused.
    """
    try:
        a = ServeAppArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"invalid raykube serve args: {problems}") from None
    return build_app(a.checkpoint, max_batch_size=a.maxBatchSize,
                     batch_wait_timeout_ms=a.batchWaitTimeoutMs,
                     max_request_bytes=a.maxRequestBytes, max_instances=a.maxInstances,
                     replicas=a.replicas, cpus_per_replica=a.cpusPerReplica,
                     gpus_per_replica=a.gpusPerReplica, wait_for_run=a.waitForTraining)


# ----------------------------------------------------------------------------- local
class PortUnavailable(OSError):
    """The HTTP port cannot be listened on (in use, or not allowed)."""


def ensure_port_free(host: str, port: int) -> None:
    """Raise ``PortUnavailable`` unless ``host:port`` can be listened on now.

    Ray Serve's proxy only finds out once Ray is up (and, in ``raykube run``, after
    training), with a traceback from inside an actor: callers check first instead.
    """
    import errno
    import socket

    if ":" in host or host.startswith("["):
        # Serve's proxy starts on it and is never reported ready: "Proxies not available
        # after 60s" after 72 s (an audit); said at once instead
        raise PortUnavailable(f"cannot listen on {host}:{port}: an IPv6 address, which "
                              "Ray Serve's proxy does not serve here (use 127.0.0.1, or "
                              "0.0.0.0 for every IPv4 address)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "the port is already in use (pick another with --port)"
            else:
                why = f"{exc.strerror or exc} (check --host)"
            raise PortUnavailable(f"cannot listen on {host}:{port}: {why}") from None


def start_local(checkpoint: str, serve_spec: ServeSpec | None = None, port: int = 8000,
                *, host: str = "127.0.0.1", timeout_s: float = 120.0,
                quiet: bool = False, access_log: bool = False) -> str:
    """Deploy ``checkpoint`` on the current Ray (started if needed) and return the base
    URL once ``GET /healthz`` answers. ``quiet``: Serve logs warnings only, for
    ``raykube run``'s one demo request. ``access_log``: one log line per request (off by
    default: at thousands of requests/s they cost CPU).

    Serve's HAProxy ingress is used when this process (or whoever started Ray) applied
    ``raykube.local.apply_ray_env`` before Ray started, as every raykube command does.
    """
    import ray

    s = serve_spec or ServeSpec()
    if not ray.is_initialized():
        from raykube.local import apply_ray_env

        apply_ray_env()
        ray.init(include_dashboard=False, configure_logging=False)
    logging_config: dict[str, Any] = {"enable_access_log": access_log}
    if quiet:
        logging_config["log_level"] = "WARNING"
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    app = build_app(checkpoint, max_batch_size=s.max_batch_size,
                    batch_wait_timeout_ms=s.batch_wait_timeout_ms,
                    max_request_bytes=s.max_request_bytes, replicas=s.replicas,
                    cpus_per_replica=s.cpus_per_replica,
                    gpus_per_replica=s.gpus_per_replica)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config=logging_config)
    except Exception as exc:  # Ray's error text is a remote traceback: say it in one line
        with contextlib.suppress(Exception):
            serve.shutdown()  # so a retry on another port starts clean
        raise RuntimeError(serve_start_problem(exc, host, port)) from None
    base = f"http://{host}:{port}"
    wait_healthy(base, timeout_s)
    return base


def serve_start_problem(exc: BaseException, host: str, port: int) -> str:
    """One line for a failed Serve start. The common case is a port taken between the
    command's own check and Serve binding it (HAProxy's "cannot bind socket"); otherwise
    the last line of Ray's error, which is the exception, not a traceback frame."""
    text = str(exc)
    if "Address already in use" in text or "cannot bind socket" in text:
        return f"{host}:{port} is already in use (taken while the model was loading)"
    from raykube.terminal import error_line

    last = error_line(text) or type(exc).__name__
    return last if len(last) <= 300 else last[:297] + "..."


def wait_healthy(base_url: str, timeout_s: float = 60.0) -> None:
    """Poll ``GET /healthz`` until it answers 200 (the proxy may lag the deployment)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except Exception as exc:  # connection refused / 404 while routes propagate
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{base_url}/healthz did not answer within {timeout_s:.0f}s: {last}")


def query(base_url: str, instances: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    """POST ``{"instances": instances}`` to ``/predict`` and return the JSON answer
    (a 4xx answer raises ``RequestError`` with the server's message)."""
    if isinstance(instances, np.ndarray):
        instances = instances.tolist()
    req = urllib.request.Request(f"{base_url}/predict",
                                 data=json.dumps({"instances": instances}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            message = str(exc)
        raise RequestError(exc.code, message) from None


def stop_local() -> None:
    """Shut Serve down (the HTTP port is released; Ray itself keeps running)."""
    serve.shutdown()


def curl_example(base_url: str, input_shape: list[int] | tuple[int, ...]) -> str:
    """A ready-to-paste ``curl`` request with one all-zero instance of the right shape."""
    def zeros(shape: tuple[int, ...]) -> Any:
        return [zeros(shape[1:]) for _ in range(shape[0])] if len(shape) > 1 else [0] * shape[0]

    payload = json.dumps({"instances": [zeros(tuple(input_shape))]}, separators=(",", ":"))
    if len(payload) > 2000:  # big images: send the flat form built by python instead
        n = math.prod(input_shape)
        return (f"python -c 'import json; print(json.dumps({{\"instances\": [[0.0]*{n}]}}))' "
                f"| curl -s -X POST {base_url}/predict -H 'Content-Type: application/json' "
                "-d @-")
    return (f"curl -s -X POST {base_url}/predict -H 'Content-Type: application/json' "
            f"-d '{payload}'")
