"""Population stability index of recent traffic against the manifest's reference bins.

Each batch adds its per-feature bin counts to the current slot of a ring; the window is
the sum of the ring's slots, so old traffic ages out without storing rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gateway.artifacts.manifest import FeatureReference, Manifest
from gateway.artifacts.tabular import all_finite

EPSILON = 1e-4  # keeps empty bins from making the index infinite
MIN_ROWS = 50  # fewer rows than this say nothing about a distribution


def psi(expected: np.ndarray, actual_counts: np.ndarray) -> float:
    actual = actual_counts / max(actual_counts.sum(), 1)
    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class _Feature:
    reference: FeatureReference
    expected: np.ndarray
    ring: np.ndarray  # slots x bins
    edges: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.reference.edges or [], dtype=np.float64)

    def bin_counts(self, column: np.ndarray) -> np.ndarray:
        if self.reference.categories is not None:
            index = {c: i for i, c in enumerate(self.reference.categories)}
            values, counts = np.unique(column.astype(str), return_counts=True)
            out = np.zeros(len(self.expected))
            for v, n in zip(values, counts, strict=True):
                i = index.get(str(v))
                if i is not None:
                    out[i] += n
            return out
        values = np.asarray(column).ravel()
        if not all_finite(values):  # nulls (NaN) where the model imputes are not binned
            values = values[np.isfinite(values)]
        return np.bincount(np.searchsorted(self.edges, values, side="left"), minlength=len(self.expected))


@dataclass
class DriftMonitor:
    manifest: Manifest
    window_seconds: float = 600.0
    slots: int = 10
    _features: dict[str, _Feature] = field(default_factory=dict)
    _slot: int = 0
    _slot_started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        reference = self.manifest.reference
        if reference is None:
            return
        for name, ref in reference.features.items():
            if ref.fractions is None:
                continue
            expected = np.asarray(ref.fractions, dtype=np.float64)
            self._features[name] = _Feature(ref, expected, np.zeros((self.slots, expected.size)))

    @property
    def enabled(self) -> bool:
        return bool(self._features)

    def _rotate(self) -> None:
        now = time.monotonic()
        width = self.window_seconds / self.slots
        while now - self._slot_started >= width:
            self._slot = (self._slot + 1) % self.slots
            for feature in self._features.values():
                feature.ring[self._slot] = 0
            self._slot_started += width
            if now - self._slot_started > self.window_seconds:  # long idle: start afresh
                self._slot_started = now

    def update(self, columns: dict[str, np.ndarray]) -> None:
        self._rotate()
        for name, feature in self._features.items():
            column = columns.get(name)
            if column is not None:
                feature.ring[self._slot] += feature.bin_counts(column)

    def values(self) -> dict[str, float]:
        """PSI per feature over the window, for features with enough rows."""
        self._rotate()
        out = {}
        for name, feature in self._features.items():
            counts = feature.ring.sum(axis=0)
            if counts.sum() >= MIN_ROWS:
                out[name] = psi(feature.expected, counts)
        return out
