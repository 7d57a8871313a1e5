"""The ``ingest`` suite: Ray Data (raykube's image-folder path) vs torch DataLoader.

Both read the same generated folder of PNG files (``<class>/<n>.png``, the CIFAR-10
shape), decode, resize and normalise them to float32 CHW tensors and hand out batches;
no model runs. Variants, each in its own process with the same 2 cores:

- ``dataloader``: torchvision ``ImageFolder`` + ``Resize, ToTensor, Normalize(0.5, 0.5)``
  and ``DataLoader(num_workers=cpus)`` (the usual PyTorch recipe);
- ``raykube``: ``raykube.data.as_ray_dataset`` (Ray Data ``read_images`` + the training
  normalisation) and ``iter_torch_batches``, on a local Ray with ``cpus`` CPUs.

Figures: images/s per pass (median over passes after the first), and time to first batch
from the moment the dataset object is created (Ray's own start is reported separately).
A pass's time runs from its start (dataset/iterator creation) to its last batch; the
DataLoader keeps its worker processes between passes (``persistent_workers``).
"""

from __future__ import annotations

import os
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
FULL = {"images": 20000, "passes": 3, "batch_size": 128, "size": 32, "cpus": 2}
QUICK = {"images": 3000, "passes": 2, "batch_size": 128, "size": 32, "cpus": 2}
GOAL = Goal(">=", 0.9)


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


def _raykube_child(p: dict[str, Any]) -> dict[str, Any]:
    t_ray = time.perf_counter()
    import ray

    from raykube.data import as_ray_dataset
    from raykube.spec import parse_spec

    ray.init(address="local", num_cpus=p["cpus"], include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    ray_start = time.perf_counter() - t_ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = parse_spec({
        "model": {"name": "cifar-cnn"},
        # A tiny validation fraction: the train split is (nearly) every file, like the
        # DataLoader's (raykube splits image folders by a stable hash of the path).
        "data": {"dataset": "image-folder", "uri": p["root"], "imageSize": p["size"],
                 "validationFraction": 0.0001},
    }).spec
    passes = []
    try:
        for _ in range(p["passes"]):
            t0 = time.perf_counter()
            ds = as_ray_dataset(spec, "train", p["cache_dir"])
            batches = ds.iter_torch_batches(batch_size=p["batch_size"], local_shuffle_buffer_size=None)
            n, first, marks = _consume(batches, "image", t0)
            passes.append(_pass(n, t0, first, marks))
    finally:
        ray.shutdown()
    return {"passes": passes, "ray_start_s": ray_start}


def _metrics(out: dict[str, Any]) -> dict[str, Any]:
    passes = out["passes"]
    measured = passes[1:] if len(passes) > 1 else passes
    rates = [q["images"] / q["seconds"] for q in measured]
    return {
        "images_per_s": median(rates),
        "steady_images_per_s": median(q["steady_images_per_s"] for q in measured),
        "time_to_first_batch_s": passes[0]["first_batch_s"],
        "images_per_pass": passes[0]["images"],
        "ray_start_s": out.get("ray_start_s"),
    }


def run_suite(*, quick: bool = False, params: dict[str, Any] | None = None,
              timeout: float = 900, work_dir: str | None = None) -> Report:
    p = {**(QUICK if quick else FULL), **(params or {})}
    report = Report("ingest", quick=quick, params=dict(p), machine=machine_info())
    report.columns = {
        "images_per_s": ("images/s", ".0f"),
        "steady_images_per_s": ("images/s after 1st batch", ".0f"),
        "time_to_first_batch_s": ("first batch (s)", ".2f"),
        "images_per_pass": ("images/pass", "d"),
        "ray_start_s": ("Ray start (s)", ".1f"),
    }
    report.primary = "images_per_s"
    work = Path(work_dir or tempfile.gettempdir()) / "raykube-bench-ingest"
    root = make_image_folder(work / f"images-{p['images']}", p["images"], p["size"])
    p.update(root=str(root), cache_dir=str(work / "cache"))
    case = f"png-{p['size']}px"
    env = child_env(OMP_NUM_THREADS="1")
    for variant, mode in (("dataloader", "dataloader"), ("raykube", "raykube")):
        try:
            out = run_child(MODULE, mode, p, timeout=timeout, env=env)
        except ChildError as exc:
            report.error(case, variant, str(exc).strip().splitlines()[0])
            report.notes.append(f"{variant} failure detail: {str(exc)[-1500:]}")
            continue
        report.add(case, variant, _metrics(out), passes=out["passes"])
    report.add_ratio(case, "images_per_s", "raykube", "dataloader", goal=GOAL)
    report.add_ratio(case, "time_to_first_batch_s", "raykube", "dataloader")
    report.notes.append(
        f"{p['images']} PNG files ({p['size']}x{p['size']} RGB, 10 class folders), batch "
        f"{p['batch_size']}, {p['passes']} passes (images/s: median of the passes after the "
        f"first), {p['cpus']} CPUs for each: DataLoader num_workers={p['cpus']}, Ray "
        f"num_cpus={p['cpus']}. Decode + resize + normalise to float32, no model.")
    return report


if __name__ == "__main__":
    raise SystemExit(child_main({"dataloader": _dataloader_child, "raykube": _raykube_child}))
