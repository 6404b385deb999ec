"""V2 answers: the requested outputs, the classification extension, and the HTTP body
(JSON, or the binary tensor extension); model metadata.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import numpy as np
import orjson

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.tabular import (
    from_bf16,
)
from gateway.errors import TooLarge, Unprocessable
from gateway.types import Arrays
from gateway.v2.messages import (
    BINARY_HEADER,
    MAX_CLASSIFICATION_STRINGS,
    InferRequest,
    OutputTensor,
)
from gateway.v2.reshape import outputs_as_configured


def _wants_binary(request: InferRequest, name: str) -> bool:
    default = bool((request.parameters or {}).get("binary_data_output", False))
    for out in request.outputs or []:
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return default


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    """A tensor in the binary tensor extension's layout (BYTES: 4-byte length, then the bytes)."""
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray) -> Any:
    flat = array.reshape(-1)
    kind = flat.dtype.kind  # a kind's letter, not a dtype comparison: this runs per output
    if kind == "O":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    if kind == "f" and flat.dtype.itemsize == 2:
        return flat.astype(np.float32)
    return flat  # orjson writes numpy arrays natively


def class_counts(manifest: Manifest, request: InferRequest, rows: int = 1) -> dict[str, int]:
    """The classification extension: `classification: k` on a requested output (Triton's
    name on the wire; `class_count`, its name in Triton's clients, too), checked before
    inference so that a bad k, or too many strings to write, costs no model time."""
    counts: dict[str, int] = {}
    datatypes = {o.name: o.datatype for o in manifest.outputs}
    skip = 1 if manifest.batched else 0  # an unbatched model's whole output is one row
    widths = {o.name: math.prod(o.shape[skip:]) if all(d >= 0 for d in o.shape[skip:]) else None
              for o in manifest.outputs}  # fmt: skip
    for i, out in enumerate(request.outputs or []):
        parameters = out.parameters or {}
        key = "classification" if "classification" in parameters else "class_count"
        k = parameters.get(key)
        if k is None:
            continue
        loc = ["body", "outputs", i, "parameters", key]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise Unprocessable(f"{key} must be a positive integer", [{"loc": loc, "msg": f"got {k!r}"}])
        if datatypes.get(out.name) in (None, "BYTES"):
            raise Unprocessable(
                f"output {out.name!r} holds no scores to classify", [{"loc": loc, "msg": "not numeric"}]
            )
        width = widths.get(out.name)  # None: known after inference, checked in _classify
        if width is not None:
            _check_strings(rows, min(k, width))
        counts[out.name] = k
    return counts


def _check_strings(rows: int, k: int) -> None:
    if rows * k > MAX_CLASSIFICATION_STRINGS:
        raise TooLarge(
            f"classification of the top {k} on {rows} rows writes {rows * k} strings; "
            f"the limit is {MAX_CLASSIFICATION_STRINGS}"
        )


def _classify(array: np.ndarray, k: int, labels: list[bool | int | str] | None, batched: bool) -> np.ndarray:
    """Each row's top k as Triton writes them: "score:index:label", or "score:index"
    when the output's width is not its label list's. A model without a batch dimension
    is one row: its whole output is ranked and the answer's shape is [k], as in Triton."""
    scores = array.reshape(array.shape[0] if batched and array.ndim else 1, -1)
    k = min(k, scores.shape[1])
    _check_strings(scores.shape[0], k)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, top, axis=1)
    labels = labels if labels is not None and len(labels) == scores.shape[1] else None
    indices = top.ravel().tolist()
    texts = [f"{v:f}:{i}" for v, i in zip(values.astype(np.float64).ravel().tolist(), indices, strict=True)]
    if labels is not None:
        texts = [f"{t}:{labels[i]}" for t, i in zip(texts, indices, strict=True)]
    out = np.empty(top.size, dtype=object)
    out[:] = texts
    return out.reshape(top.shape if batched else top.shape[1:])


def output_labels(manifest: Manifest, name: str) -> list[bool | int | str] | None:
    """An output's labels: those given for it at convert (`--labels OUTPUT=file`, Triton's
    label_filename), else the converted classifier's classes."""
    given = manifest.labels.get(name)
    return list(given) if given is not None else manifest.classes


def infer_outputs(manifest: Manifest, request: InferRequest, outputs: Arrays) -> list[OutputTensor]:
    """The outputs the request asked for (all, by default), classified where it asked."""
    if manifest.reshaped:
        outputs = outputs_as_configured(manifest, outputs)
    if not request.outputs:  # every output, as the model declares it
        binary = bool((request.parameters or {}).get("binary_data_output", False))
        # tuple.__new__ straight: a NamedTuple's own __new__ is a Python call (~0.2 us) per
        # output. Every field is given (defaults are __new__'s, which this skips).
        return [
            tuple.__new__(OutputTensor, (o.name, o.datatype, outputs[o.name], binary, None))
            for o in manifest.outputs
        ]
    datatypes = {o.name: o.datatype for o in manifest.outputs}
    counts = class_counts(manifest, request)
    tensors: list[OutputTensor] = []
    for name in (o.name for o in request.outputs):
        array, datatype = outputs[name], datatypes[name]
        if name in counts:
            scores = from_bf16(array) if datatype == "BF16" else array
            labels = output_labels(manifest, name)
            array, datatype = _classify(scores, counts[name], labels, manifest.batched), "BYTES"
        tensors.append(OutputTensor(name, datatype, array, _wants_binary(request, name)))
    return tensors


_JSON_HEADERS = [(b"content-type", b"application/json")]
# Datatypes whose arrays _json_data hands to orjson as they are, flattened.
_AS_IS = frozenset(
    {"FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"}
)


@functools.lru_cache(maxsize=256)
def _answer_head(name: str, version: str) -> bytes:
    """`{"model_name":...,"model_version":...,` once per model version, not per answer."""
    return orjson.dumps({"model_name": name, "model_version": version})[:-1] + b","


def encode_infer(
    manifest: Manifest, request: InferRequest, tensors: list[OutputTensor]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The HTTP response body and its headers (the binary extension's when it is used)."""
    entries: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.array.shape}
        if t.parameters:
            entry["parameters"] = t.parameters
        if t.binary:
            raw = tensor_bytes(t.array, t.datatype)
            entry["parameters"] = {**(t.parameters or {}), "binary_data_size": len(raw)}
            binary.append(raw)
        elif t.datatype in _AS_IS:  # numbers orjson writes from the array itself: no call
            entry["data"] = t.array.reshape(-1)
        else:
            entry["data"] = _json_data(from_bf16(t.array) if t.datatype == "BF16" else t.array)
        entries.append(entry)
    tail: dict[str, Any] = {"outputs": entries}
    if request.id is not None:
        tail = {"id": request.id, "outputs": entries}
    header = (
        _answer_head(manifest.name, manifest.version)
        + orjson.dumps(tail, option=orjson.OPT_SERIALIZE_NUMPY)[1:]
    )
    if not binary:
        return header, _JSON_HEADERS
    return header + b"".join(binary), [
        (b"content-type", b"application/octet-stream"),
        (BINARY_HEADER.encode(), str(len(header)).encode()),
    ]


def model_metadata(manifest: Manifest, versions: list[str], provider: str) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in manifest.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in manifest.outputs],
        "parameters": {"provider": provider, "version": manifest.version, "task": manifest.task},
    }
