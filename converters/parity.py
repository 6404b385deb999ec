"""Prove the ONNX model predicts what the original does, before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import orjson

from converters.errors import ConversionError
from converters.schema import is_nan
from converters.types import Converted, Predictions
from gateway.artifacts.manifest import Manifest, Parity

if TYPE_CHECKING:
    import pandas as pd

WORST_ROWS = 5


PARITY_CHUNK = 1024


def _records(table: pd.DataFrame) -> list[dict[str, object]]:
    """Sample rows as a client sends them: plain JSON values, missing ones null."""
    import pandas as pd

    columns = []
    for name in table.columns:
        values = table[name].tolist()
        infinite = [i for i, v in enumerate(values) if isinstance(v, float) and abs(v) == float("inf")]
        if infinite:
            raise ConversionError(
                f"parity: sample row {table.index[infinite[0]]}, column {name!r}, is infinite, which "
                "no JSON client can send: clean the sample"
            )
        columns.append([None if v is None or v is pd.NA or is_nan(v) else v for v in values])
    names = [str(c) for c in table.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _as_predictions(manifest: Manifest, served: list[dict[str, Any]]) -> Predictions:
    if manifest.output("probabilities") is not None:
        return Predictions(
            label=np.asarray([p["label"] for p in served], dtype=object),
            probabilities=np.asarray([list(p["probabilities"].values()) for p in served], dtype=np.float64),
        )
    if manifest.output("label") is not None and manifest.output("value") is None:
        return Predictions(label=np.asarray([p["label"] for p in served], dtype=object))
    if manifest.output("label") is not None:  # an anomaly detector: label and score
        return Predictions(
            label=np.asarray([p["label"] for p in served], dtype=object),
            value=np.asarray([p["score"] for p in served], dtype=np.float64).reshape(len(served), 1),
        )
    values = np.asarray([p["value"] for p in served], dtype=np.float64)
    return Predictions(value=values.reshape(len(served), -1))


def serve_predict(model_bytes: bytes, manifest: Manifest, table: pd.DataFrame) -> Predictions:
    """The sample rows through what `gateway serve` runs: JSON records into the manifest's
    record codec, the runtime wrapper, and the records encoder."""
    from gateway.errors import GatewayError
    from gateway.records.codec import RecordCodec
    from gateway.runtime import OrtRuntime, check_rows

    runtime = OrtRuntime(model_bytes, provider="cpu", name=manifest.name)
    codec = RecordCodec(manifest, max_rows=PARITY_CHUNK)
    served: list[dict[str, Any]] = []
    for start in range(0, len(table), PARITY_CHUNK):
        records = _records(table.iloc[start : start + PARITY_CHUNK])
        body = msgspec.json.encode({"instances": records})
        try:
            feeds, _ = codec.to_feeds(*codec.decode(body))
        except GatewayError as exc:
            detail = exc.detail[0] if exc.detail else {}
            loc = detail.get("loc", [])
            row = start + loc[2] if len(loc) > 2 and isinstance(loc[2], int) else None
            raise ConversionError(
                f"parity: the records API refuses sample row {row}: {exc.message}"
                + (f" ({detail.get('msg')} at {loc[3:] or loc})" if detail else "")
                + "; clean the sample or the model's schema"
            ) from None
        _same_through_v2(manifest, feeds, len(served))
        _same_as_columns(codec, records, feeds, len(served))
        outputs = runtime.run(feeds)
        try:
            check_rows(feeds, outputs)
        except GatewayError as exc:
            raise ConversionError(
                f"parity: the ONNX graph's {exc.message}: `gateway serve` answers by rows and "
                "would refuse every request"
            ) from None
        served += orjson.loads(codec.encode(outputs))
    return _as_predictions(manifest, served)


def _same_as_columns(
    codec: Any, records: list[dict[str, object]], feeds: dict[str, np.ndarray], first_row: int
) -> None:
    """The same rows sent as columns (`{"inputs": {name: [...]}}`) make the same tensors."""
    if "inputs" in records[0]:  # a feature named "inputs": such a body is one record
        return
    from gateway.errors import GatewayError

    body = msgspec.json.encode({"inputs": {name: [r[name] for r in records] for name in records[0]}})
    try:
        got, _ = codec.to_feeds(*codec.decode(body))
    except GatewayError as exc:
        raise ConversionError(
            f"parity: the records API refuses sample rows {first_row}.. sent as columns "
            f"({exc.message}) but takes them as records; this is a gateway bug, please report it"
        ) from None
    for name, want in feeds.items():
        if not _same_tensor(got[name], want):
            raise ConversionError(
                f"parity: the records API decodes input {name!r} of sample rows {first_row}.. "
                "differently as columns than as records; this is a gateway bug, please report it"
            )


def _same_tensor(got: np.ndarray, want: np.ndarray) -> bool:
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    return np.array_equal(got, want, equal_nan=True) if want.dtype.kind == "f" else bool((got == want).all())


def _same_through_v2(manifest: Manifest, feeds: dict[str, np.ndarray], first_row: int) -> None:
    """The tensors the records API built, sent as a V2 binary request, decode to the same
    tensors: a V2 client gets what a records client gets, missing values included."""
    from gateway.v2.decode import decode_infer
    from gateway.v2.encode import tensor_bytes
    from gateway.v2.parse import parse_request

    inputs, tail = [], b""
    for spec in manifest.inputs:
        raw = tensor_bytes(feeds[spec.name], spec.datatype)
        inputs.append({"name": spec.name, "shape": list(feeds[spec.name].shape), "datatype": spec.datatype,
                       "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        tail += raw
    header = msgspec.json.encode({"inputs": inputs})
    rows = next(iter(feeds.values())).shape[0]
    request, rest = parse_request(header + tail, str(len(header)))
    decoded = decode_infer(manifest, request, rest, max_rows=rows).feeds
    for name, want in feeds.items():
        if not _same_tensor(decoded[name], want):
            raise ConversionError(
                f"parity: the V2 API decodes input {name!r} of sample rows {first_row}.. differently "
                "from the records API; this is a gateway bug, please report it"
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
    # Served first: a row the records API refuses is the user's problem to see, by row.
    got = serve_predict(model_bytes, manifest, table)
    original = converted.predict(table)
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
