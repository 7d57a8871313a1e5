"""raykube.allocator: the training thread's malloc arena keeps its pages.

Each check runs in a fresh interpreter (glibc's thresholds are per process and change
for good once set) and watches glibc's own accounting (``mallinfo2``) while a *thread*
allocates and frees 8 MiB, the way Ray Train's training thread does with torch's buffers.
The same probe without ``keep_freed_memory`` is the control: glibc's defaults give that
block its own ``mmap`` and hand the memory back on ``free``, which the next step then
faults in again.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raykube.allocator import user_configured

PROBE = r"""
import ctypes, json, sys, threading

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = Mallinfo2
SIZE = 8 << 20
out = {}
if sys.argv[1] == "keep":
    from raykube.allocator import keep_freed_memory
    out["set"] = keep_freed_memory()

def step():
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    out["mmapped_while_held"] = libc.mallinfo2().hblkhd
    libc.free(p)
    out["free_kept_after"] = libc.mallinfo2().fordblks

t = threading.Thread(target=step)
t.start()
t.join()
print(json.dumps(out))
"""


def _probe(mode: str, **env: str) -> dict:
    import os

    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={**base, **env})
    return json.loads(out.stdout)


def test_a_threads_freed_buffer_stays_in_its_arena():
    size = 8 << 20
    default = _probe("default")
    # The control: glibc's defaults mmap the block and unmap it on free.
    assert default["mmapped_while_held"] >= size, default
    assert default["free_kept_after"] < size, default

    kept = _probe("keep")
    assert kept["set"] is True
    assert kept["mmapped_while_held"] < size, kept  # from the thread's arena
    assert kept["free_kept_after"] >= size, kept  # still there for the next step


def test_a_users_own_malloc_settings_win():
    kept = _probe("keep", MALLOC_ARENA_MAX="2")
    assert kept["set"] is False
    assert kept["mmapped_while_held"] >= 8 << 20, kept  # glibc's default, untouched


def test_user_configured_names_the_setting():
    assert user_configured({}) is None
    assert user_configured({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_"
    assert user_configured({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}) == "GLIBC_TUNABLES"
    assert user_configured({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) is None
    assert user_configured({"MALLOC_ARENA_MAX": ""}) is None


def test_the_training_loop_sets_it_before_anything_else(monkeypatch):
    """Every Ray Train worker runs ``train_loop_per_worker`` (raykube run, raykube train in
    a RayJob, each Tune trial): the thresholds are set there, before the first tensor."""
    import raykube.allocator
    from raykube.train import train_loop_per_worker

    class Called(Exception):
        pass

    def first():
        raise Called

    monkeypatch.setattr(raykube.allocator, "keep_freed_memory", first)
    with pytest.raises(Called):
        train_loop_per_worker({"spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}})
