"""An ONNX classifier given as is, ending in a ZipMap (skl2onnx's default export, CatBoost's
own): the map becomes the probability tensor feeding it, and its keys the manifest's classes."""

from __future__ import annotations

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters import convert
from converters.parity import serve_predict


@pytest.mark.parametrize("labels", [["setosa", "versicolor", "virginica"], [3, 5, 7]])
def test_a_zipmap_becomes_the_probability_tensor_with_its_classes(labels, tmp_path):
    x, y = load_iris(return_X_y=True, as_frame=True)
    x = x.set_axis([f"f{i}" for i in range(4)], axis=1)
    model = LogisticRegression(max_iter=500).fit(x.to_numpy(np.float32), np.array(labels)[y])
    graph = to_onnx(model, x.to_numpy(np.float32)[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    assert any(n.op_type == "ZipMap" for n in graph.graph.node)
    (tmp_path / "exported.onnx").write_bytes(graph.SerializeToString())
    manifest = convert(tmp_path / "exported.onnx", name="m", version="1", repo=tmp_path / "repo", sample=x)
    assert manifest.classes == labels and manifest.task == "classification"
    assert [(o.role, o.shape) for o in manifest.outputs] == [("label", [-1]), ("probabilities", [-1, 3])]
    served = serve_predict((tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes(), manifest, x)
    np.testing.assert_allclose(served.probabilities, model.predict_proba(x.to_numpy(np.float32)), atol=1e-6)
    assert [str(v) for v in served.label] == [str(v) for v in model.predict(x.to_numpy(np.float32))]
