"""From a request's options and an attribution to the `/explain` answer, per row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from gateway.artifacts.manifest import Manifest
from gateway.errors import BadRequest, TooLarge, Unprocessable
from gateway.explain.explainer import DEFAULT_SAMPLES, MAX_SAMPLES, Attribution

# An explanation costs more than a prediction (TreeSHAP: every path of every tree per row;
# sampling: samples x (columns + 1) model rows per row): fewer rows per request.
MAX_ROWS = 256
MAX_SAMPLED_ROWS = 16


@dataclass(frozen=True)
class Options:
    top: int | None = None
    klass: str | None = None
    samples: int = DEFAULT_SAMPLES


def options(query: bytes) -> Options:
    """`?top=k&class=c&samples=n`, each checked."""
    found: dict[str, str] = {}
    try:
        pairs = parse_qsl(query.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8") from None
    for key, value in pairs:
        if key not in ("top", "class", "samples"):
            raise BadRequest(f"unknown query parameter {key!r}; /explain takes top, class and samples",
                             [{"loc": ["query", key], "msg": "unknown parameter"}])  # fmt: skip
        found[key] = value
    return Options(_count(found, "top", None, 1, 1 << 20), found.get("class"),
                   _count(found, "samples", DEFAULT_SAMPLES, 2, MAX_SAMPLES) or DEFAULT_SAMPLES)  # fmt: skip


def _count(found: dict[str, str], key: str, default: int | None, low: int, high: int) -> int | None:
    if key not in found:
        return default
    try:
        value = int(found[key])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        detail = [{"loc": ["query", key], "msg": f"expected {low}..{high}, got {found[key]!r}"}]
        raise BadRequest(f"{key} must be an integer from {low} to {high}", detail)
    return value


def check_rows(rows: int, method: str) -> None:
    limit = MAX_SAMPLED_ROWS if method == "sampling" else MAX_ROWS
    if rows > limit:
        raise TooLarge(f"{rows} rows to explain; /explain takes at most {limit} per request for this "
                       f"model ({method} explanations); split the request",
                       [{"loc": ["body"], "msg": f"at most {limit} rows"}])  # fmt: skip


def class_index(manifest: Manifest, klass: str | None) -> int | None:
    """The class the request asks to explain, as an index into the manifest's classes."""
    if klass is None or manifest.classes is None:
        if klass is not None:
            raise BadRequest(f"model {manifest.name!r} is a regressor: it has no class to choose")
        return None
    names = [str(c) for c in manifest.classes]
    if klass not in names:
        raise Unprocessable(f"class {klass!r} is not one of the model's classes {names}",
                            [{"loc": ["query", "class"], "msg": f"expected one of {names}"}])  # fmt: skip
    return names.index(klass)


def explanations(
    manifest: Manifest, predictions: list[dict[str, Any]], attribution: Attribution, asked: int | None,
    top: int | None, samples: int,
) -> list[dict[str, Any]]:  # fmt: skip
    spec = manifest.explain
    assert spec is not None
    names = [f.name for f in manifest.features]
    classes = [str(c) for c in manifest.classes] if manifest.classes is not None else None
    answers = []
    for row, prediction in enumerate(predictions):
        entry: dict[str, Any] = {"prediction": prediction, "output": spec.output}
        target, sign = 0, 1.0
        if classes is not None:
            index = asked if asked is not None else classes.index(str(prediction["label"]))
            entry["class"] = manifest.classes[index] if manifest.classes is not None else index
            target, sign = _target(spec.targets, index)
        phi = sign * attribution.phi[row, :, target]
        entry["base_value"] = float(sign * attribution.base[row, target])
        order = np.argsort(-np.abs(phi), kind="stable")[:top] if top is not None else range(len(names))
        entry["contributions"] = {names[j]: float(phi[j]) for j in order}
        if attribution.error is not None:
            entry["samples"] = samples
            entry["error_bound"] = float(attribution.error[row])
        answers.append(entry)
    return answers


def _target(targets: list[int], index: int) -> tuple[int, float]:
    """The explained target for a class: itself, or for a binary margin model (one
    target, class 1) class 0 is its negation."""
    if index in targets:
        return targets.index(index), 1.0
    return 0, -1.0
