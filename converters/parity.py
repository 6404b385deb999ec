"""Prove the ONNX model predicts what the original does, before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from converters.errors import ConversionError
from converters.types import Converted, Predictions
from gateway.manifest import Manifest, Parity
from gateway.tabular import feeds_from_columns

if TYPE_CHECKING:
    import pandas as pd

WORST_ROWS = 5


def onnx_predict(model_bytes: bytes, manifest: Manifest, table: pd.DataFrame) -> Predictions:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    columns = {f.name: table[f.name].to_numpy() for f in manifest.features}
    feeds = (
        feeds_from_columns(manifest, columns)
        if manifest.features
        else {manifest.inputs[0].name: table.to_numpy(dtype=np.float32)}
    )
    names = [o.name for o in manifest.outputs]
    by_name = dict(zip(names, session.run(names, feeds), strict=True))
    roles = {o.role: by_name[o.name] for o in manifest.outputs if o.role}
    return Predictions(
        label=roles.get("label"), probabilities=roles.get("probabilities"), value=roles.get("value")
    )


def _as_2d(a: np.ndarray, rows: int) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(rows, -1)


def _worst(diff: np.ndarray, expected: np.ndarray, got: np.ndarray) -> str:
    per_row = diff.max(axis=1)
    order = np.argsort(-per_row)[:WORST_ROWS]
    return "; ".join(
        f"row {i}: original {np.round(expected[i], 6).tolist()} onnx {np.round(got[i], 6).tolist()}"
        for i in order
    )


def _compare(name: str, expected: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> float:
    rows = expected.shape[0]
    e, g = _as_2d(expected, rows), _as_2d(got, rows)
    if e.shape != g.shape:
        raise ConversionError(f"parity: {name} shapes differ: original {e.shape}, onnx {g.shape}")
    diff = np.abs(e - g)
    bad = diff > atol + rtol * np.abs(e)
    if bad.any():
        raise ConversionError(
            f"parity failed: {int(bad.any(axis=1).sum())} of {rows} rows differ in {name} by "
            f"more than {atol} (+{rtol} relative), max {float(diff.max()):.3g}. Worst rows: "
            + _worst(diff, e, g)
        )
    return float(diff.max()) if diff.size else 0.0


def _label_agreement(
    expected_labels: np.ndarray,
    got_labels: np.ndarray,
    probabilities: np.ndarray | None,
    atol: float,
) -> float:
    expected = np.asarray(expected_labels).ravel()
    got = np.asarray(got_labels).ravel()
    agree = expected.astype(str) == got.astype(str)
    if not agree.all() and probabilities is not None:
        # A row whose top two probabilities tie within tolerance may go either way in
        # float32; that is rounding, not a wrong model.
        top2 = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)[:, -2:]
        agree |= (top2[:, 1] - top2[:, 0]) <= 2 * atol
    if not agree.all():
        rows = np.flatnonzero(~agree)[:WORST_ROWS]
        raise ConversionError(
            f"parity failed: labels disagree on {int((~agree).sum())} of {agree.size} rows; "
            + "; ".join(f"row {i}: original {expected[i]!r} onnx {got[i]!r}" for i in rows)
        )
    return float((expected.astype(str) == got.astype(str)).mean())


def check_parity(
    converted: Converted,
    manifest: Manifest,
    model_bytes: bytes,
    table: pd.DataFrame,
    atol: float,
    rtol: float,
    synthesised: bool,
) -> tuple[Parity, Predictions]:
    original = converted.predict(table)
    got = onnx_predict(model_bytes, manifest, table)
    max_diff = 0.0
    agreement = None
    if original.label is not None and got.label is not None:
        agreement = _label_agreement(original.label, got.label, original.probabilities, atol)
    for name in ("probabilities", "value"):
        e, g = getattr(original, name), getattr(got, name)
        if e is not None and g is not None:
            max_diff = max(max_diff, _compare(name, e, g, atol, rtol))
        elif e is not None:
            raise ConversionError(f"parity: the ONNX model has no {name} output")
    parity = Parity(
        rows=len(table),
        tolerance=atol,
        max_abs_diff=max_diff,
        label_agreement=agreement,
        sample="synthesised" if synthesised else "given",
    )
    return parity, original
