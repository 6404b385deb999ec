"""Records API codec, generated per model from its manifest at load time.

The decoder is a msgspec Struct with one typed field per feature (categories become
Literal enums, nullable features accept null), built once. Checks that are cheaper on
whole columns (finiteness, ranges) run vectorised after decoding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from gateway.artifacts.floats import float_rows
from gateway.artifacts.manifest import Feature, Manifest
from gateway.artifacts.tabular import (
    NUMPY_DTYPES,
    columns_from_feeds,
    feeds_from_columns,
)
from gateway.errors import BadRequest, TooLarge, Unprocessable, clip
from gateway.records.answers import RecordAnswers
from gateway.records.checks import NumericChecks, numeric_dtype
from gateway.records.counts import RowCounts
from gateway.settings import RangePolicyOverride
from gateway.types import Arrays

# How a request spelt its rows: one record, `{"instances": [records]}`, `{"inputs": {columns}}`.
Form = Literal["record", "instances", "inputs"]


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


class RecordCodec(RecordAnswers):
    """Decode `{...}`, `{"instances": [{...}, ...]}` or `{"inputs": {"name": [...], ...}}` into
    the model's input tensors."""

    def __init__(
        self, manifest: Manifest, max_rows: int, policy_override: RangePolicyOverride = "manifest"
    ) -> None:
        if not manifest.features:
            raise ValueError("model has no named features")
        super().__init__(manifest)
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
        # The fewest bytes max_rows rows can take, as records (a map header and, per feature,
        # its name with a length byte or two quotes, and a one-byte value) and as columns (a
        # byte a value): a shorter body cannot hold too many rows and is not counted.
        names = sum(len(f.name.encode()) for f in manifest.features)
        self._records_beyond = max_rows * (1 + names + 2 * len(manifest.features))
        self._columns_beyond = max_rows * len(manifest.features) + names
        self._counts = RowCounts(manifest, max_rows)
        self._features = self._counts.features
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
                self._counts.check_column_lengths(body, msgpack)
            if form == "instances" and len(body) > self._records_beyond:
                self._counts.check_instance_count(body, msgpack)
            try:
                payload = getattr(decoders[msgpack].decode(body), form)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                continue
            if form == "instances":
                self._check_instances(payload)
            return payload, form
        envelope = self._counts.envelope(msgpack)
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


def _malformed(exc: Exception, body: bytes, msgpack: bool) -> str:
    """A parse error's message, with the usual cause named: pandas and Python's json write
    a missing value as a bare NaN, which JSON does not have."""
    if not msgpack and any(word in body for word in (b"NaN", b"Infinity")):
        return f"malformed body: {exc} (NaN and Infinity are not JSON: send null for a missing value)"
    return f"malformed body: {exc}"


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
    msg = clip(msg)  # it quotes the client's value: the one rule, before our own words follow
    feature = features.get(field) if field is not None else None
    if feature is not None and feature.categories and msg.startswith("Invalid enum value"):
        msg += f"; {allowed_categories(feature)}"
    return [{"loc": loc, "msg": msg}]
