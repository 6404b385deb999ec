"""The records API's contract follows the pipeline, not the sample: columns the model drops
are ignored, nulls are taken where the pipeline imputes (strings too), unknown categories are
served where the encoder ignores them and refused with the allowed ones listed where it does
not, integer columns take whole floats, and a conversion without a sample gets its types from
the fitted transformers. The same rules hold offline (gateway.scoring.columns)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from converters import ConversionError, convert
from gateway.artifacts.manifest import Manifest
from gateway.errors import Unprocessable
from gateway.records.codec import RecordCodec
from gateway.runtime import OrtRuntime
from gateway.scoring.columns import ColumnCodec
from tests.conftest import ROOT

STATES = ["CA", "NY", "TX", "WA"]


def _signups(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A notebook's table: an id, a date and notes the model drops, numbers, categories."""
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "signup": [f"2022-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(n)],
            "notes": rng.choice(["called twice", "vip", "", "moved"], n),
            "age": rng.integers(18, 80, n),
            "income": rng.normal(50.0, 12.0, n).round(1),
            "state": rng.choice(STATES, n),
            "plan": rng.choice(["basic", "plus", "pro"], n),
            "children": rng.integers(0, 4, n),
        }
    )
    frame.loc[rng.random(n) < 0.1, "income"] = np.nan
    return frame


def _pipeline() -> Any:
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income"]),
            (
                "state",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
                ),
                ["state"],
            ),
            ("plan", OneHotEncoder(), ["plan"]),  # handle_unknown="error"
            ("kids", OrdinalEncoder(), ["children"]),
        ],
        remainder="drop",
    )
    return make_pipeline(pre, LogisticRegression(max_iter=1000))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pd.DataFrame, Path]:
    rng = np.random.default_rng(3)
    frame = _signups(400, rng)
    y = ((frame["age"] > 45) ^ (frame["state"] == "TX")).astype(int)
    model = _pipeline().fit(frame, y)
    folder = tmp_path_factory.mktemp("contract")
    joblib.dump(model, folder / "model.joblib")
    return model, frame, folder


@pytest.fixture(scope="module")
def with_sample(fitted: tuple[Any, pd.DataFrame, Path]) -> Manifest:
    _model, frame, folder = fitted
    return convert(folder / "model.joblib", name="signups", version="1", repo=folder / "repo", sample=frame)


@pytest.fixture(scope="module")
def without_sample(fitted: tuple[Any, pd.DataFrame, Path]) -> Manifest:
    _model, _frame, folder = fitted
    return convert(folder / "model.joblib", name="signups", version="2", repo=folder / "repo")


def _serve(folder: Path, manifest: Manifest, body: Any) -> list[dict[str, Any]]:
    """What `gateway serve` answers to a records body: the codec, ONNX Runtime, the encoder."""
    model_bytes = (folder / "repo" / manifest.name / manifest.version / "model.onnx").read_bytes()
    codec = RecordCodec(manifest, max_rows=64)
    feeds, _ = codec.to_feeds(*codec.decode(msgspec.json.encode(body)))
    outputs = OrtRuntime(model_bytes, provider="cpu", name=manifest.name).run(feeds)
    return list(msgspec.json.decode(codec.encode(outputs)))


def _row(**overrides: Any) -> dict[str, Any]:
    base = {"id": 7, "signup": "2022-06-01", "notes": "vip", "age": 40, "income": 51.5,
            "state": "CA", "plan": "plus", "children": 2}  # fmt: skip
    return {**base, **overrides}


def _expected(model: Any, record: dict[str, Any]) -> np.ndarray:
    full = {**_row(), **record}
    frame = pd.DataFrame([{k: np.nan if v is None else v for k, v in full.items()}])
    frame["state"] = frame["state"].astype(object)
    return np.asarray(model.predict_proba(frame)[0])


def _probabilities(answer: list[dict[str, Any]]) -> np.ndarray:
    return np.array(list(answer[0]["probabilities"].values()))


def _refusal(manifest: Manifest, body: Any) -> str:
    codec = RecordCodec(manifest, max_rows=64)
    with pytest.raises(Unprocessable) as caught:
        codec.to_feeds(*codec.decode(msgspec.json.encode(body)))
    detail = caught.value.detail[0]
    return f"{detail['loc']}: {detail['msg']}"


def test_columns_the_pipeline_drops_are_ignored_and_never_reach_the_graph(fitted, with_sample):
    model, _, folder = fitted
    ignored = {f.name for f in with_sample.features if f.ignored}
    assert ignored == {"id", "signup", "notes"}
    assert {s.name for s in with_sample.inputs} == {"age", "income", "state", "plan", "children"}
    # Any value, of any type, or none at all: a date never seen, an object, a list.
    odd = _row(signup="2099-12-31", id={"nested": [1, 2]}, notes=None)
    absent = {k: v for k, v in _row().items() if k not in ignored}
    for record in (odd, absent):
        got = _probabilities(_serve(folder, with_sample, record))
        np.testing.assert_allclose(got, _expected(model, absent), atol=1e-6)
    # Sent as columns, an ignored column may be short, absent or anything.
    columns = {k: [v, v] for k, v in absent.items()} | {"signup": "whatever"}
    assert len(_serve(folder, with_sample, {"inputs": columns})) == 2


def test_an_imputed_string_column_takes_null(fitted, with_sample):
    model, _, folder = fitted
    state = next(f for f in with_sample.features if f.name == "state")
    assert state.nullable and state.categories == STATES
    got = _probabilities(_serve(folder, with_sample, _row(state=None)))
    np.testing.assert_allclose(got, _expected(model, {"state": None}), atol=1e-6)
    # plan has no imputer: null is refused.
    assert "got `null`" in _refusal(with_sample, _row(plan=None))


def test_unknown_categories_follow_the_encoders_handle_unknown(fitted, with_sample):
    model, _, folder = fitted
    got = _probabilities(_serve(folder, with_sample, _row(state="OR")))
    np.testing.assert_allclose(got, _expected(model, {"state": "OR"}), atol=1e-6)
    refused = _refusal(with_sample, _row(plan="platinum"))
    assert refused == (
        "['body', 'plan']: Invalid enum value 'platinum'; expected one of 'basic', 'plus', 'pro'"
    )


def test_an_integer_column_takes_whole_floats_and_refuses_fractions(fitted, with_sample):
    _model, _, folder = fitted
    age = next(f for f in with_sample.features if f.name == "age")
    assert age.dtype == "int64"
    whole = _probabilities(_serve(folder, with_sample, _row(age=70.0)))
    np.testing.assert_array_equal(whole, _probabilities(_serve(folder, with_sample, _row(age=70))))
    refused = _refusal(with_sample, {"instances": [_row(), _row(age=70.5)]})
    assert refused.startswith("['body', 'instances', 1, 'age']: Expected `int`, got 70.5"), refused


def test_without_a_sample_the_types_come_from_the_pipeline(fitted, without_sample):
    model, frame, folder = fitted
    by_name = {f.name: f for f in without_sample.features}
    assert [f.name for f in without_sample.features] == list(frame.columns)
    assert {n for n, f in by_name.items() if f.ignored} == {"id", "signup", "notes"}
    assert by_name["state"].dtype == "string" and by_name["state"].nullable
    assert by_name["state"].open_categories and by_name["state"].categories == STATES
    assert by_name["plan"].categories == ["basic", "plus", "pro"] and not by_name["plan"].open_categories
    # An ordinal encoder that learnt whole numbers: the column holds integers.
    assert by_name["children"].dtype == "int64" and (by_name["children"].min, by_name["children"].max) == (
        0,
        3,
    )
    assert by_name["age"].nullable and by_name["income"].nullable  # behind an imputer
    record = _row(state=None, age=33.0)
    got = _probabilities(_serve(folder, without_sample, record))
    np.testing.assert_allclose(got, _expected(model, record), atol=1e-6)


def test_offline_scoring_applies_the_same_contract(with_sample):
    rows = [_row(), _row(state="OR"), _row(age=70.0), _row(age=70.5), _row(plan="platinum"), _row(state=None)]
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k not in ("id", "notes")} for r in rows])
    codec = ColumnCodec(with_sample)
    codec.check_schema(table.schema)  # the ignored columns may be absent
    checked = codec.check(table)
    assert checked.rejected.tolist() == [3, 4]
    assert checked.field == ["age", "plan"]
    assert checked.reason[0].startswith("Expected `int`, got 70.5")
    assert checked.reason[1] == "Invalid enum value 'platinum'; expected one of 'basic', 'plus', 'pro'"


def test_a_csv_saved_with_its_index_is_told_so(fitted, tmp_path):
    _model, frame, folder = fitted
    csv = tmp_path / "train.csv"
    frame.to_csv(csv)  # index=True, pandas' default
    from converters import load_sample

    with pytest.raises(ConversionError) as caught:
        convert(folder / "model.joblib", name="indexed", version="1", repo=tmp_path / "repo",
                sample=load_sample(csv))  # fmt: skip
    message = str(caught.value)
    assert "'Unnamed: 0' is the row index pandas wrote with to_csv" in message and "index=False" in message
    assert "\n" not in message


def test_convert_prints_the_contract_and_models_show_shows_it(fitted, tmp_path):
    _model, frame, folder = fitted
    csv = tmp_path / "train.csv"
    frame.to_csv(csv, index=False)
    repo = tmp_path / "repo"
    cli = [sys.executable, "-m", "gateway.cli"]
    converted = subprocess.run(
        [*cli, "convert", str(folder / "model.joblib"), "--name", "signups", "--version", "1",
         "--repo", str(repo), "--sample", str(csv)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    shown = subprocess.run([*cli, "models", "show", "signups", "--repo", str(repo)],
                           capture_output=True, text=True, cwd=ROOT, check=True)  # fmt: skip
    for out in (converted.stdout, shown.stdout):
        lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
        assert lines["COLUMN"].split() == ["COLUMN", "TYPE", "NULL", "ACCEPTS"]
        assert "ignored" in lines["signup"] and "ignored" in lines["id"]
        assert (
            lines["state"].split()[1:3] == ["string", "yes"]
            and "others accepted and counted" in lines["state"]
        )
        assert "basic, plus, pro; others refused" in lines["plan"] and lines["plan"].split()[2] == "no"
        assert lines["age"].split()[1:3] == ["int64", "yes"] and "trained range [18, 79]" in lines["age"]
    assert '"ignored": true' in shown.stdout


def test_a_manifest_written_before_these_fields_still_loads(with_sample):
    from gateway.artifacts.manifest import decode_manifest, encode_manifest

    data = msgspec.json.decode(encode_manifest(with_sample))
    assert any(f.get("ignored") for f in data["features"])  # written where they are not defaults
    for f in data["features"]:
        f.pop("ignored", None)
        f.pop("open_categories", None)
    old = decode_manifest(msgspec.json.encode(data))
    assert not any(f.ignored or f.open_categories for f in old.features)
    RecordCodec(old, max_rows=4)  # and the records API builds its codec from it
