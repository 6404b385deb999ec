"""The one hand-written protobuf reader (`gateway/protowire.py`): bounded numbers, and the
gRPC count that reads with it (`grpc/codec.py`) cannot be made to build a huge integer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.protowire import WireError, read_varint


def test_varints_read_as_protobuf_writes_them():
    assert read_varint(b"\x96\x01", 0, 2) == (150, 2)
    assert read_varint(b"\x00\x01", 1, 2) == (1, 2)
    ten = b"\xff" * 9 + b"\x01"  # 2**64 - 1: the widest there is
    assert read_varint(ten, 0, 10) == (2**64 - 1, 10)


@pytest.mark.parametrize("data", [b"\x96", b"\xff" * 11, b"\xff" * 100_000])
def test_a_truncated_or_over_long_number_is_an_error_not_a_bigint(data):
    with pytest.raises(WireError):
        read_varint(data, 0, len(data))


def test_a_crafted_contents_field_stops_the_count_at_once():
    """A megabyte of continuation bytes, then enough 0x42 to pass the tag pre-check: an
    unbounded reader built a bigint of millions of bits, quadratic on the event loop. (In
    a process of its own: gateway.proto and tritonclient's protos share one descriptor
    pool and cannot both be loaded.)"""
    code = (
        "import time; from gateway.grpc.codec import _bytes_entries\n"
        "contents = b'\\xff' * 1_000_000 + b'\\x42' * 70_000\n"
        "started = time.perf_counter(); count = _bytes_entries(contents, 65_536)\n"
        "print(count, time.perf_counter() - started)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    count, seconds = out.stdout.split()
    assert count == "0" and float(seconds) < 0.1
