"""Records API codec, generated per model from its manifest at load time.

The decoder is a msgspec Struct with one typed field per feature (categories become
Literal enums, nullable features accept null), built once. Checks that are cheaper on
whole columns (finiteness, ranges) run vectorised after decoding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson

from gateway.artifacts.floats import float_rows, msgpack_length
from gateway.artifacts.manifest import Feature, Manifest, RangePolicy
from gateway.artifacts.tabular import (
    NUMPY_DTYPES,
    all_finite,
    columns_from_feeds,
    feeds_from_columns,
    non_finite_reason,
)
from gateway.errors import BadRequest, TooLarge, Unprocessable
from gateway.settings import RangePolicyOverride
from gateway.types import Arrays

# How a request spelt its rows: one record, `{"instances": [records]}`, `{"inputs": {columns}}`.
Form = Literal["record", "instances", "inputs"]


# Up to this many output values are written one by one: for a row or two, formatting a
# whole array (a copy, one orjson call, a split) costs more than it saves.
SMALL_OUTPUT = 16
# The longest invalid value or message echoed back in an error: a client's 10 MiB string
# is not worth returning.
MAX_ECHO = 200
_RECORD_PATH = re.compile(r"^(?P<msg>.*) - at `\$(?:\[(?P<row>\d+)\])?(?:\.(?P<field>.*))?`$", re.DOTALL)
_COLUMN_PATH = re.compile(r"^(?P<msg>.*) - at `\$\.(?P<field>.*?)(?:\[(?P<row>\d+)\])?`$", re.DOTALL)
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(.*)`$", re.DOTALL)


# The longest value accepted for a feature whose encoder ignores unknown categories.
OPEN_CATEGORY_LENGTH = 1_000
# A 422 for an unknown category lists up to this many of the allowed ones.
LISTED_CATEGORIES = 20


def _field_type(feature: Feature) -> Any:
    base: Any
    if feature.ignored:  # any JSON value, kept as bytes: never decoded, never checked
        return msgspec.Raw
    if feature.dtype == "string" and feature.max_length is not None:
        base = Annotated[str, msgspec.Meta(max_length=feature.max_length)]
    elif feature.dtype == "string" and feature.open_categories:
        base = Annotated[str, msgspec.Meta(max_length=OPEN_CATEGORY_LENGTH)]
    elif feature.dtype == "string":
        base = Literal[tuple(feature.categories)] if feature.categories else str
    elif feature.dtype == "int64":
        # int64's range, less what float64 (the checks' matrix) would round past its top and
        # wrap: 10**20 was fed as -2**63, and 400 digits raised (500).
        # A float is taken too and must be whole (NumericChecks): clients and pandas write
        # 700.0 for an integer column.
        base = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1024)] | float
    elif feature.dtype == "bool":
        base = bool
    else:
        base = float
    return base | None if feature.nullable else base


def _fields(features: Sequence[Feature], column: bool, schema: bool = False) -> list[tuple[Any, ...]]:
    """Struct fields, one a feature; an ignored one may be left out (kw_only allows a
    default before a required field). msgspec.Raw has no JSON schema: `schema` types an
    ignored field as Any, for the OpenAPI document."""
    fields: list[tuple[Any, ...]] = []
    for i, f in enumerate(features):
        kind = _field_type(f)
        if f.ignored:
            fields.append((f"f{i}", Any, None) if schema else (f"f{i}", msgspec.Raw, msgspec.Raw()))
        else:
            fields.append((f"f{i}", list[kind] if column else kind))  # type: ignore[valid-type]
    return fields


def allowed_categories(feature: Feature) -> str:
    """The categories a feature accepts, for an error message, clipped to a readable few."""
    cats = feature.categories or []
    shown = ", ".join(repr(c) for c in cats[:LISTED_CATEGORIES])
    more = f" and {len(cats) - LISTED_CATEGORIES} more" if len(cats) > LISTED_CATEGORIES else ""
    return f"expected one of {shown}{more}"


def _policy(feature: Feature, override: RangePolicyOverride) -> RangePolicy:
    return feature.policy if override == "manifest" else override


def numeric_dtype(manifest: Manifest) -> np.dtype[Any]:
    """Numbers are checked in the narrowest float type the graph reads them as, so a value
    beyond float32's range is refused rather than reaching the model as infinity."""
    numeric_inputs = {s.datatype for s in manifest.inputs if s.datatype in ("FP32", "FP64")}
    return np.dtype(np.float32 if "FP32" in numeric_inputs else np.float64)


@dataclass(frozen=True)
class RangeCheck:
    column: int  # in the numeric matrix
    name: str
    low: float
    high: float
    policy: RangePolicy


@dataclass(frozen=True)
class Violation:
    """The rows of one numeric column that break one rule, and why for a given row."""

    title: str
    column: int
    name: str
    rows: np.ndarray  # bool, one per row
    reason: Callable[[int], str]


def _same(reason: str, _row: int) -> str:
    return reason


def _fractional(values: np.ndarray, row: int) -> str:
    return f"Expected `int`, got {values[row]}: an integer feature takes whole numbers (700 or 700.0)"


def _outside(values: np.ndarray, check: RangeCheck, row: int) -> str:
    return f"{values[row]} is outside the trained range [{check.low}, {check.high}]"


class NumericChecks:
    """The rules for numbers, once: finite in the type the graph reads (NaN only where the
    model imputes, null's stand-in), and the trained range under the reject or clip policy.
    The records API answers the first violation; offline scoring rejects each row for its
    first one (gateway.scoring)."""

    def __init__(
        self, features: Sequence[Feature], dtype: np.dtype[Any], policy_override: RangePolicyOverride
    ) -> None:
        self.dtype = dtype
        self._names = [f.name for f in features]
        self._nullable = np.array([f.nullable for f in features], dtype=bool)
        self._integers = [column for column, f in enumerate(features) if f.dtype == "int64"]
        # A slice where the integer columns are adjacent (no copy), else an index array.
        ints = self._integers
        adjacent = bool(ints) and ints == list(range(ints[0], ints[-1] + 1))
        self._int_columns: slice | np.ndarray = slice(ints[0], ints[-1] + 1) if adjacent else np.array(ints)
        self._ranges = [
            RangeCheck(column, f.name, f.min, f.max, _policy(f, policy_override))
            for column, f in enumerate(features)
            if f.min is not None and f.max is not None and _policy(f, policy_override) != "allow"
        ]  # "allow" only counts, per batch, in telemetry

    @property
    def ranges(self) -> bool:
        """Whether any feature's trained range is enforced (reject or clip)."""
        return bool(self._ranges)

    @property
    def clips(self) -> bool:
        return any(check.policy == "clip" for check in self._ranges)

    def apply(self, matrix: np.ndarray) -> list[Violation]:
        """Check `matrix` (rows x these features, in `dtype`, null as NaN); clip it in place
        where the policy clips. Violations come per column, non-finite ones first."""
        found: list[Violation] = []
        if matrix.size == 0:
            return found
        if not all_finite(matrix):
            bad = ~np.isfinite(matrix) & ~(np.isnan(matrix) & self._nullable)
            reason = non_finite_reason(matrix.dtype)
            found += [
                Violation("non-finite number", int(c), self._names[c], bad[:, c], partial(_same, reason))
                for c in np.flatnonzero(bad.any(axis=0))
            ]
        if self._integers:
            # One comparison for all integer columns (NaN and infinity compare unequal to
            # their floor and are set aside after; no np.errstate: it costs ~20 µs a call).
            block = matrix[:, self._int_columns]
            fractional = block != np.floor(block)
            if np.any(fractional):
                fractional &= np.isfinite(block)
                for j in np.flatnonzero(fractional.any(axis=0)).tolist():
                    c = self._integers[j]
                    found.append(Violation("not a whole number", c, self._names[c], fractional[:, j],
                                           partial(_fractional, matrix[:, c])))  # fmt: skip
        for check in self._ranges:
            values = matrix[:, check.column]
            # Python floats compare in the column's own dtype (NEP 50), so a float32 value
            # at a trained bound is not rounded past it.
            if check.policy == "clip":
                matrix[:, check.column] = np.clip(values, check.low, check.high)
                continue
            outside = (values < check.low) | (values > check.high)
            if outside.any():
                found.append(Violation(
                    "value out of range", check.column, check.name, outside, partial(_outside, values, check)
                ))  # fmt: skip
        return found


class RecordCodec:
    """Decode `{...}`, `{"instances": [{...}, ...]}` or `{"inputs": {"name": [...], ...}}` into
    the model's input tensors."""

    def __init__(
        self, manifest: Manifest, max_rows: int, policy_override: RangePolicyOverride = "manifest"
    ) -> None:
        if not manifest.features:
            raise ValueError("model has no named features")
        self.manifest = manifest
        self.max_rows = max_rows
        # Struct fields must be identifiers; the wire keeps the user's names ("mean radius").
        row = msgspec.defstruct(
            "Record",
            _fields(manifest.features, column=False),
            rename={f"f{i}": f.name for i, f in enumerate(manifest.features)},
            forbid_unknown_fields=True,
            kw_only=True,
            gc=False,
        )
        self.row_type = row
        # The same record for the OpenAPI schema (an ignored column: any value).
        self.schema_type = msgspec.defstruct(
            "Record",
            _fields(manifest.features, column=False, schema=True),
            rename={f"f{i}": f.name for i, f in enumerate(manifest.features)},
            forbid_unknown_fields=True,
            kw_only=True,
        )
        self._json = (msgspec.json.Decoder(row), msgspec.json.Decoder(list[row]))  # type: ignore[valid-type]
        self._msgpack = (msgspec.msgpack.Decoder(row), msgspec.msgpack.Decoder(list[row]))  # type: ignore[valid-type]
        # The same features as columns, `{"inputs": {"name": [values...], ...}}` (TF Serving's
        # columnar format, MLflow's "inputs"): a name once per request, not once per row.
        columns = msgspec.defstruct(
            "Columns",
            _fields(manifest.features, column=True),
            rename={f"f{i}": f.name for i, f in enumerate(manifest.features)},
            forbid_unknown_fields=True,
            kw_only=True,
            gc=False,
        )
        self._columns = (msgspec.json.Decoder(columns), msgspec.msgpack.Decoder(columns))
        # `{"instances": [...]}` or `{"inputs": {...}}` in one pass, for a well-formed body;
        # anything else takes the slower path below, which says exactly what is wrong. A
        # feature named "instances" or "inputs" makes such a body one record instead.
        self._envelopes: dict[Form, tuple[Any, Any]] = {}
        forms: tuple[tuple[Form, Any], ...] = (("instances", list[row]), ("inputs", columns))  # type: ignore[valid-type]
        for form, inner in forms:
            if form not in row.__struct_encode_fields__:
                envelope = msgspec.defstruct(
                    form.title(), [(form, inner)], forbid_unknown_fields=True, gc=False
                )
                self._envelopes[form] = (msgspec.json.Decoder(envelope), msgspec.msgpack.Decoder(envelope))
        self._features = {f.name: f for f in manifest.features}
        # The fewest bytes max_rows rows can take, as records (a map header and, per feature,
        # its name with a length byte or two quotes, and a one-byte value) and as columns (a
        # byte a value): a shorter body cannot hold too many rows and is not counted.
        names = sum(len(f.name.encode()) for f in manifest.features)
        self._records_beyond = max_rows * (1 + names + 2 * len(manifest.features))
        self._columns_beyond = max_rows * len(manifest.features) + names
        # Braces count the records of a JSON body exactly unless some string could hold a
        # brace: a value, or a feature's name (spelt in every record, it would count each twice).
        self._braces_count = all(
            "{" not in f.name
            and "}" not in f.name
            and not f.ignored
            and (
                f.dtype != "string"
                or (
                    f.categories is not None
                    and not f.open_categories
                    and not any("{" in c or "}" in c for c in f.categories)
                )
            )
            for f in manifest.features
        )
        self._raw_list = msgspec.json.Decoder(list[msgspec.Raw])
        self._envelope_json = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self._envelope_msgpack = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
        self._numeric = [i for i, f in enumerate(manifest.features) if f.dtype != "string" and not f.ignored]
        self._read = [i for i, f in enumerate(manifest.features) if not f.ignored]
        self.all_numeric = len(self._numeric) == len(manifest.features)
        # Every numeric feature decodes to a Python float (or null): the fast matrix applies.
        self._floats_only = all(manifest.features[i].dtype in ("float32", "float64") for i in self._numeric)
        self._numeric_dtype = numeric_dtype(manifest)
        self._checks = NumericChecks(
            [manifest.features[i] for i in self._numeric], self._numeric_dtype, policy_override
        )
        self._names = [f.name for f in manifest.features]
        # A float matrix input is built in its own dtype, with no float64 copy in between.
        spec = manifest.inputs[0]
        self._matrix_input = (
            (spec.name, NUMPY_DTYPES[spec.datatype])
            if self.all_numeric and manifest.layout == "matrix" and spec.datatype in ("FP32", "FP64")
            else None
        )
        # What the encoder needs, looked up once rather than per request.
        label, proba = manifest.output("label"), manifest.output("probabilities")
        self._label = label.name if label is not None else None
        self._proba = proba.name if proba is not None else None
        self._value = (manifest.output("value") or manifest.outputs[0]).name
        # A label beside a value (an anomaly detector's -1/1 and its score): both, per row.
        value = manifest.output("value")
        self._score = value.name if label is not None and value is not None and proba is None else None
        self._classes = [str(c) for c in manifest.classes] if manifest.classes else None
        self._templates: dict[int, bytes] = {}  # the row template, by number of classes
        # A JSON answer's opening, the same for every request: `{"model":...,"predictions":`.
        self.head = (
            orjson.dumps({"model": manifest.name, "version": manifest.version})[:-1] + b',"predictions":'
        )
        # ONNX has no bool labels: a bool target travels as int64 and answers as true/false.
        self._bool_labels = bool(manifest.classes) and all(
            isinstance(c, bool) for c in manifest.classes or []
        )

    def decode(self, body: bytes, msgpack: bool = False) -> tuple[Any, Form]:
        """The body's rows and its form: one record, a list of them, or columns."""
        one, many = self._msgpack if msgpack else self._json
        # Most requests are one well-formed record: decode it straight into the row type.
        # Only when that fails is the envelope read, to tell the forms from a bad record.
        try:
            return [one.decode(body)], "record"
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass
        for form, decoders in self._envelopes.items():
            # Only a body long enough to spell more rows than the limit is counted first.
            if form == "inputs" and len(body) > self._columns_beyond:
                self._check_column_lengths(body, msgpack)
            if form == "instances" and len(body) > self._records_beyond:
                self._check_instance_count(body, msgpack)
            try:
                payload = getattr(decoders[msgpack].decode(body), form)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                continue
            if form == "instances":
                self._check_instances(payload)
            return payload, form
        envelope = self._envelope_msgpack if msgpack else self._envelope_json
        try:
            top = envelope.decode(body)
        except msgspec.ValidationError:  # before DecodeError: it is a subclass
            raise Unprocessable(
                'the body must be an object: one record, {"instances": [...]} or {"inputs": {...}}',
                [{"loc": ["body"], "msg": "expected an object"}],
            ) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(_malformed(exc, body, msgpack)) from None
        except RecursionError:
            raise BadRequest("malformed body: nested too deeply") from None
        form = next((f for f in self._envelopes if f in top), "record")
        if form != "record" and len(top) != 1:
            raise Unprocessable(
                "unknown top-level fields",
                [{"loc": ["body", k], "msg": "unknown field"} for k in sorted(top) if k != form],
            )
        decoder: Any = {"record": one, "instances": many, "inputs": self._columns[msgpack]}[form]
        try:
            payload = decoder.decode(body if form == "record" else top[form])
        except msgspec.ValidationError as exc:
            raise Unprocessable("invalid record", _record_detail(str(exc), form, self._features)) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(_malformed(exc, body, msgpack)) from None
        except RecursionError:
            raise BadRequest("malformed body: nested too deeply") from None
        if form == "record":
            return [payload], form
        if form == "instances":
            self._check_instances(payload)
        return payload, form

    def _check_instances(self, records: list[Any]) -> None:
        if not records:
            raise Unprocessable("no instances", [{"loc": ["body", "instances"], "msg": "empty list"}])
        if len(records) > self.max_rows:
            raise TooLarge(f"{len(records)} instances in one request; the limit is {self.max_rows}")

    def to_feeds(self, payload: Any, form: Form) -> tuple[Arrays, int]:
        """Columns from records (or columns as sent), checked for finiteness and range, as
        model tensors."""
        names = self._names
        if form == "inputs":
            raw: list[Any] = list(msgspec.structs.astuple(payload))
            rows = self._column_rows(raw)
        elif self.all_numeric:
            rows = len(payload)
            if self._matrix_input is not None:  # the rows already are the input tensor
                name, dtype = self._matrix_input
                return {name: self._check_numeric(self._matrix(payload, dtype), form)}, rows
            matrix = self._check_numeric(self._matrix(payload, self._numeric_dtype), form)
            return feeds_from_columns(self.manifest, {n: matrix[:, i] for i, n in enumerate(names)}), rows
        else:
            rows = len(payload)
            raw = list(zip(*map(msgspec.structs.astuple, payload), strict=True))
        numeric_dtype = self._matrix_input[1] if self._matrix_input is not None else self._numeric_dtype
        numeric = self._check_numeric(self._numeric_matrix(raw, rows, numeric_dtype), form)
        if self._matrix_input is not None:
            return {self._matrix_input[0]: numeric}, rows
        columns = {names[i]: numeric[:, j] for j, i in enumerate(self._numeric)}
        for i, f in enumerate(self.manifest.features):
            if f.dtype == "string" and not f.ignored:
                column = np.array(raw[i], dtype=object)
                column[column == None] = ""  # noqa: E711 -- elementwise; null is "missing"
                columns[f.name] = column
        return feeds_from_columns(self.manifest, columns), rows

    def _matrix(self, records: list[Any], dtype: np.dtype[Any]) -> np.ndarray:
        """Numeric records as a rows x features matrix in `dtype`, null as NaN."""
        return self._numbers(list(map(msgspec.structs.astuple, records)), len(self._names), dtype)

    def _numeric_matrix(self, columns: list[Any], rows: int, dtype: np.dtype[Any]) -> np.ndarray:
        """The numeric features' columns (each `rows` long) as a rows x features matrix."""
        return self._numbers([columns[i] for i in self._numeric], rows, dtype, by_column=True)

    def _numbers(
        self, seqs: list[Any], inner: int, dtype: np.dtype[Any], by_column: bool = False
    ) -> np.ndarray:
        """Python numbers (null as NaN) as a C-ordered matrix in `dtype`: `seqs` are its
        rows, or with `by_column` its columns, each `inner` long."""
        block = float_rows(seqs, inner) if self._floats_only else None
        if block is None and dtype.itemsize == 8:  # every Python number fits: nothing to guard
            matrix = np.array(seqs, dtype=dtype).reshape(len(seqs), inner)
            return np.ascontiguousarray(matrix.T) if by_column else matrix
        with np.errstate(over="ignore"):  # overflow to infinity is refused by the checks
            if block is None:
                block = np.array(seqs, dtype=dtype).reshape(len(seqs), inner)
            return (block.T if by_column else block).astype(dtype, order="C", copy=False)

    def _members(self, text: bytes, msgpack: bool, where: list[str | int]) -> dict[str, msgspec.Raw] | None:
        """An object's members as raw bytes (no values made), or None if `text` is not an
        object. 422 if it names a key twice: a dict keeps the last value, so a count made
        from it would miss what the typed decoder builds for the earlier ones (a first
        "inputs" of 8 M numbers behind a second of one)."""
        decoder = self._envelope_msgpack if msgpack else self._envelope_json
        try:
            members: dict[str, msgspec.Raw] = decoder.decode(text)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None  # not an object: the typed decoders say what is wrong
        if _repeats_key(text, members, msgpack):
            raise Unprocessable("a key appears more than once", [{"loc": where, "msg": "repeated key"}])
        return members

    def check_tensors(self, feeds: Arrays) -> Arrays:
        """A V2 request's tensors under the records API's range policy: the same features,
        the same rule whichever door a row comes in by (finiteness V2 checks itself). With
        the default policy (allow) there is nothing to do."""
        if not self._checks.ranges:
            return feeds
        columns = columns_from_feeds(self.manifest, feeds)
        numeric = np.column_stack([columns[self._names[i]] for i in self._numeric])
        violations = self._checks.apply(numeric)  # a copy: clipping leaves the request alone
        if violations:
            first = violations[0]
            row = int(np.argmax(first.rows))
            where = f"row {row}, feature {first.name!r}"
            raise Unprocessable(
                first.title, [{"loc": ["body", "inputs"], "msg": f"{where}: {first.reason(row)}"}]
            )
        if not self._checks.clips:
            return feeds
        clipped = {**columns, **{self._names[i]: numeric[:, j] for j, i in enumerate(self._numeric)}}
        return feeds_from_columns(self.manifest, clipped)

    def _check_column_lengths(self, body: bytes, msgpack: bool) -> None:
        """413 before a column's values are decoded when it holds more than the row limit.

        Columns spell a number in as little as two bytes ("1,"), which decodes to a Python
        float and a list slot of 32: a body within its limit could otherwise allocate 16
        times its size before the row count is known. Each column is first read as raw
        bytes (no values made) and its length bounded: the array header in msgpack; in
        JSON the commas of a number or bool column, and for a string column the lower of
        its commas and its unescaped quotes (two a string) plus nulls."""
        top = self._members(body, msgpack, ["body"])
        inputs = top.get("inputs") if top is not None else None
        columns = self._members(bytes(inputs), msgpack, ["body", "inputs"]) if inputs is not None else None
        for name, raw in (columns or {}).items():
            feature = self._features.get(name)
            if feature is None or feature.ignored:  # kept as raw bytes: nothing is built
                continue
            if msgpack:
                count = msgpack_length(bytes(raw))
            elif feature.dtype == "string":
                # Two upper bounds, each too high only for some strings (commas in them;
                # "null" in them): the lower of the two is still an upper bound.
                data = bytes(raw)
                quoted = (data.count(b'"') - data.count(b'\\"')) // 2 + data.count(b"null")
                count = min(quoted, data.count(b",") + 1)
            else:
                count = bytes(raw).count(b",") + 1
            if count > self.max_rows:
                raise TooLarge(f"column {name!r} holds more than {self.max_rows} values, the row limit")

    def _check_instance_count(self, body: bytes, msgpack: bool) -> None:
        """413 before the records are decoded when the list holds more than the row limit:
        many small records within the byte bound would otherwise all be built first."""
        top = self._members(body, msgpack, ["body"])
        if top is None or "instances" not in top:
            return
        raw = bytes(top["instances"])
        if msgpack:
            count = msgpack_length(raw)
        else:
            # Every record spells its own braces, so they bound the count from above; where a
            # string may hold a brace too, a count beyond the limit is made exact by reading
            # each record as raw bytes (a slice each, no values built).
            count = min(raw.count(b"{"), raw.count(b"}"))
            if count > self.max_rows and not self._braces_count:
                try:
                    count = len(self._raw_list.decode(raw))
                except (msgspec.DecodeError, RecursionError):
                    return  # the typed decoder says what is wrong
        if count > self.max_rows:
            raise TooLarge(f"more than {self.max_rows} instances in one request, the row limit")

    def _column_rows(self, columns: list[list[Any]]) -> int:
        """The row count of columnar input: every column as long as the first, 1..max_rows."""
        first = self._read[0]
        rows = len(columns[first])
        for i in self._read:
            name, column = self._names[i], columns[i]
            if len(column) != rows:
                raise Unprocessable(
                    "columns of different lengths",
                    [{"loc": ["body", "inputs", name],
                      "msg": f"{len(column)} values where {self._names[first]!r} has {rows}"}],
                )  # fmt: skip
        if rows == 0:
            raise Unprocessable("no rows", [{"loc": ["body", "inputs"], "msg": "empty columns"}])
        if rows > self.max_rows:
            raise TooLarge(f"{rows} rows in one request; the limit is {self.max_rows}")
        return rows

    def _check_numeric(self, matrix: np.ndarray, form: Form) -> np.ndarray:
        violations = self._checks.apply(matrix)
        if violations:
            first = violations[0]
            row = int(np.argmax(first.rows))
            raise Unprocessable(first.title, [{"loc": _loc(form, row, first.name), "msg": first.reason(row)}])
        return matrix

    def encode(self, outputs: Arrays) -> bytes:
        """Per-row predictions as a JSON array: label and class probabilities, or a value.

        Written from a template per row with the numbers spliced in: no dict is built per
        row (256 rows: 51 µs, against ~200 µs for dicts). The numbers are those `.tolist()`
        gives: float32 outputs are written as the float64 values they equal."""
        if self._proba is not None:
            proba = outputs[self._proba]
            rows = proba.shape[0]
            width = proba.shape[1] if proba.ndim == 2 else 1
            template = self._templates.get(width)
            if template is None:
                classes = self._classes or [str(i) for i in range(width)]
                keys = b",".join(orjson.dumps(c).replace(b"%", b"%%") + b":%s" for c in classes)
                template = self._templates[width] = b'{"label":%s,"probabilities":{' + keys + b"}}"
            labels, numbers = self._labels(outputs, proba), _json_values(proba)
            if rows == 1:  # most requests: the cells are already in order
                return b"[" + template % (*labels, *numbers) + b"]"
            cells: list[bytes] = [b""] * (rows * (width + 1))
            cells[0 :: width + 1] = labels
            for j in range(width):
                cells[j + 1 :: width + 1] = numbers[j::width]
            return _json_rows(template, rows, cells)
        if self._score is not None:
            labels = _json_values(outputs[self._label].reshape(-1))  # type: ignore[index]
            scores = _json_values(outputs[self._score].reshape(len(labels), -1)[:, 0])
            pairs: list[bytes] = [b""] * (2 * len(labels))
            pairs[0::2], pairs[1::2] = labels, scores
            return _json_rows(b'{"label":%s,"score":%s}', len(labels), pairs)
        if self._label is not None:
            labels = self._labels(outputs, None)
            return _json_rows(b'{"label":%s}', len(labels), labels)
        values = outputs[self._value]
        flat = values.reshape(values.shape[0], -1)
        if flat.shape[1] == 1:
            return _json_rows(b'{"value":%s}', flat.shape[0], _json_values(flat[:, 0]))
        return _json_rows(b'{"value":%s}', flat.shape[0], _json_vectors(flat))

    def _labels(self, outputs: Arrays, proba: np.ndarray | None) -> list[bytes]:
        """Each row's label as JSON: the label output, or the most probable known class."""
        if self._label is not None:
            labels = outputs[self._label]
            labels = labels.astype(bool) if self._bool_labels else labels
            return _json_values(labels) if labels.ndim == 1 else _json_vectors(labels)
        assert proba is not None
        best = np.argmax(proba, axis=1).tolist()
        known = self.manifest.classes
        return [orjson.dumps(known[i] if known else i) for i in best]


def _json_values(array: np.ndarray) -> list[bytes]:
    """Each element of `array` (row-major) as JSON text, as orjson writes `.tolist()`."""
    flat = array.reshape(-1)
    if flat.dtype.kind not in "fiub":
        return [orjson.dumps(_plain(v)) for v in flat.tolist()]
    if flat.size <= SMALL_OUTPUT:
        return [orjson.dumps(v) for v in flat.tolist()]
    if flat.dtype.kind == "f":
        flat = flat.astype(np.float64)  # the digits .tolist() would give, NaN as null
    text = orjson.dumps(np.ascontiguousarray(flat), option=orjson.OPT_SERIALIZE_NUMPY)
    return text[1:-1].split(b",")


def _malformed(exc: Exception, body: bytes, msgpack: bool) -> str:
    """A parse error's message, with the usual cause named: pandas and Python's json write
    a missing value as a bare NaN, which JSON does not have."""
    if not msgpack and any(word in body for word in (b"NaN", b"Infinity")):
        return f"malformed body: {exc} (NaN and Infinity are not JSON: send null for a missing value)"
    return f"malformed body: {exc}"


def _repeats_key(text: bytes, members: dict[str, msgspec.Raw], msgpack: bool) -> bool:
    """Whether the object spelt by `text` (decoded as `members`) names a key twice. msgpack
    states its entry count. A JSON object of n distinct keys holds n - 1 commas of its own:
    more, beside those inside its keys and values, are the members a dict dropped."""
    if msgpack:
        return msgpack_length(text) > len(members)
    # Commas spelt as escapes count too: a key's comma may be spelt so (its decoded name has
    # it), and a value's then counts the same in the object and in the value.
    inner = sum(_commas(bytes(v)) for v in members.values()) + sum(k.count(",") for k in members)
    return _commas(text) - inner >= max(len(members), 1)


def _commas(raw: bytes) -> int:
    return raw.count(b",") + raw.count(b"\\u002c") + raw.count(b"\\u002C")


def _json_vectors(array: np.ndarray) -> list[bytes]:
    """Each row of `array` (rows x anything) as a flat JSON list, as `.tolist()` of the
    rows flattened would give."""
    flat = array.reshape(array.shape[0], -1)
    width = flat.shape[1]
    if width == 0:
        return [b"[]"] * flat.shape[0]
    numbers = _json_values(flat)
    return [b"[" + b",".join(numbers[i : i + width]) + b"]" for i in range(0, len(numbers), width)]


def _json_rows(template: bytes, rows: int, cells: list[bytes]) -> bytes:
    """`[template % row's cells, ...]` in one formatting call."""
    return b"[" + b",".join([template] * rows) % tuple(cells) + b"]"


def _loc(form: Form, row: int, name: str) -> list[str | int]:
    if form == "record":
        return ["body", name]
    return ["body", "instances", row, name] if form == "instances" else ["body", "inputs", name, row]


def _record_detail(message: str, form: Form, features: dict[str, Feature]) -> list[dict[str, Any]]:
    """msgspec's 'Expected `float`, got `str` - at `$[3].mean radius`' as a loc list
    (columns: '- at `$.mean radius[3]`').

    A record is flat, so everything after the row is one field name, dots and brackets
    included: the generic path splitter would cut "od280/od315.x" apart."""
    loc: list[str | int] = ["body"] if form == "record" else ["body", form]
    pattern = _COLUMN_PATH if form == "inputs" else _RECORD_PATH
    match = pattern.match(message)
    msg = match.group("msg") if match else message
    row = int(match.group("row")) if match and match.group("row") is not None else None
    if row is not None and form != "inputs":
        loc.append(row)
    named = _NAMED_FIELD.match(msg)
    field = match.group("field") if match else None
    if field is not None or named is not None:
        loc.append(field if field is not None else named.group(1))  # type: ignore[union-attr]
    if row is not None and form == "inputs":
        loc.append(row)
    msg = msg if len(msg) <= MAX_ECHO else msg[:MAX_ECHO] + "…"
    feature = features.get(field) if field is not None else None
    if feature is not None and feature.categories and msg.startswith("Invalid enum value"):
        msg += f"; {allowed_categories(feature)}"
    return [{"loc": loc, "msg": msg}]


def _plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
