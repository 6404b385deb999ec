"""From a request's options and an attribution to the `/explain` answer, per row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import numpy as np

from gateway.artifacts.manifest import Manifest
from gateway.errors import BadRequest, TooLarge, Unprocessable
from gateway.explain.explainer import DEFAULT_SAMPLES, MAX_SAMPLES, Attribution

# An explanation costs more than a prediction (TreeSHAP: every path of every tree per row;
# sampling: samples x (columns + 1) model rows per row): fewer rows per request.
MAX_ROWS = 256
MAX_SAMPLED_ROWS = 16
NAMES = ("top", "class", "samples")


@dataclass(frozen=True)
class Options:
    top: int | None = None
    klass: str | None = None
    samples: int = DEFAULT_SAMPLES
    where: tuple[str, ...] = ("query", "class")  # where the class came from, for errors


def options(query: bytes, body: Mapping[str, Any] | None = None) -> Options:
    """`?top=k&class=c&samples=n` and the body's `"parameters"`, each checked; a name in
    both is refused rather than one silently winning."""
    try:
        pairs = parse_qsl(query.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8") from None
    found = dict(pairs)
    from_query = checked(found, ["query"], "query parameter")
    if not body:
        return from_query
    twice = sorted(set(found) & set(body))
    if twice:
        detail = [{"loc": ["body", "parameters", k], "msg": "also in the query"} for k in twice]
        raise BadRequest(
            f"{', '.join(twice)} given in the query and in the body's parameters: give each once", detail
        )
    from_body = checked(body, ["body", "parameters"], "body parameter")
    return Options(
        from_body.top if "top" in body else from_query.top,
        from_body.klass if "class" in body else from_query.klass,
        from_body.samples if "samples" in body else from_query.samples,
        from_body.where if "class" in body else from_query.where,
    )


_TOP = (msgspec.json.Decoder(dict[str, msgspec.Raw]), msgspec.msgpack.Decoder(dict[str, msgspec.Raw]))
_ENCODERS = (msgspec.json.Encoder(), msgspec.msgpack.Encoder())
_SCALARS = dict[str, str | int | float | bool | None]


def body_parameters(body: bytes, msgpack: bool, names: list[str]) -> tuple[bytes, dict[str, Any]]:
    """A body's top-level `"parameters"` object (KServe's place for a request's options),
    taken out, and the rest of the body for the records codec, in any of its forms. A model
    with a column named "parameters" reads it as that column."""
    if b"parameters" not in body or "parameters" in names:
        return body, {}
    try:
        top = _TOP[msgpack].decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return body, {}  # not an object: the records codec says what is wrong with it
    raw = top.pop("parameters", None)
    if raw is None:
        return body, {}
    try:
        given = (msgspec.msgpack if msgpack else msgspec.json).decode(raw, type=_SCALARS)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        detail = [{"loc": ["body", "parameters"], "msg": "expected an object of scalars"}]
        raise BadRequest('"parameters" must be an object of top, class and samples', detail) from None
    return _ENCODERS[msgpack].encode(top), {k: v for k, v in given.items() if v is not None}


def checked(found: Mapping[str, Any], loc: list[str], kind: str, prefix: str = "") -> Options:
    """The options under their names (`prefix` + top, class, samples), each checked;
    values are text (a query string) or JSON/protobuf scalars (body parameters)."""
    for key in found:
        if key.removeprefix(prefix) not in NAMES or not key.startswith(prefix):
            allowed = ", ".join(prefix + n for n in NAMES)
            raise BadRequest(f"unknown {kind} {key!r}; /explain takes {allowed}",
                             [{"loc": [*loc, key], "msg": "unknown parameter"}])  # fmt: skip
    klass = found.get(prefix + "class")
    if klass is not None and (isinstance(klass, (float, dict, list)) or klass == ""):
        raise BadRequest(f"{prefix}class must name one class",
                         [{"loc": [*loc, prefix + "class"], "msg": f"got {klass!r}"}])  # fmt: skip
    top = _count(found, loc, prefix + "top", None, 1, 1 << 20)
    samples = _count(found, loc, prefix + "samples", DEFAULT_SAMPLES, 2, MAX_SAMPLES)
    return Options(top, _class_text(klass), samples or DEFAULT_SAMPLES, (*loc, prefix + "class"))


def _class_text(klass: Any) -> str | None:
    """A class as the manifest's classes are compared: a JSON true is the class "True"."""
    return None if klass is None else str(klass)


def _count(
    found: Mapping[str, Any], loc: list[str], key: str, default: int | None, low: int, high: int
) -> int | None:
    if key not in found:
        return default
    given = found[key]
    try:
        value = int(given) if isinstance(given, str) or type(given) is int else low - 1
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        detail = [{"loc": [*loc, key], "msg": f"expected {low}..{high}, got {given!r}"}]
        raise BadRequest(f"{key} must be an integer from {low} to {high}", detail)
    return value


def check_rows(rows: int, method: str) -> None:
    limit = MAX_SAMPLED_ROWS if method == "sampling" else MAX_ROWS
    if rows > limit:
        raise TooLarge(f"{rows} rows to explain; /explain takes at most {limit} per request for this "
                       f"model ({method} explanations); split the request",
                       [{"loc": ["body"], "msg": f"at most {limit} rows"}])  # fmt: skip


def class_index(manifest: Manifest, asked: Options) -> int | None:
    """The class the request asks to explain, as an index into the manifest's classes."""
    klass = asked.klass
    if klass is None or manifest.classes is None:
        if klass is not None:
            raise BadRequest(f"model {manifest.name!r} is a regressor: it has no class to choose")
        return None
    names = [str(c) for c in manifest.classes]
    if klass not in names:
        raise Unprocessable(f"class {klass!r} is not one of the model's classes {names}",
                            [{"loc": list(asked.where), "msg": f"expected one of {names}"}])  # fmt: skip
    return names.index(klass)


def explained(
    manifest: Manifest, predictions: list[dict[str, Any]], asked: int | None
) -> tuple[list[Any] | None, np.ndarray, np.ndarray]:
    """Per row: the class explained (None for a regressor: its one value), which
    attribution target holds it, and its sign there."""
    rows = len(predictions)
    target, sign = np.zeros(rows, dtype=np.intp), np.ones(rows)
    if manifest.classes is None:
        return None, target, sign
    spec = manifest.explain
    assert spec is not None
    names = [str(c) for c in manifest.classes]
    chosen = []
    for row, prediction in enumerate(predictions):
        index = asked if asked is not None else names.index(str(prediction["label"]))
        chosen.append(manifest.classes[index])
        target[row], sign[row] = _target(spec.targets, index)
    return chosen, target, sign


def contributions(
    attribution: Attribution, target: np.ndarray, sign: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) contributions and (rows,) base values of each row's target."""
    rows = np.arange(len(target))
    phi = sign[:, None] * attribution.phi[rows, :, target]
    return phi, sign * attribution.base[rows, target]


def explanations(
    manifest: Manifest, predictions: list[dict[str, Any]], attribution: Attribution, asked: int | None,
    top: int | None, samples: int,
) -> list[dict[str, Any]]:  # fmt: skip
    spec = manifest.explain
    assert spec is not None
    names = [f.name for f in manifest.features]
    classes, target, sign = explained(manifest, predictions, asked)
    phis, bases = contributions(attribution, target, sign)
    answers = []
    for row, prediction in enumerate(predictions):
        entry: dict[str, Any] = {"prediction": prediction, "output": spec.output}
        if classes is not None:
            entry["class"] = classes[row]
        phi = phis[row]
        entry["base_value"] = float(bases[row])
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
