"""Open Inference Protocol (KServe V2) messages: the request and answer shapes every
transport (HTTP JSON, msgpack, binary, gRPC) reads into, and the limits on what a client
declares.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import numpy as np

from gateway.types import Arrays

BINARY_HEADER = "inference-header-content-length"
# Limits on what a client declares, checked before anything is allocated or looped over.
ID_LIMIT = 256  # characters of a request id (it is echoed in the answer)
MAX_BYTES_ELEMENTS = 65_536  # BYTES elements per input: each becomes a Python string
# Elements of one request's inputs sent as JSON/msgpack `data` (or gRPC typed contents):
# each becomes a Python number (~32 bytes) before it is an array, so a body of "0,0,..."
# would otherwise take 16 times its size. Larger tensors travel as binary data.
MAX_DATA_ELEMENTS = 1 << 22
# Strings the classification extension writes per request ("score:index:label", each a
# Python string and a formatting step on the event loop).
MAX_CLASSIFICATION_STRINGS = 65_536
MAX_TIMEOUT_US = 86_400 * 1_000_000
MAX_ELEMENT_BYTES = 64  # JSON bytes one number may take, whitespace and nesting included


class Tensor(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestedOutput] | None = None
    # Not in the protocol's request, but KServe's client sends both in every body: they
    # must agree with the URL (checked by the endpoint, which knows the path).
    model_name: str | None = None
    model_version: str | None = None


MAX_PARAMETERS = 64
MAX_RANK = 32
MAX_INPUTS = 1024


class DecodedInfer(NamedTuple):
    """A request's feeds and rows (a tuple: this is made on every request)."""

    feeds: Arrays
    rows: int


class OutputTensor(NamedTuple):
    """One output as the answer carries it, whatever the transport."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool  # HTTP: in the binary part (gRPC always answers raw bytes)
    parameters: dict[str, Any] | None = None  # the output's own (explanations name columns)
