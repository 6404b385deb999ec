"""The product's promise, end to end: ordinary notebook models convert, are served together
by one `gateway serve`, and answer over HTTP what the original model predicts; what cannot
be converted is refused with one clear reason."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest

from converters import ConversionError, convert
from gateway.artifacts.repository import Repository
from tests.conftest import ROOT, Server, start_server
from tests.convert.zoo import Case, all_cases, churn_frame, churn_preprocessor

PROBABILITY_ATOL = 1e-5
VALUE_RTOL = 1e-6


# Converting 36 models and starting one server for them takes a minute or two on 2 cores.
ZOO_TIMEOUT = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Case], Path, Server]]:
    folder = tmp_path_factory.mktemp("zoo")
    repo = folder / "repo"
    cases = all_cases()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frameworks' own chatter while converting
        for case in cases:
            convert(
                case.save(folder), name=case.name, version="1", repo=repo, sample=case.train,
                framework=case.framework,  # type: ignore[arg-type]
            )  # fmt: skip
    server = start_server(repo, folder, "--log-level", "warning", ready_timeout=180)
    yield cases, repo, server
    server.stop()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Held-out rows as a client sends them: every digit of each float (pandas' to_json
    keeps 10, which moves values across tree thresholds), NaN as null."""
    columns = {
        str(name): [None if isinstance(v, float) and np.isnan(v) else v for v in frame[name].tolist()]
        for name in frame.columns
    }
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _compare(case: Case, body: dict[str, Any]) -> str | None:
    labels, probabilities, values = case.expected()
    predictions = body["predictions"]
    if labels is not None and values is not None:  # an anomaly detector: label and score
        got_labels = [str(p["label"]) for p in predictions]
        if got_labels != [str(v) for v in labels]:
            return f"labels differ: {got_labels[:5]}"
        worst = float(np.abs(np.array([p["score"] for p in predictions]) - values.ravel()).max())
        return None if worst <= PROBABILITY_ATOL else f"scores differ by {worst:.3g}"
    if labels is not None and probabilities is None:
        got_labels = [str(p["label"]) for p in predictions]
        return None if got_labels == [str(v) for v in labels] else f"labels differ: {got_labels[:5]}"
    if probabilities is not None:
        got_labels = [str(p["label"]) for p in predictions]
        if got_labels != [str(v) for v in labels]:  # type: ignore[union-attr]
            return f"labels differ: {got_labels[:5]} vs {list(labels[:5])}"  # type: ignore[index]
        classes = [str(c) for c in case.model.classes_] if hasattr(case.model, "classes_") else None
        got = np.array([[p["probabilities"][c] for c in classes] if classes else list(p["probabilities"].values())
                        for p in predictions])  # fmt: skip
        worst = float(np.abs(got - probabilities).max())
        return None if worst <= PROBABILITY_ATOL else f"probabilities differ by {worst:.3g}"
    got = np.array([p["value"] for p in predictions], dtype=np.float64).reshape(len(predictions), -1)
    relative = float((np.abs(got - values) / np.maximum(np.abs(values), 1e-12)).max())
    return None if relative <= VALUE_RTOL else f"values differ by {relative:.3g} (relative)"


@pytest.mark.slow
@ZOO_TIMEOUT
def test_every_zoo_model_serves_what_the_original_predicts(zoo):
    cases, _, server = zoo
    assert len(cases) >= 30
    failures = {}
    for case in cases:
        r = httpx.post(
            f"{server.url}/v1/models/{case.name}/predict", json={"instances": _records(case.test)}, timeout=30
        )
        if r.status_code != 200:
            failures[case.name] = f"{r.status_code} {r.text[:300]}"
            continue
        problem = _compare(case, r.json())
        if problem:
            failures[case.name] = problem
    assert not failures, failures


def _assert_same_prediction(got: dict[str, Any], want: dict[str, Any], name: str) -> None:
    assert got.keys() == want.keys(), name
    if "label" in want:
        assert got["label"] == want["label"], name
    if "probabilities" in want:
        np.testing.assert_allclose(list(got["probabilities"].values()), list(want["probabilities"].values()),
                                   atol=1e-6, err_msg=name)  # fmt: skip
    if "value" in want:
        np.testing.assert_allclose(got["value"], want["value"], rtol=1e-6, err_msg=name)


@pytest.mark.slow
@ZOO_TIMEOUT
def test_zoo_single_records_and_v2_tensors_agree_with_records(zoo):
    """One record as the whole body, and the same rows as V2 tensors, give the answers the
    batch of records gave: the same codec and the same graph behind every door."""
    cases, repo, server = zoo
    for case in cases:
        manifest = Repository(repo).manifest(case.name, "1")
        rows = _records(case.test.iloc[:3])
        batch = httpx.post(f"{server.url}/v1/models/{case.name}/predict", json={"instances": rows}).json()
        for i, row in enumerate(rows):
            one = httpx.post(f"{server.url}/v1/models/{case.name}/predict", json=row)
            assert one.status_code == 200, (case.name, one.text)
            # float32 kernels may sum in another order for another batch size: close, not equal.
            _assert_same_prediction(one.json()["predictions"][0], batch["predictions"][i], case.name)
        if manifest.layout != "matrix" or case.test.iloc[:3].isna().any().any():
            continue
        spec = manifest.inputs[0]
        data = case.test.iloc[:3].to_numpy(np.float64)
        v2 = {"inputs": [{"name": spec.name, "shape": list(data.shape), "datatype": spec.datatype,
                          "data": data.ravel().tolist()}]}  # fmt: skip
        r = httpx.post(f"{server.url}/v2/models/{case.name}/infer", json=v2)
        assert r.status_code == 200, (case.name, r.text)
        outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
        if "probabilities" in outputs:
            got = np.asarray(outputs["probabilities"]).reshape(3, -1)
            want = [list(p["probabilities"].values()) for p in batch["predictions"]]
            np.testing.assert_allclose(got, want, atol=1e-7, err_msg=case.name)
        elif "value" in outputs:
            got = np.asarray(outputs["value"]).ravel()
            want = np.ravel([p["value"] for p in batch["predictions"]])  # one value or several a row
            np.testing.assert_allclose(got, want, rtol=1e-7, err_msg=case.name)


@pytest.mark.slow
@ZOO_TIMEOUT
def test_user_column_names_reach_every_layer(zoo):
    """'mean radius', 'od280/od315_of_diluted_wines', 'région': in the manifest, the records
    API (and its errors), the V2 metadata of a columns model, and OpenAPI."""
    _, repo, server = zoo
    wine = Repository(repo).manifest("wine_svc", "1")
    assert "od280/od315_of_diluted_wines" in [f.name for f in wine.features]
    churn = Repository(repo).manifest("churn_forest", "1")
    assert [i.name for i in churn.inputs] == [f.name for f in churn.features]
    assert "région" in [i.name for i in churn.inputs]
    meta = httpx.get(f"{server.url}/v2/models/churn_forest").json()
    assert "tenure (months)" in [i["name"] for i in meta["inputs"]]
    bad = _records(pd.DataFrame([{f.name: 1.0 for f in wine.features}]))[0] | {
        "od280/od315_of_diluted_wines": "x"
    }
    r = httpx.post(f"{server.url}/v1/models/wine_svc/predict", json=bad)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "od280/od315_of_diluted_wines"], r.text
    spec = httpx.get(f"{server.url}/openapi.json").text
    assert "mean radius" in spec and "tenure (months)" in spec


@pytest.mark.slow
@ZOO_TIMEOUT
def test_typed_and_free_text_columns(zoo):
    _, repo, server = zoo
    typed = {f.name: f for f in Repository(repo).manifest("typed_columns", "1").features}
    assert (typed["is_member"].dtype, typed["visits"].dtype) == ("bool", "int64")
    assert typed["segment"].categories == ["bronze", "gold", "silver"]
    ok = {"is_member": True, "visits": 3, "basket €": 12.5, "segment": "gold"}
    assert httpx.post(f"{server.url}/v1/models/typed_columns/predict", json=ok).status_code == 200
    # The encoder ignores unknown segments (handle_unknown="ignore"): served, not refused.
    assert typed["segment"].open_categories
    r = httpx.post(f"{server.url}/v1/models/typed_columns/predict", json=ok | {"segment": "platinum"})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{server.url}/v1/models/typed_columns/predict", json=ok | {"segment": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "segment"]
    text = {f.name: f for f in Repository(repo).manifest("text_and_numbers", "1").features}
    assert text["review text"].categories is None and text["review text"].max_length
    novel = {"review text": "never seen these words before", "stars given": 4.0}
    assert httpx.post(f"{server.url}/v1/models/text_and_numbers/predict", json=novel).status_code == 200
    too_long = novel | {"review text": "x" * (text["review text"].max_length + 1)}
    r = httpx.post(f"{server.url}/v1/models/text_and_numbers/predict", json=too_long)
    assert r.status_code == 422 and len(r.text) < 1000  # the value is not echoed back whole


@pytest.mark.slow
@ZOO_TIMEOUT
def test_native_categories_and_missing_ones_in_hist_gradient_boosting(zoo):
    _, repo, server = zoo
    features = {f.name: f for f in Repository(repo).manifest("shop_hgb_categories", "1").features}
    assert features["colour"].dtype == "string" and features["colour"].nullable
    row = {"size (cm)": 31.0, "colour": None, "grade": 2.0, "shop": "online"}
    for name in ("shop_hgb_categories", "shop_hgb_regressor"):
        r = httpx.post(f"{server.url}/v1/models/{name}/predict", json=row)
        assert r.status_code == 200, r.text


@pytest.mark.slow
@ZOO_TIMEOUT
def test_columns_the_pipeline_drops_are_ignored_in_the_zoo(zoo):
    _, repo, server = zoo
    manifest = Repository(repo).manifest("signups_dropped_columns", "1")
    assert {f.name for f in manifest.features if f.ignored} == {"customer id", "signed up", "notes"}
    row = {"age": 40.0, "income": None, "state": None, "plan": "plus"}  # the ignored ones left out
    r = httpx.post(f"{server.url}/v1/models/signups_dropped_columns/predict", json=row)
    assert r.status_code == 200, r.text


@pytest.mark.slow
@ZOO_TIMEOUT
def test_nulls_are_accepted_where_the_model_imputes(zoo):
    _, _, server = zoo
    frame, _ = churn_frame(5, seed=9)
    row = _records(frame)[0] | {"tenure (months)": None, "contract": None, "payment method": None}
    for name in ("churn_logreg", "churn_forest", "churn_hgb", "churn_constant_fill"):
        r = httpx.post(f"{server.url}/v1/models/{name}/predict", json=row)
        assert r.status_code == 200, (name, r.text)


def _refused(tmp_path: Path, model: Any, sample: pd.DataFrame | None) -> str:
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    with pytest.raises(ConversionError) as info:
        convert(path, name="refused", version="1", repo=tmp_path / "repo", sample=sample)
    assert not (tmp_path / "repo" / "refused").exists()
    return str(info.value)


def test_an_imputer_with_indicator_is_refused_by_name(tmp_path):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    x = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0] * 10, "b": np.arange(40.0)})
    model = make_pipeline(SimpleImputer(add_indicator=True), LogisticRegression()).fit(x, np.arange(40) % 2)
    assert "add_indicator" in _refused(tmp_path, model, x)


def test_none_learnt_as_a_category_is_refused_by_column(tmp_path):
    """An object column holding Python None: scikit-learn's encoder learns None as a
    category while its imputer leaves it alone, and a client's null could only ever be
    imputed; serving it would silently predict something else for those rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    x = pd.DataFrame({"job": pd.Series(["a", "b", None, "a"] * 10, dtype=object), "n": np.arange(40.0)})
    model = make_pipeline(
        ColumnTransformer([
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder()), ["job"]),
            ("num", "passthrough", ["n"]),
        ]),
        LogisticRegression(),
    ).fit(x, np.arange(40) % 2)  # fmt: skip
    message = _refused(tmp_path, model, x)
    assert "'job'" in message and "None" in message


def test_an_unsupported_estimator_is_named_with_a_pointer_to_the_list(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    x = pd.DataFrame({"a": np.linspace(0, 1, 40), "b": np.linspace(1, 2, 40)})
    model = make_pipeline(SplineTransformer(), LogisticRegression()).fit(x, np.arange(40) % 2)
    message = _refused(tmp_path, model, x)
    assert "unsupported estimator SplineTransformer" in message and "README's Supported section" in message
    assert "\n" not in message and len(message) < 300, message  # a pointer, never a hundred names


def test_a_sample_the_records_api_would_refuse_fails_parity_with_the_row(tmp_path):
    """Parity runs through the records codec, so a sample value the API would refuse is a
    convert error naming the row, not a verified model that fails in production."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    frame, y = churn_frame(200)
    model = make_pipeline(churn_preprocessor(), LogisticRegression(max_iter=500)).fit(frame, y)
    sample = frame.copy()
    sample.loc[7, "monthly.charges"] = np.inf
    message = _refused(tmp_path, model, sample)
    assert message.startswith("parity") and "row 7" in message


def test_cli_failures_are_exit_2_with_one_line_never_a_traceback(tmp_path):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0] * 15, "b": np.arange(60.0)})
    model = make_pipeline(SimpleImputer(add_indicator=True), LogisticRegression()).fit(
        frame, np.arange(60) % 2
    )
    joblib.dump(model, tmp_path / "m.joblib")
    frame.to_csv(tmp_path / "sample.csv", index=False)
    for model, sample in (("m.joblib", "sample.csv"), ("m.joblib", "missing.csv")):
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "convert", str(tmp_path / model), "--name", "m",
             "--version", "1", "--repo", str(tmp_path / "repo"), "--sample", str(tmp_path / sample)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "error:" in result.stderr, result.stderr


def _v2_binary(url: str, name: str, data: np.ndarray, datatype: str) -> httpx.Response:
    header = (
        f'{{"inputs": [{{"name": "input", "shape": {list(data.shape)}, "datatype": "{datatype}", '
        f'"parameters": {{"binary_data_size": {data.nbytes}}}}}]}}'
    ).encode()
    return httpx.post(
        f"{url}/v2/models/{name}/infer",
        content=header + data.tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )


@pytest.mark.slow
@ZOO_TIMEOUT
def test_v2_nan_is_a_missing_value_exactly_where_records_accept_null(zoo):
    cases, _, server = zoo
    rows = {
        c.name: c.test.iloc[:2].to_numpy(np.float64).copy()
        for c in cases
        if c.name in ("bc_hgb", "bc_logreg")
    }
    for data in rows.values():
        data[0, 3] = np.nan
    assert _v2_binary(server.url, "bc_hgb", rows["bc_hgb"], "FP64").status_code == 200  # HGB routes NaN
    refused = _v2_binary(server.url, "bc_logreg", rows["bc_logreg"], "FP64")
    assert refused.status_code == 422 and "NaN" in refused.text
    record = _records(next(c for c in cases if c.name == "bc_logreg").test.iloc[:1])[0]
    record[next(iter(record))] = None
    assert httpx.post(f"{server.url}/v1/models/bc_logreg/predict", json=record).status_code == 422


def test_an_onnx_file_reading_data_outside_its_folder_is_refused(tmp_path):
    """An initializer's external data at '../secret.bin' would make the served model read a
    file that no sha256 covers: convert refuses it and writes nothing."""
    from onnx import TensorProto, helper, numpy_helper

    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [weight],
    )  # fmt: skip
    path = folder / "model.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    with pytest.raises(ConversionError) as info:
        convert(path, name="outside", version="1", repo=tmp_path / "repo")
    assert str(info.value).startswith(("load", "convert")), info.value
    assert "secret.bin" in str(info.value) or "external" in str(info.value).lower(), info.value
    assert not (tmp_path / "repo" / "outside").exists()
