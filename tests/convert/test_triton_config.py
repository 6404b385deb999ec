"""`gateway convert --triton-config`: a plain ONNX model's Triton config.pbtxt, read at
convert (converters/triton_config.py). max_batch_size 0 makes a graph whose first
dimension is variable unbatched, label_filename gives an output's labels, and a
configuration the gateway would serve differently from Triton is refused."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from converters import convert
from converters.errors import ConversionError
from gateway.artifacts.repository import Repository


def _pair(tmp: Path, first: int | None = None) -> Path:
    """Two variable-length FP32 inputs a, b passed through to y, z."""
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [first, None]) for n in "ab")
    y, z = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [first, None]) for n in "yz")
    nodes = [helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["b"], ["z"])]
    model = helper.make_model(
        helper.make_graph(nodes, "pair", [a, b], [y, z]), opset_imports=[helper.make_opsetid("", 17)]
    )
    path = tmp / "model.onnx"
    onnx.save(model, str(path))
    return path


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "config.pbtxt"
    path.write_text(text)
    return path


TENSORS = """
input [ { name: "a" data_type: TYPE_FP32 dims: [ DIMS ] }, { name: "b" data_type: TYPE_FP32 dims: [ DIMS ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ DIMS ] label_filename: "y_labels.txt" },
         { name: "z" data_type: TYPE_FP32 dims: [ DIMS ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
"""


def test_max_batch_size_zero_and_label_filename(tmp_path):
    repo = tmp_path / "repo"
    (tmp_path / "y_labels.txt").write_text("low\nhigh\n")
    config = _config(
        tmp_path, 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n' + TENSORS.replace("DIMS", "-1, -1")
    )
    manifest = convert(_pair(tmp_path), name="pair", version="1", repo=repo, triton_config=config)
    assert manifest.unbatched and not manifest.batched
    assert manifest.labels == {"y": ["low", "high"]}
    assert Repository(repo).manifest("pair", "1").unbatched  # as published, not only as returned
    plain = convert(_pair(tmp_path), name="pair", version="2", repo=repo)
    assert plain.batched and not plain.unbatched  # the graph alone reads as batched


def test_a_batched_configuration_keeps_the_batch_dimension(tmp_path):
    (tmp_path / "y_labels.txt").write_text("low\nhigh\n")
    config = _config(tmp_path, 'backend: "onnxruntime"\nmax_batch_size: 8\n' + TENSORS.replace("DIMS", "-1"))
    manifest = convert(_pair(tmp_path), name="pair", version="1", repo=tmp_path / "r", triton_config=config)
    assert manifest.batched


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('platform: "tensorflow_savedmodel"\nmax_batch_size: 0', "not an ONNX Runtime model"),
        ('max_batch_size: 0\ninput [ { name: "c" data_type: TYPE_FP32 dims: [ 1 ] } ]', "names ['c']"),
        ("max_batch_size: 0\nmax_batch_size: [", "is not a Triton model configuration"),
        ("max_batch_size: -2", "cannot be negative"),
        ('max_batch_size: 0\ninput [ { name: "a" data_type: TYPE_FP32 dims: [ 4 ] } ]', "'a' has dims [4]"),
        (
            'max_batch_size: 0\ninput [ { name: "a" dims: [ -1, -1 ] reshape: { shape: [ -1, -1 ] } } ]',
            "'a' reshapes [-1, -1] to [-1, -1]: one variable dimension at most",
        ),
        (
            'max_batch_size: 0\ninput [ { name: "a" dims: [ 2, 3 ] reshape: { shape: [ 4, 2 ] } } ]',
            "'a' reshapes [2, 3] to [4, 2], which hold other element counts",
        ),
        (
            'max_batch_size: 0\ninput [ { name: "a" dims: [ 8 ] reshape: { shape: [ 2, 2, 2 ] } } ]',
            "'a' has reshape [2, 2, 2]; the graph's are [-1, -1]",
        ),
    ],
)
def test_refusals_name_the_cause(tmp_path, text, words):
    with pytest.raises(ConversionError, match=words.replace("[", r"\[").replace("]", r"\]")):
        convert(_pair(tmp_path), name="pair", version="1", repo=tmp_path / "r",
                triton_config=_config(tmp_path, text))  # fmt: skip
    assert not (tmp_path / "r" / "pair").exists()


def test_batching_a_graph_without_a_batch_dimension_is_refused(tmp_path):
    with pytest.raises(ConversionError, match=r"max_batch_size 8 needs a variable first"):
        convert(_pair(tmp_path, first=3), name="pair", version="1", repo=tmp_path / "r",
                triton_config=_config(tmp_path, "max_batch_size: 8"))  # fmt: skip


def test_the_cli_flag(tmp_path, capsys):
    from gateway.cli.main import main

    config = _config(tmp_path, "max_batch_size: 0")
    args = ["convert", str(_pair(tmp_path)), "--name", "pair", "--repo", str(tmp_path / "r"), "--version"]
    assert main([*args, "1", "--triton-config", str(config)]) == 0
    assert Repository(tmp_path / "r").manifest("pair", "1").unbatched
    assert main([*args, "2", "--triton-config", str(tmp_path / "missing.pbtxt")]) == 2
    assert "cannot read the Triton configuration" in capsys.readouterr().err


def test_dims_fix_what_the_graph_leaves_variable(tmp_path):
    text = 'max_batch_size: 4\ninput [ { name: "a" dims: [ 3 ] } ]\noutput [ { name: "z" dims: [ -1 ] } ]'
    config = _config(tmp_path, text)
    manifest = convert(_pair(tmp_path), name="pair", version="1", repo=tmp_path / "r", triton_config=config)
    assert {s.name: s.shape for s in [*manifest.inputs, *manifest.outputs]} == {
        "a": [-1, 3], "b": [-1, -1], "y": [-1, -1], "z": [-1, -1]
    }  # fmt: skip


def test_reshape_keeps_both_shapes(tmp_path):
    text = 'max_batch_size: 8\ninput [ { name: "a" dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n' + (
        'output [ { name: "y" dims: [ -1, 1 ] reshape: { shape: [ -1 ] } } ]'
    )
    manifest = convert(_pair(tmp_path), name="pair", version="1", repo=tmp_path / "r",
                       triton_config=_config(tmp_path, text))  # fmt: skip
    specs = {s.name: (s.shape, s.reshape) for s in [*manifest.inputs, *manifest.outputs]}
    assert specs == {"a": ([-1, 2, 2], [-1, 4]), "b": ([-1, -1], None), "y": ([-1, -1, 1], [-1, -1]),
                     "z": ([-1, -1], None)}  # fmt: skip


def _table(tmp: Path) -> Path:
    """One FP32 input of 16 columns: converted as a table of features (the records API)."""
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 16]) for n in "xy")
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "table", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, str(tmp / "table.onnx"))
    return tmp / "table.onnx"


def test_a_table_keeps_its_batch_dimension_and_shape(tmp_path):
    batched = _config(tmp_path, 'max_batch_size: 8\ninput [ { name: "x" dims: [ 16 ] } ]')
    manifest = convert(_table(tmp_path), name="t", version="1", repo=tmp_path / "r", triton_config=batched)
    assert manifest.layout == "matrix" and manifest.batched
    with pytest.raises(
        ConversionError, match="max_batch_size 0 and reshape are for models that take tensors"
    ):
        convert(_table(tmp_path), name="t", version="2", repo=tmp_path / "r",
                triton_config=_config(tmp_path, "max_batch_size: 0"))  # fmt: skip
