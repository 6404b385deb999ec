"""The records API's rules for numbers, shared with offline scoring (gateway.scoring):
finite in the type the graph reads, whole where the feature is an integer, and inside the
trained range under the reject or clip policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from gateway.artifacts.manifest import Feature, Manifest, RangePolicy
from gateway.artifacts.tabular import (
    all_finite,
    non_finite_reason,
)
from gateway.settings import RangePolicyOverride


def _policy(feature: Feature, override: RangePolicyOverride) -> RangePolicy:
    return feature.policy if override == "manifest" else override


def numeric_dtype(manifest: Manifest) -> np.dtype[Any]:
    """Numbers are checked in the narrowest float type the graph reads them as, so a value
    beyond float32's range is refused rather than reaching the model as infinity."""
    numeric_inputs = {s.datatype for s in manifest.inputs if s.datatype in ("FP32", "FP64")}
    return np.dtype(np.float32 if "FP32" in numeric_inputs else np.float64)


@dataclass(frozen=True)
class RangeCheck:
    column: int  # in the numeric matrix
    name: str
    low: float
    high: float
    policy: RangePolicy


@dataclass(frozen=True)
class Violation:
    """The rows of one numeric column that break one rule, and why for a given row."""

    title: str
    column: int
    name: str
    rows: np.ndarray  # bool, one per row
    reason: Callable[[int], str]


def _same(reason: str, _row: int) -> str:
    return reason


def _fractional(values: np.ndarray, row: int) -> str:
    return f"Expected `int`, got {values[row]}: an integer feature takes whole numbers (700 or 700.0)"


def _outside(values: np.ndarray, check: RangeCheck, row: int) -> str:
    return f"{values[row]} is outside the trained range [{check.low}, {check.high}]"


class NumericChecks:
    """The rules for numbers, once: finite in the type the graph reads (NaN only where the
    model imputes, null's stand-in), and the trained range under the reject or clip policy.
    The records API answers the first violation; offline scoring rejects each row for its
    first one (gateway.scoring)."""

    def __init__(
        self, features: Sequence[Feature], dtype: np.dtype[Any], policy_override: RangePolicyOverride
    ) -> None:
        self.dtype = dtype
        self._names = [f.name for f in features]
        self._nullable = np.array([f.nullable for f in features], dtype=bool)
        self._integers = [column for column, f in enumerate(features) if f.dtype == "int64"]
        # A slice where the integer columns are adjacent (no copy), else an index array.
        ints = self._integers
        adjacent = bool(ints) and ints == list(range(ints[0], ints[-1] + 1))
        self._int_columns: slice | np.ndarray = slice(ints[0], ints[-1] + 1) if adjacent else np.array(ints)
        self._ranges = [
            RangeCheck(column, f.name, f.min, f.max, _policy(f, policy_override))
            for column, f in enumerate(features)
            if f.min is not None and f.max is not None and _policy(f, policy_override) != "allow"
        ]  # "allow" only counts, per batch, in telemetry
        # Read on every request that carries tensors: settled once here.
        self.ranges = bool(self._ranges)  # any trained range enforced (reject or clip)
        self.clips = any(check.policy == "clip" for check in self._ranges)

    def apply(self, matrix: np.ndarray) -> list[Violation]:
        """Check `matrix` (rows x these features, in `dtype`, null as NaN); clip it in place
        where the policy clips. Violations come per column, non-finite ones first."""
        found: list[Violation] = []
        if matrix.size == 0:
            return found
        if not all_finite(matrix):
            bad = ~np.isfinite(matrix) & ~(np.isnan(matrix) & self._nullable)
            reason = non_finite_reason(matrix.dtype)
            found += [
                Violation("non-finite number", int(c), self._names[c], bad[:, c], partial(_same, reason))
                for c in np.flatnonzero(bad.any(axis=0))
            ]
        if self._integers:
            # One comparison for all integer columns (NaN and infinity compare unequal to
            # their floor and are set aside after; no np.errstate: it costs ~20 µs a call).
            block = matrix[:, self._int_columns]
            fractional = block != np.floor(block)
            if np.any(fractional):
                fractional &= np.isfinite(block)
                for j in np.flatnonzero(fractional.any(axis=0)).tolist():
                    c = self._integers[j]
                    found.append(Violation("not a whole number", c, self._names[c], fractional[:, j],
                                           partial(_fractional, matrix[:, c])))  # fmt: skip
        for check in self._ranges:
            values = matrix[:, check.column]
            # Python floats compare in the column's own dtype (NEP 50), so a float32 value
            # at a trained bound is not rounded past it.
            if check.policy == "clip":
                matrix[:, check.column] = np.clip(values, check.low, check.high)
                continue
            outside = (values < check.low) | (values > check.high)
            if outside.any():
                found.append(Violation(
                    "value out of range", check.column, check.name, outside, partial(_outside, values, check)
                ))  # fmt: skip
        return found
