"""A fake runtime for batcher tests: deterministic outputs, a controllable delay, and a
poison value that makes a batch fail, with every batch it ran recorded."""

from __future__ import annotations

import threading
import time

import numpy as np


class FakeRuntime:
    """Doubles each row of input "x" into output "y"; a row equal to `poison` fails the batch."""

    provider = "fake"

    def __init__(self, delay: float = 0.0, poison: float | None = None) -> None:
        self.delay = delay
        self.poison = poison
        self.batches: list[int] = []
        self.shapes: list[tuple[int, ...]] = []  # the shape of "x" in each batch
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.gate.wait()
            if self.delay:
                time.sleep(self.delay)
            with self._lock:
                self.batches.append(int(x.shape[0]) if x.ndim else 1)
                self.shapes.append(x.shape)
            if self.poison is not None and np.any(x == self.poison):
                raise ValueError("poisoned row in batch")
            return {"y": x * 2.0}
        finally:
            with self._lock:
                self.concurrent -= 1
