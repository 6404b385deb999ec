"""An IsolationForest serves its -1/1 label and, beside it, the decision_function score that
users threshold on: over the records API, offline scoring and V2 output names."""

from __future__ import annotations

import joblib
import numpy as np
import pyarrow as pa
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest

from converters import convert
from converters.parity import serve_predict
from gateway.runtime import OrtRuntime
from gateway.scoring.columns import ColumnCodec


def test_an_isolation_forest_serves_its_label_and_score(tmp_path):
    x, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    model = IsolationForest(n_estimators=50, random_state=0).fit(x)
    joblib.dump(model, tmp_path / "iso.joblib")
    manifest = convert(tmp_path / "iso.joblib", name="iso", version="1", repo=tmp_path / "repo", sample=x)
    assert [(o.name, o.role) for o in manifest.outputs] == [("label", "label"), ("score", "value")]
    assert manifest.task == "other" and manifest.parity.label_agreement == 1.0
    model_bytes = (tmp_path / "repo" / "iso" / "1" / "model.onnx").read_bytes()
    served = serve_predict(model_bytes, manifest, x)
    assert (served.label.astype(int) == model.predict(x)).all()
    assert set(model.predict(x)) == {-1, 1}
    np.testing.assert_allclose(served.value.ravel(), model.decision_function(x), atol=1e-5)

    codec = ColumnCodec(manifest)
    checked = codec.check(pa.Table.from_pandas(x.iloc[:20]))
    columns = codec.encode(OrtRuntime(model_bytes, provider="cpu", name="iso").run(codec.feeds(checked.columns, 0, 20)))
    assert codec.output_names == ["label", "score"] and list(columns) == ["label", "score"]
    np.testing.assert_allclose(columns["score"], model.decision_function(x.iloc[:20]), atol=1e-5)
