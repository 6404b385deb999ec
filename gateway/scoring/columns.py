"""Columns of a table in, model tensors and per-row rejects out: the records API's checks,
applied to whole Arrow columns so that one bad row is set aside instead of failing its chunk.

What is checked, and how it is worded, follows `gateway.records.codec.RecordCodec`: a value of
the wrong type, null where the feature is not nullable, a category the model never saw,
NaN or infinity (in the dtype the model reads), and a value outside the trained range
under the `reject` policy (`clip` clips, `allow` passes). The tensors are then built by
`gateway.artifacts.tabular.feeds_from_columns`, the same function the records API and the
converter's parity check use. The encoder turns output tensors into columns, with the
records API's labels and class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from gateway.artifacts.manifest import Feature, Manifest
from gateway.artifacts.tabular import feeds_from_columns
from gateway.errors import clip
from gateway.records.checks import NumericChecks, Violation, numeric_dtype
from gateway.records.codec import allowed_categories
from gateway.settings import RangePolicyOverride
from gateway.types import Arrays

# A cell longer than this is a rejected row, not a value to parse, quote or copy: a feature
# is a number or a category, and free text for a vectorizer has its own max_length below.
MAX_CELL_BYTES = 64 * 1024


class SchemaMismatch(ValueError):
    """The table itself cannot feed the model (a missing column, a column of the wrong
    kind): no row could be scored, so the whole run stops with this message."""


@dataclass
class Checked:
    """One chunk after validation: its good rows' feature columns, and why the others failed."""

    columns: Arrays  # feature name -> 1-D column of the good rows, as `feeds_from_columns` takes
    good: np.ndarray  # indices (in the chunk) of the rows in `feeds`, in order
    rejected: np.ndarray  # indices of the rows set aside
    field: list[str]  # per rejected row: the feature that failed first
    reason: list[str]  # per rejected row: why, worded as the records API words it


_TEXT = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def _is_text(t: pa.DataType) -> bool:
    return any(test(t) for test in _TEXT)


class _Rejects:
    """The first reason each row failed; later checks never overwrite an earlier one."""

    def __init__(self, rows: int) -> None:
        self.bad = np.zeros(rows, dtype=bool)
        self.reason = np.full(rows, None, dtype=object)
        self.field = np.full(rows, None, dtype=object)

    def add(self, mask: np.ndarray, field: str, reason: Any) -> None:
        if not mask.any():  # the common case, one reduction
            return
        fresh = mask & ~self.bad
        if fresh.any():
            self.bad |= fresh
            self.field[fresh] = field
            self.reason[fresh] = reason(np.flatnonzero(fresh)) if callable(reason) else reason


class ColumnCodec:
    """Validate Arrow record batches for one model and encode its outputs as columns."""

    def __init__(self, manifest: Manifest, policy_override: RangePolicyOverride = "manifest") -> None:
        if not manifest.features or manifest.layout == "tensors":
            raise SchemaMismatch(
                f"model {manifest.name!r} has no named features; batch scoring needs a tabular model"
            )
        self.manifest = manifest
        # Columns the model never reads (ignored) may be absent and hold anything.
        self.features = [f for f in manifest.features if not f.ignored]
        # The records API's own rules for numbers (gateway.records.checks.NumericChecks), in the
        # type it checks them in.
        self._check_dtype = numeric_dtype(manifest)
        self._numeric_checks = NumericChecks(
            [f for f in self.features if f.dtype != "string"], self._check_dtype, policy_override
        )
        self.output_names = self._output_names()

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def check_schema(self, schema: pa.Schema) -> None:
        """Fail before the first row when a feature's column is missing or of the wrong kind."""
        missing = [f.name for f in self.features if schema.get_field_index(f.name) < 0]
        if missing:
            raise SchemaMismatch(
                f"the input has no column {', '.join(map(repr, missing))}; the model reads "
                f"{', '.join(map(repr, self.feature_names))}"
            )
        for f in self.features:
            t = schema.field(f.name).type
            if pa.types.is_dictionary(t):
                t = t.value_type
            ok = (
                _is_text(t)
                if f.dtype == "string"
                else _is_text(t) or pa.types.is_null(t) or (
                    pa.types.is_boolean(t) if f.dtype == "bool"
                    else pa.types.is_integer(t) or pa.types.is_floating(t)
                )
            )  # fmt: skip
            if not ok:
                raise SchemaMismatch(f"column {f.name!r} holds {t}; the model reads it as {f.dtype}")

    def check(self, batch: pa.RecordBatch | pa.Table) -> Checked:
        rows = batch.num_rows
        rejects = _Rejects(rows)
        columns: dict[str, np.ndarray] = {}
        numeric: list[tuple[Feature, np.ndarray]] = []
        for f in self.features:
            column = batch.column(f.name)
            if _is_text(column.type):  # before any copy: a huge cell is refused, not copied
                column = _refuse_large(f, column, rejects)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            nulls = (
                column.is_null().to_numpy(zero_copy_only=False)
                if column.null_count
                else np.zeros(len(column), dtype=bool)
            )
            if not f.nullable and column.null_count:
                rejects.add(nulls, f.name, f"Expected `{_wire_type(f)}`, got `null`")
            if pa.types.is_dictionary(column.type):
                values = self._dictionary(f, column, nulls, rejects)
            else:
                values = self._values(f, column, nulls, rejects)
            columns[f.name] = values
            if f.dtype != "string":
                numeric.append((f, values))
        if numeric:
            matrix = self._check_numbers(numeric, rejects)
            for j, (f, _) in enumerate(numeric):
                columns[f.name] = matrix[:, j]
        bad = rejects.bad
        good = np.flatnonzero(~bad)
        rejected = np.flatnonzero(bad)
        kept = {name: values[good] for name, values in columns.items()} if rejected.size else columns
        return Checked(
            kept, good, rejected, rejects.field[rejected].tolist(), rejects.reason[rejected].tolist()
        )

    def _values(self, f: Feature, column: pa.Array, nulls: np.ndarray, rejects: _Rejects) -> np.ndarray:
        """One column's values as the feature's numpy column; its bad rows in `rejects`."""
        if f.dtype == "string":
            return self._text(f, column, nulls, rejects)
        return self._number(f, column, rejects)

    def _dictionary(self, f: Feature, column: pa.Array, nulls: np.ndarray, rejects: _Rejects) -> np.ndarray:
        """A dictionary-encoded column, checked on its distinct values and never decoded:
        a 1 MiB value in 200,000 rows is parsed, refused and quoted once, and the rows get
        references to it (for text) or its number, by index."""
        dictionary = column.dictionary
        if len(dictionary) == 0:  # every row null
            return self._values(f, column.dictionary_decode(), nulls, rejects)
        distinct = _Rejects(len(dictionary))
        if _is_text(dictionary.type):
            dictionary = _refuse_large(f, dictionary, distinct)
        values = self._values(f, dictionary, np.zeros(len(dictionary), dtype=bool), distinct)
        index = column.indices.fill_null(0).to_numpy(zero_copy_only=False)
        reasons = distinct.reason
        rejects.add(distinct.bad[index] & ~nulls, f.name, lambda rows: reasons[index[rows]])
        out: np.ndarray = values[index]
        if nulls.any():
            out[nulls] = "" if f.dtype == "string" else np.nan
        return out

    def feeds(self, columns: Arrays, start: int, stop: int) -> Arrays:
        """Model tensors for rows [start, stop) of checked columns. Built a model batch at a
        time: a few thousand rows' matrix stays in the CPU cache while it is transposed."""
        return feeds_from_columns(self.manifest, {name: v[start:stop] for name, v in columns.items()})

    def _text(self, f: Feature, column: pa.Array, nulls: np.ndarray, rejects: _Rejects) -> np.ndarray:
        max_length = getattr(f, "max_length", None)  # free text (a vectorizer reads it)
        if max_length is not None:
            too_long = pc.greater(pc.utf8_length(column), max_length).fill_null(False)
            rejects.add(
                too_long.to_numpy(zero_copy_only=False), f.name, f"Expected `str` of length <= {max_length}"
            )
        elif f.categories and not f.open_categories:  # an open encoder ignores unknown ones
            allowed = allowed_categories(f)
            unknown = ~pc.is_in(column, value_set=pa.array(f.categories, pa.string())).to_numpy(
                zero_copy_only=False
            )
            unknown &= ~nulls
            text = column

            def reason(rows: np.ndarray) -> list[str]:
                return [f"Invalid enum value {clip(text[int(i)].as_py())!r}; {allowed}" for i in rows]

            rejects.add(unknown, f.name, reason)
        values: np.ndarray = column.fill_null("").to_numpy(zero_copy_only=False).astype(object)
        return values

    def _number(self, f: Feature, column: pa.Array, rejects: _Rejects) -> np.ndarray:
        """The column as float64 (null as NaN); unparsable text rejected row by row."""
        if _is_text(column.type):
            column = self._parse_text(f, column, rejects)
        elif pa.types.is_boolean(column.type) and f.dtype == "bool":
            column = column.cast(pa.uint8())
        elif pa.types.is_null(column.type):
            column = pa.nulls(len(column), pa.float64())
        # Arrow gives nulls of a float column to numpy as NaN; a copy, so clip may write.
        # A fraction in an integer column is refused by NumericChecks, as the records API does.
        return np.array(column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), np.float64)

    def _parse_text(self, f: Feature, column: pa.Array, rejects: _Rejects) -> pa.Array:
        """Text from a CSV file as the feature's type: one cast for the whole column when
        every value parses; else the values that cannot be a number are set aside by a
        pattern first, so a bad row costs its own row, not the chunk's speed."""
        target = pa.bool_() if f.dtype == "bool" else pa.int64() if f.dtype == "int64" else pa.float64()
        try:
            return _as_number(pc.cast(column, target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        looks_right = pc.match_substring_regex(
            column, _PATTERNS[f.dtype if f.dtype in _PATTERNS else "float"]
        )
        bad = ~looks_right.fill_null(True).to_numpy(zero_copy_only=False)
        candidates = pc.if_else(pa.array(bad), pa.nulls(len(column), column.type), column)
        try:
            parsed = _as_number(pc.cast(candidates, target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # the pattern let one through
            values = [_parse_one(v, target) for v in candidates.to_pylist()]
            bad |= np.array([v is _BAD for v in values], dtype=bool)
            parsed = pa.array([None if v is _BAD else v for v in values], pa.float64())
        texts = column

        def reason(rows: np.ndarray) -> list[str]:
            return [f"Expected `{_wire_type(f)}`, got {clip(texts[int(i)].as_py())!r}" for i in rows]

        rejects.add(bad, f.name, reason)
        return parsed

    def _check_numbers(self, numeric: list[tuple[Feature, np.ndarray]], rejects: _Rejects) -> np.ndarray:
        """The numeric columns as one matrix in the checked type, clipped where the policy
        clips; each row's first violation becomes its reject reason."""
        with np.errstate(over="ignore", invalid="ignore"):  # 1e39 is inf in float32: refused below
            matrix = np.column_stack([values for _, values in numeric]).astype(self._check_dtype, copy=False)
        for violation in self._numeric_checks.apply(matrix):
            rejects.add(violation.rows, violation.name, partial(_reasons, violation))
        return matrix

    def _output_names(self) -> list[str]:
        m = self.manifest
        proba = m.output("probabilities")
        if proba is not None:
            classes = [str(c) for c in m.classes] if m.classes else None
            if classes is None:
                width = proba.shape[-1] if proba.shape and proba.shape[-1] > 0 else 0
                classes = [str(i) for i in range(width)]
            return ["label", *(f"probability_{c}" for c in classes)]
        if m.output("label") is not None:
            return ["label", "score"] if m.output("value") is not None else ["label"]
        value = m.output("value") or m.outputs[0]
        width = int(np.prod([d for d in value.shape[1:] if d > 0])) if len(value.shape) > 1 else 1
        return ["value"] if width == 1 else [f"value_{i}" for i in range(width)]

    def encode(self, outputs: Arrays) -> dict[str, np.ndarray]:
        """Prediction columns: what `RecordCodec.encode` gives per row, as whole columns."""
        m = self.manifest
        label_spec, proba_spec = m.output("label"), m.output("probabilities")
        if proba_spec is not None:
            proba = outputs[proba_spec.name]
            if label_spec is not None:
                labels = _plain(outputs[label_spec.name].reshape(-1))
            else:
                best = np.argmax(proba, axis=1)
                labels = np.asarray(m.classes, dtype=object)[best] if m.classes else best
            names = self.output_names[1:]
            if len(names) != proba.shape[1]:
                names = [f"probability_{i}" for i in range(proba.shape[1])]
            return {"label": labels, **{n: proba[:, i] for i, n in enumerate(names)}}
        value_spec = m.output("value")
        if label_spec is not None and value_spec is not None:  # an anomaly detector's label and score
            labels = _plain(outputs[label_spec.name].reshape(-1))
            return {"label": labels, "score": outputs[value_spec.name].reshape(len(labels), -1)[:, 0]}
        if label_spec is not None:
            return {"label": _plain(outputs[label_spec.name].reshape(-1))}
        values = outputs[(m.output("value") or m.outputs[0]).name]
        flat = values.reshape(values.shape[0], -1)
        if flat.shape[1] == 1:
            return {"value": flat[:, 0]}
        return {f"value_{i}": flat[:, i] for i in range(flat.shape[1])}


# What Arrow's cast accepts as each type (checked against it: no spaces, no hex, no "_").
_PATTERNS = {
    "float": r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|(?i:inf|infinity|nan))$",
    "int64": r"^-?\d{1,18}$",
    "bool": r"^(?i:true|false|1|0)$",
}
_BAD = object()


def _refuse_large(f: Feature, column: pa.Array | pa.ChunkedArray, rejects: _Rejects) -> Any:
    """Cells over MAX_CELL_BYTES rejected, and nulled so no later step copies them."""
    large = pc.greater(pc.binary_length(column), MAX_CELL_BYTES).fill_null(False)
    mask = large.to_numpy(zero_copy_only=False)
    if not mask.any():
        return column
    sizes = pc.binary_length(column)

    def reason(rows: np.ndarray) -> list[str]:
        return [f"a value of {sizes[int(i)].as_py()} bytes; the limit is {MAX_CELL_BYTES}" for i in rows]

    rejects.add(mask, f.name, reason)
    return pc.if_else(large, pa.scalar(None, column.type), column)


def _reasons(violation: Violation, rows: np.ndarray) -> list[str]:
    return [violation.reason(int(i)) for i in rows]


def _as_number(array: pa.Array) -> pa.Array:
    return array.cast(pa.uint8()) if pa.types.is_boolean(array.type) else array


def _parse_one(text: str | None, target: pa.DataType) -> Any:
    if text is None:
        return None
    try:
        return _as_number(pc.cast(pa.array([text]), target)).cast(pa.float64())[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _BAD


def _wire_type(f: Feature) -> str:
    return {"string": "str", "int64": "int", "bool": "bool"}.get(f.dtype, "float")


def _plain(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "O" and values.size and isinstance(values[0], bytes):
        return np.array([v.decode() for v in values], dtype=object)
    return values
