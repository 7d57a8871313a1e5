"""What a re-run of the same name does with the checkpoints already on storage.

Decided here, per spec section, so that what is printed, saved and used agree:

- ``model``, ``data``: refused (``RunDirConflict``): the weights cannot mean the same.
- ``train.epochs``: more than trained continues; no more than trained trains nothing.
- ``train.optimizer``: the new values are used from the next epoch. Same optimizer
  kind: its restored state (momentum buffers, Adam moments) is kept and ``lr``,
  ``momentum`` (Adam's beta1) and ``weightDecay`` are set to the new values; another
  kind (adam -> sgd) starts with a fresh optimizer state, since one kind's state means
  nothing to another (torch would fail on it).
- ``train.seed``: refused too (``RunDirConflict``): it decides the train/validation
  split, and another would validate on examples already trained on.
- ``train.batchSize``, ``scaling``, ``serve``, ``checkpoint``: used as given from the
  next epoch.

The resume point is the newest checkpoint on storage that can be read, not only the one
Ray Train's own bookkeeping remembers: after a Ctrl-C that bookkeeping can lag the
checkpoint directories written meanwhile, and a checkpoint cut off mid-copy must be
skipped rather than restored (and retried) until the workers give up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raykube.checkpoint import META_FILE, WEIGHTS_FILE
from raykube.spec import TrainingRunSpec
from raykube.storage import exists, filesystem, read_bytes

if TYPE_CHECKING:
    import torch

CHECKPOINT_PREFIX = "checkpoint_epoch_"
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train's ``CHECKPOINT_MANAGER_SNAPSHOT_FILENAME``, spelled out: importing Ray's
constant imports ``ray.train`` (Ray Data, pandas) ahead of the prestart request (a test
checks the two agree)."""


@dataclass
class ResumePlan:
    """Where a run continues from. ``checkpoint`` None: nothing usable, start at 1."""

    checkpoint: str | None = None
    epoch: int = 0
    spec: TrainingRunSpec | None = None
    notes: list[str] = field(default_factory=list)
    """What the user should know (a skipped checkpoint, a changed optimizer)."""
    skipped: list[str] = field(default_factory=list)
    """Names of unreadable checkpoint directories newer than ``checkpoint``: the epochs
    trained again are saved under another name (``checkpoint_name``), since Ray Train's
    bookkeeping may still hold these and would delete the new one with the old."""


def checkpoint_dirs(run_dir: str) -> list[str]:
    """``checkpoint_epoch_NNNN`` directories of ``run_dir``, oldest first."""
    import pyarrow.fs as pafs

    fs, path = filesystem(run_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return sorted(f"{run_dir.rstrip('/')}/{i.base_name}" for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))


def read_meta(ckpt_dir: str) -> dict[str, Any] | None:
    """A raykube checkpoint's meta.json (``epoch``, ``spec``, ``metrics``), or None when
    it is missing or cut off."""
    return _meta_doc(read_bytes(f"{ckpt_dir}/meta.json"))


def _meta_doc(raw: bytes | None) -> dict[str, Any] | None:
    """meta.json's bytes as ``read_meta`` returns them (None: missing or cut off)."""
    try:
        doc = json.loads(raw) if raw else None
        return doc if isinstance(doc, dict) and "epoch" in doc and "spec" in doc else None
    except ValueError:
        return None


_RESTORE_VERDICTS: dict[str, str | None] = {}
"""``cannot_restore``'s answers in this process, by checkpoint directory (a torch load
each, for local ones): ``latest_saved`` goes by them rather than loading again."""


def cannot_restore(ckpt_dir: str) -> str | None:
    """Why a checkpoint cannot be restored, or None when it can (torch load, for a local
    one; an object store's listing for the others)."""
    why = _cannot_restore(ckpt_dir)
    _RESTORE_VERDICTS[ckpt_dir] = why
    return why


def _cannot_restore(ckpt_dir: str) -> str | None:
    if "://" in ckpt_dir:
        # object stores: an upload cut short (the store died mid-checkpoint) leaves a
        # checkpoint without its weights; an S3 object is either whole or absent
        import pyarrow.fs as pafs

        try:
            fs, path = filesystem(ckpt_dir)
            info = fs.get_file_info(f"{path.rstrip('/')}/{WEIGHTS_FILE}")
        except OSError as exc:
            return str(exc)
        if info.type != pafs.FileType.File or not info.size:
            return f"{ckpt_dir}: no {WEIGHTS_FILE} (its upload was cut short)"
        return None
    try:
        from raykube.checkpoint import load_payload

        load_payload(ckpt_dir)
    except ImportError:
        return None
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def latest_usable(run_dir: str) -> tuple[str | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint of ``run_dir`` that reads back, its meta.json, and the
    directories of the newer ones skipped."""
    skipped: list[str] = []
    for d in reversed(checkpoint_dirs(run_dir)):
        meta = read_meta(d)
        why = "no readable meta.json" if meta is None else cannot_restore(d)
        if why is None:
            return d, meta, skipped
        skipped.append(d)
    return None, None, skipped


def latest_saved(run_dir: str) -> tuple[str | None, dict[str, Any] | None]:
    """``latest_usable`` without loading a checkpoint: the newest one whose meta.json
    reads and whose weights file is there (not empty), and that no earlier torch load of
    this process found unreadable; with its meta.json.

    For the Ctrl-C message, which must not import torch: a Ctrl-C that lands while
    ``plan_resume`` imports it (its first use in ``raykube run``) leaves torch half
    initialised, and importing it again failed with ``partially initialized module
    'torch'``, a ``SystemError`` or a segfault, or (torch found without its ``load``)
    took every checkpoint for unreadable. A local run directory is read with ``os``
    alone, so an interrupted pyarrow import does no harm either; a checkpoint is
    written weights first (renamed into place), then meta.json."""
    local = "://" not in run_dir
    dirs = _local_checkpoint_dirs(run_dir) if local else checkpoint_dirs(run_dir)
    for d in reversed(dirs):
        if _RESTORE_VERDICTS.get(d):  # a torch load of this process said why not
            continue
        meta = _local_meta(d) if local else read_meta(d)
        if meta is not None and (_has_weights(d) if local else cannot_restore(d) is None):
            return d, meta
    return None, None


def _local_checkpoint_dirs(run_dir: str) -> list[str]:
    """``checkpoint_dirs`` of a local run directory, by ``os`` (same names)."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return sorted(f"{run_dir.rstrip('/')}/{n}" for n in names
                  if n.startswith(CHECKPOINT_PREFIX) and os.path.isdir(os.path.join(run_dir, n)))


def _local_meta(ckpt_dir: str) -> dict[str, Any] | None:
    """``read_meta`` of a local checkpoint, by ``open``."""
    try:
        with open(os.path.join(ckpt_dir, META_FILE), "rb") as f:
            return _meta_doc(f.read())
    except OSError:
        return None


def _has_weights(ckpt_dir: str) -> bool:
    """A local checkpoint has a non-empty weights file."""
    try:
        return os.path.getsize(os.path.join(ckpt_dir, WEIGHTS_FILE)) > 0
    except OSError:
        return False


def checkpoint_name(epoch: int, taken: Iterable[str] = ()) -> str:
    """The directory name of an epoch's checkpoint: ``checkpoint_epoch_NNNN``, or
    ``checkpoint_epoch_NNNN-again`` when an unreadable one of that name is still there."""
    name = f"{CHECKPOINT_PREFIX}{epoch:04d}"
    return f"{name}-again" if name in set(taken) else name


def optimizer_notes(old: TrainingRunSpec, new: TrainingRunSpec, epoch: int) -> list[str]:
    """One line per ``train`` setting that differs from the checkpoint's, saying what
    the resumed run does with it."""
    notes = []
    o, n = old.train.optimizer, new.train.optimizer
    if o.name != n.name:
        notes.append(f"train.optimizer.name changed ({o.name} -> {n.name}): epochs after "
                     f"{epoch} use a fresh {n.name} optimizer (lr={n.lr:g}); {o.name}'s "
                     "state is not carried over")
    else:
        changed = [f"{k} {getattr(o, a):g} -> {getattr(n, a):g}"
                   for k, a in (("lr", "lr"), ("momentum", "momentum"),
                                ("weightDecay", "weight_decay"))
                   if getattr(o, a) != getattr(n, a)]
        if changed:
            notes.append(f"train.optimizer changed ({', '.join(changed)}): applied to the "
                         f"restored {n.name} optimizer from epoch {epoch + 1}")
    a, b = old.train.batch_size, new.train.batch_size
    if a != b:
        notes.append(f"train.batchSize changed ({a} -> {b}): used from epoch {epoch + 1}")
    return notes


def plan_resume(run_dir: str, spec: TrainingRunSpec) -> ResumePlan:
    """The resume point of ``run_dir`` for ``spec``, with notes for the user.

    Conflicting model/data sections are ``raykube.train.check_resumable``'s job.
    """
    ckpt, meta, skipped = latest_usable(run_dir)
    notes = [f"skipping {os.path.basename(d)}: it cannot be read ({cannot_restore(d) or 'no meta.json'})"
             for d in reversed(skipped)]
    names = [os.path.basename(d) for d in skipped]
    if ckpt is None or meta is None:
        return ResumePlan(notes=notes, skipped=names)
    try:
        old = TrainingRunSpec.model_validate(meta["spec"])
    except Exception:  # a foreign or older meta.json: the workers decide
        return ResumePlan(checkpoint=ckpt, epoch=int(meta["epoch"]), notes=notes, skipped=names)
    epoch = int(meta["epoch"])
    if epoch < spec.train.epochs:
        notes += optimizer_notes(old, spec, epoch)
    return ResumePlan(checkpoint=ckpt, epoch=epoch, spec=old, notes=notes, skipped=names)


def drop_unusable_train_snapshot(run_dir: str) -> str | None:
    """Delete Ray Train's checkpoint list in ``run_dir`` when Ray Train would refuse to
    start on it; the note for the user, or None when there was nothing to do.

    Ray Train (2.60) parses ``checkpoint_manager_snapshot.json`` before anything else on
    every later run of the same name, and fails its controller's start on two kinds of
    list, on every re-run and RayJob retry from then on:

    - one it cannot parse: it rewrites the file in place at every report (truncate, then
      write: not atomic on a file system), and a run killed between the two (Ctrl-C, a
      preempted pod, an OOM kill) left it empty (``JSONDecodeError``, seen after a
      Ctrl-C here). An object store replaces a file whole, so there this never happens;
    - one that names a checkpoint directory no longer on storage (deleted by hand, or by
      a cleanup): ``CheckpointManagerInitializationError``, which ``raykube run`` showed
      as an ``ActorDiedError`` with Ray's colour codes (a new user's probe).

    Without it Ray Train starts a new list; raykube resumes from the checkpoints on
    storage either way (``plan_resume``). Ray's new list no longer names the checkpoints
    from before: the run's end ranks them with Ray's and prunes them under
    ``checkpoint.keep`` itself (``unlisted_checkpoints``, ``unlisted_to_delete``)."""
    uri = f"{run_dir.rstrip('/')}/{TRAIN_SNAPSHOT}"
    raw = read_bytes(uri)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        gone = [n for n in _ray_checked(doc) if not exists(f"{run_dir.rstrip('/')}/{n}")]
        if not gone:
            return None
        what = (f"names {', '.join(gone)}, which {'is' if len(gone) == 1 else 'are'} no "
                "longer on storage (deleted?)")
    else:
        what = ("was empty, as a run killed while writing it leaves it" if not raw.strip()
                else f"could not be parsed ({len(raw)} bytes), as a run killed while "
                "writing it leaves it")
    fs, path = filesystem(uri)
    fs.delete_file(path)
    return (f"Ray Train's checkpoint list {TRAIN_SNAPSHOT} {what}: removed (Ray Train "
            "refuses to start on it). Training resumes from the checkpoints on storage; "
            "those already there are ranked and pruned under checkpoint.keep when the run "
            "ends")


def _ray_checked(doc: dict[str, Any]) -> list[str]:
    """The checkpoint directories of a list that Ray Train checks are there at its start
    (its ``_assert_checkpoints_exist``: the kept results)."""
    return [e["checkpoint_dir_name"] for e in doc.get("checkpoint_results") or []
            if isinstance(e, dict) and isinstance(e.get("checkpoint_dir_name"), str)]


def listed_checkpoints(run_dir: str) -> set[str] | None:
    """Names of the checkpoint directories Ray Train's list in ``run_dir`` holds (kept,
    latest and pending), or None when there is no readable list."""
    raw = read_bytes(f"{run_dir.rstrip('/')}/{TRAIN_SNAPSHOT}")
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    entries = [*(doc.get("checkpoint_results") or []), doc.get("latest_checkpoint_result"),
               *(doc.get("pending_training_results") or [])]
    return {e["checkpoint_dir_name"] for e in entries
            if isinstance(e, dict) and isinstance(e.get("checkpoint_dir_name"), str)}


def unlisted_checkpoints(run_dir: str) -> list[tuple[str, dict[str, Any]]]:
    """``(directory, meta.json)`` of the readable checkpoints in ``run_dir`` that Ray
    Train's list does not name: those written before a list that was dropped
    (``drop_unusable_train_snapshot``), those a run interrupted by Ctrl-C wrote after
    the last list Ray saved (its bookkeeping lags the uploads), and those left by a
    process killed between Ray saving its list and deleting what fell out of it. Ray
    Train neither ranks nor prunes them; ``raykube.train.fit`` does, at the end of a
    run. Empty when Ray has no readable list (then nothing is known to be outside it).
    Directories without a readable meta.json are not returned, and ``fit`` also leaves
    out those whose weights ``plan_resume`` found cut off: they are left for a person
    to look at, and never outrank (and so push out) a checkpoint that loads."""
    listed = listed_checkpoints(run_dir)
    if listed is None:
        return []
    out = []
    for d in checkpoint_dirs(run_dir):
        if os.path.basename(d) not in listed and (meta := read_meta(d)) is not None:
            out.append((d, meta))
    return out


def unlisted_to_delete(listed: Iterable[tuple[str, float | None]],
                       unlisted: Iterable[tuple[str, float | None]], *, keep: int,
                       mode: str) -> list[str]:
    """Which unlisted checkpoints go (pure): every one that is not among the ``keep``
    best of all (Ray's and the unlisted, by score, ``mode`` max or min; a checkpoint
    without the score ranks last). Ray's own are never deleted here (its list would
    then name a missing checkpoint, which Ray Train refuses at the next start), and the
    latest checkpoint is always one of Ray's, so at most ``keep`` unlisted ones stay."""
    sign = -1.0 if mode == "max" else 1.0
    unlisted = list(unlisted)
    everyone = [(name, score, False) for name, score in listed] + [
        (name, score, True) for name, score in unlisted]
    ranked = sorted(everyone, key=lambda t: (t[1] is None, sign * (t[1] or 0.0)))
    best = {name for name, _, mine in ranked[:keep] if mine}
    return [name for name, _ in unlisted if name not in best]


# ------------------------------------------------------------------------ worker side
def choose_checkpoint(ray_ckpt: Any, resume_from: str | None, skipped: Iterable[str] = ()) -> Any:
    """The Ray ``Checkpoint`` a worker restores: Ray Train's own (a restart within this
    run) unless the driver found a newer readable one on storage (a re-run) or found
    Ray's unreadable (``skipped``)."""
    from ray.train import Checkpoint

    if ray_ckpt is not None and os.path.basename(ray_ckpt.path.rstrip("/")) in set(skipped):
        ray_ckpt = None
    if not resume_from:
        return ray_ckpt
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            theirs = read_meta(d)
        if theirs is not None and int(theirs["epoch"]) >= _epoch_of(resume_from):
            return ray_ckpt
    if "://" in resume_from:
        fs, path = filesystem(resume_from)
        return Checkpoint(path=path, filesystem=fs)
    return Checkpoint.from_directory(resume_from)


def _epoch_of(ckpt_dir: str) -> int:
    meta = read_meta(ckpt_dir)
    return int(meta["epoch"]) if meta else 0


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict | None,
                         old: TrainingRunSpec | None, new: TrainingRunSpec) -> None:
    """Restore ``state`` into ``optimizer`` as the module docstring decides: same kind,
    state kept and the new hyperparameters applied; another kind, fresh state."""
    if not state or old is None or old.train.optimizer.name != new.train.optimizer.name:
        return
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(new.train.optimizer.torch_kwargs())
