"""OpenAPI 3.1 for every route, generated from the live models' manifests.

Each model gets its own predict and infer operations, with a schema that allows what the
server accepts (feature types and categories, V2 input names, datatypes, outputs and
parameters; no unknown fields) and an example the server answers with 200
(`gateway.docs.examples`). The other routes share templated paths."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.artifacts.manifest import Feature, Manifest, TensorSpec
from gateway.docs.examples import example_record, example_v2
from gateway.lifecycle.registry import LoadedModel
from gateway.v2.messages import ID_LIMIT, MAX_TIMEOUT_US

_REF = "#/components/schemas/"
_JSON = "application/json"
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}
_REASONS = {
    400: "malformed body",
    401: "missing or wrong bearer token",
    403: "admin API off here",
    404: "unknown model, version or output",
    408: "body sent too slowly",
    409: "the change cannot be made now",
    413: "body or batch too large",
    415: "unsupported content type",
    422: "schema or range violation, non-finite number",
    503: "overloaded or not ready (Retry-After)",
    504: "deadline passed before inference",
}
_INFERENCE_ERRORS = (400, 404, 408, 413, 415, 422, 503, 504)
_ADMIN_ERRORS = (400, 401, 403, 404, 409, 422)
# The V2 element type of each datatype, as JSON Schema: what `data` may hold.
_ELEMENT = {"BOOL": {"type": "boolean"}, "BYTES": {"type": "string"}}
_BINARY_NOTE = (
    "Binary tensor extension: send the JSON header followed by the raw little-endian tensor "
    "bytes, with `Inference-Header-Content-Length` giving the JSON's length and "
    "`parameters.binary_data_size` on each binary input (BYTES elements: a 4-byte length, "
    "then the bytes). Ask for binary outputs with `parameters.binary_data_output: true` or "
    "`binary_data: true` on a requested output."
)


def _errors(codes: tuple[int, ...]) -> dict[str, Any]:
    return {
        str(code): {"description": _REASONS[code], "content": {_JSON: {"schema": {"$ref": _REF + "Error"}}}}
        for code in codes
    }


def _ok(description: str, schema: dict[str, Any] | None = None, media: str = _JSON) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema or {}}}}


def _element(datatype: str) -> dict[str, Any]:
    if datatype in _ELEMENT:
        return _ELEMENT[datatype]
    return {"type": "number"} if datatype.startswith("FP") else {"type": "integer"}


def _feature_note(feature: Feature) -> str:
    if feature.ignored:
        return "not read by the model: any value, or leave it out"
    if feature.categories is not None and feature.open_categories:
        return f"trained on {feature.categories}; others are accepted (the model ignores them)"
    if feature.categories is not None:
        return f"one of {feature.categories}"
    if feature.min is not None and feature.max is not None:
        note = f"{feature.dtype}, seen in training from {feature.min:g} to {feature.max:g}"
        return note + f" (outside: {feature.policy})"
    return feature.dtype


def _record_schema(model: LoadedModel) -> dict[str, Any]:
    if model.records is None:
        return {}
    (schema,), components = msgspec.json.schema_components([model.records.schema_type])
    record: dict[str, Any] = components[schema["$ref"].rsplit("/", 1)[-1]]
    for feature in model.manifest.features:
        prop = record["properties"].get(feature.name)
        if prop is not None:
            prop["description"] = _feature_note(feature)
            if feature.open_categories and feature.categories:  # known ones; others are taken too
                prop["examples"] = list(feature.categories)
    record["title"] = f"{model.name} record"
    return record


def _prediction_schema(manifest: Manifest) -> dict[str, Any]:
    if manifest.output("probabilities") is not None:
        label: dict[str, Any] = {"enum": manifest.classes} if manifest.classes else {}
        return {
            "type": "object",
            "required": ["label", "probabilities"],
            "properties": {
                "label": label,
                "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        }
    return {"type": "object", "properties": {"value": {}}}


def _columns(record: dict[str, Any], max_rows: int) -> dict[str, Any]:
    """`{"inputs": {feature: [values]}}`: each feature's record schema as an array's items.
    That the columns are of one length is checked by the server only (422)."""
    columns = {
        name: {"type": "array", "minItems": 1, "maxItems": max_rows,
               "items": {k: v for k, v in prop.items() if k != "description"}}
        for name, prop in record["properties"].items()
    }  # fmt: skip
    return {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "inputs": {
                "type": "object",
                "required": list(record.get("required", [])),
                "additionalProperties": False,
                "properties": columns,
            }
        },
    }


def _predict(model: LoadedModel, record: str, schema: dict[str, Any], max_rows: int) -> dict[str, Any]:
    ref = {"$ref": _REF + record}
    body = {
        "oneOf": [
            ref,
            {
                "type": "object",
                "required": ["instances"],
                "additionalProperties": False,
                "properties": {
                    "instances": {"type": "array", "minItems": 1, "maxItems": max_rows, "items": ref}
                },
            },
            # A feature named "inputs" makes {"inputs": ...} one record: no columns form then.
            *([] if "inputs" in schema["properties"] else [_columns(schema, max_rows)]),
        ]
    }
    example = example_record(model.manifest)
    response = {
        "type": "object",
        "required": ["model", "version", "predictions"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "predictions": {"type": "array", "items": _prediction_schema(model.manifest)},
        },
    }
    return {
        "post": {
            "summary": f"Predict with {model.name} (live version {model.version}): named features",
            "description": 'One record, `{"instances": [records]}`, or columns: '
            '`{"inputs": {"feature": [values], ...}}` (each feature once, not once a row); JSON or '
            "msgpack. `X-Request-Timeout` (ms) sets the deadline.",
            "operationId": f"predict_{model.name}",
            "tags": [model.name],
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {"schema": body, "example": example},
                    "application/msgpack": {"schema": body},
                },
            },
            "responses": {"200": _ok("predictions", response), **_errors(_INFERENCE_ERRORS)},
        }
    }


def _input_schema(spec: TensorSpec) -> dict[str, Any]:
    dims = [{"const": d} if d >= 0 else {"type": "integer", "minimum": 0} for d in spec.shape]
    return {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "additionalProperties": False,
        "properties": {
            "name": {"const": spec.name},
            "shape": {"type": "array", "prefixItems": dims, "minItems": len(dims), "maxItems": len(dims)},
            "datatype": {"const": spec.datatype},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
            "data": {
                "type": "array",
                "description": "row-major, flat or nested as the shape",
                "items": {"anyOf": [_element(spec.datatype), {"type": "array"}]},
            },
        },
    }


def _infer_request(manifest: Manifest) -> dict[str, Any]:
    outputs = [o.name for o in manifest.outputs]
    return {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "maxLength": ID_LIMIT},
            "model_name": {"const": manifest.name},
            "model_version": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {
                    "timeout": {
                        "type": "integer",
                        "exclusiveMinimum": 0,
                        "exclusiveMaximum": MAX_TIMEOUT_US,
                        "description": "deadline in microseconds",
                    },
                    "priority": {"type": "integer"},
                    "binary_data_output": {"type": "boolean"},
                },
            },
            "inputs": {
                "type": "array",
                "minItems": len(manifest.inputs),
                "maxItems": len(manifest.inputs),
                "items": {"oneOf": [_input_schema(s) for s in manifest.inputs]},
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"enum": outputs},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "binary_data": {"type": "boolean"},
                                "classification": {"type": "integer", "minimum": 1},
                            },
                        },
                    },
                },
            },
        },
    }


def _infer_response(manifest: Manifest) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"const": manifest.name},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": {"enum": [o.name for o in manifest.outputs]},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string"},
                        "parameters": {"type": "object"},
                        "data": {"type": "array"},
                    },
                },
            },
        },
    }


def _infer(model: LoadedModel) -> dict[str, Any]:
    manifest = model.manifest
    return {
        "post": {
            "summary": f"Infer with {model.name} (live version {model.version}): V2 tensors",
            "description": _BINARY_NOTE,
            "operationId": f"infer_{model.name}",
            "tags": [model.name],
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {
                        "schema": {"$ref": f"{_REF}{model.name}_infer_request"},
                        "example": example_v2(manifest),
                    },
                    "application/octet-stream": {
                        "schema": {"type": "string", "contentMediaType": "application/octet-stream"},
                    },
                },
            },
            "responses": {
                "200": _ok("output tensors", {"$ref": f"{_REF}{model.name}_infer_response"}),
                **_errors(_INFERENCE_ERRORS),
            },
        }
    }


def _versioned(operation: dict[str, Any], model: LoadedModel) -> dict[str, Any]:
    """The same operation at /versions/{version}/: only the loaded version answers."""
    op = dict(operation["post"])
    op["operationId"] += "_version"
    op["parameters"] = [_path_param("version", {"type": "string", "enum": [model.version]})]
    return {"post": op}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _get(
    summary: str, schema: dict[str, Any] | None = None, media: str = _JSON, **extra: Any
) -> dict[str, Any]:
    responses = {"200": _ok(summary, schema, media), **extra.pop("errors", {})}
    return {"get": {"summary": summary, "responses": responses, **extra}}


_HEALTH = {
    "type": "object",
    "properties": {"live": {"type": "boolean"}, "ready": {"type": "boolean"}, "models": {"type": "object"}},
}
_NOT_READY = {"503": {"description": "not ready", "content": {_JSON: {"schema": _HEALTH}}}}


def _shared_paths(names: list[str]) -> dict[str, Any]:
    name = _path_param("name", {"type": "string", "enum": names} if names else {"type": "string"})
    version = _path_param("version", {"type": "string"})
    not_found = _errors((404,))
    model_paths: dict[str, Any] = {}
    for suffix, summary in (
        ("", "model metadata: inputs, outputs, datatypes, shapes, versions"),
        ("/ready", "model readiness"),
        ("/config", "Triton model configuration"),
        ("/stats", "Triton statistics"),
    ):
        model_paths[f"/v2/models/{{name}}{suffix}"] = _get(summary, parameters=[name], errors=not_found)
        model_paths[f"/v2/models/{{name}}/versions/{{version}}{suffix}"] = _get(
            summary, parameters=[name, version], errors=not_found
        )
    return {
        **_shared_memory_paths(),
        "/healthz": _get("liveness", _HEALTH),
        "/readyz": _get("readiness: every live model loaded and warm", _HEALTH, errors=_NOT_READY),
        "/v2": _get("V2 server metadata and extensions"),
        "/v2/health/live": _get("V2 liveness", _HEALTH),
        "/v2/health/ready": _get("V2 readiness", _HEALTH, errors=_NOT_READY),
        "/v2/models/stats": _get("Triton statistics of every loaded model"),
        **model_paths,
        "/metrics": _get("Prometheus exposition", {"type": "string"}, "text/plain"),
        "/openapi.json": _get("this document"),
        "/docs": _get("the docs page, with a try-it form per model", {"type": "string"}, "text/html"),
        "/": {"get": {"summary": "to the docs page", "responses": {"307": {"description": "to docs"}}}},
        "/favicon.ico": _get("the icon browsers ask for", {"type": "string"}, "image/svg+xml"),
    }


def _shared_memory_paths() -> dict[str, Any]:
    """Triton's shared memory extensions: no region is ever registered, registering is refused."""
    region = _path_param("region", {"type": "string"})
    refused = _errors((400,))
    paths: dict[str, Any] = {}
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        base = f"/v2/{kind}"
        paths[f"{base}/status"] = _get("shared memory regions: always none", {"type": "array"})
        # Always refused, so the refusal is its first (documented) answer.
        unknown = {"summary": "a region's status: unknown, none is registered", "parameters": [region]}
        paths[f"{base}/region/{{region}}/status"] = {"get": {**unknown, "responses": refused}}
        register = _get(
            "refused: send tensors in the request (binary data)", parameters=[region], errors=refused
        )
        paths[f"{base}/region/{{region}}/register"] = {"post": register["get"]}
        paths[f"{base}/unregister"] = {"post": _get("nothing is registered: succeeds")["get"]}
        unregister = _get("nothing is registered: succeeds", parameters=[region])
        paths[f"{base}/region/{{region}}/unregister"] = {"post": unregister["get"]}
    return paths


def _admin_paths(names: list[str]) -> dict[str, Any]:
    name = _path_param("name", {"type": "string"})
    version_body = {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "required": ["version"],
                    "properties": {"version": {"type": "string"}},
                }
            }
        },
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}]

    def body_of(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
        schema["additionalProperties"] = False
        return {"required": True, "content": {_JSON: {"schema": schema}}}

    weight = {"type": "number", "minimum": 0, "maximum": 100}
    canary_body = body_of({"version": {"type": "string"}, "weight": weight}, ["weight"])
    shadow_body = body_of({"version": {"type": ["string", "null"]}}, ["version"])

    def post(summary: str, body: bool | dict[str, Any], with_name: bool = True) -> dict[str, Any]:
        op: dict[str, Any] = {
            "summary": summary + " (admin; off unless GATEWAY_ADMIN_TOKEN is set)",
            "security": security,
            "responses": {"200": _ok("the state now"), **_errors(_ADMIN_ERRORS)},
        }
        if with_name:
            op["parameters"] = [name]
        if body:
            op["requestBody"] = version_body if body is True else body
        return {"post": op}

    admin_models = {
        "get": {
            "summary": "loaded versions and live routes (admin)",
            "security": security,
            "responses": {"200": _ok("models"), **_errors((401, 403, 404))},
        }
    }
    return {
        "/admin/models": admin_models,
        "/admin/models/{name}/promote": post("make a version live", body=True),
        "/admin/models/{name}/rollback": post("make the previous version live", body=False),
        "/admin/models/{name}/load": post("load an extra version", body=True),
        "/admin/models/{name}/unload": post("unload an extra version", body=True),
        "/admin/models/{name}/canary": post("send weight % of requests to a version; 0 ends it", canary_body),
        "/admin/models/{name}/shadow": post("mirror live requests to a version; null ends it", shadow_body),
        "/admin/models/{name}": {
            "get": {
                "summary": "one model: live version, canary, shadow agreement (admin)",
                "security": security,
                "parameters": [name],
                "responses": {"200": _ok("the model"), **_errors((401, 403, 404))},
            }
        },
        "/v2/repository/index": post("Triton repository index", body=False, with_name=False),
        "/v2/repository/models/{name}/load": post("Triton repository load", body=False),
        "/v2/repository/models/{name}/unload": post("Triton repository unload", body=False),
    }


def _explain(model: LoadedModel, predict: dict[str, Any]) -> dict[str, Any]:
    """The predict bodies; per row the prediction and each user column's contribution."""
    from gateway.explain.answer import MAX_ROWS, MAX_SAMPLED_ROWS
    from gateway.explain.explainer import DEFAULT_SAMPLES, MAX_SAMPLES

    spec = model.manifest.explain
    assert spec is not None
    names = [f.name for f in model.manifest.features]
    entry = {
        "type": "object",
        "required": ["prediction", "output", "base_value", "contributions"],
        "properties": {
            "prediction": _prediction_schema(model.manifest),
            "output": {"type": "string", "enum": [spec.output]},
            "class": {},
            "base_value": {"type": "number"},
            "contributions": {"type": "object", "properties": {n: {"type": "number"} for n in names},
                              "additionalProperties": False},
            "samples": {"type": "integer"},
            "error_bound": {"type": "number", "description": "95 % half-width of the sampling error"},
        },
    }  # fmt: skip
    response = {
        "type": "object",
        "required": ["model", "version", "explanations"],
        "properties": {"model": {"type": "string"}, "version": {"type": "string"},
                       "explanations": {"type": "array", "items": entry}},
    }  # fmt: skip
    rows = MAX_SAMPLED_ROWS if spec.method == "sampling" else MAX_ROWS
    query = [
        {"name": "top", "in": "query", "required": False, "description": "the k largest by magnitude",
         "schema": {"type": "integer", "minimum": 1}},
        {"name": "class", "in": "query", "required": False,
         "description": "the class to explain (default: the predicted one)",
         "schema": {"type": "string", "enum": [str(c) for c in model.manifest.classes or []]}},
        {"name": "samples", "in": "query", "required": False, "description": "sampling only",
         "schema": {"type": "integer", "minimum": 2, "maximum": MAX_SAMPLES, "default": DEFAULT_SAMPLES}},
    ]  # fmt: skip
    if model.manifest.classes is None:
        query = [q for q in query if q["name"] != "class"]
    method = {
        "tree": "exact path-dependent TreeSHAP",
        "linear": "exact linear contributions",
        "sampling": "a permutation-sampling Shapley estimate with its error bound",
    }[spec.method]
    op = dict(predict["post"])
    op["requestBody"] = _with_body_parameters(op["requestBody"], query)
    op |= {
        "summary": f"Explain {model.name}'s predictions per column ({method})",
        "description": f"The predict bodies, at most {rows} rows. Per row: the prediction, `output` "
        f"({spec.output}), `class`, `base_value` and one contribution per column, adding up to the "
        "explained output. Also at `/v1/models/{name}:explain` (KServe V1).",
        "operationId": f"explain_{model.name}",
        "parameters": query,
        "responses": {"200": _ok("explanations", response), **_errors(_INFERENCE_ERRORS)},
    }
    return {"post": op}


def _with_body_parameters(request_body: dict[str, Any], query: list[dict[str, Any]]) -> dict[str, Any]:
    """The predict body forms, the lists of rows also taking a top-level `"parameters"`
    object (KServe's place for a request's options) with the query's names."""
    options = {
        "type": "object",
        "additionalProperties": False,
        "description": "the query parameters' options, in the body; a name given in both is a 400",
        "properties": {q["name"]: {**q["schema"], "description": q["description"]} for q in query},
    }
    # One record keeps its own schema: its keys are the model's columns (the server reads a
    # "parameters" key beside them too, unless a column has that name).
    forms = [
        form if "$ref" in form else {**form, "properties": {**form["properties"], "parameters": options}}
        for form in request_body["content"][_JSON]["schema"]["oneOf"]
    ]
    body = {"oneOf": forms}
    content = {kind: {**media, "schema": body} for kind, media in request_body["content"].items()}
    return {**request_body, "content": content}


def build_openapi(models: list[LoadedModel], version: str, max_rows: int = 4096) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for model in models:
        name = model.name
        if model.records is not None:
            record = f"{name}_record"
            schemas[record] = _record_schema(model)
            predict = _predict(model, record, schemas[record], max_rows)
            paths[f"/v1/models/{name}/predict"] = predict
            paths[f"/v1/models/{name}/versions/{{version}}/predict"] = _versioned(predict, model)
            if model.manifest.explain is not None:
                explain = _explain(model, predict)
                paths[f"/v1/models/{name}/explain"] = explain
                versioned = _versioned(explain, model)
                versioned["post"]["parameters"] = [
                    *explain["post"]["parameters"],
                    *versioned["post"]["parameters"],
                ]
                paths[f"/v1/models/{name}/versions/{{version}}/explain"] = versioned
        schemas[f"{name}_infer_request"] = _infer_request(model.manifest)
        schemas[f"{name}_infer_response"] = _infer_response(model.manifest)
        infer = _infer(model)
        paths[f"/v2/models/{name}/infer"] = infer
        paths[f"/v2/models/{name}/versions/{{version}}/infer"] = _versioned(infer, model)
    paths |= _shared_paths(sorted({m.name for m in models}))
    paths |= _admin_paths(sorted({m.name for m in models}))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "onnx-gateway",
            "version": version,
            "description": 'Errors are JSON: `{"error": ..., "detail": [{"loc": [...], "msg": ...}]}`.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
