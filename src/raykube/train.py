"""Distributed training with Ray Train: the per-worker loop and the driver.

``train_loop_per_worker(config)`` runs in every Ray Train worker (one DDP process each);
``fit(run, storage_path)`` is the driver that ``raykube run`` (local Ray) and
``raykube train`` (in a RayJob) both call, so the two paths are one.

The loop is built for throughput on small CPU nodes: in-memory datasets are tensors
indexed directly on the worker (no DataLoader processes, no per-example Python), metrics
are accumulated on-device and synchronised once per epoch with a single ``all_reduce``,
and each worker uses exactly ``scaling.cpusPerWorker`` torch threads.

Every epoch rank 0 writes a raykube checkpoint (``raykube.checkpoint``) plus
``history.json`` (the metrics of every epoch so far) and reports it with
``ray.train.report``; the other ranks report the same aggregated metrics without a
checkpoint. A restarted worker group (worker failure) or a re-run of the same
name + storage path (RayJob retry) continues from ``ray.train.get_checkpoint()`` at the
next epoch, so no finished epoch is ever trained twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from raykube.events import NOTHING_TO_TRAIN, Observers, RunObserver, notify
from raykube.render import WORKER_SLOT_ENV
from raykube.resume import (
    cannot_restore,
    checkpoint_dirs,
    drop_unusable_train_snapshot,
    plan_resume,
    read_meta,
    unlisted_checkpoints,
    unlisted_to_delete,
)
from raykube.spec import TrainingRun, TrainingRunSpec, apply_overrides
from raykube.storage import (
    checkpoint_uri,
    delete_dirs,
    disk_full,
    filesystem,
    ray_storage,
    read_bytes,
    read_summary,
    remove_tree,
    write_bytes,
)
from raykube.transient import MaybeTransient, exception_chain

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
RESULT_FILE = "result.json"
REPORT_FILE = "report.png"
VAL_BATCH = 1024
STORE_WAIT_S = 300.0
"""How long a worker waits for an object store that stopped answering (polling it)
before the run stops (``StorageFailed``); tests shorten it through the workers' config
(``store_wait_s``)."""


class StorageError(MaybeTransient, OSError):
    """The storage root cannot hold the run (a file, read-only, no permission; refused
    credentials, a missing bucket; a full disk). ``transient`` for an object store that
    did not answer or failed during training."""


class StorageFailed(StorageError):
    """A storage failure met by a worker during training that a restart of the worker
    group cannot fix (a full disk; an object store away longer than ``STORE_WAIT_S``):
    Ray Train does not retry it (``_trainer_class``'s failure policy) and ``fit`` raises
    it as it is, one line."""


def store_outage_line(run_dir: str, cause: str) -> str:
    """The one line for an object store that failed during training."""
    return (f"storage {run_dir}: the object store failed during training ({cause}); run "
            "again to resume from the latest complete checkpoint")


# ============================================================================ worker
def _make_optimizer(spec: TrainingRunSpec, params: Iterable[torch.nn.Parameter]):
    import torch

    o = spec.train.optimizer
    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return kind[o.name](params, **o.torch_kwargs())


def _maybe_fail(fault: dict[str, Any] | None, epoch: int, rank: int) -> None:
    """Test hook: make this worker fail once (marker file) to exercise recovery: exit the
    process, or (``allocate_gib``) grow its memory until Ray's memory monitor kills it;
    or (``pause``) stop mid-epoch until ``<marker>.resume`` exists (at most 120 s), so
    that a test can break something (stop the object store, fill a disk) at a known
    point of the run."""
    if not fault or int(fault.get("epoch", -1)) != epoch or int(fault.get("rank", 0)) != rank:
        return
    marker = fault["marker"]
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(f"killed rank {rank} in epoch {epoch}\n")
    if fault.get("pause"):
        deadline = time.monotonic() + 120
        while not os.path.exists(f"{marker}.resume") and time.monotonic() < deadline:
            time.sleep(0.1)
        return
    if "allocate_gib" in fault:
        import numpy as np

        def available() -> int:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            return int(info["MemAvailable"].split()[0]) * 1024

        held = []
        while len(held) < float(fault["allocate_gib"]) * 4 and available() > 2 * 2**30:
            held.append(np.ones(2**28 // 8))  # 256 MiB, every page touched
            time.sleep(0.1)  # the monitor looks every 250 ms
        time.sleep(5)
        raise RuntimeError(f"allocated {len(held) / 4} GiB and Ray's memory monitor did not "
                           "kill this worker")
    os._exit(1)


def _in_memory_batches(x: torch.Tensor, y: torch.Tensor, batch: int, rank: int, world: int,
                       seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard of one epoch, like DistributedSampler: one seeded permutation
    shared by all ranks, equal-sized contiguous slices (so every rank takes the same
    number of steps, as DDP needs), indexed straight from the tensors."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    per = len(x) // world
    idx = torch.randperm(len(x), generator=g)[rank * per:(rank + 1) * per].to(x.device)
    for i in range(0, per, batch):
        b = idx[i:i + batch]
        yield x[b], y[b]


def _read_json_file(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _restore(ckpt: Any, spec: TrainingRunSpec
             ) -> tuple[dict | None, dict | None, int, list[dict], TrainingRunSpec]:
    """(model state, optimizer state, next epoch, history, the checkpoint's spec) from a
    Ray checkpoint."""
    from raykube.checkpoint import load_payload

    with ckpt.as_directory() as d:
        payload = load_payload(d)
        hist_path = os.path.join(d, HISTORY_FILE)
        history = _read_json_file(hist_path, [])
    old = TrainingRunSpec.model_validate(payload["spec"])
    problem = _spec_conflict(old, spec)
    if problem:  # check_resumable catches this on the driver first
        raise RunDirConflict(problem)
    return payload["model"], payload["optimizer"], int(payload["epoch"]) + 1, history, old


def _quiet_reports() -> None:
    """Ray 2.60 logs every report at INFO from a logger named after a file path, which
    LoggingConfig does not filter; progress reaches users through the observers."""
    try:
        from ray.train.v2._internal.execution import context as _ctx

        logging.getLogger(_ctx.__file__).setLevel(
            os.environ.get("RAYKUBE_TRAIN_LOG_LEVEL", "WARNING"))
    except Exception:  # a private module moved: only noise is at stake
        pass


def ensure_uploaded(local_dir: str, fs: Any, path: str, *, timeout_s: float = 300.0) -> list[str]:
    """Make ``path`` on ``fs`` (the run storage Ray Train uploads to) hold every file of
    ``local_dir`` whole; return what had to be re-sent.

    Why: Ray Train uploads checkpoints with ``pyarrow.fs.copy_files``, which drops the
    error of an S3 upload that fails as it completes ("Error ignored when destroying
    file": seen when the endpoint dies mid-upload), so a checkpoint without its
    ``checkpoint.pt`` gets registered as the latest. Each file's size in storage is
    compared with the local copy and anything missing or short is uploaded again
    (explicitly closed, so errors surface), retrying until the store is back or
    ``timeout_s`` passes; then the error is raised and the worker fails.
    """
    files: dict[str, int] = {}
    for root, _, names in os.walk(local_dir):
        for n in names:
            full = os.path.join(root, n)
            files[os.path.relpath(full, local_dir).replace(os.sep, "/")] = os.path.getsize(full)
    resent: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            bad = [rel for rel, size in sorted(files.items())
                   if fs.get_file_info(f"{path}/{rel}").size != size]
            if not bad:
                return resent
            for rel in bad:
                log.warning("checkpoint file %s/%s is missing or incomplete in storage; "
                            "uploading it again", path, rel)
                with open(os.path.join(local_dir, rel), "rb") as src, \
                        fs.open_output_stream(f"{path}/{rel}") as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
                resent.append(rel)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _store_wait_s(config: dict[str, Any]) -> float:
    return float(config.get("store_wait_s", STORE_WAIT_S))


def _store_call(op: Callable[[], Any], config: dict[str, Any], doing: str,
                deadline: float | None = None) -> Any:
    """``op()``, waiting for an object store that stopped answering (until ``deadline``,
    by default ``store_wait_s`` from now, polling it) and trying again once it answers;
    when it stays away, ``StorageFailed`` (one line; Ray Train is told not to restart
    the workers for it, since a restart needs the store too). Local storage and other
    errors pass through."""
    from raykube.s3 import unreachable

    fs, wait_s = config.get("storage_fs"), _store_wait_s(config)
    deadline = time.monotonic() + wait_s if deadline is None else deadline
    where = config.get("store_where") or "the S3 endpoint"
    while True:
        slow = _SlowStoreNote(config, where, doing) if fs is not None else None
        try:
            result = op()
            if slow is not None and slow.said:
                _tell_driver(config, f"the object store {where} answered: training goes on")
            return result
        except OSError as exc:
            if slow is not None:
                slow.cancel()  # the wait below says what happens next
            if fs is None or isinstance(exc, StorageFailed) or not unreachable(exc):
                raise
            log.warning("the object store did not answer while %s; waiting up to %.0f s for "
                        "it: %s", doing, max(0.0, deadline - time.monotonic()), exc)
            _tell_driver(config, f"the object store {where} did not answer while {doing}: "
                         f"waiting up to {max(0.0, deadline - time.monotonic()):.0f} s for it "
                         "(Ctrl-C stops the run; running it again resumes)")
            if not _wait_for_store(fs, config["run_path"], deadline):
                raise StorageFailed(store_outage_line(
                    config["run_dir"], f"{where} did not answer for {wait_s:.0f} s while "
                    f"{doing}"), transient=True) from None
            _tell_driver(config, f"the object store {where} answers again: training goes on")
        finally:
            if slow is not None:
                slow.cancel()


STORE_SLOW_NOTE_S = 20.0
"""How long one object store call may take before the user is told it has not answered.
A store that takes connections and then never answers (a hung server, a stopped MinIO)
fails a request only after ``raykube.s3.REQUEST_TIMEOUT_S`` (60 s) and three tries: the
terminal said nothing for those minutes (an audit: 120 s on the line of epoch 15)."""


class _SlowStoreNote:
    """A timer that tells the driver, once, that a store call is still waiting."""

    def __init__(self, config: dict[str, Any], where: str, doing: str) -> None:
        from raykube.s3 import REQUEST_TIMEOUT_S

        self.said = False
        after = float(config.get("store_slow_note_s", STORE_SLOW_NOTE_S))

        def note() -> None:
            self.said = True
            _tell_driver(config, f"the object store {where} has not answered for {after:g} s "
                         f"while {doing}; still waiting (each request waits up to "
                         f"{REQUEST_TIMEOUT_S:.0f} s, and is tried 3 times)")

        self._timer = threading.Timer(after, note)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


def _tell_driver(config: dict[str, Any], text: str) -> None:
    """A line for the user from a worker (``ReportChannel.note``), if the driver gave
    the channel (``notes``); never fails the worker."""
    channel = config.get("notes")
    if channel is not None:
        with contextlib.suppress(Exception):
            channel.note(text)


def _wait_for_store(fs: Any, path: str, deadline: float) -> bool:
    """Poll the object store until it answers (True) or ``deadline`` passes (False)."""
    from raykube.s3 import unreachable

    while True:
        try:
            fs.get_file_info(path)
            return True
        except OSError as exc:
            if not unreachable(exc):  # it answers, if only with an error: try the call again
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def _checkpoint_uploader(config: dict[str, Any]) -> Callable[[Any, str], Any]:
    """Rank 0's ``checkpoint_upload_fn`` for ``ray.train.report``: Ray Train's own upload
    (``persist_current_checkpoint``), then for an object store the whole-file check
    (``ensure_uploaded``), before the controller registers the checkpoint; an object
    store that stops answering is waited for (``_store_call``). A full disk stops the run
    at once: the half-written checkpoint directory is removed and ``StorageFailed`` says
    which storage is full (a restart would train the epoch again into the same disk)."""

    def upload(checkpoint: Any, name: str) -> Any:
        import ray.train

        storage = ray.train.get_context().get_storage()
        dest = storage.build_checkpoint_path_from_name(name)

        deadline = time.monotonic() + _store_wait_s(config)

        def attempt() -> Any:
            persisted = storage.persist_current_checkpoint(checkpoint, name)
            if config.get("storage_fs") is not None:  # an object store: prove the upload whole
                ensure_uploaded(checkpoint.path, config["storage_fs"], dest,
                                timeout_s=max(0.0, deadline - time.monotonic()))
            return persisted

        try:
            return _store_call(attempt, config, f"saving {name}", deadline)
        except OSError as exc:
            if not disk_full(exc):
                raise
            remove_tree(storage.storage_filesystem, dest)
            raise StorageFailed(disk_full_line(f"storage {config['run_dir']}", name,
                                               exc)) from None

    return upload


def disk_full_line(where: str, what: str, exc: BaseException, removed: bool = True) -> str:
    """The one line for a disk that filled up while ``what`` was written to ``where``
    (``storage <run directory>``, or the local temporary directory)."""
    why = (os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno
           else "no space left on device")
    return (f"{where}: the disk is full ({why}) while saving {what}"
            f"{', which was removed' if removed else ''}; free some space (or use another "
            "--storage), then run again to resume from the latest complete checkpoint")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker. ``config``: ``spec`` (camelCase spec dict, required),
    ``overrides`` (dotted path -> value, e.g. a Tune sample), ``cache_dir``,
    ``fault`` (test hook, see ``_maybe_fail``)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from ray.train import Checkpoint

    from raykube import data as rk_data
    from raykube.allocator import keep_freed_memory
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model
    from raykube.resume import checkpoint_name, choose_checkpoint, load_optimizer_state

    _quiet_reports()
    keep_freed_memory()  # before the first tensor: this thread's arena keeps its pages
    spec = TrainingRunSpec.model_validate(config["spec"])
    if config.get("overrides"):
        spec = apply_overrides(spec, config["overrides"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    cache_dir = config.get("cache_dir") or rk_data.cache_dir_for(spec, "runs")
    seed = spec.train.seed

    if config.get("image_cache"):  # an image folder, decoded once into uint8 (data.py)
        arrays = rk_data.load_image_cache(config["image_cache"], spec)
    else:
        arrays = rk_data.load_arrays(spec, cache_dir)
    info = arrays.info
    train_x, train_y = arrays.train_x.to(device), arrays.train_y.to(device)
    # Each rank validates a disjoint stride of the validation set; sums are reduced.
    val_x, val_y = arrays.val_x[rank::world].to(device), arrays.val_y[rank::world].to(device)
    normalise = rk_data.normalise_batch  # uint8 images -> float (a no-op on float data)

    torch.manual_seed(seed)
    model = build_model(spec.model, info.input_shape, info.num_classes)
    start_epoch, history, opt_state, old_spec = 1, [], None, None
    # A re-run: the driver's pick (newest readable on storage) unless Ray's is as new.
    ckpt = _store_call(lambda: choose_checkpoint(ray.train.get_checkpoint(),
                                                 config.get("resume_from"),
                                                 config.get("skipped_checkpoints", ())),
                       config, "choosing the checkpoint to resume from")
    if ckpt is not None:
        state, opt_state, start_epoch, history, old_spec = _store_call(
            lambda: _restore(ckpt, spec), config, "restoring the latest checkpoint")
        model.load_state_dict(state)
    # Gradients are views into the all-reduce buckets: one copy less per step.
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    bare = getattr(model, "module", model)
    optimizer = _make_optimizer(spec, model.parameters())
    load_optimizer_state(optimizer, opt_state, old_spec, spec)  # see raykube.resume
    per_worker_batch = max(1, spec.train.batch_size // world)
    spec_dict = spec.to_dict()
    upload = _checkpoint_uploader(config)

    for epoch in range(start_epoch, spec.train.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        batches = _in_memory_batches(train_x, train_y, per_worker_batch, rank, world, seed, epoch)
        for step, (xb, yb) in enumerate(batches):
            if step == 2:
                _maybe_fail(config.get("fault"), epoch, rank)
            out = model(normalise(xb))
            loss = F.cross_entropy(out, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = yb.shape[0]
            loss_sum += loss.detach() * n
            correct += (out.detach().argmax(1) == yb).sum()
            seen += n
        train_time = time.perf_counter() - t0

        model.eval()
        v_loss = torch.zeros((), device=device, dtype=torch.float64)
        v_correct = torch.zeros((), device=device, dtype=torch.int64)
        v_seen = 0
        with torch.no_grad():
            vb = ((val_x[i:i + VAL_BATCH], val_y[i:i + VAL_BATCH]) for i in range(0, len(val_x), VAL_BATCH))
            for xb, yb in vb:
                out = bare(normalise(xb))
                v_loss += F.cross_entropy(out, yb, reduction="sum")
                v_correct += (out.argmax(1) == yb).sum()
                v_seen += yb.shape[0]

        # One collective per epoch: sums over every worker (whole validation set).
        sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), device=device),
                            v_loss, v_correct.double(), torch.tensor(float(v_seen), device=device),
                            torch.tensor(train_time, device=device, dtype=torch.float64)])
        if world > 1 and dist.is_available() and dist.is_initialized():
            times = sums[6:].clone()
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            dist.all_reduce(times, op=dist.ReduceOp.MAX)
            sums[6] = times[0]
        s = sums.tolist()
        n_train, n_val = max(s[2], 1.0), max(s[5], 1.0)
        metrics = {
            "epoch": epoch,
            "epochs": spec.train.epochs,
            "trainLoss": s[0] / n_train,
            "trainAccuracy": s[1] / n_train,
            "valLoss": s[3] / n_val,
            "valAccuracy": s[4] / n_val,
            "trainExamples": int(s[2]),
            "valExamples": int(s[5]),
            "epochTime": time.perf_counter() - t0,
            "samplesPerSecond": s[2] / max(s[6], 1e-9),
            "workers": world,
        }
        history.append(metrics)
        name = checkpoint_name(epoch, config.get("skipped_checkpoints", ()))
        if rank == 0:
            tmp = tempfile.mkdtemp(prefix="raykube-ckpt-")
            try:
                try:
                    save_checkpoint(tmp, model=model, optimizer=optimizer, epoch=epoch,
                                    spec=spec_dict, class_names=info.class_names,
                                    input_shape=info.input_shape,
                                    metrics={k: v for k, v in metrics.items()
                                             if isinstance(v, float)})
                    with open(os.path.join(tmp, HISTORY_FILE), "w") as f:
                        json.dump(history, f)
                except OSError as exc:  # the local temporary directory's disk
                    if not disk_full(exc):
                        raise
                    raise StorageFailed(disk_full_line(f"temporary directory {tmp}", name,
                                                       exc, removed=False)) from None
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name,
                                 checkpoint_upload_fn=upload)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)


# ============================================================================ driver
@dataclass
class TrainOutcome:
    """What a finished run produced (also what ``result.json`` holds)."""

    metrics: dict[str, Any]
    best_checkpoint: str | None
    best_metrics: dict[str, Any]
    epochs: int
    wall_time_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: str = ""
    name: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    reused: bool = False
    """True when the run had already finished and nothing was trained this time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReportChannel:
    """Items from a Ray Train callback (in the Train controller actor) to the driver,
    in order, through the GCS key-value store that every Ray process already talks to.

    Replaces a ``ray.util.queue.Queue``: that is an actor, i.e. one more Python process
    to start (seconds on a small node) before the first training step. Pickled into the
    controller with the callback; ``put_nowait`` runs there, ``get``/``empty``/``close``
    on the driver, which polls (``poll_s``) for the next numbered key.
    """

    NAMESPACE = "raykube-reports"
    NOTES = "note/"
    """Sub-prefix of lines from the Train workers (``note``): any worker may write one,
    so they are keyed by time and process, not numbered."""

    def __init__(self, poll_s: float = 0.2):
        import uuid

        self.prefix = f"{uuid.uuid4().hex}/"
        self.poll_s = poll_s
        self._put = 0  # in the controller's copy
        self._got = 0  # in the driver's copy

    def _key(self, n: int) -> bytes:
        return f"{self.prefix}{n:09d}".encode()

    def put_nowait(self, item: dict[str, Any]) -> None:
        from ray import cloudpickle
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(self._key(self._put), cloudpickle.dumps(item), overwrite=True,
                         namespace=self.NAMESPACE)
        self._put += 1

    def note(self, text: str) -> None:
        """From a Train worker: a line the user should read now (``{"note": text}`` on
        the driver), such as a wait for an object store that stopped answering."""
        from ray.experimental.internal_kv import _internal_kv_put

        key = f"{self.prefix}{self.NOTES}{time.time_ns():020d}-{os.getpid()}".encode()
        _internal_kv_put(key, text.encode(), overwrite=True, namespace=self.NAMESPACE)

    def _notes(self) -> list[bytes]:
        from ray.experimental.internal_kv import _internal_kv_list

        return sorted(_internal_kv_list(f"{self.prefix}{self.NOTES}".encode(),
                                        namespace=self.NAMESPACE))

    def _take(self) -> dict[str, Any] | None:
        from ray import cloudpickle
        from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get

        raw = _internal_kv_get(self._key(self._got), namespace=self.NAMESPACE)
        if raw is not None:
            _internal_kv_del(self._key(self._got), namespace=self.NAMESPACE)
            self._got += 1
            return cloudpickle.loads(raw)
        for key in self._notes()[:1]:
            text = _internal_kv_get(key, namespace=self.NAMESPACE)
            _internal_kv_del(key, namespace=self.NAMESPACE)
            if text is not None:
                return {"note": text.decode(errors="replace")}
        return None

    def get(self, timeout: float) -> dict[str, Any]:
        """The next item; ``queue.Empty`` when none came within ``timeout`` s."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            item = self._take()
            if item is not None:
                return item
            if time.monotonic() >= deadline:
                raise queue.Empty
            time.sleep(self.poll_s)

    def empty(self) -> bool:
        from ray.experimental.internal_kv import _internal_kv_exists

        return not (_internal_kv_exists(self._key(self._got), namespace=self.NAMESPACE)
                    or self._notes())

    def close(self) -> None:
        """Drop what was never read (a failed run)."""
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(self.prefix.encode(), del_by_prefix=True, namespace=self.NAMESPACE)


def _forwarder(queue: Any, storage_path: str) -> list[Any]:
    """Ray Train callbacks (run in the Train controller) that forward each report, and
    each failure of the worker group, to the driver through a ``ReportChannel``, where
    the observers run."""
    from ray.train import UserCallback

    class _Forward(UserCallback):
        def __init__(self, q: Any, storage: str):
            self.q = q
            self.storage = storage

        def after_report(self, run_context, metrics, checkpoint):  # noqa: ANN001
            try:
                self.q.put_nowait({"metrics": dict(metrics[0]) if metrics else {},
                                   "checkpoint": checkpoint_uri(
                                   self.storage, checkpoint.path if checkpoint else None)})
            except Exception:  # progress display must never fail training
                log.warning("could not forward a report", exc_info=True)

    return [_Forward(queue, storage_path), failure_callback(queue)]


def _stops_on_storage(error: Any) -> bool:
    """Whether a worker of the failed group raised ``StorageFailed``."""
    failures = getattr(error, "worker_failures", None)
    return isinstance(failures, dict) and any(isinstance(e, StorageFailed)
                                              for e in failures.values())


def failure_callback(queue: Any) -> Any:
    """A Ray Train callback (run in the Train controller) that puts each failure of the
    worker group on ``queue`` as ``{"failure": line, "retry": bool, "controller": bool}``,
    and first the controller's own handle as ``{CONTROLLER_ITEM: handle}`` (a plain run's
    driver and each Tune trial use it, through ``fit_and_stream``)."""
    import ray
    from ray.train.v2._internal.execution.callback import ControllerCallback
    from ray.train.v2._internal.execution.controller.state import (
        ReschedulingState,
        RestartingState,
        ShuttingDownState,
    )

    class _Failures(ControllerCallback):
        """Every failure decision, read from the controller's next state: a retry
        (Restarting after a worker failed, Rescheduling after the group failed to start)
        or the end (ShuttingDown towards Errored). ``UserCallback.after_exception`` is
        not enough: it sees only errors found by polling running workers, not those
        raised while the controller polls, starts or tears them down (a worker killed
        by Ray's memory monitor met again in the tear-down before a restart, as on make
        e2e-local's node), so the failure that ended such a run went unannounced."""

        def __init__(self, q: Any):
            self.q = q

        def after_controller_start(self, train_run_context):  # noqa: ANN001, ARG002
            # The controller's own handle, so that an interrupted driver can abort the
            # run before it shuts Ray down (see fit_and_stream).
            try:
                self.q.put_nowait({CONTROLLER_ITEM: ray.get_runtime_context().current_actor})
            except Exception:
                log.warning("could not forward the controller's handle", exc_info=True)

        def after_controller_state_update(self, previous_state, current_state):  # noqa: ANN001
            retry = isinstance(current_state, (RestartingState, ReschedulingState))
            if retry:
                error = current_state.training_failed_error
            elif isinstance(current_state, ShuttingDownState):
                error = getattr(current_state.next_state, "training_failed_error", None)
            else:
                return
            if error is None or _stops_on_storage(error):  # the run's own last line says it
                return
            # Tell the driver, so the user reads why the workers restart amid Ray's logs.
            controller = type(error).__name__ == "ControllerError"
            try:
                self.q.put_nowait({"failure": f"{'controller' if controller else 'worker'} "
                                              f"failure ({training_failure(error)}; the "
                                              "traceback is in Ray's log)",
                                   "retry": retry, "controller": controller})
            except Exception:
                log.warning("could not forward a worker failure", exc_info=True)

    return _Failures(queue)


def failure_line(exc: BaseException, limit: int = 200) -> str:
    """``FileNotFoundError: [Errno 2] ... 'model.pt'``: the exception's own last line (a
    worker's error can carry its remote traceback in its text), prefixed by its type.
    Ray's memory monitor's kill is the exception: its text ends with two paragraphs of
    advice, so its figures are taken from its first line instead."""
    from raykube.terminal import error_line, ray_oom_line

    name = type(exc).__name__
    if oom := ray_oom_line(str(exc)):
        return oom
    last = error_line(str(exc))
    text = last if last.startswith(name) else f"{name}: {last}" if last else name
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]  # at a word's end where one is near: "...or b..." read as a typo
    return (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut).rstrip(",;:") + "..."


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def actor_died_line(exc: BaseException) -> str:
    """One line for Ray's ``ActorDiedError`` out of ``fit``: which actor, and why when
    Ray knows. Ray's own first line carries colour codes and the actor's repr
    (``ray::TrainController.__init__() (pid=..., repr=<...object at 0x...>)``); a
    ``kill -9`` of Train's controller said only "The actor died unexpectedly before
    finishing this task" (a new user's probe)."""
    text = _ANSI.sub("", str(exc))
    who = "Ray Train's controller" if "TrainController" in text else "a Ray actor"
    if "creation task" in text:
        from raykube.terminal import error_line

        return f"{who} failed to start ({error_line(text)[:300]})"
    return f"{who} process died (killed, or out of memory: see the run's log)"


def is_training_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is Ray Train's ``TrainingFailedError`` (no retries left). Imported
    here, when a run has failed, not by the commands: ``ray.train`` (with Ray Data and
    pandas, 0.7-1.5 s) stays off the driver's path to the first step."""
    from ray.train import TrainingFailedError

    return isinstance(exc, TrainingFailedError)


def training_failure(exc: BaseException) -> str:
    """One line for a run that failed for good (Ray Train's ``TrainingFailedError``): the
    failing ranks and their errors, or the controller's, instead of Ray's header ("Training
    failed due to worker errors:") that names neither."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return ", ".join(f"rank {rank}: {failure_line(e)}" for rank, e in sorted(failures.items()))
    cause = getattr(exc, "controller_failure", None)
    return failure_line(cause if isinstance(cause, BaseException) else exc)


BEST_DIR = "best"


def publish_best(checkpoint: str, run_dir: str) -> str:
    """Copy ``checkpoint`` to ``<run_dir>/best`` and return that address.

    A stable path to the best model for people and tools that cannot read status
    (``raykube serve runs/<name>/best``, a RayService committed to Git by
    ``raykube render --serve``). The operator serves the concrete, immutable checkpoint
    directory instead, so that a new best is a serve-config change KubeRay rolls out.
    """
    import pyarrow.fs as pafs

    fs, src = filesystem(checkpoint)
    _, dst = filesystem(f"{run_dir}/{BEST_DIR}")
    fs.create_dir(dst, recursive=True)
    # Overwrite in place, then drop leftovers: best/ is never empty meanwhile, and on an
    # object store each file is replaced whole (a PUT is atomic), never half-written.
    pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
    fresh = {i.path[len(src):] for i in fs.get_file_info(pafs.FileSelector(src, recursive=True))}
    for info in fs.get_file_info(pafs.FileSelector(dst, recursive=True)):
        if info.type == pafs.FileType.File and info.path[len(dst):] not in fresh:
            fs.delete_file(info.path)
    return f"{run_dir}/{BEST_DIR}"


def run_dir_for(storage_path: str, name: str) -> str:
    """``<storage>/<name>``: where Ray Train puts checkpoints, and result.json/report.png."""
    base = storage_path if "://" in storage_path else os.path.abspath(storage_path)
    return f"{base.rstrip('/')}/{name}"


def check_storage(storage_path: str, name: str) -> str:
    """Create ``<storage>/<name>`` and prove it is writable; return the run directory.

    Done before any Ray work: otherwise a bad ``--storage`` surfaces as a traceback from
    inside Ray Train's controller actor, after Ray started and the data was prepared.
    An ``s3://`` root gets a probe object written and deleted under the run directory
    (``raykube.s3.check``: one line for an unreachable endpoint, refused credentials or
    a missing bucket, in seconds).
    """
    from raykube.spec import location_problem

    if problem := location_problem(storage_path):
        raise StorageError(f"storage {problem}")
    run_dir = run_dir_for(storage_path, name)
    if "://" in storage_path:
        from raykube import s3

        if s3.is_s3(storage_path):
            try:
                s3.check(run_dir, write=True)
            except s3.S3Unavailable as exc:
                raise StorageError(f"storage {exc}", transient=exc.transient) from None
        return run_dir
    probe = os.path.join(run_dir, ".raykube-write-test")
    try:
        os.makedirs(run_dir, exist_ok=True)
        try:
            with open(probe, "w") as f:
                f.write("ok")
        finally:  # a full disk fails the write (or the close) after the file was made
            with contextlib.suppress(OSError):
                os.remove(probe)
    except OSError as exc:
        raise StorageError(f"storage {storage_path!r} cannot hold run {name!r}: "
                           f"{exc.strerror or exc} ({exc.filename or run_dir})") from None
    return run_dir


class RunDirConflict(MaybeTransient, ValueError):
    """The run directory holds checkpoints of a different model or dataset."""


def _spec_conflict(old: TrainingRunSpec, new: TrainingRunSpec) -> str | None:
    for section in ("model", "data"):
        if getattr(old, section) != getattr(new, section):
            return (f"the run directory holds checkpoints of a different spec.{section} "
                    f"({getattr(old, section).to_dict()} vs {getattr(new, section).to_dict()}); "
                    "use a new metadata.name / storage path or delete the old run directory")
    if old.train.seed != new.train.seed:
        # raykube.data splits train/validation by the seed: another seed would validate
        # on examples the checkpoints were trained on (and rank them on another set)
        return (f"the run directory holds checkpoints trained with train.seed "
                f"{old.train.seed}, not {new.train.seed}: the seed decides the "
                "train/validation split, so resuming with another would validate on "
                "examples already trained on; set it back, or use a new metadata.name / "
                "storage path")
    return None


def check_resumable(run_dir: str, spec: TrainingRunSpec) -> None:
    """Raise ``RunDirConflict`` when ``run_dir`` holds checkpoints ``spec`` cannot resume.

    Ray Train would restore the latest one into every worker, where the mismatch can
    only fail the workers, be retried ``maxWorkerFailures`` times, and end in a
    traceback; reading one meta.json here (no torch) says it in one line, at once.
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(run_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:  # unreadable: Ray Train will say why
        return
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                   and i.base_name.startswith("checkpoint_epoch_"))
    if not names:
        return
    raw = read_bytes(f"{run_dir}/{names[-1]}/meta.json")
    try:
        old = TrainingRunSpec.model_validate(json.loads(raw)["spec"]) if raw else None
    except Exception:  # an older or foreign meta.json: let the worker-side check decide
        return
    problem = old and _spec_conflict(old, spec)
    if problem:
        raise RunDirConflict(f"{run_dir}: {problem}")


def load_result(run_dir: str) -> tuple[dict[str, Any] | None, str | None]:
    """``run_dir``'s result.json and the note to show when it is corrupt (then taken as
    absent: ``raykube.storage.read_summary``)."""
    return read_summary(f"{run_dir}/{RESULT_FILE}")


def read_result(run_dir: str) -> dict[str, Any] | None:
    """``run_dir``'s result.json; None when there is none or it is corrupt."""
    return load_result(run_dir)[0]


def _finished(prev: dict[str, Any] | None, spec: TrainingRunSpec) -> TrainOutcome | None:
    """The recorded outcome ``prev`` (a result.json) when this exact spec already
    finished with it."""
    if not prev or prev.get("spec") != spec.to_dict() or prev.get("epochs", 0) < spec.train.epochs:
        return None
    known = {f for f in TrainOutcome.__dataclass_fields__}
    out = TrainOutcome(**{k: v for k, v in prev.items() if k in known})
    out.reused = True
    return out


def _outcome_on_disk(run_dir: str, name: str, spec: TrainingRunSpec, latest: str,
                     prev: dict[str, Any] | None) -> TrainOutcome:
    """The outcome of what ``run_dir`` already holds, read from its checkpoints (no
    training): ``latest`` is the newest readable one; the best is ranked by
    ``checkpoint.scoreMetric`` as Ray Train ranks them. ``prev``: its result.json, if
    any (for the wall time and spec it recorded)."""
    ck = spec.checkpoint
    ranked = []
    for d in checkpoint_dirs(run_dir):
        meta = read_meta(d)  # None when cut off: not a candidate
        value = (meta or {}).get("metrics", {}).get(ck.score_metric)
        if isinstance(value, (int, float)):
            ranked.append((float(value), d, {**meta["metrics"], "epoch": meta["epoch"]}))
    raw = read_bytes(f"{latest}/{HISTORY_FILE}")
    history = json.loads(raw) if raw else []
    prev = prev or {}
    # The best that reads back: one whose weights were cut off must not become best/.
    ranked.sort(key=lambda r: r[0], reverse=ck.score_mode == "max")
    best = next((r for r in ranked if r[1] == latest or cannot_restore(r[1]) is None), None)
    best_dir = best[1] if best else latest
    with contextlib.suppress(Exception):
        publish_best(best_dir, run_dir)
    return TrainOutcome(
        metrics=history[-1] if history else {}, best_checkpoint=best_dir,
        best_metrics=best[2] if best else {}, epochs=int(history[-1]["epoch"]) if history else 0,
        wall_time_s=float(prev.get("wall_time_s") or 0.0), history=history, run_dir=run_dir,
        name=name, spec=prev.get("spec") or spec.to_dict(),
        checkpoints=sorted(r[1] for r in ranked), reused=True)


def _best_of(result: Any, spec: TrainingRunSpec, *, skipped: Iterable[str],
             unlisted: Iterable[tuple[Any, dict]] = ()) -> tuple[Any, dict]:
    """The best checkpoint of a finished ``fit`` and its metrics, ranked as Ray Train
    ranks them (``Result.get_best_checkpoint``) but never one of ``skipped``: Ray's
    list still names a checkpoint whose weights were found cut off at the start of this
    run, with the metrics it reported, and it must not become ``best/``. ``unlisted``:
    ``(checkpoint, metrics)`` of checkpoints on storage Ray's list does not name
    (``raykube.resume.unlisted_checkpoints``), ranked with Ray's."""
    ck = spec.checkpoint
    skipped = set(skipped)
    scored = [(score, c, dict(m)) for c, m in [*result.best_checkpoints, *unlisted]
              if os.path.basename(c.path.rstrip("/")) not in skipped
              and (score := _score(m, ck.score_metric)) is not None]
    if not scored:
        return result.checkpoint, dict(result.metrics or {})
    _, best, metrics = (max if ck.score_mode == "max" else min)(scored, key=lambda t: t[0])
    return best, metrics


def _score(metrics: dict, metric: str) -> float | None:
    """A checkpoint's ``scoreMetric`` value, or None when it reported none."""
    v = metrics.get(metric)
    return float(v) if isinstance(v, (int, float)) else None


@dataclass(frozen=True)
class _StoredCheckpoint:
    """A checkpoint directory on storage that Ray's list does not name (only its path
    is used, as of Ray's ``Checkpoint``)."""

    path: str


def _prune_unlisted(result: Any, spec: TrainingRunSpec, unlisted: list[tuple[Any, dict]],
                    observers: Iterable[RunObserver]) -> list[str]:
    """Apply ``checkpoint.keep`` to the checkpoints Ray's list does not name (it prunes
    only its own): delete those outside the ``keep`` best of all, tell the user, and
    return the URIs of those kept. A deletion that fails is logged, never fatal: the
    run has finished and ``result.json`` is what matters."""
    ck = spec.checkpoint
    doomed = set(unlisted_to_delete(
        [(c.path, _score(m, ck.score_metric)) for c, m in result.best_checkpoints],
        [(c.path, _score(m, ck.score_metric)) for c, m in unlisted],
        keep=ck.keep, mode=ck.score_mode))
    delete_dirs(sorted(doomed))
    if doomed:
        notify(observers, f"deleted {len(doomed)} older checkpoint(s) that Ray Train's "
                          "checkpoint list did not name "
                          f"({', '.join(sorted(os.path.basename(p) for p in doomed))}): "
                          f"checkpoint.keep is {ck.keep}")
    return [c.path for c, _ in unlisted if c.path not in doomed]


def _history_of(checkpoint: Any) -> list[dict[str, Any]]:
    with checkpoint.as_directory() as d:
        return _read_json_file(os.path.join(d, HISTORY_FILE), [])


def scaling_config(spec: TrainingRunSpec, slot: str | None = None) -> Any:
    """Ray Train's ScalingConfig for ``spec.scaling`` (fractional GPUs let Tune trials
    share a GPU). ``slot``: a custom resource each worker also asks one of: on a rendered
    cluster (``raykube.render.WORKER_SLOT``, named by the pods' environment) it keeps
    each pod to the workers it is sized for; on one machine there is none."""
    from ray.train import ScalingConfig

    s = spec.scaling
    resources: dict[str, float] = {"CPU": s.cpus_per_worker}
    if s.gpus_per_worker > 0:
        resources["GPU"] = s.gpus_per_worker
    if slot:
        resources[slot] = 1
    return ScalingConfig(num_workers=s.workers, use_gpu=s.gpus_per_worker > 0,
                         resources_per_worker=resources)


def _trainer_class(pg_cleaner: bool) -> Any:
    """Ray Train's data-parallel trainer with the PyTorch backend
    (:class:`raykube.torch_backend.TorchBackendConfig`: what a ``TorchTrainer`` does,
    without torch imported in the driver or Train's controller), and without the parts
    of Ray Train a raykube run does not use, each one Python process less to start
    before the first step (and less background CPU beside the workers while they train):

    - Ray Train's dataset callback when the trainer gets no Ray Datasets (raykube's never
      do: workers index in-memory or cached arrays): it starts a ``DatasetManager`` actor
      for every run all the same;
    - the resource requests that ``FixedScalingPolicy`` sends to Ray's detached
      ``AutoscalingCoordinator`` actor (started on first use, ~3 CPU-s on a 2-core
      machine; the controller's start waits on it): they tell a Ray autoscaler, and Ray
      Data running beside Train, what Train holds. raykube's clusters have a fixed size
      (a RayCluster per RayJob; one machine for ``raykube run``) and raykube decodes with
      Ray Data before training, never beside it. A worker group that cannot be placed
      still shows as a pending placement group, which Ray's autoscaler scales for;
    - (``pg_cleaner=False``) the placement-group cleaner: a detached actor (the first
      worker-group start waits for it) that frees the workers' placement group if the
      controller dies without doing so. A ``fit`` run's Ray is its own (``raykube run``:
      gone with the driver; a RayJob: a cluster per run), so nothing outlives it; Tune
      trials keep the cleaner."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raykube.torch_backend import TorchBackendConfig

    class _TorchTrainer(DataParallelTrainer):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, backend_config=TorchBackendConfig(), **kwargs)

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )
        from ray.train.v2._internal.execution.failure_handling import (
            DefaultFailurePolicy,
            FailureDecision,
        )
        from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    except ImportError:  # another Ray version: keep its defaults
        return _TorchTrainer

    class _StopOnStorage(DefaultFailurePolicy):
        """Ray's failure policy, except that a worker's ``StorageFailed`` (a full disk,
        an object store that stayed away) ends the run at once: restarting the workers
        would retrain the epoch into the same full disk, or fail restoring from the
        absent store, ``failure.maxWorkerFailures`` times over."""

        def make_decision(self, training_failed_error: Any) -> Any:
            if _stops_on_storage(training_failed_error):
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    class _FixedSize(FixedScalingPolicy):
        """Ray's fixed-size policy, minus its calls to the AutoscalingCoordinator."""

        def after_controller_start(self, train_run_context: Any) -> None:
            self._requester_id = f"train-{train_run_context.run_id}"

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

        def _cancel_resource_request(self) -> None:
            pass

    class _Trainer(_TorchTrainer):
        def _create_default_callbacks(self):  # noqa: ANN202
            unused: tuple[type, ...] = () if self.datasets else (DatasetsCallback,)
            if not pg_cleaner:
                unused += (PlacementGroupCleanerCallback,)
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, unused)]

        def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
            policy = kwargs.get("scaling_policy")
            if type(policy) is FixedScalingPolicy:  # elastic runs keep Ray's policy
                kwargs["scaling_policy"] = _FixedSize(policy.scaling_config)
            failures = kwargs.get("failure_policy")
            if type(failures) is DefaultFailurePolicy:
                kwargs["failure_policy"] = _StopOnStorage(failures.failure_config)
            return super()._initialize_and_run_controller(**kwargs)

    return _Trainer


def build_trainer(spec: TrainingRunSpec, *, storage_root: str, storage_path: str, name: str,
                  callbacks: Iterable[Any] = (), extra_config: dict[str, Any] | None = None,
                  pg_cleaner: bool = True) -> Any:
    """The Ray Train trainer (PyTorch, DDP) for ``spec``: the one place a Ray Train run is
    configured, for ``fit`` and for every Tune trial alike (loop, data cache, scaling,
    checkpoint ranking, worker fault tolerance, logging).

    ``storage_root`` holds the shared dataset cache; ``storage_path``/``name`` is where
    this run's checkpoints go. Prepares the dataset first (downloads once per cluster,
    under a file lock) so that workers never race to download.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig

    from raykube import data as rk_data

    cache_dir = rk_data.cache_dir_for(spec, storage_root)
    rk_data.prepare(spec, cache_dir, storage_root)
    config: dict[str, Any] = {"spec": spec.to_dict(), "cache_dir": cache_dir}
    if spec.data.dataset == "image-folder":
        # Decoded once, before any Train worker holds a CPU (in this process, or by Ray
        # Data for a large or remote folder); the workers read the uint8 cache. A later
        # run, a retry or a Tune trial finds it done.
        config["image_cache"] = rk_data.build_image_cache(spec, storage_root)
    ck = spec.checkpoint
    ray_path, ray_fs = ray_storage(storage_path)
    # object stores: rank 0 checks each checkpoint upload there, and the workers wait
    # for one that stops answering (_store_call); every worker names the run directory
    # in a storage failure's line
    config.update(storage_fs=ray_fs, run_path=f"{ray_path.rstrip('/')}/{name}",
                  run_dir=run_dir_for(storage_path, name))
    if ray_fs is not None:
        from raykube.s3 import S3Settings

        config["store_where"] = S3Settings.from_env().where
    return _trainer_class(pg_cleaner)(
        train_loop_per_worker,
        train_loop_config={**config, **(extra_config or {})},
        scaling_config=scaling_config(spec, os.environ.get(WORKER_SLOT_ENV) or None),
        run_config=RunConfig(
            name=name,
            storage_path=ray_path,
            storage_filesystem=ray_fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=ck.keep,
                checkpoint_score_attribute=ck.score_metric,
                checkpoint_score_order=ck.score_mode),
            failure_config=FailureConfig(max_failures=spec.failure.max_worker_failures),
            callbacks=list(callbacks),
            # Progress goes through the observers; Ray Train's per-report INFO lines
            # would drown it.
            logging_config=LoggingConfig(log_level=os.environ.get("RAYKUBE_TRAIN_LOG_LEVEL",
                                                                  "WARNING")),
        ),
    )


def announce_failure(observers: Iterable[RunObserver], what: str, n: int, allowed: int,
                     retry: bool, controller: bool = False) -> None:
    """Tell observers that have an ``on_failure(message)`` (optional, beyond the
    RunObserver protocol) and the log that the worker group failed, and what happens next.
    ``retry`` is Ray Train's own decision (the controller's next state), never recomputed
    here from the count ``n`` against ``allowed`` (``failure.maxWorkerFailures``, -1 for
    no limit), which only words the message. ``controller``: the error came from Ray
    Train's controller, which it retries only when starting the workers failed, never
    against ``failure.maxWorkerFailures``."""
    if retry:
        of = f" of {allowed}" if allowed >= 0 else ""
        nxt = f"restarting the workers from the last checkpoint (retry {n}{of})"
    elif controller:
        nxt = ("not retried: Ray Train retries its controller only when starting the "
               "workers failed")
    else:
        nxt = f"no retries left (failure.maxWorkerFailures={allowed})"
    notify(observers, f"{what}; {nxt}", hook="on_failure")


CONTROLLER_ITEM = "raykube.controller"
"""The key of the channel item that carries Ray Train's controller's actor handle (put by
``failure_callback`` as the controller starts; taken by ``fit_and_stream``, never passed to
``on_item``)."""
ABORT_WAIT_S = 30.0
"""How long an interrupted ``fit_and_stream`` waits for the aborted run's thread."""


def fit_and_stream(trainer: Any, queue: Any, on_item: Callable[[dict[str, Any]], None], *,
                   thread_name: str = "raykube-fit",
                   on_note: Callable[[str], None] | None = None) -> Any:
    """Run ``trainer.fit()`` in a thread while this thread hands each item that the Train
    controller's callback put on ``queue`` to ``on_item``, in order; return fit's Result.
    A worker's line (``ReportChannel.note``) goes to ``on_note`` (default: the log).

    Why: ``fit`` blocks until training ends, but observers (the rich display, the status
    reporter) and ``tune.report`` must run here, on the driver's (or trial's) thread, as
    each epoch ends. fit's exception is re-raised here; the channel is always closed.

    When this thread is interrupted (Ctrl-C, or SIGTERM made one; or an observer fails),
    the run is aborted first, and the exception re-raised only once the fit thread has
    left Ray (at most ``ABORT_WAIT_S`` later). Its caller shuts Ray down next; a fit
    thread still waiting in ``ray.get`` then read the core worker as it was freed, and the
    process died with SIGSEGV instead of saying what was saved (``raykube run`` after
    SIGTERM, 4 runs in 23 on a loaded machine; the core dump showed that thread in
    ``CoreWorker::Get``).
    """
    from queue import Empty

    box: dict[str, Any] = {}  # result / error from the fit thread; controller from the channel

    def _fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on this thread
            box["error"] = exc

    def _next(timeout: float) -> dict[str, Any] | None:
        """The next item for ``on_item``; keeps the controller's handle aside."""
        item = queue.get(timeout=timeout)
        if CONTROLLER_ITEM in item:
            box["controller"] = item[CONTROLLER_ITEM]
            return None
        if "note" in item:
            (on_note or (lambda text: log.warning("%s", text)))(item["note"])
            return None
        return item

    thread = threading.Thread(target=_fit, name=thread_name, daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not queue.empty():
            try:
                item = _next(0.5)
            except Empty:
                continue
            if item is not None:
                on_item(item)
        thread.join()
    except BaseException:  # Ctrl-C, SystemExit, an observer's error: no run left behind
        _abort_fit(thread, box, _next)
        raise
    finally:
        with contextlib.suppress(Exception):
            queue.close()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _abort_fit(thread: threading.Thread, box: dict[str, Any],
               next_item: Callable[[float], dict[str, Any] | None]) -> None:
    """Abort an interrupted run the way Ray Train's own Ctrl-C handler does (the
    controller's ``abort``: the workers are stopped, the run marked aborted), and wait
    for the fit thread to return. Without the controller's handle yet (interrupted while
    it starts) the handle is awaited from the channel; a controller that does not answer
    is killed."""
    import ray

    deadline = time.monotonic() + ABORT_WAIT_S
    while "controller" not in box and thread.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the channel is best effort here
            next_item(0.2)  # items after an interrupt are not shown
    controller = box.get("controller")
    if controller is not None:
        with contextlib.suppress(Exception):  # the controller exits inside abort()
            ray.get(controller.abort.remote(), timeout=max(1.0, deadline - time.monotonic()))
        thread.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        if thread.is_alive():
            with contextlib.suppress(Exception):
                ray.kill(controller, no_restart=True)
    thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        log.warning("Ray Train's run did not stop within %.0f s of the interrupt", ABORT_WAIT_S)


VALIDATE_MARKER = ".validate_storage_marker"
"""Ray Train's ``VALIDATE_STORAGE_MARKER_FILENAME``, spelled out (as
``raykube.resume.TRAIN_SNAPSHOT``): the empty file it writes into the run directory to
prove the storage writable, and leaves there."""


def remove_storage_marker(run_dir: str) -> None:
    """Delete Ray Train's storage marker from the run directory once the run is over
    (it writes one again when a run starts, and checks it before each upload)."""
    with contextlib.suppress(Exception):  # a leftover empty file is not worth an error
        fs, path = filesystem(f"{run_dir}/{VALIDATE_MARKER}")
        fs.delete_file(path)


def _storage_failure(exc: BaseException, run_dir: str) -> StorageError | None:
    """The one-line ``StorageError`` for a run that storage ended, or None when something
    else did: a worker's ``StorageFailed`` (a full disk, an object store that stayed
    away), or an error of Ray Train's controller, which stops, not retried, when it
    cannot write its checkpoint list (a full disk; an object store that does not
    answer: the pyarrow error wrapped in a ControllerError)."""
    from raykube import s3

    def more(e: BaseException) -> list[Any]:
        failures = getattr(e, "worker_failures", None)
        return [getattr(e, "controller_failure", None),
                *(failures.values() if isinstance(failures, dict) else ())]

    for e in exception_chain(exc, more):
        if isinstance(e, StorageFailed):
            return e
        if isinstance(e, OSError) and disk_full(e):
            return StorageError(disk_full_line(f"storage {run_dir}",
                                               "Ray Train's checkpoint list", e, removed=False))
        text = str(e)
        if isinstance(e, OSError) and "AWS Error" in text and s3.is_s3(run_dir):
            cause = (f"cannot reach the S3 endpoint {s3.S3Settings.from_env().where}"
                     if s3.unreachable(e) else " ".join(text.split())[:300])
            return StorageError(store_outage_line(run_dir, cause), transient=True)
    return None


def fit(run: TrainingRun, storage_path: str, *, observers: Iterable[RunObserver] = (),
        name: str | None = None, extra_config: dict[str, Any] | None = None) -> TrainOutcome:
    """Train ``run`` with Ray Train on the current Ray cluster; write result.json and
    report.png into ``<storage_path>/<name>/``.

    Re-running a finished run returns its recorded outcome without training; re-running
    an unfinished one (or one whose ``train.epochs`` grew) continues from its latest
    checkpoint. ``extra_config`` is merged into the workers' config (tests use it).
    """
    spec = run.spec
    name = name or run.name
    run_dir = check_storage(storage_path, name)
    observers = list(observers)
    obs = Observers(observers)
    prev, result_note = load_result(run_dir)
    done = _finished(prev, spec)
    if done is not None:
        log.info("%s already finished; not training again", run_dir)
        obs.on_start(run)
        obs.on_end(done.to_dict())
        return done
    check_resumable(run_dir, spec)
    plan = plan_resume(run_dir, spec)
    if (note := drop_unusable_train_snapshot(run_dir)) is not None:
        plan.notes.insert(0, note)
    if result_note is not None:
        plan.notes.insert(0, result_note)
    if plan.checkpoint is not None and plan.epoch >= spec.train.epochs:
        obs.on_start(run)
        if result_note is not None:
            notify(observers, result_note)
        notify(observers, f"{run_dir} already has {plan.epoch} epochs (asked for "
                          f"{spec.train.epochs}): {NOTHING_TO_TRAIN}")
        done = _outcome_on_disk(run_dir, name, spec, plan.checkpoint, prev)
        obs.on_end(done.to_dict())
        return done
    if plan.checkpoint is not None or plan.skipped:
        extra_config = {**(extra_config or {}), "resume_from": plan.checkpoint,
                        "skipped_checkpoints": plan.skipped}

    # Worker processes for Train's controller, its SynchronizationActor and the workers
    # start now, beside the data preparation below and the controller's own start
    # (a few at a time, as the raylet allows). See raykube.prestart.
    from raykube.prestart import prestart_train_workers

    prestart_train_workers(spec.scaling.workers + 2)
    queue = ReportChannel()
    trainer = build_trainer(spec, storage_root=storage_path, storage_path=storage_path,
                            name=name, callbacks=_forwarder(queue, storage_path),
                            extra_config={**(extra_config or {}), "notes": queue},
                            pg_cleaner=False)

    obs.on_start(run)
    for note in plan.notes:
        notify(observers, note)
    start = time.monotonic()
    failures = 0

    def _on_item(ev: dict[str, Any]) -> None:
        nonlocal failures
        if "failure" in ev:
            failures += 1
            announce_failure(observers, ev["failure"], failures, spec.failure.max_worker_failures,
                             ev["retry"], ev["controller"])
        else:
            obs.on_epoch(ev["metrics"], ev["checkpoint"], None)

    try:
        result = fit_and_stream(trainer, queue, _on_item,
                                on_note=lambda text: notify(observers, text))
        if result.error:
            raise result.error
    except Exception as exc:
        failed = _storage_failure(exc, run_dir)
        if failed is None:
            raise
        raise failed from exc
    finally:
        remove_storage_marker(run_dir)
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: training reported no checkpoint")

    history = _history_of(result.checkpoint)
    unlisted = [(_StoredCheckpoint(d if "://" in d else os.path.abspath(d)), meta.get("metrics") or {})
                for d, meta in unlisted_checkpoints(run_dir)
                if os.path.basename(d) not in plan.skipped]
    best, best_metrics = _best_of(result, spec, skipped=plan.skipped, unlisted=unlisted)
    outcome = TrainOutcome(
        metrics=history[-1] if history else dict(result.metrics or {}),
        best_checkpoint=checkpoint_uri(storage_path, best.path),
        best_metrics=best_metrics,
        epochs=int(history[-1]["epoch"]) if history else 0,
        wall_time_s=round(time.monotonic() - start, 3),
        history=history,
        run_dir=run_dir,
        name=name,
        spec=spec.to_dict(),
        checkpoints=sorted(str(checkpoint_uri(storage_path, c.path)) for c, _ in result.best_checkpoints),
    )
    if outcome.best_checkpoint:
        try:
            publish_best(outcome.best_checkpoint, run_dir)
        except Exception:  # the concrete checkpoint is still there and in result.json
            log.warning("could not copy the best checkpoint to %s/%s", run_dir, BEST_DIR,
                        exc_info=True)
    if unlisted:
        kept = _prune_unlisted(result, spec, unlisted, observers)
        outcome.checkpoints = sorted([*outcome.checkpoints, *kept])
    write_bytes(f"{run_dir}/{RESULT_FILE}", json.dumps(outcome.to_dict(), indent=2).encode())
    try:
        from raykube.report import render_report

        write_bytes(f"{run_dir}/{REPORT_FILE}", render_report(history, title=name))
    except Exception:  # a missing plot must not lose a finished run
        log.warning("could not write %s", REPORT_FILE, exc_info=True)
    obs.on_end(outcome.to_dict())
    return outcome
