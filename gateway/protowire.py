"""Protobuf's wire format, read by hand where a full parse would cost before a check:
an ONNX model's external-data references (artifacts/onnx_refs.py) and a gRPC message's
declared counts (grpc/codec.py). One reader, bounded, so that no crafted number can grow
without end (a varint is at most 10 bytes: 64 bits, 7 a byte)."""

from __future__ import annotations


class WireError(ValueError):
    """The data ends inside a number, or a number is wider than 64 bits."""


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at `pos` (not past `end`), and the position after it."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("a truncated or over-long number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
