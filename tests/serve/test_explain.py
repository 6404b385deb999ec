"""`/explain` over loopback: contributions per user column against SHAP on the original
model, additivity on every row, top, class, the KServe V1 form, and its refusals; the
same through V2's `explain` parameter over HTTP JSON, HTTP binary and gRPC
(gateway/explain/outputs.py). Covers the
serving side end to end: gateway/explain/answer.py (options, row limits, the answer),
gateway/explain/cache.py (built on first use, sha256-checked), gateway/explain/explainer.py
(linear and sampling) and gateway/explain/graph.py (the estimator's input exposed)."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import httpx
import joblib
import msgspec
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from converters import convert
from tests.conftest import ROOT, free_port, start_server
from tests.convert.zoo import churn_frame, churn_preprocessor

shap = pytest.importorskip("shap")
xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")

pytestmark = pytest.mark.slow
TEST_ROWS = 12


def _churn() -> tuple[pd.DataFrame, np.ndarray]:
    return churn_frame(400, seed=3)


def _cancer(columns: int = 6) -> tuple[pd.DataFrame, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return x.iloc[:, :columns], y.to_numpy()


def _wine() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = load_wine(return_X_y=True, as_frame=True)
    return x.iloc[:, :8], y.to_numpy()


def _categories() -> tuple[pd.DataFrame, np.ndarray]:
    """Native category columns, which HistGradientBoosting's preprocessor moves first; "b"
    and "city" are constant (no split reads them: their contributions are 0)."""
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "black", "white", "grey"]
    x = pd.DataFrame({"a": rng.normal(size=500), "colour": pd.Categorical(rng.choice(colours, 500)),
                      "b": np.zeros(500), "city": pd.Categorical(["paris"] * 500)})  # fmt: skip
    y = (x["a"] > 0.3) ^ x["colour"].isin(["red", "blue", "white"])
    return x, y.to_numpy().astype(int)


def _diabetes() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    return x, y.to_numpy()


def _models() -> dict[str, tuple[object, pd.DataFrame, str, str]]:
    """name: (fitted model, training frame, framework, how to explain it)."""
    churn, churn_y = _churn()
    cancer, cancer_y = _cancer()
    diabetes, diabetes_y = _diabetes()
    wine, wine_y = _wine()
    categories, categories_y = _categories()
    return {
        "forest": (make_pipeline(churn_preprocessor(), RandomForestClassifier(20, max_depth=6, random_state=0))
                   .fit(churn, churn_y), churn, "sklearn", "tree"),
        "extra-trees": (ExtraTreesRegressor(15, max_depth=6, random_state=0).fit(diabetes, diabetes_y),
                        diabetes, "sklearn", "tree"),
        "gboost": (GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)
                   .fit(cancer, cancer_y), cancer, "sklearn", "tree"),
        "gboost3": (GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(wine, wine_y),
                    wine, "sklearn", "tree"),
        "hgb-categories": (HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(categories, categories_y),
                           categories, "sklearn", "tree"),
        "hgb": (make_pipeline(churn_preprocessor(), HistGradientBoostingClassifier(max_iter=20, random_state=0))
                .fit(churn, churn_y), churn, "sklearn", "tree"),
        "xgb": (xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(cancer, cancer_y), cancer, "xgboost", "tree"),
        "lgbm": (lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1).fit(cancer, cancer_y),
                 cancer, "lightgbm", "tree"),
        "churn-logreg": (make_pipeline(churn_preprocessor(), LogisticRegression(max_iter=1000)).fit(churn, churn_y),
                         churn, "sklearn", "linear"),
        "ridge": (Ridge().fit(diabetes, diabetes_y), diabetes, "sklearn", "linear"),
        "mlp": (make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=300, random_state=0))
                .fit(cancer, cancer_y), cancer, "sklearn", "sampling"),
        "svc": (make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(cancer, cancer_y),
                cancer, "sklearn", "sampling"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[object, pd.DataFrame, str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP convergence on a 300-step budget
        return _models()


@pytest.fixture(scope="module")
def repo(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("explain")
    for name, (model, frame, framework, _) in models.items():
        path = folder / f"{name}.joblib"
        joblib.dump(model, path)
        with warnings.catch_warnings():
            # scikit-learn 1.9 deprecates SVC(probability=True), which skl2onnx still reads
            warnings.simplefilter("ignore", FutureWarning)
            convert(path, name=name, version="1", repo=folder / "repo", sample=frame, framework=framework)
    _tensor_model(folder)
    return folder / "repo"


def _tensor_model(folder: Path) -> None:
    """A model that takes a 3-D tensor: no user columns to explain by."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "tensor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, folder / "tensor.onnx")
    convert(folder / "tensor.onnx", name="tensor", version="1", repo=folder / "repo")


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    srv = start_server(
        repo, tmp_path_factory.mktemp("server"), "--log-level", "warning", "--grpc-port", str(port)
    )
    srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def url(server) -> str:
    return str(server.url)


def _rows(frame: pd.DataFrame) -> list[dict[str, object]]:
    from converters.parity import _records

    return _records(frame.iloc[-TEST_ROWS:])


def _explain(url: str, name: str, body: object, query: str = "") -> dict:
    response = httpx.post(f"{url}/v1/models/{name}/explain{query}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _shap_values(
    model, frame: pd.DataFrame, method: str, background: pd.DataFrame
) -> tuple[np.ndarray, float]:
    """SHAP on the original model, summed onto user columns, for class 1 (or the value)."""
    from converters._explain import _column_map
    from converters._explain_check import _split

    framework = "xgboost" if isinstance(model, xgboost.XGBModel) else "lightgbm" if isinstance(
        model, lightgbm.LGBMModel) else "sklearn"  # fmt: skip
    final, encode = _split(model, framework)
    if method == "tree":
        explainer = shap.TreeExplainer(final, feature_perturbation="tree_path_dependent")
    else:
        explainer = shap.LinearExplainer(final, shap.maskers.Independent(encode(background), len(background)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's notices about its output formats
        values = np.asarray(explainer.shap_values(encode(frame)))
    base = np.atleast_1d(explainer.expected_value)
    if values.ndim == 3 and values.shape[0] == 2:  # a list per class
        values = np.moveaxis(values, 0, 2)
    if values.ndim == 3:  # per class: class 1
        values, base = values[:, :, 1], base[-1:]
    columns = np.asarray(_column_map(model, list(frame.columns)))
    summed = np.zeros((len(frame), frame.shape[1]))
    np.add.at(summed, (slice(None), columns), values)
    return summed, float(base[0])


@pytest.mark.parametrize(
    "name", ["forest", "extra-trees", "gboost", "hgb", "xgb", "lgbm", "churn-logreg", "ridge"]
)
def test_exact_methods_match_shap_on_the_original_model(url, models, name):
    model, frame, _, method = models[name]
    test = frame.iloc[-TEST_ROWS:]
    query = "?class=1" if name not in ("extra-trees", "ridge") else ""
    answer = _explain(url, name, {"instances": _rows(frame)}, query)
    assert answer["model"] == name and answer["version"] == "1"
    got = np.asarray([list(e["contributions"].values()) for e in answer["explanations"]])
    assert [list(e["contributions"]) for e in answer["explanations"]] == [list(frame.columns)] * TEST_ROWS
    want, base = _shap_values(model, test, method, frame)
    assert np.abs(got - want).max() < 1e-5, got - want
    for entry in answer["explanations"]:
        assert abs(entry["base_value"] - base) < 1e-5
        assert entry["output"] == {"forest": "probability", "extra-trees": "value", "ridge": "value"}.get(
            name, "margin"
        )


@pytest.mark.parametrize(
    "name", ["forest", "extra-trees", "gboost", "hgb", "xgb", "lgbm", "churn-logreg", "ridge", "mlp", "svc"]
)
def test_contributions_add_up_to_the_explained_output(url, models, name):
    """base + contributions = the output explained: the served probability of the class,
    the value, or the original model's margin (log-odds)."""
    model, frame, framework, method = models[name]
    test = frame.iloc[-TEST_ROWS:]
    answer = _explain(url, name, {"instances": _rows(frame)})
    predicted = httpx.post(f"{url}/v1/models/{name}/predict", json={"instances": _rows(frame)}).json()
    assert [e["prediction"] for e in answer["explanations"]] == predicted["predictions"]
    output = answer["explanations"][0]["output"]
    for i, entry in enumerate(answer["explanations"]):
        total = entry["base_value"] + sum(entry["contributions"].values())
        if output == "probability":
            want = entry["prediction"]["probabilities"][str(entry["class"])]
        elif output == "value":
            want = entry["prediction"]["value"]
        else:
            margin = _margin(model, framework, test.iloc[[i]])
            want = margin if str(entry["class"]) == "1" else -margin
        # Contributions add up in float64; ONNX Runtime's tree operator hands its sum back
        # rounded to float32 (one ulp: 2**-23 relative), and boosters compute margins in float32.
        tolerance = (1e-6 if output != "margin" else 1e-5) + abs(want) * 2**-23
        assert abs(total - want) < tolerance, (i, total, want)
        if method == "sampling":
            assert entry["samples"] == 64 and 0 < entry["error_bound"] < 0.5


def _margin(model, framework: str, row: pd.DataFrame) -> float:
    if framework == "xgboost":
        return float(model.predict(row, output_margin=True)[0])
    if framework == "lightgbm":
        return float(model.predict(row, raw_score=True)[0])
    return float(np.ravel(model.decision_function(row))[0])


def test_multiclass_gradient_boosting_is_exact_per_class(url, models, repo):
    """shap refuses a multi-class GradientBoostingClassifier whole; convert proves each
    class's trees against it one ensemble at a time, and the served margins add up."""
    from gateway.artifacts.repository import Repository

    explain = Repository(repo).manifest("gboost3", "1").explain
    assert explain is not None and explain.method == "tree" and explain.targets == [0, 1, 2]
    assert explain.check is not None and "one tree ensemble per class" in explain.check.reference
    assert explain.check.max_abs_diff < 1e-6
    model, frame, _, _ = models["gboost3"]
    margins = model.decision_function(frame.iloc[-TEST_ROWS:])
    for k in range(3):
        answer = _explain(url, "gboost3", {"instances": _rows(frame)}, f"?class={k}")["explanations"]
        assert [e["class"] for e in answer] == [k] * TEST_ROWS and answer[0]["output"] == "margin"
        totals = [e["base_value"] + sum(e["contributions"].values()) for e in answer]
        assert np.abs(np.asarray(totals) - margins[:, k]).max() < 1e-5


def test_category_splits_are_exact(url, models, repo):
    """HistGradientBoosting's native category splits: TreeSHAP on category sets, proven at
    convert against shap row by row; each contribution lands on its own user column
    although the trees read the category columns first."""
    from gateway.artifacts.repository import Repository

    explain = Repository(repo).manifest("hgb-categories", "1").explain
    assert explain is not None and explain.method == "tree" and explain.trees is not None
    assert explain.trees.categories and {c.feature for c in explain.trees.categories} == {0}  # colour, first
    assert explain.check is not None and "category splits" in explain.check.reference
    assert explain.check.max_abs_diff < 1e-6
    model, frame, _, _ = models["hgb-categories"]
    answer = _explain(url, "hgb-categories", {"instances": _rows(frame)}, "?class=1")["explanations"]
    got = np.asarray([[e["contributions"][c] for c in frame.columns] for e in answer])
    assert np.all(got[:, [2, 3]] == 0.0) and np.all(got[:, [0, 1]] != 0.0)  # b and city never split
    totals = [e["base_value"] + sum(e["contributions"].values()) for e in answer]
    assert np.abs(np.asarray(totals) - model.decision_function(frame.iloc[-TEST_ROWS:])).max() < 1e-5


def test_sampling_is_within_its_stated_bound_of_exact_shapley(url, repo):
    """The manifest records the convert-time comparison with exact Shapley values."""
    from gateway.artifacts.repository import Repository

    for name in ("mlp", "svc"):
        manifest = Repository(repo).manifest(name, "1")
        assert manifest.explain is not None and manifest.explain.method == "sampling"
        assert manifest.explain.check is not None and manifest.explain.check.rows > 0


def test_more_samples_narrow_the_bound(url, models):
    _, frame, _, _ = models["mlp"]
    body = {"instances": _rows(frame)[:2]}
    few = _explain(url, "mlp", body, "?samples=16")["explanations"]
    many = _explain(url, "mlp", body, "?samples=512")["explanations"]
    assert all(m["error_bound"] < f["error_bound"] for f, m in zip(few, many, strict=True))


def test_top_class_columns_and_kserve_form(url, models):
    _, frame, _, _ = models["churn-logreg"]
    records = _rows(frame)
    full = _explain(url, "churn-logreg", records[0])["explanations"][0]
    top = _explain(url, "churn-logreg", records[0], "?top=2")["explanations"][0]
    ranked = sorted(full["contributions"].items(), key=lambda kv: -abs(kv[1]))[:2]
    assert list(top["contributions"].items()) == ranked
    other = "0" if str(full["class"]) == "1" else "1"
    flipped = _explain(url, "churn-logreg", records[0], f"?class={other}")["explanations"][0]
    assert str(flipped["class"]) == other
    assert flipped["base_value"] == pytest.approx(-full["base_value"])
    columns = {k: [r[k] for r in records[:3]] for k in records[0]}
    by_columns = _explain(url, "churn-logreg", {"inputs": columns})["explanations"]
    by_records = _explain(url, "churn-logreg", {"instances": records[:3]})["explanations"]
    assert by_columns == by_records
    colon = httpx.post(f"{url}/v1/models/churn-logreg:explain", json=records[0], timeout=30)
    assert colon.status_code == 200 and colon.json()["explanations"][0] == full
    colon_predict = httpx.post(f"{url}/v1/models/churn-logreg:predict", json=records[0], timeout=30)
    assert colon_predict.json()["predictions"][0] == full["prediction"]
    versioned = httpx.post(f"{url}/v1/models/churn-logreg/versions/1:explain", json=records[0], timeout=30)
    assert versioned.status_code == 200
    packed = httpx.post(
        f"{url}/v1/models/churn-logreg/explain",
        content=msgspec.msgpack.encode(records[0]),
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert msgspec.msgpack.decode(packed.content)["explanations"][0]["contributions"] == pytest.approx(
        full["contributions"]
    )


def test_body_parameters_are_the_query_parameters(url, models):
    """KServe's place for a request's options: `"parameters"` beside the rows, in any body form."""
    _, frame, _, _ = models["churn-logreg"]
    records = _rows(frame)[:3]
    by_query = _explain(url, "churn-logreg", {"instances": records}, "?top=2&class=0")
    assert [str(e["class"]) for e in by_query["explanations"]] == ["0"] * 3
    assert all(len(e["contributions"]) == 2 for e in by_query["explanations"])
    body = {"instances": records, "parameters": {"top": 2, "class": "0"}}
    assert _explain(url, "churn-logreg", body) == by_query
    assert (
        _explain(url, "churn-logreg", {"instances": records, "parameters": {"class": 0}}, "?top=2")
        == by_query
    )
    columns = {k: [r[k] for r in records] for k in records[0]}
    assert (
        _explain(url, "churn-logreg", {"inputs": columns, "parameters": {"top": 2, "class": "0"}}) == by_query
    )
    one = _explain(url, "churn-logreg", {**records[0], "parameters": {"top": 2, "class": "0"}})
    assert one["explanations"] == by_query["explanations"][:1]
    packed = httpx.post(
        f"{url}/v1/models/churn-logreg/explain", content=msgspec.msgpack.encode(body),
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )  # fmt: skip
    assert msgspec.msgpack.decode(packed.content) == by_query
    refusals = [
        ({"instances": records, "parameters": {"top": 2}}, "?top=2", 400, ["body", "parameters", "top"]),
        ({"instances": records, "parameters": {"top": 0}}, "", 400, ["body", "parameters", "top"]),
        ({"instances": records, "parameters": {"colour": "red"}}, "", 400, ["body", "parameters", "colour"]),
        ({"instances": records, "parameters": {"class": "maybe"}}, "", 422, ["body", "parameters", "class"]),
        ({"instances": records, "parameters": [1]}, "", 400, ["body", "parameters"]),
    ]
    for body, query, status, loc in refusals:
        response = httpx.post(f"{url}/v1/models/churn-logreg/explain{query}", json=body, timeout=30)
        assert response.status_code == status, response.text
        assert response.json()["detail"][0]["loc"] == loc, response.text


def test_refusals(url, models):
    _, frame, _, _ = models["forest"]
    record = _rows(frame)[0]
    too_many = httpx.post(f"{url}/v1/models/forest/explain", json={"instances": [record] * 257}, timeout=30)
    assert too_many.status_code == 413 and "at most 256" in too_many.json()["error"]
    sampled = httpx.post(f"{url}/v1/models/mlp/explain", json={"instances": _rows(models["mlp"][1])[:1] * 17})
    assert sampled.status_code == 413
    no_columns = httpx.post(f"{url}/v1/models/tensor/explain", json={"x": 1.0})
    assert no_columns.status_code == 422 and "nothing to explain by" in no_columns.json()["error"]
    unknown_class = httpx.post(f"{url}/v1/models/forest/explain?class=maybe", json=record)
    assert unknown_class.status_code == 422 and "maybe" in unknown_class.json()["error"]
    bad_top = httpx.post(f"{url}/v1/models/forest/explain?top=0", json=record)
    assert bad_top.status_code == 400 and bad_top.json()["detail"][0]["loc"] == ["query", "top"]
    unknown = httpx.post(f"{url}/v1/models/forest/explain?colour=red", json=record)
    assert unknown.status_code == 400
    regressor_class = httpx.post(f"{url}/v1/models/ridge/explain?class=1", json=_rows(models["ridge"][1])[0])
    assert regressor_class.status_code == 400
    missing = httpx.post(f"{url}/v1/models/nope/explain", json=record)
    assert missing.status_code == 404


def test_explain_has_its_own_route_in_metrics(url, models):
    _, frame, _, _ = models["forest"]
    _explain(url, "forest", _rows(frame)[0])
    metrics = httpx.get(f"{url}/metrics").text
    assert any(
        'route="explain"' in line and "gateway_requests_total" in line for line in metrics.splitlines()
    )


def test_openapi_describes_explain(url):
    from openapi_spec_validator import validate

    spec = httpx.get(f"{url}/openapi.json").json()
    validate(spec)
    for name in ("forest", "ridge", "mlp"):
        op = spec["paths"][f"/v1/models/{name}/explain"]["post"]
        assert op["operationId"] == f"explain_{name}"
        assert {p["name"] for p in op["parameters"]} == (
            {"top", "samples"} if name == "ridge" else {"top", "class", "samples"}
        )
        forms = op["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        with_options = [f for f in forms if "parameters" in f.get("properties", {})]
        assert len(with_options) >= 1  # instances (and columns where no column is "inputs")
        for form in with_options:
            assert set(form["properties"]["parameters"]["properties"]) == {
                p["name"] for p in op["parameters"]
            }
        versioned = spec["paths"][f"/v1/models/{name}/versions/{{version}}/explain"]["post"]
        assert "version" in {p["name"] for p in versioned["parameters"]}
    assert "/v1/models/tensor/explain" not in spec["paths"]


def test_docs_page_has_an_explain_form_with_a_chart(url):
    page = httpx.get(f"{url}/docs").text
    assert 'data-path="v1/models/forest/explain"' in page
    assert page.count('<div class="chart"></div>') == 12  # every model but the tensor one
    assert page.count('data-kind="explain"') == 12
    assert "function bars(" in page
    assert 'data-path="v1/models/tensor/explain"' not in page


# -- the same through V2: `"parameters": {"explain": true}` ----------------------------------

V2_TRANSPORTS = ["http-json", "http-binary", "grpc"]
_RAW_TYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}


def _v2_inputs(url: str, name: str, frame: pd.DataFrame | np.ndarray) -> tuple[str, str, np.ndarray]:
    """The rows as the model's one matrix input (these models take their columns as one);
    an array as the tensor model's input."""
    if isinstance(frame, np.ndarray):
        return "x", "FP32", frame.astype("<f4")
    (spec,) = httpx.get(f"{url}/v2/models/{name}").json()["inputs"]
    return spec["name"], spec["datatype"], frame.to_numpy().astype(_RAW_TYPES[spec["datatype"]])


def _from_bytes(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=_RAW_TYPES[datatype]).reshape(shape)
    values, pos = [], 0
    while pos < len(raw):
        size = int.from_bytes(raw[pos : pos + 4], "little")
        values.append(raw[pos + 4 : pos + 4 + size].decode())
        pos += 4 + size
    return np.array(values, dtype=object).reshape(shape)


def _v2_http(url: str, name: str, frame: pd.DataFrame, parameters: dict, binary: bool) -> tuple[int, dict]:
    """(status, {output: (array, its parameters)}) or (status, the error body)."""
    input_name, datatype, array = _v2_inputs(url, name, frame)
    entry: dict = {"name": input_name, "datatype": datatype, "shape": list(array.shape)}
    headers = {"content-type": "application/json"}
    tail = b""
    if binary:
        tail = array.tobytes()
        entry["parameters"] = {"binary_data_size": len(tail)}
    else:
        entry["data"] = array.ravel().tolist()
    head = msgspec.json.encode(
        {"inputs": [entry], "parameters": {**parameters, "binary_data_output": binary}}
    )
    if binary:
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(head)),
        }
    r = httpx.post(f"{url}/v2/models/{name}/infer", content=head + tail, headers=headers, timeout=60)
    if r.status_code != 200:
        return r.status_code, r.json()
    length = int(r.headers.get("inference-header-content-length", len(r.content)))
    body, rest, outputs = msgspec.json.decode(r.content[:length]), r.content[length:], {}
    for o in body["outputs"]:
        params = dict(o.get("parameters", {}))
        if "data" in o:
            array = np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else np.float64).reshape(
                o["shape"]
            )
        else:
            size = params.pop("binary_data_size")
            array, rest = _from_bytes(rest[:size], o["datatype"], o["shape"]), rest[size:]
        outputs[o["name"]] = (array, params)
    return 200, outputs


_GRPC_STATUS = {"INVALID_ARGUMENT": 400, "RESOURCE_EXHAUSTED": 413, "NOT_FOUND": 404}


def _v2_grpc(target: str, url: str, name: str, frame: pd.DataFrame, parameters: dict) -> tuple[int, dict]:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    input_name, datatype, array = _v2_inputs(url, name, frame)
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name=input_name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    for key, value in parameters.items():
        field = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
        setattr(request.parameters[key], field, value)
    with grpc.insecure_channel(target) as channel:
        try:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        except grpc.RpcError as exc:
            return _GRPC_STATUS.get(exc.code().name, 500), {"error": exc.details()}
    outputs = {}
    for o, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in o.parameters.items()}
        outputs[o.name] = (_from_bytes(raw, o.datatype, list(o.shape)), params)
    return 200, outputs


def _v2(server, transport: str, name: str, frame: pd.DataFrame, parameters: dict) -> tuple[int, dict]:
    if transport == "grpc":
        return _v2_grpc(server.grpc, server.url, name, frame, parameters)
    return _v2_http(server.url, name, frame, parameters, binary=transport == "http-binary")


@pytest.mark.parametrize("transport", V2_TRANSPORTS)
@pytest.mark.parametrize(
    ("name", "parameters", "query"),
    [
        ("gboost", {}, ""),  # tree, each row's predicted class
        ("xgb", {"explain_class": "0", "explain_top": 3}, "?class=0&top=3"),
        ("ridge", {}, ""),  # linear, a regressor: no class
        ("svc", {"explain_samples": 32}, "?samples=32"),  # sampling: its bound too
    ],
)
def test_v2_explain_parameter_answers_what_explain_does(server, models, transport, name, parameters, query):
    _, frame, _, method = models[name]
    test = frame.iloc[-TEST_ROWS:]
    status, outputs = _v2(server, transport, name, test, {"explain": True, **parameters})
    assert status == 200, outputs
    want = _explain(server.url, name, {"instances": _rows(frame)}, query)["explanations"]
    phi, params = outputs["contributions"]
    assert phi.shape == (TEST_ROWS, parameters.get("explain_top", frame.shape[1]))
    assert msgspec.json.decode(params["columns"]) == list(frame.columns)
    assert params["output"] == want[0]["output"] and params["method"] == method
    assert params.get("class") == parameters.get("explain_class")
    if "explain_top" in parameters:
        names = outputs["contribution_columns"][0]
        assert names.tolist() == [list(w["contributions"]) for w in want]
    else:
        names = np.array([list(frame.columns)] * TEST_ROWS)
    for row, entry in enumerate(want):
        assert dict(zip(names[row], phi[row], strict=True)) == pytest.approx(
            entry["contributions"], abs=1e-12
        )
    assert outputs["base_value"][0] == pytest.approx([w["base_value"] for w in want], abs=1e-12)
    if "class" in want[0]:
        assert outputs["explained_class"][0].tolist() == [str(w["class"]) for w in want]
    else:
        assert "explained_class" not in outputs
    if method == "sampling":
        bound, bound_params = outputs["error_bound"]
        assert bound == pytest.approx([w["error_bound"] for w in want], abs=1e-12)
        assert bound_params == {"samples": 32}
    served = [o["name"] for o in httpx.get(f"{server.url}/v2/models/{name}").json()["outputs"]]
    assert set(outputs) - set(served) <= {"contributions", "base_value", "explained_class", "contribution_columns",
                                          "error_bound"}  # fmt: skip
    assert set(served) <= set(outputs)


@pytest.mark.parametrize("transport", V2_TRANSPORTS)
def test_v2_explain_refusals(server, models, transport):
    cancer = models["gboost"][1]
    cases = [
        ("gboost", cancer[:257], {"explain": True}, 413, "257 rows to explain"),
        ("tensor", np.zeros((1, 2, 3)), {"explain": True}, 400, "model 'tensor' cannot be explained"),
        ("svc", cancer[:17], {"explain": True}, 413, "17 rows to explain"),
        ("gboost", cancer[:1], {"explain": True, "explain_top": 0}, 400, "explain_top must be an integer"),
        ("gboost", cancer[:1], {"explain": True, "explain_colour": "red"}, 400, "unknown parameter 'explain_colour'"),
        ("gboost", cancer[:1], {"explain_top": 2}, 400, "the explain parameter must be true or false"),
        ("gboost", cancer[:1], {"explain": True, "explain_class": "maybe"}, 422, "class 'maybe' is not one"),
        ("ridge", models["ridge"][1][:1], {"explain": True, "explain_class": "1"}, 400, "model 'ridge' is a regressor"),
    ]  # fmt: skip
    for name, frame, parameters, status, words in cases:
        got, body = _v2(server, transport, name, frame, parameters)
        assert got == (400 if transport == "grpc" and status == 422 else status), (name, parameters, body)
        assert words in body["error"], body
    plain, outputs = _v2(server, transport, "gboost", cancer[:2], {"explain": False})
    assert plain == 200 and "contributions" not in outputs
    empty, outputs = _v2(server, transport, "gboost", cancer[:0], {"explain": True})
    assert empty == 200 and outputs["contributions"][0].shape == (0, cancer.shape[1]), outputs
    assert outputs["base_value"][0].shape == (0,) and outputs["explained_class"][0].shape == (0,)


OFFICIAL_CLIENTS = Path(os.environ.get("GATEWAY_CLIENTS_VENV", ROOT / ".venv-clients")) / "bin" / "python"

TRITON_EXPLAIN = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpc
import tritonclient.http as http

url, target, x_path, name, datatype = sys.argv[1:6]
x = np.load(x_path)
out = {}
for kind, module, where in (("http", http, url.removeprefix("http://")), ("grpc", grpc, target)):
    client = module.InferenceServerClient(where)
    given = module.InferInput(name, list(x.shape), datatype)
    given.set_data_from_numpy(x)
    result = client.infer("gboost", [given], parameters={"explain": True, "explain_top": 2, "explain_class": "1"})
    output = result.get_output("contributions")
    parameters = output["parameters"] if kind == "http" else {k: v.string_param for k, v in output.parameters.items()}
    out[kind] = {"contributions": result.as_numpy("contributions").tolist(),
                 "columns": result.as_numpy("contribution_columns").astype(str).tolist(),
                 "base": result.as_numpy("base_value").tolist(), "class": parameters["class"],
                 "names": json.loads(parameters["columns"])}
print(json.dumps(out))
"""


@pytest.mark.skipif(not OFFICIAL_CLIENTS.exists(), reason="no client environment: `bash .ci/run` builds it")
def test_official_triton_clients_read_the_explanation_outputs(server, models, tmp_path):
    """tritonclient's HTTP and gRPC clients send the parameters and read the outputs, and
    the columns named in the output's parameters, as they read any model's."""
    _, frame, _, _ = models["gboost"]
    name, datatype, array = _v2_inputs(server.url, "gboost", frame.iloc[-TEST_ROWS:])
    np.save(tmp_path / "x.npy", array)
    done = subprocess.run(
        [str(OFFICIAL_CLIENTS), "-c", TRITON_EXPLAIN, server.url, server.grpc, str(tmp_path / "x.npy"), name, datatype],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    want = _explain(server.url, "gboost", {"instances": _rows(frame)}, "?class=1&top=2")["explanations"]
    for kind in ("http", "grpc"):
        answer = got[kind]
        assert answer["class"] == "1" and answer["names"] == list(frame.columns)
        assert answer["columns"] == [list(w["contributions"]) for w in want]
        expected = np.asarray([list(w["contributions"].values()) for w in want])
        assert np.abs(np.asarray(answer["contributions"]) - expected).max() < 1e-12
        assert answer["base"] == pytest.approx([w["base_value"] for w in want], abs=1e-12)
