"""OpenAPI 3.1, generated from the loaded models' manifests, and a docs page."""

from __future__ import annotations

import html
from typing import Any

import msgspec

from gateway.registry import LoadedModel

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
_ERRORS = {
    str(code): {
        "description": reason,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for code, reason in (
        (400, "malformed body"),
        (404, "unknown model or version"),
        (413, "body or batch too large"),
        (415, "unsupported content type"),
        (422, "schema or range violation"),
        (503, "overloaded (Retry-After)"),
        (504, "deadline passed"),
    )
}


def _record_schema(model: LoadedModel) -> dict[str, Any]:
    if model.records is None:
        return {}
    (schema,), components = msgspec.json.schema_components([model.records.row_type])
    record: dict[str, Any] = components[schema["$ref"].rsplit("/", 1)[-1]]
    return record


def _prediction_schema(model: LoadedModel) -> dict[str, Any]:
    if model.manifest.output("probabilities") is not None:
        return {
            "type": "object",
            "properties": {
                "label": {},
                "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        }
    return {"type": "object", "properties": {"value": {}}}


def build_openapi(models: list[LoadedModel], version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for model in models:
        name = model.name
        if model.records is not None:
            record = f"{name}_record"
            schemas[record] = _record_schema(model)
            body = {
                "oneOf": [
                    {"$ref": f"#/components/schemas/{record}"},
                    {
                        "type": "object",
                        "required": ["instances"],
                        "additionalProperties": False,
                        "properties": {
                            "instances": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"$ref": f"#/components/schemas/{record}"},
                            }
                        },
                    },
                ]
            }
            paths[f"/v1/models/{name}/predict"] = {
                "post": {
                    "summary": f"Predict with {name} (live version {model.version})",
                    "operationId": f"predict_{name}",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": body},
                            "application/msgpack": {"schema": body},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "predictions",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "model": {"type": "string"},
                                            "version": {"type": "string"},
                                            "predictions": {
                                                "type": "array",
                                                "items": _prediction_schema(model),
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_ERRORS,
                    },
                }
            }
        paths[f"/v2/models/{name}/infer"] = {
            "post": {
                "summary": f"Open Inference Protocol tensors for {name}",
                "operationId": f"infer_{name}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["inputs"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "inputs": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "shape", "datatype", "data"],
                                        },
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "output tensors"}, **_ERRORS},
            }
        }
    for path, summary in (
        ("/healthz", "liveness"),
        ("/readyz", "readiness"),
        ("/v2/health/ready", "V2 readiness"),
    ):
        paths[path] = {
            "get": {
                "summary": summary,
                "responses": {"200": {"description": "ok"}, "503": {"description": "not ready"}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "onnx-gateway", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def docs_page(spec: dict[str, Any]) -> str:
    rows = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}</td></tr>"
            )
    schemas = "".join(
        f"<h3>{html.escape(name)}</h3><pre>{html.escape(_pretty(s))}</pre>"
        for name, s in spec["components"]["schemas"].items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>onnx-gateway API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:.2em 1em}"
        "pre{background:#f4f4f4;padding:1em;overflow:auto}</style></head><body>"
        f"<h1>onnx-gateway {html.escape(spec['info']['version'])}</h1>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        f"<table>{''.join(rows)}</table><h2>Schemas</h2>{schemas}</body></html>"
    )
