"""A request each model accepts, built from its manifest: the training sample's median for
each number and its most frequent category, so the ready line's curl, the docs page's
try-it form and the OpenAPI examples all show a typical row that the server answers."""

from __future__ import annotations

import shlex
from typing import Any

from gateway.artifacts.manifest import Feature, Manifest, TensorSpec

JSON_HEADER = "-H 'content-type: application/json'"


def _number(feature: Feature, manifest: Manifest) -> float | int:
    reference = manifest.reference.features.get(feature.name) if manifest.reference else None
    if reference is not None and reference.edges:
        value = reference.edges[len(reference.edges) // 2]
    elif feature.min is not None and feature.max is not None:
        value = (feature.min + feature.max) / 2
    else:
        value = feature.min if feature.min is not None else 0.0
    if feature.dtype == "int64":
        return round(value)
    return float(f"{value:.4g}")


def _category(feature: Feature, manifest: Manifest) -> str:
    reference = manifest.reference.features.get(feature.name) if manifest.reference else None
    if reference is not None and reference.categories and reference.fractions:
        ranked = zip(reference.fractions, reference.categories, strict=False)
        best = max(ranked, key=lambda pair: pair[0])[1]
        if feature.categories is None or best in feature.categories:
            return best
    return feature.categories[0] if feature.categories else "example"


def example_value(feature: Feature, manifest: Manifest) -> Any:
    if feature.dtype == "bool":
        return False
    if feature.dtype == "string":
        return _category(feature, manifest)
    return _number(feature, manifest)


def example_record(manifest: Manifest) -> dict[str, Any] | None:
    """One record for the records API, or None for a model without named features."""
    if manifest.layout == "tensors" or not manifest.features:
        return None
    # A column the model ignores is left out: a request need not send it.
    return {f.name: example_value(f, manifest) for f in manifest.features if not f.ignored}


def _zeros(spec: TensorSpec) -> tuple[list[int], list[Any]]:
    shape = [1 if d < 0 else d for d in spec.shape] or [1]
    count = 1
    for d in shape:
        count *= d
    fill: Any = "" if spec.datatype == "BYTES" else False if spec.datatype == "BOOL" else 0
    return shape, [fill] * count


def example_v2(manifest: Manifest) -> dict[str, Any]:
    """One V2 inference request: the example record as tensors, or zeros of each shape."""
    record = example_record(manifest)
    inputs = []
    if record is not None and manifest.layout == "matrix":
        spec, row = manifest.inputs[0], list(record.values())
        inputs.append({"name": spec.name, "shape": [1, len(row)], "datatype": spec.datatype, "data": row})
    elif record is not None:
        for spec in manifest.inputs:  # a graph input per feature read, named after it
            value = record[spec.name]
            inputs.append({"name": spec.name, "shape": [1, 1], "datatype": spec.datatype, "data": [value]})
    else:
        for spec in manifest.inputs:
            shape, data = _zeros(spec)
            inputs.append({"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data})
    return {"inputs": inputs}


def curl_example(base_url: str, manifest: Manifest) -> str:
    """A copy-paste command that asks the model for one prediction."""
    import orjson

    record = example_record(manifest)
    if record is not None:
        path, body = f"/v1/models/{manifest.name}/predict", record
    else:
        path, body = f"/v2/models/{manifest.name}/infer", example_v2(manifest)
    payload = shlex.quote(orjson.dumps(body).decode())
    return f"curl -s -X POST {base_url}{path} {JSON_HEADER} -d {payload}"


def ready_fields(host: str, port: int, manifests: list[Manifest]) -> dict[str, Any]:
    """What the "ready" line tells a person: where to send requests, where the docs are, and
    one command per model to try. A wildcard listen address is reached on loopback."""
    reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    base = f"http://[{reach}]:{port}" if ":" in reach else f"http://{reach}:{port}"
    return {"url": base, "docs": f"{base}/docs", "try": [curl_example(base, m) for m in manifests]}
