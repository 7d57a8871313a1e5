"""raykube.ray_data_batches: an interrupted iteration is stopped and its threads awaited
before the exception goes on. The dataset here stands in for Ray Data's (whose iterator
starts daemon threads it never joins); the real one is exercised by
tests/integration/test_predict.py::test_sigterm_ends_predict_as_ctrl_c_does."""

from __future__ import annotations

import threading
import time

import pytest

from raykube.ray_data_batches import batches


class FakeDataset:
    """iter_batches starts a worker thread, like Ray Data's prefetch threads, and one
    parked thread named as Ray Data's block prefetcher; closing the iterator tells the
    worker to stop, which it does only after a while (as a thread in ray.get returns once
    the executor's tasks are gone)."""

    def __init__(self, stop_takes_s: float = 0.3):
        self.stop = threading.Event()
        self.parked = threading.Event()
        self.stop_takes_s = stop_takes_s
        self.kwargs: dict = {}
        self.worker: threading.Thread | None = None

    def _work(self) -> None:
        self.stop.wait()
        time.sleep(self.stop_takes_s)

    def iter_batches(self, **kwargs):
        self.kwargs = kwargs
        self.worker = threading.Thread(target=self._work, daemon=True, name="map_tp_worker")
        self.worker.start()
        threading.Thread(target=self.parked.wait, daemon=True, name="Prefetcher").start()

        def gen():
            try:
                for i in range(1000):
                    yield {"i": i}
            finally:
                self.stop.set()
        return gen()


def test_an_interrupt_waits_for_the_iterations_threads():
    ds = FakeDataset()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), batches(ds, batch_size=None) as it:
        for batch in it:
            if batch["i"] == 3:
                raise KeyboardInterrupt
    assert ds.kwargs == {"batch_size": None}
    assert ds.stop.is_set(), "the iterator was not closed"
    assert not ds.worker.is_alive(), "the exception went on while the thread still ran"
    assert time.monotonic() - t0 < 5, "the parked prefetcher was awaited"
    ds.parked.set()


def test_a_worker_that_does_not_stop_is_awaited_only_so_long():
    ds = FakeDataset(stop_takes_s=30)
    t0 = time.monotonic()
    with pytest.raises(OSError), batches(ds, wait_s=0.5) as it:
        next(iter(it))
        raise OSError("disk full")
    assert 0.4 < time.monotonic() - t0 < 5
    assert ds.worker.is_alive()


def test_a_finished_iteration_awaits_nothing():
    ds = FakeDataset(stop_takes_s=30)
    with batches(ds) as it:
        assert sum(1 for _ in it) == 1000
    ds.parked.set()
