"""Validation generated from a manifest with categories, nulls and ranges, over real HTTP;
several workers sharing one port.

Covers `gateway/errors.py`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import joblib
import msgspec
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from converters import convert
from gateway.errors import Unprocessable
from tests.conftest import start_server


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A pipeline over numeric columns (one with gaps) and two text categories."""
    tmp = tmp_path_factory.mktemp("mixed")
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    frame = x[["age", "bmi", "bp"]].copy()
    frame["sex"] = np.where(x["sex"] > 0, "male", "female")
    frame["region"] = np.array(["north", "south", "east"])[np.arange(len(x)) % 3]
    frame.loc[::13, "bmi"] = np.nan
    target = (y > y.median()).astype(int)
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "bmi", "bp"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex", "region"]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))]).fit(frame, target)
    joblib.dump(model, tmp / "mixed.joblib")
    convert(tmp / "mixed.joblib", name="mixed", version="1", repo=tmp / "repo", sample=frame)
    return tmp / "repo", frame, model


@pytest.fixture(scope="module")
def mixed_server(mixed, tmp_path_factory):
    srv = start_server(mixed[0], tmp_path_factory.mktemp("mixed-srv"), "--log-level", "warning")
    yield srv
    srv.stop()


def _record(**overrides):
    base = {"age": 0.01, "bmi": 0.02, "bp": -0.01, "sex": "male", "region": "north"}
    return {**base, **overrides}


def test_mixed_records_match_the_original_model(mixed, mixed_server):
    _, frame, model = mixed
    rows = frame.iloc[:25]
    records = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in rows.to_dict(orient="records")
    ]
    r = httpx.post(f"{mixed_server.url}/v1/models/mixed/predict", json={"instances": records})
    assert r.status_code == 200, r.text
    got = np.array([[p["probabilities"]["0"], p["probabilities"]["1"]] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, model.predict_proba(rows), atol=1e-5)


@pytest.mark.parametrize(
    ("record", "loc", "fragment"),
    [
        (_record(region=3), ["body", "region"], "Expected `str`"),
        (_record(sex=3), ["body", "sex"], "Expected"),
        (_record(sex=None), ["body", "sex"], "got `null`"),
        ({k: v for k, v in _record().items() if k != "bp"}, ["body", "bp"], "missing required field"),
    ],
)
def test_schema_violations_name_the_field(mixed_server, record, loc, fragment):
    r = httpx.post(f"{mixed_server.url}/v1/models/mixed/predict", json=record)
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == loc and fragment in detail["msg"], detail


def test_an_unknown_category_is_served_and_counted_where_the_encoder_ignores_it(mixed, mixed_server):
    _, _frame, model = mixed
    r = httpx.post(f"{mixed_server.url}/v1/models/mixed/predict", json=_record(region="mars"))
    assert r.status_code == 200, r.text
    want = model.predict_proba(pd.DataFrame([_record(region="mars")]))[0]
    np.testing.assert_allclose(list(r.json()["predictions"][0]["probabilities"].values()), want, atol=1e-6)
    metrics = httpx.get(f"{mixed_server.url}/metrics").text
    counted = [
        line for line in metrics.splitlines() if line.startswith("gateway_feature_unknown_category_total")
    ]
    assert any('feature="region"' in line and line.endswith(" 1") for line in counted), counted


def test_null_is_accepted_where_the_model_imputes(mixed_server):
    r = httpx.post(f"{mixed_server.url}/v1/models/mixed/predict", json=_record(bmi=None))
    assert r.status_code == 200, r.text


def test_range_policy_reject_and_clip(mixed, tmp_path):
    repo, frame, model = mixed
    too_old = float(frame["age"].max()) + 1.0
    srv = start_server(repo, tmp_path, "--range-policy", "reject", "--log-level", "warning")
    try:
        r = httpx.post(
            f"{srv.url}/v1/models/mixed/predict", json={"instances": [_record(), _record(age=too_old)]}
        )
        assert r.status_code == 422
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "instances", 1, "age"] and "trained range" in detail["msg"]
    finally:
        srv.stop()
    srv = start_server(repo, tmp_path, "--range-policy", "clip", "--log-level", "warning")
    try:
        r = httpx.post(f"{srv.url}/v1/models/mixed/predict", json=_record(age=too_old))
        assert r.status_code == 200
        clipped = pd.DataFrame([_record(age=float(frame["age"].max()))])
        expected = model.predict_proba(clipped)[0, 1]
        assert r.json()["predictions"][0]["probabilities"]["1"] == pytest.approx(expected, abs=1e-5)
    finally:
        srv.stop()


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing spawn children, not its resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.exists() else []
    found = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except FileNotFoundError:
            pass
    return found


def test_several_workers_share_the_port_and_a_killed_one_is_replaced(demo_repo, tmp_path):
    srv = start_server(demo_repo, tmp_path, "--workers", "2", "--log-level", "warning")
    try:
        features = httpx.get(f"{srv.url}/openapi.json").json()["components"]["schemas"]["diabetes_record"][
            "required"
        ]
        record = dict.fromkeys(features, 0.01)
        workers = _workers(srv.process.pid)
        assert len(workers) == 2, workers
        with httpx.Client() as client:
            assert all(
                client.post(f"{srv.url}/v1/models/diabetes/predict", json=record).status_code == 200
                for _ in range(20)
            )
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        answered = 0
        while time.monotonic() < deadline and answered < 20:
            try:
                with httpx.Client() as client:  # fresh connections: the dead worker's are gone
                    if client.post(f"{srv.url}/v1/models/diabetes/predict", json=record).status_code == 200:
                        answered += 1
            except httpx.HTTPError:
                time.sleep(0.05)
        assert answered == 20
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(set(_workers(srv.process.pid)) - {workers[0]}) < 2:
            time.sleep(0.1)
        alive = set(_workers(srv.process.pid))
        assert workers[0] not in alive and workers[1] in alive and len(alive) == 2, alive
    finally:
        srv.stop()


def test_trained_bounds_are_inside_the_range_in_the_models_own_dtype(float32_repo):
    """Records for a float32 matrix are built in float32; a value at a trained bound must
    not be rounded past it and refused (28.11 becomes 28.1100006 in float32)."""
    from gateway.artifacts.repository import Repository
    from gateway.records.codec import RecordCodec

    manifest = Repository(float32_repo).manifest("breast_cancer", "1")
    assert manifest.layout == "matrix" and manifest.inputs[0].datatype == "FP32"
    codec = RecordCodec(manifest, max_rows=16, policy_override="reject")
    at_max = {f.name: f.max for f in manifest.features}
    records, single = codec.decode(msgspec.json.encode(at_max))
    feeds, rows = codec.to_feeds(records, single)
    assert rows == 1 and feeds[manifest.inputs[0].name].dtype == np.float32
    above = {**at_max, manifest.features[0].name: manifest.features[0].max * 1.01}
    with pytest.raises(Unprocessable):
        codec.to_feeds(*codec.decode(msgspec.json.encode(above)))


def test_columns_answer_as_the_same_records(mixed, mixed_server):
    """`{"inputs": {feature: [values]}}` (TF Serving's columnar form, pandas' to_dict("list")),
    with nulls and text categories, answers exactly as the same rows sent as records."""
    _, frame, _ = mixed
    rows = frame.iloc[:40].astype(object).where(frame.iloc[:40].notna(), None)
    url = f"{mixed_server.url}/v1/models/mixed/predict"
    as_records = httpx.post(url, json={"instances": rows.to_dict(orient="records")})
    as_columns = httpx.post(url, json={"inputs": rows.to_dict(orient="list")})
    assert as_records.status_code == as_columns.status_code == 200, as_columns.text
    assert as_columns.json() == as_records.json()
    packed = httpx.post(
        url,
        content=msgspec.msgpack.encode({"inputs": rows.to_dict(orient="list")}),
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert msgspec.msgpack.decode(packed.content) == as_records.json()


def _columns(rows=3, **overrides):
    base = {"age": [0.01] * rows, "bmi": [0.02, None, 0.0][:rows], "bp": [-0.01] * rows,
            "sex": ["male"] * rows, "region": ["north", "south", "east"][:rows]}  # fmt: skip
    return {"inputs": {**base, **overrides}}


@pytest.mark.parametrize(
    ("body", "status", "loc", "fragment"),
    [
        (_columns(region=["north", 7, "east"]), 422, ["body", "inputs", "region", 1], "Expected `str`"),
        (_columns(age=[0.01, 0.02, "old"]), 422, ["body", "inputs", "age", 2], "Expected `float"),
        (_columns(sex=["male", None, "male"]), 422, ["body", "inputs", "sex", 1], "got `null`"),
        (_columns(age=0.01), 422, ["body", "inputs", "age"], "Expected `array`"),
        (
            {"inputs": {k: v for k, v in _columns()["inputs"].items() if k != "bp"}},
            422,
            ["body", "inputs", "bp"],
            "missing required field",
        ),
        (_columns(colour=[1, 2, 3]), 422, ["body", "inputs", "colour"], "unknown field"),
        (_columns(bp=[0.1, 0.2]), 422, ["body", "inputs", "bp"], "2 values where 'age' has 3"),
        (_columns(rows=0), 422, ["body", "inputs"], "empty"),
        ({**_columns(), "instances": []}, 422, ["body", "inputs"], "unknown field"),  # one form a body
        (_columns(age=[0.01, float("nan"), 0.0]), 400, None, "malformed"),
    ],
)
def test_column_violations_name_the_column_and_row(mixed_server, body, status, loc, fragment):
    content = msgspec.json.encode(body) if loc is not None else b'{"inputs": {"age": [NaN]}}'
    r = httpx.post(f"{mixed_server.url}/v1/models/mixed/predict", content=content,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == status, r.text
    if loc is not None:
        detail = r.json()["detail"][0]
        assert detail["loc"] == loc and fragment in detail["msg"], detail
    else:
        assert fragment in r.json()["error"]


def test_columns_beyond_the_row_limit_are_refused(mixed, tmp_path):
    srv = start_server(mixed[0], tmp_path, "--max-request-rows", "4", "--log-level", "warning")
    try:
        url = f"{srv.url}/v1/models/mixed/predict"
        body = {"inputs": {k: v * 2 for k, v in _columns()["inputs"].items()}}
        assert httpx.post(url, json=body).status_code == 413
        assert httpx.post(url, json=_columns()).status_code == 200
        # Quotes and commas inside strings do not count as values: three rows, served (the
        # encoder ignores the unknown region).
        odd = httpx.post(url, json=_columns(rows=3, region=["north", 'so"u,t,h, ea"st', "east"]))
        assert odd.status_code == 200 and len(odd.json()["predictions"]) == 3, odd.text
    finally:
        srv.stop()


@pytest.mark.parametrize("column", ["age", "region"])
@pytest.mark.parametrize("packed", [False, True])
def test_a_column_of_tiny_values_is_refused_before_it_is_decoded(mixed_server, column, packed):
    """Two bytes a value ("1," or msgpack's one) would decode to 16-32 times the body's
    size in Python objects: the column's length is bounded from its raw bytes first, so
    a body within the model's byte bound still cannot make it allocate."""
    # Within the model's body bound (1.6 MB here): 700,000 values of 1 or 350,000 of "x".
    values = [1] * 700_000 if column == "age" else ["x"] * 350_000
    body = {"inputs": {**_columns()["inputs"], column: values}}
    if packed:
        content, kind = msgspec.msgpack.encode(body), "application/msgpack"
    else:
        content, kind = msgspec.json.encode(body), "application/json"
    started = time.perf_counter()
    r = httpx.post(f"{mixed_server.url}/v1/models/mixed/predict", content=content,
                   headers={"content-type": kind}, timeout=30)  # fmt: skip
    assert r.status_code == 413, r.text
    assert f"column {column!r} holds more than" in r.json()["error"]
    assert time.perf_counter() - started < 2.0


def test_column_range_violation_names_column_and_row(mixed, tmp_path):
    repo, frame, _ = mixed
    srv = start_server(repo, tmp_path, "--range-policy", "reject", "--log-level", "warning")
    try:
        body = _columns(age=[0.01, 0.02, float(frame["age"].max()) + 1.0])
        r = httpx.post(f"{srv.url}/v1/models/mixed/predict", json=body)
        assert r.status_code == 422
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "inputs", "age", 2] and "trained range" in detail["msg"]
        # The same rows as V2 tensors meet the same policy: no door around it.
        inputs = httpx.get(f"{srv.url}/v2/models/mixed").json()["inputs"]
        columns = {**body["inputs"], "bmi": [0.02, 0.03, 0.0]}  # V2 JSON has no null

        def v2(columns):
            return {"inputs": [{"name": i["name"], "shape": [3, 1], "datatype": i["datatype"],
                                "data": columns[i["name"]]} for i in inputs]}  # fmt: skip

        r = httpx.post(f"{srv.url}/v2/models/mixed/infer", json=v2(columns))
        assert r.status_code == 422, r.text
        assert "row 2, feature 'age'" in r.json()["detail"][0]["msg"] and "trained range" in r.text
        r = httpx.post(f"{srv.url}/v2/models/mixed/infer", json=v2({**columns, "age": [0.01, 0.02, 0.03]}))
        assert r.status_code == 200, r.text
    finally:
        srv.stop()


@pytest.mark.parametrize("packed", [False, True])
def test_many_small_records_are_refused_before_they_are_decoded(mixed_server, packed):
    """25,000 short records fit the model's byte bound (1.6 MB) and would all be built
    before the row limit (4,096) is known: the list is counted from its raw bytes first."""
    record = {"age": 1, "bmi": None, "bp": 1, "sex": "male", "region": "east"}
    body = {"instances": [record] * 25_000}
    if packed:
        content, kind = msgspec.msgpack.encode(body), "application/msgpack"
    else:
        content, kind = msgspec.json.encode(body), "application/json"
    r = httpx.post(f"{mixed_server.url}/v1/models/mixed/predict", content=content,
                   headers={"content-type": kind}, timeout=30)  # fmt: skip
    assert r.status_code == 413, r.text
    assert "more than 4096 instances" in r.json()["error"]
