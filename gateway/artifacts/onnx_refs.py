"""Which files an ONNX model asks to read: its tensors' external data references.

A tensor may keep its bytes outside `model.onnx` (`data_location: EXTERNAL`, with a
`location` relative to the model's directory). ONNX Runtime, given the model as bytes,
resolves such a location against the working directory; ONNX Runtime also knows a location
tag that points into process memory. Either way a model could read what it should not and
hand it back through inference. The sha256 in the manifest covers `model.onnx` only, so
external data is refused unless a caller vouches for each file by its hash.

The serving process does not depend on the `onnx` package, so this reads the protobuf
wire format directly: only the messages that can hold a tensor are walked (graphs, nodes,
attributes, functions, sparse tensors, training graphs); tensor payloads are skipped by
their length, so a large model costs a walk over its message headers, not its bytes.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from pathlib import Path

from gateway.protowire import WireError, read_varint

MAX_DEPTH = 64  # nested subgraphs; deeper is refused as malformed rather than recursed into

# message kind -> {field number: kind of the embedded message}
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _FUNCTION: {7: _NODE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _ENTRY},
    _ENTRY: {},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1


class ExternalDataError(ValueError):
    """The model references data outside itself that nobody vouched for, or is malformed."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    try:
        return read_varint(data, pos, end)
    except WireError:
        raise ExternalDataError("malformed ONNX protobuf (a truncated number)") from None


def _walk(data: bytes, pos: int, end: int, kind: int, depth: int, found: list[str]) -> dict[str, str]:
    """Append to `found` the location of every external tensor inside this message; an
    external_data entry returns itself as {key: value}."""
    if depth > MAX_DEPTH:
        raise ExternalDataError(f"ONNX model nested deeper than {MAX_DEPTH} levels")
    children = _CHILDREN[kind]
    external = False
    entries: dict[str, str] = {}
    strings: dict[int, str] = {}
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            external |= kind == _TENSOR and field == _TENSOR_DATA_LOCATION and value == _EXTERNAL
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos, end)
            if pos + size > end:
                raise ExternalDataError("malformed ONNX protobuf (a field overruns its message)")
            if kind == _ENTRY:
                strings[field] = data[pos : pos + size].decode("utf-8", errors="replace")
            elif field in children:
                entry = _walk(data, pos, pos + size, children[field], depth + 1, found)
                if kind == _TENSOR:
                    entries.update(entry)
                    external = True  # any external_data entry at all: treat as external
            pos += size
        else:
            raise ExternalDataError(f"malformed ONNX protobuf (wire type {wire})")
    if pos != end:
        raise ExternalDataError("malformed ONNX protobuf (a field overruns its message)")
    if kind == _TENSOR and external:
        found.append(entries.get("location", ""))
    if kind == _ENTRY:
        return {strings.get(1, ""): strings.get(2, "")}
    return {}


def external_data(model: bytes) -> list[str]:
    """The location of every tensor in `model` that keeps its data outside the model
    (empty: the model is self-contained)."""
    found: list[str] = []
    _walk(model, 0, len(model), _MODEL, 0, found)
    return found


def check_external_data(
    model: bytes, version_dir: Path | None = None, hashes: Mapping[str, str] | None = None
) -> None:
    """Refuse a model that reads files outside itself, unless every file it reads lies inside
    `version_dir` and has the sha256 `hashes` records for it (by its relative path).

    `gateway convert` calls this with no directory: a converted model must be self-contained.
    """
    references = external_data(model)
    if not references:
        return
    hashes = hashes or {}
    for entry in references:
        location = entry[:200]
        normal = posixpath.normpath(entry) if entry else ""
        inside = bool(normal) and not normal.startswith(("/", "../")) and normal not in ("..", ".")
        if version_dir is None or not inside or normal not in hashes:
            raise ExternalDataError(
                f"the model reads external data {location!r}; only self-contained models are served "
                "(external data must lie inside the version directory and be listed with its sha256)"
            )
        path = version_dir / normal
        if not path.resolve().is_relative_to(version_dir.resolve()) or not path.is_file():
            raise ExternalDataError(f"external data {location!r} is not a file inside the version directory")
        if hashlib.sha256(path.read_bytes()).hexdigest() != hashes[normal]:
            raise ExternalDataError(f"external data {location!r} does not match its sha256")
