"""The checkpoint format: one file any PyTorch can read, no Ray needed.

A checkpoint is a directory holding
- ``checkpoint.pt``: ``{"format", "model", "optimizer", "epoch", "spec", "class_names",
  "input_shape", "metrics"}`` saved with ``torch.save``; every value is a tensor or a
  plain Python value, so ``torch.load(..., weights_only=True)`` reads it (no pickled code
  runs when a checkpoint from shared storage is opened);
- ``meta.json``: the same minus the tensors, readable without torch (operator, CLI).

Ray Train's checkpoints are directories, so a Ray ``Checkpoint`` wraps this unchanged.
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of import time for light users (operator, validate)
    import torch

FORMAT = 1
WEIGHTS_FILE = "checkpoint.pt"
META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be used (truncated, corrupted, from another
    tool, or whose weights do not fit the model it describes). The message names the
    file; callers show it as is."""


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The gist of a library error: its first sentence of its first line."""
    text = str(exc).strip().splitlines()
    return (text[0].split(". ")[0] if text else type(exc).__name__)[:limit]


def _not_a_checkpoint(path: str | os.PathLike[str], missing: str) -> FileNotFoundError:
    p = Path(path)
    hint = ""
    if (p / "best" / missing).exists():  # people pass the run directory
        hint = f"; this is a run directory, its best checkpoint is {p / 'best'}"
    return FileNotFoundError(f"{path}: not a raykube checkpoint (no {missing}{hint})")


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself (meta.json)."""

    epoch: int
    spec: dict[str, Any]
    class_names: list[str]
    input_shape: list[int]
    metrics: dict[str, float] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    spec: dict[str, Any],
    class_names: list[str],
    input_shape: list[int] | tuple[int, ...],
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write a checkpoint into ``directory`` (created if needed) and return it.

    ``model`` may be wrapped in DistributedDataParallel: the bare module's weights are
    saved so the checkpoint loads into an unwrapped model.
    """
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bare = getattr(model, "module", model)
    meta = CheckpointMeta(
        epoch=int(epoch),
        spec=spec,
        class_names=[str(c) for c in class_names],
        input_shape=[int(x) for x in input_shape],
        metrics={k: float(v) for k, v in (metrics or {}).items()},
    )
    payload = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in bare.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        **{k: v for k, v in meta.__dict__.items() if k != "format"},
    }
    # Write-then-rename so a reader never sees half a file (a worker may die mid-save).
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
    os.replace(tmp.name, directory / WEIGHTS_FILE)
    (directory / META_FILE).write_text(json.dumps(meta.__dict__, indent=2, sort_keys=True))
    return directory


def _weights_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / WEIGHTS_FILE if p.is_dir() else p


def read_meta(path: str | os.PathLike[str]) -> CheckpointMeta:
    """The metadata of a checkpoint directory, without torch."""
    p = Path(path)
    meta_file = p / META_FILE if p.is_dir() else p.with_name(META_FILE)
    if not meta_file.exists():
        raise _not_a_checkpoint(path, META_FILE)
    try:
        data = json.loads(meta_file.read_text())
        return CheckpointMeta(**data)
    except TypeError:  # missing or unknown fields: Python's words name our class
        raise CheckpointError(f"{meta_file}: not a valid raykube {META_FILE} (its fields "
                              f"are not {', '.join(CheckpointMeta.__dataclass_fields__)})"
                              ) from None
    except ValueError as exc:  # not JSON, not UTF-8
        raise CheckpointError(f"{meta_file}: not a valid raykube {META_FILE} "
                              f"({_first_line(exc)})") from None


def _holds_text(wp: Path) -> bool:
    """Whether ``wp`` starts as a text file (never torch.save's zip archive or pickle).
    Torch's own error for one is a raw code: a text file saved as checkpoint.pt was
    "truncated or corrupted (101)", its KeyError."""
    try:
        with open(wp, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if not head or head.startswith((b"PK\x03\x04", b"\x80")):
        return False
    try:  # incremental: a character cut at byte 512 is not a reason to call it binary
        codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return False
    return True


def load_payload(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, read with ``weights_only=True``."""
    import torch

    wp = _weights_path(path)
    if not wp.exists():
        raise _not_a_checkpoint(path, WEIGHTS_FILE)
    if wp.is_dir():  # "truncated or corrupted ([Errno 21] Is a directory ...)" before
        raise CheckpointError(f"{wp}: cannot read this checkpoint: a directory, where the "
                              "file torch.save wrote belongs")
    try:
        payload = torch.load(wp, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError...
        text = str(exc).lower()
        if _holds_text(wp):
            why = "not a PyTorch checkpoint file (it holds text)"
        elif "unsupported global" in text:  # a pickled object, not weights
            why = ("it holds more than tensors and plain values, and raykube never "
                   "runs code from a checkpoint (torch.load weights_only=True)")
        elif "weights only load failed" in text:  # torch's advice (weights_only=False) is unsafe
            why = "corrupted, or not a file written by torch.save"
        else:
            why = f"truncated or corrupted ({_first_line(exc)})"
        raise CheckpointError(f"{wp}: cannot read this checkpoint: {why}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{wp}: not a raykube checkpoint (holds a "
                              f"{type(payload).__name__}, not a dict)")
    if "format" not in payload:  # another program's dict (a plain state_dict, a bundle)
        raise CheckpointError(f"{wp}: not a raykube checkpoint (a dict of "
                              f"{', '.join(map(str, list(payload)[:4])) or 'nothing'}"
                              f"{', ...' if len(payload) > 4 else ''}; no 'format')")
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{wp}: checkpoint format {payload.get('format')!r}: this "
                              f"raykube reads format {FORMAT} (written by another version?)")
    return payload


def load_model(
    path: str | os.PathLike[str], map_location: str = "cpu"
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint, in eval mode, with its metadata.

    Works without Ray: this is what serving, batch prediction and users' own scripts call.
    """
    from raykube.models import build_model
    from raykube.spec import TrainingRunSpec

    payload = load_payload(path, map_location)
    try:
        meta = CheckpointMeta(
            epoch=payload["epoch"],
            spec=payload["spec"],
            class_names=list(payload["class_names"]),
            input_shape=list(payload["input_shape"]),
            metrics=dict(payload.get("metrics") or {}),
        )
        spec = TrainingRunSpec.model_validate(meta.spec)
        model = build_model(spec.model, tuple(meta.input_shape), meta.num_classes)
    except Exception as exc:  # missing keys, a spec this version cannot read
        raise CheckpointError(f"{path}: incomplete or incompatible checkpoint "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its spec describes ({spec.model.name}, "
            f"input {meta.input_shape}, {meta.num_classes} classes): "
            f"{' '.join(str(exc).split())[:400]}") from None
    model.eval()
    return model, meta
