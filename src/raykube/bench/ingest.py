"""The ``ingest`` suite: raykube's image-folder path vs torch DataLoader.

Both read the same generated folder of PNG files (``<class>/<n>.png``, the CIFAR-10
shape) and hand out shuffled, normalised float32 CHW batches; no model runs. Variants,
each in its own process with the same 2 CPUs:

- ``dataloader``: torchvision ``ImageFolder`` + ``Resize, ToTensor, Normalize(0.5, 0.5)``
  and ``DataLoader(num_workers=cpus, persistent_workers=True)`` (the usual recipe): it
  decodes every PNG on every pass;
- ``raykube``: what a training run does (``raykube.data``): the folder is decoded once
  into the uint8 cache (``build_image_cache``; a local folder this size in-process, on a
  few threads, before Ray starts), then each pass indexes the cached array in shuffled
  batches and normalises them (``normalise_batch``), as the workers do;
- ``raykube-ray-data``: the same, with the decode forced onto Ray Data (the path of
  folders over ``IN_PROCESS_MAX_FILES`` files and of ``s3://`` folders; Ray's start
  reported apart, its worker processes' start included);
- ``dataloader-cached``: a ``DataLoader`` over a ``TensorDataset`` of the same cached
  uint8 array (shuffle, default collate, normalised per batch as above): the usual way
  to feed an in-memory array, so the warm comparison is over the same bytes.

Two figures. **Cold**: the first pass, from the moment the dataset is created (the
DataLoader's worker start, raykube's decode and cache write included; Ray's own start,
for the Ray Data variant, is reported separately), both decoding every PNG. **Warm**: the median of the
later passes; raykube's against ``dataloader-cached`` (the decoding DataLoader's warm
figure is reported beside it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from raykube.bench.common import (
    ChildError,
    Goal,
    Report,
    child_env,
    child_main,
    machine_info,
    median,
    run_child,
)

MODULE = "raykube.bench.ingest"
FULL = {"images": 20000, "passes": 4, "batch_size": 128, "size": 32, "cpus": 2}
QUICK = {"images": 3000, "passes": 3, "batch_size": 128, "size": 32, "cpus": 2}
COLD_GOAL = Goal(">=", 0.5)
WARM_GOAL = Goal(">=", 1.0)


def make_image_folder(root: str | os.PathLike[str], n: int, size: int = 32,
                      classes: int = 10, seed: int = 0) -> Path:
    """Write ``n`` random RGB PNGs into ``root/<class>/``; reuse the folder when complete."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    marker = root / f".complete-{n}-{size}-{classes}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # Smooth-ish content so PNG compression is realistic (not pure noise).
        base = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        img = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))
        img = (img + rng.integers(0, 16, img.shape, dtype=np.uint8)).astype(np.uint8)
        Image.fromarray(img).save(root / f"class{i % classes}" / f"{i:06d}.png")
    marker.touch()
    return root


def _consume(batches: Any, key: str | int, started: float) -> tuple[int, float, list[float]]:
    """Iterate, checking every batch is a normalised float32 tensor; count images."""
    import torch

    n, first, marks = 0, float("nan"), []
    for batch in batches:
        x = batch[key]
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.ndim == 4):
            raise TypeError(f"unexpected batch: {type(x)} {getattr(x, 'dtype', None)}")
        n += x.shape[0]
        now = time.perf_counter()
        if n == x.shape[0]:
            first = now - started
        marks.append(now)
    return n, first, marks


def _pass(n: int, t0: float, first: float, marks: list[float]) -> dict[str, float]:
    end = marks[-1] if marks else time.perf_counter()
    steady = (n - n / max(1, len(marks))) / (end - marks[0]) if len(marks) > 1 else float("nan")
    return {"images": n, "seconds": end - t0, "first_batch_s": first,
            "steady_images_per_s": steady}


def _dataloader_child(p: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    tf = transforms.Compose([
        transforms.Resize((p["size"], p["size"])),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    passes = []
    # Persistent workers: the fastest usual setup (no worker start per pass after the first).
    t0 = time.perf_counter()
    ds = datasets.ImageFolder(p["root"], transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=p["batch_size"], shuffle=True,
                                         num_workers=p["cpus"], persistent_workers=True)
    for _ in range(p["passes"]):
        n, first, marks = _consume(loader, 0, t0)
        passes.append(_pass(n, t0, first, marks))
        t0 = time.perf_counter()
    return {"passes": passes}


def _cached_batches(x: Any, y: Any, batch: int, seed: int) -> Any:
    """A training worker's pass over the uint8 cache (raykube.train, one worker)."""
    from raykube.data import normalise_batch
    from raykube.train import _in_memory_batches

    for xb, yb in _in_memory_batches(x, y, batch, 0, 1, 0, seed):
        yield normalise_batch(xb), yb


def _raykube_child(p: dict[str, Any]) -> dict[str, Any]:
    """What a training run does: build the uint8 cache (``raykube.data.prepare``, before
    Ray starts: a local folder this size decodes in-process), then workers' passes.
    ``p["ray_data"]``: force the Ray Data decode (the path of folders over
    ``IN_PROCESS_MAX_FILES`` files and of ``s3://`` folders), Ray started first."""
    from raykube import data as rk_data
    from raykube.spec import parse_spec

    spec = parse_spec({
        "model": {"name": "cifar-cnn"},
        # A tiny validation fraction: the train split is (nearly) every file, like the
        # DataLoader's (raykube splits image folders by a stable hash of the path).
        "data": {"dataset": "image-folder", "uri": p["root"], "imageSize": p["size"],
                 "validationFraction": 0.0001},
    }).spec
    ray_start = None
    if p.get("ray_data"):
        t_ray = time.perf_counter()
        import ray

        from raykube.local import apply_ray_env

        os.environ[rk_data.IN_PROCESS_MAX_FILES_ENV] = "0"  # always Ray Data
        apply_ray_env(prestart_workers=True)  # what `raykube run` starts Ray with then
        ray.init(address="local", num_cpus=p["cpus"], include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
        ray_start = time.perf_counter() - t_ray
        ray.data.DataContext.get_current().enable_progress_bars = False
    # What the DataLoader child has imported before its clock starts (torch, and PIL
    # through torchvision), and pyarrow's filesystem, which every raykube driver has.
    import pyarrow.fs  # noqa: F401
    import torch  # noqa: F401
    from PIL import Image  # noqa: F401

    passes = []
    try:
        t0 = time.perf_counter()
        cache = rk_data.build_image_cache(spec, p["storage"])
        arrays = rk_data.load_image_cache(cache, spec)
        decoded = time.perf_counter() - t0
        for i in range(p["passes"]):
            n, first, marks = _consume(
                _cached_batches(arrays.train_x, arrays.train_y, p["batch_size"], i), 0, t0)
            passes.append(_pass(n, t0, first, marks))
            t0 = time.perf_counter()
    finally:
        if ray_start is not None:
            import ray

            ray.shutdown()
    return {"passes": passes, "ray_start_s": ray_start, "decode_s": decoded, "cache": cache}


def _cached_dataloader_child(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from raykube.data import normalise_batch

    torch.set_num_threads(1)
    x = torch.from_numpy(np.load(f"{p['cache']}/x.npy"))
    y = torch.from_numpy(np.load(f"{p['cache']}/y.npy"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=p["batch_size"], shuffle=True)
    passes = []
    for _ in range(p["passes"]):
        t0 = time.perf_counter()
        n, first, marks = _consume(((normalise_batch(xb), yb) for xb, yb in loader), 0, t0)
        passes.append(_pass(n, t0, first, marks))
    return {"passes": passes}


def _metrics(out: dict[str, Any]) -> dict[str, Any]:
    passes = out["passes"]
    warm = passes[1:] if len(passes) > 1 else passes
    return {
        "cold_images_per_s": passes[0]["images"] / passes[0]["seconds"],
        "warm_images_per_s": median(q["images"] / q["seconds"] for q in warm),
        "time_to_first_batch_s": passes[0]["first_batch_s"],
        "images_per_pass": passes[0]["images"],
        "decode_s": out.get("decode_s"),
        "ray_start_s": out.get("ray_start_s"),
    }


def run_suite(*, quick: bool = False, params: dict[str, Any] | None = None,
              timeout: float = 900, work_dir: str | None = None) -> Report:
    p = {**(QUICK if quick else FULL), **(params or {})}
    report = Report("ingest", quick=quick, params=dict(p), machine=machine_info())
    report.columns = {
        "cold_images_per_s": ("cold images/s (1st pass)", ".0f"),
        "warm_images_per_s": ("warm images/s", ".0f"),
        "time_to_first_batch_s": ("first batch (s)", ".2f"),
        "images_per_pass": ("images/pass", "d"),
        "decode_s": ("decode + cache (s)", ".2f"),
        "ray_start_s": ("Ray start (s)", ".1f"),
    }
    report.primary = "warm_images_per_s"
    work = Path(work_dir or tempfile.gettempdir()) / "raykube-bench-ingest"
    root = make_image_folder(work / f"images-{p['images']}", p["images"], p["size"])
    storage = tempfile.mkdtemp(prefix="raykube-bench-ingest-storage-")
    p.update(root=str(root), storage=storage)
    case = f"png-{p['size']}px"
    env = child_env(OMP_NUM_THREADS="1")
    try:
        for variant, mode, extra in (
                ("dataloader", "dataloader", {}),
                ("raykube", "raykube", {"storage": storage + "/in-process"}),
                ("raykube-ray-data", "raykube", {"storage": storage + "/ray-data",
                                                 "ray_data": True}),
                ("dataloader-cached", "dataloader-cached", {})):
            try:
                out = run_child(MODULE, mode, {**p, **extra}, timeout=timeout, env=env)
            except ChildError as exc:
                report.error(case, variant, str(exc).strip().splitlines()[0])
                report.notes.append(f"{variant} failure detail: {str(exc)[-1500:]}")
                continue
            if "cache" in out and "cache" not in p:
                p["cache"] = out["cache"]
            report.add(case, variant, _metrics(out), passes=out["passes"])
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    report.add_ratio(case, "cold_images_per_s", "raykube", "dataloader", goal=COLD_GOAL)
    report.add_ratio(case, "warm_images_per_s", "raykube", "dataloader-cached", goal=WARM_GOAL)
    report.add_ratio(case, "warm_images_per_s", "raykube", "dataloader")
    report.add_ratio(case, "cold_images_per_s", "raykube-ray-data", "dataloader")
    report.notes.append(
        f"{p['images']} PNG files ({p['size']}x{p['size']} RGB, 10 class folders), batch "
        f"{p['batch_size']}, {p['passes']} passes (cold: the first; warm: median of the "
        f"others), {p['cpus']} CPUs for each: DataLoader num_workers={p['cpus']}, Ray "
        f"num_cpus={p['cpus']}. Decode + resize + normalise to float32, no model.")
    return report


if __name__ == "__main__":
    raise SystemExit(child_main({"dataloader": _dataloader_child, "raykube": _raykube_child,
                                 "dataloader-cached": _cached_dataloader_child}))
