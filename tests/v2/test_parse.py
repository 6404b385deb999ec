"""Triton's raw binary request rule (gateway/v2/parse.py `raw_binary_request`): the shape
deduced from the model's one input and the body's length, refusals in Triton's words."""

from __future__ import annotations

import struct

import pytest

from gateway.artifacts.manifest import Manifest, OnnxInfo, Source, TensorSpec
from gateway.errors import BadRequest
from gateway.v2.parse import raw_binary_request


def _manifest(*inputs: TensorSpec, unbatched: bool = False) -> Manifest:
    return Manifest(
        name="m", version="1", created_at="", task="other", layout="tensors",
        source=Source("onnx", "1", "graph", "m.onnx", "0" * 64), onnx=OnnxInfo("0" * 64, 1, {"": 17}, "t", 9),
        inputs=list(inputs), outputs=[TensorSpec("y", "FP32", [-1])], unbatched=unbatched,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "unbatched", "size", "shape"),
    [
        (TensorSpec("x", "FP32", [-1, -1]), False, 32, [1, 8]),  # Triton's: a batch of one
        (TensorSpec("x", "FP32", [-1, 2, -1]), False, 32, [1, 2, 4]),
        (TensorSpec("x", "INT16", [-1]), True, 8, [4]),  # no batch dimension: the length alone
        (TensorSpec("x", "FP32", [3]), True, 12, [3]),
        (TensorSpec("x", "FP32", [-1, 4]), False, 32, [2, 4]),  # ours: rows of a fixed width
    ],
)
def test_shapes_deduced(spec, unbatched, size, shape):
    request, tail = raw_binary_request(_manifest(spec, unbatched=unbatched), bytes(size))
    assert request.inputs[0].shape == shape and tail == bytes(size)
    assert request.parameters == {"binary_data_output": True}  # Triton answers a raw request in binary


def test_bytes_is_one_element_the_whole_body():
    request, tail = raw_binary_request(_manifest(TensorSpec("s", "BYTES", [-1, 1])), b"427")
    assert request.inputs[0].shape == [1, 1] and tail == struct.pack("<I", 3) + b"427"


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([TensorSpec("a", "FP32", [-1]), TensorSpec("b", "FP32", [-1])],
         "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'm'"),
        ([TensorSpec("INPUT0", "FP32", [-1, -1, -1])],
         "The shape of the raw input 'INPUT0' can not be deduced because there are more than one variable"),
        ([TensorSpec("INPUT0", "BYTES", [-1, -1])],
         "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]"),
        ([TensorSpec("x", "FP32", [-1, 4])], "a raw binary body of 6 bytes is not whole rows of FP32 [4]"),
        ([TensorSpec("x", "FP32", [-1, 2, -1])], "a raw binary body of 6 bytes is not whole FP32 elements"),
    ],
)  # fmt: skip
def test_refusals_in_tritons_words(inputs, words):
    with pytest.raises(BadRequest) as caught:
        raw_binary_request(_manifest(*inputs), bytes(6))
    assert caught.value.message.startswith(words), caught.value.message
