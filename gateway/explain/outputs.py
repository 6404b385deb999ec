"""Explanations as V2 outputs: `"parameters": {"explain": true}` on an inference request
adds tensors to its answer, the same over HTTP (JSON and binary) and gRPC since the one V2
service calls this. The attribution is `/explain`'s, with its limits: the same options
(`explain_class`, `explain_top`, `explain_samples`), row bounds and per-row choice of class.

Added outputs, after those the request asked for:
- `contributions` FP64 [rows, columns]: each user column's share; its parameters name the
  columns (`columns`, a JSON array: a protobuf parameter holds one scalar), the explained
  `output`, the `method`, and the `class` when the request named one. With `explain_top`
  k: [rows, k], each row's largest first, and `contribution_columns` BYTES [rows, k].
- `base_value` FP64 [rows]: the expected output the contributions start from.
- `explained_class` BYTES [rows] (classifiers): the class each row's contributions explain.
- `error_bound` FP64 [rows] (sampling): the estimate's 95 % half-width, worst column.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest, Unprocessable
from gateway.explain.answer import Options, check_rows, checked, class_index, contributions, explained
from gateway.explain.cache import Explainers
from gateway.explain.explainer import Attribution
from gateway.v2.messages import OutputTensor

PREFIX = "explain_"
OUTPUTS = ("contributions", "base_value", "explained_class", "contribution_columns", "error_bound")
_LOC = ["body", "parameters"]


@dataclass(frozen=True)
class Asked:
    """What an inference request asked to explain, checked before the model runs."""

    options: Options
    klass: int | None
    binary: bool
    rows: int


def asked(model: Any, parameters: dict[str, Any] | None, rows: int) -> Asked | None:
    """None when the request does not ask for explanations; every refusal before the run."""
    given = {k: v for k, v in (parameters or {}).items() if k.startswith("explain")}
    if not given:
        return None
    flag = given.pop("explain", None)
    if not isinstance(flag, bool):
        why = f"got {flag!r}" if flag is not None else "missing"
        raise BadRequest(f'the explain parameter must be true or false ({why}); {PREFIX}* parameters '
                         'need "explain": true', [{"loc": [*_LOC, "explain"], "msg": why}])  # fmt: skip
    if not flag:
        if given:
            raise BadRequest(
                f'{sorted(given)} need "explain": true', [{"loc": [*_LOC, "explain"], "msg": "false"}]
            )
        return None
    options = checked(given, _LOC, "parameter", PREFIX)
    _check_model(model)
    check_rows(rows, model.manifest.explain.method)
    binary = bool((parameters or {}).get("binary_data_output", False))
    return Asked(options, class_index(model.manifest, options), binary, rows)


def _check_model(model: Any) -> None:
    manifest = model.manifest
    if model.records is None or manifest.explain is None or not manifest.features:
        raise BadRequest(
            f"model {model.name!r} cannot be explained: "
            + ("it takes tensors, not named columns" if model.records is None or not manifest.features
               else "its manifest records no explanation method; convert it again with a sample"),
            [{"loc": [*_LOC, "explain"], "msg": "no columns to explain by"}],
        )  # fmt: skip
    clash = sorted({o.name for o in manifest.outputs} & set(OUTPUTS))
    if clash:
        raise Unprocessable(
            f"model {model.name!r} has outputs named {clash}: explanations would replace them"
        )


async def tensors(
    explainers: Explainers, model: Any, feeds: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
    request: Asked,
) -> list[OutputTensor]:  # fmt: skip
    """The explanation outputs for these rows: off the event loop, after the batch."""
    if not request.rows:  # nothing to attribute: empty outputs, no explainer built for them
        attribution = _nothing(model.manifest)
    else:
        explainer = await explainers.get(model)
        attribution = await asyncio.to_thread(explainer.attribute, feeds, request.options.samples)
    predictions = orjson.loads(model.records.encode(arrays)) if model.manifest.classes is not None else []
    return build(model.manifest, predictions, attribution, request)


def _nothing(manifest: Any) -> Attribution:
    width, targets = len(manifest.features), max(1, len(manifest.explain.targets))
    error = np.zeros(0) if manifest.explain.method == "sampling" else None
    return Attribution(np.zeros((0, targets)), np.zeros((0, width, targets)), error)


def build(
    manifest: Any, predictions: list[dict[str, Any]], attribution: Attribution, request: Asked
) -> list[OutputTensor]:
    spec, options, binary = manifest.explain, request.options, request.binary
    rows = attribution.phi.shape[0]
    classes, target, sign = explained(manifest, predictions or [{}] * rows, request.klass)
    phi, base = contributions(attribution, target, sign)
    names = np.array([f.name for f in manifest.features], dtype=object)
    parameters: dict[str, Any] = {"columns": orjson.dumps(names.tolist()).decode(), "output": spec.output,
                                  "method": spec.method}  # fmt: skip
    if options.klass is not None:
        parameters["class"] = options.klass
    out = [OutputTensor("contributions", "FP64", phi, binary, parameters)]
    if options.top is not None:
        order = np.argsort(-np.abs(phi), axis=1, kind="stable")[:, : options.top]
        out[0] = OutputTensor(
            "contributions", "FP64", np.take_along_axis(phi, order, axis=1), binary, parameters
        )
        out.append(OutputTensor("contribution_columns", "BYTES", names[order], binary))
    out.append(OutputTensor("base_value", "FP64", base, binary))
    if classes is not None:
        out.append(
            OutputTensor(
                "explained_class", "BYTES", np.array([str(c) for c in classes], dtype=object), binary
            )
        )
    if attribution.error is not None:
        error = np.asarray(attribution.error, dtype=np.float64)
        out.append(OutputTensor("error_bound", "FP64", error, binary, {"samples": options.samples}))
    return out
