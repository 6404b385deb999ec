"""/openapi.json describes every route, validates as OpenAPI 3.1, and allows what the server
accepts: its examples are answered 200, and what it refuses the server refuses. /docs works
with no way out (no external URL) and has a try-it form per model filled from its example.

Covers `gateway/docs/examples.py`, `gateway/docs/openapi.py`, `gateway/docs/page.py`."""

from __future__ import annotations

import copy
import re
from urllib.parse import urljoin

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.settings import Settings


@pytest.fixture(scope="module")
def spec(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    validate(document)
    return document


def _validator(spec, schema) -> OAS31Validator:
    """The schema with the document's components beside it, so its "#/components/..." refs resolve."""
    return OAS31Validator({**schema, "components": spec["components"]})


def _body(spec, path):
    content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return content["schema"], content["example"]


def _concrete(path: str, spec) -> str:
    """A path template with each parameter set to the first value its schema allows."""
    for method in spec["paths"][path].values():
        for parameter in method.get("parameters", []):
            value = parameter["schema"].get("enum", ["1"])[0]
            path = path.replace("{" + parameter["name"] + "}", value)
    return path


def test_every_route_is_documented(spec, demo_repo):
    app = create_app(Settings(repo=str(demo_repo)))
    while not hasattr(app, "routes"):  # the hot-path router and middleware wrap Starlette
        app = app.app
    documented = set(spec["paths"])
    names = ["breast_cancer", "diabetes"]
    for route in app.routes:
        candidates = {route.path} | {route.path.replace("{name}", n) for n in names}
        assert candidates & documented, f"{route.path} is not in /openapi.json"
        # predict and infer are plain ASGI endpoints (no method list): they take POST
        methods = set(route.methods) - {"HEAD"} if route.methods else {"POST"}
        for path in candidates & documented:
            assert methods == {m.upper() for m in spec["paths"][path]}, path


def test_the_hot_path_routes_are_documented(spec):
    """predict and infer reach their endpoints through HotPathRouter, not Starlette's routes
    (which the test above walks): they are documented all the same, POST only."""
    for name in ("breast_cancer", "diabetes"):
        for path in (f"/v1/models/{name}/predict", f"/v1/models/{name}/versions/{{version}}/predict",
                     f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/{{version}}/infer"):  # fmt: skip
            assert set(spec["paths"][path]) == {"post"}, path


def test_v2_schemas_are_complete(spec):
    request = spec["components"]["schemas"]["breast_cancer_infer_request"]
    assert {"id", "parameters", "inputs", "outputs"} <= set(request["properties"])
    assert request["additionalProperties"] is False
    outputs = request["properties"]["outputs"]["items"]["properties"]
    assert outputs["name"]["enum"] == ["label", "probabilities"]
    assert {"binary_data", "classification"} <= set(outputs["parameters"]["properties"])
    assert {"binary_data_output", "timeout"} <= set(request["properties"]["parameters"]["properties"])
    infer = spec["paths"]["/v2/models/breast_cancer/infer"]["post"]
    assert "Inference-Header-Content-Length" in infer["description"]
    assert "application/octet-stream" in infer["requestBody"]["content"]


def test_every_example_is_valid_and_answered(spec, server):
    sent = 0
    for path, ops in spec["paths"].items():
        op = ops.get("post")
        if (
            op is None
            or "requestBody" not in op
            or "example" not in op["requestBody"]["content"]["application/json"]
        ):
            continue
        schema, example = _body(spec, path)
        _validator(spec, schema).validate(example)
        r = httpx.post(server.url + _concrete(path, spec), json=example)
        assert r.status_code == 200, (path, r.text)
        _validator(spec, op["responses"]["200"]["content"]["application/json"]["schema"]).validate(r.json())
        sent += 1
    assert sent == 12  # predict, explain and infer, live and versioned, for both models
    for path, ops in spec["paths"].items():
        if "get" in ops and not path.startswith("/admin"):
            r = httpx.get(server.url + _concrete(path, spec))
            documented = next(iter(ops["get"]["responses"]))  # 200, or 307 for / (to the docs)
            assert r.status_code == int(documented), (path, r.text)


def _mutations(example_v1, example_v2):
    unknown = {**example_v1, "colour": 1}
    wrong_type = {**example_v1, "age": "old"}
    missing = {k: v for k, v in example_v1.items() if k != "age"}
    v2_extra = {**example_v2, "tensor": 1}
    v2_dtype = copy.deepcopy(example_v2)
    v2_dtype["inputs"][0]["datatype"] = "FP16"
    v2_name = copy.deepcopy(example_v2)
    v2_name["inputs"][0]["name"] = "nope"
    v2_output = {**example_v2, "outputs": [{"name": "nope"}]}
    v2_rank = copy.deepcopy(example_v2)
    v2_rank["inputs"][0]["shape"] = [1, 10, 1]
    return [
        ("/v1/models/diabetes/predict", unknown),
        ("/v1/models/diabetes/predict", wrong_type),
        ("/v1/models/diabetes/predict", missing),
        ("/v1/models/diabetes/predict", {"instances": []}),
        ("/v1/models/diabetes/predict", {"inputs": {k: [v] for k, v in unknown.items()}}),
        ("/v1/models/diabetes/predict", {"inputs": {k: [v] for k, v in missing.items()}}),
        ("/v1/models/diabetes/predict", {"inputs": {k: [] for k in example_v1}}),
        ("/v1/models/diabetes/predict", {"inputs": example_v1}),
        ("/v2/models/diabetes/infer", v2_extra),
        ("/v2/models/diabetes/infer", v2_dtype),
        ("/v2/models/diabetes/infer", v2_name),
        ("/v2/models/diabetes/infer", v2_output),
        ("/v2/models/diabetes/infer", v2_rank),
    ]


def test_the_columnar_form_of_each_example_is_valid_and_answered_alike(spec, server):
    for name in ("diabetes", "breast_cancer"):
        path = f"/v1/models/{name}/predict"
        schema, example = _body(spec, path)
        columns = {"inputs": {k: [v, v] for k, v in example.items()}}
        _validator(spec, schema).validate(columns)
        got = httpx.post(server.url + path, json=columns)
        assert got.status_code == 200, got.text
        one = httpx.post(server.url + path, json=example).json()["predictions"]
        assert got.json()["predictions"] == one * 2


def test_what_the_schema_refuses_the_server_refuses(spec, server):
    _, v1 = _body(spec, "/v1/models/diabetes/predict")
    _, v2 = _body(spec, "/v2/models/diabetes/infer")
    for path, body in _mutations(v1, v2):
        schema, _ = _body(spec, path)
        assert not _validator(spec, schema).is_valid(body), (path, body)
        r = httpx.post(server.url + path, json=body)
        assert 400 <= r.status_code < 500, (path, body, r.status_code)


def test_docs_page_is_self_contained_with_a_form_per_model(spec, server):
    page = httpx.get(f"{server.url}/docs").text
    assert not re.search(r"https?:|//[a-z]", page, re.IGNORECASE), "the page must not reach outside"
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page), "no assets from anywhere"
    assert page.count('data-kind="records"') == 2 and page.count('data-kind="v2"') == 2
    _, example = _body(spec, "/v1/models/diabetes/predict")
    for name, value in example.items():
        assert f'data-feature="{name}" data-type="number" data-nullable="1" value="{value}"' in page
    assert "in the sample given at conversion" in page  # the trained ranges are shown
    assert "<table>" in page and "/v2/models/{name}/config" in page


def test_docs_form_offers_categories_and_shows_ranges():
    """A categorical feature is a choice among its categories (and none, when nullable)."""
    from gateway.docs.page import docs_page

    record = {
        "type": "object",
        "properties": {
            "plan": {
                "anyOf": [{"enum": ["basic", "pro"]}, {"type": "null"}],
                "description": "one of ['basic', 'pro']",
            },
            "tenure": {
                "type": "number",
                "description": "float64, seen in training from 0 to 72 (outside: reject)",
            },
        },
    }
    op = {
        "tags": ["churn"],
        "requestBody": {"content": {"application/json": {
            "schema": {"oneOf": [{"$ref": "#/components/schemas/churn_record"}]},
            "example": {"plan": "pro", "tenure": 12.0},
        }}},
    }  # fmt: skip
    spec = {
        "info": {"version": "1"},
        "paths": {"/v1/models/churn/predict": {"post": op}},
        "components": {"schemas": {"churn_record": record}},
    }
    page = docs_page(spec)
    select = re.search(r'<select data-feature="plan"[^>]*>(.*?)</select>', page).group(1)
    assert select == '<option value=""></option><option>basic</option><option selected>pro</option>'
    assert 'data-feature="tenure" data-type="number" data-nullable="0" value="12.0" required>' in page
    # The range in words: where it comes from, and what happens outside it.
    assert "float64; from 0 to 72 in the sample given at conversion; a value outside is refused (422)" in page
    assert "one of [&#x27;basic&#x27;, &#x27;pro&#x27;]; may be left empty (sent as null)" in page


@pytest.mark.slow
def test_examples_of_a_model_with_categories_and_gaps_are_answered(tmp_path):
    """Text categories, a numeric column with gaps, a columns layout: the ready line's curl
    and the OpenAPI examples are requests this model accepts."""
    import json
    import subprocess

    import joblib
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from converters import convert
    from tests.conftest import start_server

    x, y = load_diabetes(return_X_y=True, as_frame=True)
    frame = x[["age", "bmi"]].copy()
    frame["sex"] = np.where(x["sex"] > 0, "male", "female")
    frame["region"] = np.array(["north", "south", "east"])[np.arange(len(x)) % 3]
    frame.loc[::13, "bmi"] = np.nan
    pre = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "bmi"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex", "region"])])  # fmt: skip
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))]).fit(frame, y > y.median())
    joblib.dump(model, tmp_path / "mixed.joblib")
    convert(tmp_path / "mixed.joblib", name="mixed", version="1", repo=tmp_path / "repo", sample=frame)
    srv = start_server(tmp_path / "repo", tmp_path, "--log-format", "json")
    try:
        spec = httpx.get(f"{srv.url}/openapi.json").json()
        validate(spec)
        for path in ("/v1/models/mixed/predict", "/v2/models/mixed/infer"):
            schema, example = _body(spec, path)
            _validator(spec, schema).validate(example)
            r = httpx.post(srv.url + path, json=example)
            assert r.status_code == 200, (path, example, r.text)
        assert spec["paths"]["/v1/models/mixed/predict"]["post"]["requestBody"]["content"]["application/json"][
            "example"]["region"] in ("north", "south", "east")  # fmt: skip
        ready = next(json.loads(line) for line in srv.log().splitlines() if '"msg":"ready"' in line)
        out = subprocess.run(
            ["bash", "-c", ready["try"][0]], capture_output=True, text=True, timeout=30
        ).stdout
        assert json.loads(out)["predictions"], out
        page = httpx.get(f"{srv.url}/docs").text
        # The encoder ignores unknown regions: the known ones are offered, others may be typed.
        assert re.search(r'<input [^>]*data-feature="region"[^>]*list="known-region">'
                         r'<datalist id="known-region"><option>east</option>', page)  # fmt: skip
    finally:
        srv.stop()


def test_home_redirects_to_the_docs_and_the_favicon_is_there(server):
    home = httpx.get(f"{server.url}/", follow_redirects=False)
    # Relative, so that behind a proxy's prefix (/ml/ -> /) the browser stays under /ml/.
    assert home.status_code == 307 and home.headers["location"] == "docs"
    assert httpx.get(f"{server.url}/", follow_redirects=True).text.startswith("<!doctype html>")
    icon = httpx.get(f"{server.url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg") and len(icon.content) < 1024


def test_docs_forms_work_under_a_path_prefix(server):
    """Every URL on the page is relative: served as /ml/docs, the forms post to /ml/v1/..."""
    page = httpx.get(f"{server.url}/docs").text
    paths = re.findall(r'data-path="([^"]+)"', page)
    assert paths and all(not p.startswith("/") for p in paths), paths
    assert "href='openapi.json'" in page
    for path in paths:
        assert urljoin("http://proxy/ml/docs", path).startswith("http://proxy/ml/v")


def test_docs_form_refuses_empty_required_fields_and_keeps_fractions():
    """What the script does with each field, decided by the attributes it reads."""
    from gateway.docs.page import _SCRIPT, docs_page

    record = {
        "type": "object",
        "properties": {
            "visits": {
                "type": "integer",
                "description": "int64, seen in training from 0 to 9 (outside: clip)",
            },
            "income": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        },
    }
    answer = {
        "type": "object",
        "properties": {
            "predictions": {
                "type": "array",
                "items": {"type": "object", "properties": {"label": {"enum": ["stays", "leaves"]}}},
            }
        },
    }
    op = {
        "tags": ["churn"],
        "requestBody": {"content": {"application/json": {
            "schema": {"oneOf": [{"$ref": "#/components/schemas/churn_record"}]},
            "example": {"visits": 3, "income": None},
        }}},
        "responses": {"200": {"content": {"application/json": {"schema": answer}}}},
    }  # fmt: skip
    spec = {
        "info": {"version": "1"},
        "paths": {"/v1/models/churn/predict": {"post": op}},
        "components": {"schemas": {"churn_record": record}},
    }
    page = docs_page(spec)
    assert '<input type="number" step="1" data-feature="visits" data-type="integer" data-nullable="0"' in page
    assert 'data-feature="income" data-type="number" data-nullable="1" value="">' in page  # not required
    assert "a value outside is moved to the nearer end" in page
    assert "predicts one of the classes stays, leaves" in page
    # No truncation (parseInt made 700.5 into 700), an empty required field is refused.
    assert "parseInt" not in _SCRIPT and "Number.isInteger(n)" in _SCRIPT
    assert "is required" in _SCRIPT and "is not a whole number" in _SCRIPT


NODE_HARNESS = """
const fields = JSON.parse(process.argv[1]);
function form(values) {
  const out = {textContent: ''};
  const els = fields.map(([name, type, nullable], i) => ({
    value: values[i], dataset: {feature: name, type: type, nullable: nullable ? '1' : '0'}, focus() {}}));
  return {out, querySelector: () => out, querySelectorAll: () => els};
}
const cases = JSON.parse(process.argv[2]).map(values => {
  const f = form(values); const body = record(f); return {body, said: f.out.textContent};
});
const table = answer({predictions: [{label: 'leaves', probabilities: {stays: 0.25, leaves: 0.75}}]});
console.log(JSON.stringify({cases, table}));
"""


def test_docs_script_in_a_javascript_engine():
    """The form's own script, run by node on stand-in fields: what it sends, what it refuses."""
    import json
    import shutil
    import subprocess

    from gateway.docs.page import _SCRIPT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    fields = [["visits", "integer", False], ["income", "number", True], ["plan", "string", False]]
    cases = [
        ["3", "700.5", "pro"],
        ["", "1", "pro"],
        ["2.5", "1", "pro"],
        ["4", "", "basic"],
        ["1", "abc", "x"],
    ]
    done = subprocess.run(
        [node, "-e", _SCRIPT + NODE_HARNESS, json.dumps(fields), json.dumps(cases)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    sent = [json.loads(c["body"]) if c["body"] is not None else c["said"] for c in result["cases"]]
    assert sent == [
        {"visits": 3, "income": 700.5, "plan": "pro"},  # 700.5 stays 700.5
        "visits is required: this model cannot fill it in",  # not 0
        "visits: 2.5 is not a whole number",  # not 2
        {"visits": 4, "income": None, "plan": "basic"},  # empty and nullable: null
        "income: abc is not a number",
    ]
    assert "<th>probability of stays</th><th>probability of leaves</th>" in result["table"]
    assert "<td><b>leaves</b></td><td>0.2500</td><td>0.7500</td>" in result["table"]
