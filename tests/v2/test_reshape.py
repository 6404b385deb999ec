"""Triton's reshape (gateway/v2/reshape.py): a tensor between the dims clients use and the
graph's own, the one variable dimension taking what the fixed ones leave."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.artifacts.manifest import Manifest, OnnxInfo, Source, TensorSpec
from gateway.v2.reshape import graph_dims, outputs_as_configured, to_dims


@pytest.mark.parametrize(
    ("shape", "dims", "batched", "expected"),
    [
        ((3, 4, 4), [16], True, (3, 16)),
        ((2, 1), [], True, (2,)),  # one element a row, the graph takes a scalar a row
        ((1, 2, 4, 5, 6), [8, -1, 1, 6], True, (1, 8, 5, 1, 6)),
        ((0, 2, 4, 5, 6), [8, -1, 1, 6], True, (0, 8, 0, 1, 6)),  # no rows: the variable is 0
        ((1, 4, 1), [-1], False, (4,)),
        ((4,), [1, -1, 1], False, (1, 4, 1)),
    ],
)
def test_to_dims(shape, dims, batched, expected):
    array = np.arange(int(np.prod(shape))).reshape(shape)
    out = to_dims(array, dims, batched)
    assert out.shape == expected and out.ravel().tolist() == array.ravel().tolist()


def test_elements_that_do_not_fill_the_dims_are_refused():
    with pytest.raises(ValueError, match="6 elements do not fill the dims"):
        to_dims(np.zeros((1, 6)), [4, -1], batched=True)


def test_outputs_come_back_in_the_configured_dims():
    manifest = Manifest(
        name="m", version="1", created_at="", task="other", layout="tensors",
        source=Source("onnx", "1", "graph", "m.onnx", "0" * 64), onnx=OnnxInfo("0" * 64, 1, {"": 17}, "t", 9),
        inputs=[TensorSpec("x", "FP32", [-1, 4, 4], reshape=[-1, 16])],
        outputs=[TensorSpec("y", "FP32", [-1, 4, 4], reshape=[-1, 16]), TensorSpec("z", "FP32", [-1, 16])],
    )  # fmt: skip
    assert manifest.reshaped and graph_dims(manifest.inputs[0], manifest.batched) == [16]
    out = outputs_as_configured(manifest, {"y": np.zeros((2, 16)), "z": np.zeros((2, 16))})
    assert out["y"].shape == (2, 4, 4) and out["z"].shape == (2, 16)
