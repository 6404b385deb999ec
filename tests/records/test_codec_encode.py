"""The records API's predictions, byte for byte: what `orjson.dumps` of one dict per row
(the obvious encoder) writes, for every kind of output and any number of rows.

Covers `gateway/records/answers.py`, which the codec's `encode` comes from."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from gateway.artifacts.manifest import Feature, Manifest, OnnxInfo, Source, TensorSpec
from gateway.records.codec import RecordCodec


def _manifest(outputs: list[TensorSpec], classes=None) -> Manifest:
    return Manifest(
        name="m", version="7", created_at="2026-12-01T00:00:00Z",
        task="classification" if classes is not None or outputs[0].role == "label" else "regression",
        layout="matrix",
        source=Source("sklearn", "1.7", "X", "m.joblib", "0" * 64),
        onnx=OnnxInfo("0" * 64, 1, {"": 17}, "test", 9),
        inputs=[TensorSpec("input", "FP64", [-1, 2])],
        outputs=outputs,
        features=[Feature("a b", "float64"), Feature("c", "float64")],
        classes=classes,
    )  # fmt: skip


def _reference(codec: RecordCodec, manifest: Manifest, outputs) -> bytes:
    """One dict per row, as the encoder was first written."""
    label, proba = manifest.output("label"), manifest.output("probabilities")
    rows = []
    if proba is not None:
        p = outputs[proba.name].tolist()
        classes = [str(c) for c in manifest.classes] if manifest.classes else [str(i) for i in range(len(p[0]))]
        if label is not None:
            labels = outputs[label.name].tolist()
            if manifest.classes and all(isinstance(c, bool) for c in manifest.classes):
                labels = [bool(v) for v in labels]
        else:
            labels = [manifest.classes[i] for i in np.argmax(outputs[proba.name], axis=1).tolist()]
        rows = [{"label": lab, "probabilities": dict(zip(classes, q, strict=True))} for lab, q in zip(labels, p, strict=True)]
    elif label is not None:
        rows = [{"label": v} for v in outputs[label.name].tolist()]
    else:
        flat = next(iter(outputs.values()))
        flat = flat.reshape(flat.shape[0], -1)
        rows = [{"value": v[0] if flat.shape[1] == 1 else v} for v in flat.tolist()]
    return orjson.dumps({"model": manifest.name, "version": manifest.version, "predictions": rows})


def _served(codec: RecordCodec, outputs) -> bytes:
    return codec.head + codec.encode(outputs) + b"}"


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9, 17, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_with_probabilities(rows, dtype):
    rng = np.random.default_rng(rows)
    for classes in ([0, 1, 2], ["no", 'y"es', "50%"], [True, False][::-1]):
        manifest = _manifest(
            [TensorSpec("label", "INT64", [-1], "label"), TensorSpec("probabilities", "FP32", [-1, 3], "probabilities")],
            classes,
        )
        width = len(classes)
        proba = rng.random((rows, width)).astype(dtype)
        proba[0, 0] = np.nan if rows > 2 else proba[0, 0]
        labels = rng.integers(0, width, rows)
        if all(isinstance(c, str) for c in classes):
            labels = np.array([classes[i] for i in labels], dtype=object)
        outputs = {"label": labels, "probabilities": proba}
        codec = RecordCodec(manifest, max_rows=4096)
        assert _served(codec, outputs) == _reference(codec, manifest, outputs)


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 300])
def test_probabilities_without_a_label_output(rows):
    manifest = _manifest([TensorSpec("probabilities", "FP32", [-1, 2], "probabilities")], ["a", "b"])
    outputs = {"probabilities": np.random.default_rng(0).random((rows, 2)).astype(np.float32)}
    codec = RecordCodec(manifest, max_rows=4096)
    assert _served(codec, outputs) == _reference(codec, manifest, outputs)


@pytest.mark.parametrize("rows", [1, 16, 17, 100])
@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_regression_values(rows, shape, dtype):
    manifest = _manifest([TensorSpec("value", "FP32", [-1, *shape], "value")])
    values = (np.random.default_rng(1).normal(size=(rows, *shape)) * 1000).astype(dtype)
    codec = RecordCodec(manifest, max_rows=4096)
    outputs = {"value": values}
    assert _served(codec, outputs) == _reference(codec, manifest, outputs)


def test_label_only_classifier_with_string_labels():
    manifest = _manifest([TensorSpec("label", "BYTES", [-1], "label")], ["x,y", "z"])
    outputs = {"label": np.array(["x,y", "z", "x,y"] * 7, dtype=object)}
    codec = RecordCodec(manifest, max_rows=4096)
    assert _served(codec, outputs) == _reference(codec, manifest, outputs)


@pytest.mark.parametrize("rows", [1, 3, 20])
def test_zero_width_values_are_empty_lists(rows):
    manifest = _manifest([TensorSpec("value", "FP32", [-1, 0], "value")])
    codec = RecordCodec(manifest, max_rows=4096)
    outputs = {"value": np.zeros((rows, 0), dtype=np.float32)}
    assert _served(codec, outputs) == _reference(codec, manifest, outputs)


@pytest.mark.parametrize("rows", [1, 4, 20])
@pytest.mark.parametrize("width", [1, 3])
def test_a_label_of_several_values_a_row_stays_one_cell_a_row(rows, width):
    """A label output of shape (rows, k), as an imported ONNX model may have: one list per
    row, as `.tolist()` gives, alone or beside probabilities."""
    labels = np.arange(rows * width, dtype=np.int64).reshape(rows, width)
    alone = _manifest([TensorSpec("label", "INT64", [-1, width], "label")])
    codec = RecordCodec(alone, max_rows=4096)
    got = orjson.loads(codec.encode({"label": labels}))
    assert got == [{"label": row} for row in labels.tolist()]
    both = _manifest(
        [TensorSpec("label", "INT64", [-1, width], "label"), TensorSpec("p", "FP32", [-1, 2], "probabilities")],
        [0, 1],
    )
    proba = np.full((rows, 2), 0.5, dtype=np.float32)
    got = orjson.loads(RecordCodec(both, max_rows=4096).encode({"label": labels, "p": proba}))
    assert got == [{"label": row, "probabilities": {"0": 0.5, "1": 0.5}} for row in labels.tolist()]


@pytest.mark.parametrize("rows", [1, 20])
def test_bool_and_non_ascii_classes(rows):
    rng = np.random.default_rng(rows)
    for classes in ([False, True], ["não", "日本", "ünï%s"]):
        label = TensorSpec("label", "INT64", [-1], "label")
        manifest = _manifest([label], classes) if isinstance(classes[0], bool) else _manifest(
            [label, TensorSpec("p", "FP32", [-1, 3], "probabilities")], classes
        )
        codec = RecordCodec(manifest, max_rows=4096)
        if isinstance(classes[0], bool):
            outputs = {"label": rng.integers(0, 2, rows)}
            expected = [{"label": bool(v)} for v in outputs["label"].tolist()]
        else:
            outputs = {"label": np.array([classes[i] for i in rng.integers(0, 3, rows)], dtype=object),
                       "p": rng.random((rows, 3)).astype(np.float32)}  # fmt: skip
            expected = [
                {"label": lab, "probabilities": dict(zip(classes, p, strict=True))}
                for lab, p in zip(outputs["label"].tolist(), outputs["p"].tolist(), strict=True)
            ]
        assert orjson.loads(codec.encode(outputs)) == expected
