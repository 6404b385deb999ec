"""The records API's tensors, value for value: records and columns, as JSON and msgpack,
give what numpy makes of the same values, whichever conversion the codec takes (floats
through `gateway.artifacts.floats`, or numpy's own for nulls and integers).

Covers `gateway/records/checks.py` (the numeric rules every row passes) and
`gateway/records/counts.py` (rows counted before they are decoded) with the codec."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from gateway.artifacts.floats import FROM_VALUES, float_rows
from gateway.artifacts.manifest import Feature, Manifest, OnnxInfo, Source, TensorSpec
from gateway.errors import BadRequest, TooLarge, Unprocessable
from gateway.records.codec import RecordCodec


def _manifest(width: int, datatype: str, nullable: bool) -> Manifest:
    return Manifest(
        name="m", version="1", created_at="2026-12-01T00:00:00Z", task="regression", layout="matrix",
        source=Source("sklearn", "1.7", "X", "m.joblib", "0" * 64),
        onnx=OnnxInfo("0" * 64, 1, {"": 17}, "test", 9),
        inputs=[TensorSpec("input", datatype, [-1, width])],
        outputs=[TensorSpec("variable", "FP32", [-1, 1], role="value")],
        features=[Feature(f"feature {i}", "float64", nullable=nullable, policy="off") for i in range(width)],
    )  # fmt: skip


def _values(rng: np.random.Generator, rows: int, width: int, nulls: bool, ints: bool) -> list[list[object]]:
    values: list[list[object]] = (
        rng.normal(size=(rows, width)) * 10.0 ** rng.integers(-30, 30, (rows, width))
    ).tolist()
    if nulls:
        values[rows // 2][width // 3] = None
    if ints:  # JSON integers in float features decode as floats: the fast conversion applies
        values[0][0] = 7
        values[-1][-1] = -(2**40)
    return values


def _as_sent(values: list[list[object]], names: list[str], form: str) -> dict[str, object]:
    if form == "instances":
        return {"instances": [dict(zip(names, row, strict=True)) for row in values]}
    return {"inputs": {n: [row[j] for row in values] for j, n in enumerate(names)}}


@pytest.mark.parametrize("width", [3, 15, 16, 30])
@pytest.mark.parametrize("rows", [1, 2, 16, 300])
@pytest.mark.parametrize("form", ["instances", "inputs"])
@pytest.mark.parametrize("nulls,ints", [(False, False), (True, False), (False, True)])
def test_tensors_equal_numpys_conversion(width, rows, form, nulls, ints):
    rng = np.random.default_rng(width * 1000 + rows)
    for datatype, dtype in (("FP32", np.float32), ("FP64", np.float64)):
        manifest = _manifest(width, datatype, nullable=True)
        codec = RecordCodec(manifest, max_rows=4096)
        names = [f.name for f in manifest.features]
        values = _values(rng, rows, width, nulls, ints)
        expected = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64)
        expected = expected.astype(dtype)
        for msgpack in (False, True):
            encode = msgspec.msgpack.encode if msgpack else msgspec.json.encode
            body = encode(_as_sent(values, names, form))
            payload, got_form = codec.decode(body, msgpack)
            assert got_form == (form if rows > 1 or form == "inputs" else "instances")
            feeds, n = codec.to_feeds(payload, got_form)
            assert n == rows
            tensor = feeds["input"]
            assert tensor.dtype == dtype and tensor.shape == (rows, width)
            assert tensor.flags.c_contiguous and tensor.flags.writeable
            np.testing.assert_array_equal(tensor, expected)


@pytest.mark.parametrize("form", ["instances", "inputs"])
def test_float32_overflow_is_refused_either_way(form):
    """1e39 fits a float64 and not a float32: infinity after the cast, which the checks refuse
    with the row and feature named, on the fast conversion and numpy's."""
    manifest = _manifest(20, "FP32", nullable=True)
    codec = RecordCodec(manifest, max_rows=4096)
    names = [f.name for f in manifest.features]
    for null in (False, True):
        values: list[list[object]] = [[1.5] * 20 for _ in range(4)]
        values[2][5] = 1e39
        if null:
            values[0][0] = None
        payload, got = codec.decode(msgspec.json.encode(_as_sent(values, names, form)))
        with pytest.raises(Unprocessable) as refused:
            codec.to_feeds(payload, got)
        assert refused.value.detail[0]["loc"][-2:] in (["feature 5", 2], [2, "feature 5"])


def test_float_rows_refuses_what_is_not_a_float():
    rows = [[float(i), 0.5] for i in range(FROM_VALUES // 2)]
    np.testing.assert_array_equal(float_rows(rows, 2), np.array(rows))
    for odd in (None, True, 3, 2**63 + 1, -(2**63)):
        assert float_rows([[1.0, odd], *rows[1:]], 2) is None
    assert float_rows(rows[1:], 2) is None  # too few values to be worth it
    # A longer row beside a shorter one has the right length and markers: the row headers
    # still tell them apart.
    wide = [[0.5] * 31 for _ in range(20)]
    wide[0], wide[1] = [0.5] * 31 + [-3.25], [0.5] * 30
    assert float_rows(wide, 31) is None


def test_braces_in_a_feature_name_do_not_count_as_records():
    """A long body is counted before it is decoded; a name like "x{1}" is spelt in every
    record, and counting its braces would refuse a list within the row limit."""
    manifest = _manifest(2, "FP64", nullable=False)
    manifest = msgspec.structs.replace(
        manifest, features=[Feature("x{1}", "float64", policy="off"), Feature("y}", "float64", policy="off")]
    )
    codec = RecordCodec(manifest, max_rows=8)
    body = msgspec.json.encode({"instances": [{"x{1}": 1.0, "y}": 2.0}] * 8})
    assert len(body) > codec._records_beyond  # long enough to be counted first
    payload, form = codec.decode(body)
    assert codec.to_feeds(payload, form)[1] == 8
    with pytest.raises(TooLarge):
        codec.decode(msgspec.json.encode({"instances": [{"x{1}": 1.0, "y}": 2.0}] * 9}))


def _msgpack_map(pairs: list[tuple[str, object]]) -> bytes:
    """An msgpack map that may repeat a key (msgspec will not write one)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(
        msgspec.msgpack.encode(k) + msgspec.msgpack.encode(v) for k, v in pairs
    )


def test_a_repeated_key_cannot_hide_values_from_the_counts():
    """The counts read a dict, which keeps a repeated key's last value; the typed decoder
    built the first in full: 8 M numbers behind a one-value repeat were served (200)."""
    manifest = _manifest(2, "FP64", nullable=False)
    codec = RecordCodec(manifest, max_rows=16)
    a, b = (f.name for f in manifest.features)
    long = [0.0] * 5000
    for msgpack in (False, True):
        encode = msgspec.msgpack.encode if msgpack else msgspec.json.encode
        columns = [(a, long), (b, [1.0]), (a, [1.0])]
        if msgpack:
            bodies = [
                _msgpack_map([("inputs", 0)]).replace(b"\x00", _msgpack_map(columns)),
                _msgpack_map([("instances", [{a: 1.0, b: 2.0}] * 5000), ("instances", [{a: 1.0, b: 2.0}])]),
            ]
        else:
            inner = b"{" + b",".join(encode(k) + b":" + encode(v) for k, v in columns) + b"}"
            bodies = [
                b'{"inputs":' + inner + b"}",
                b'{"instances":' + encode([{a: 1.0, b: 2.0}] * 5000) + b', "instances": [{}]}',
            ]
        for body in bodies:
            with pytest.raises(Unprocessable) as refused:
                codec.decode(body, msgpack)
            assert refused.value.detail[0]["msg"] == "repeated key", body[:40]


def test_long_bodies_with_commas_and_whitespace_are_not_taken_for_repeats():
    manifest = _manifest(2, "FP64", nullable=False)
    manifest = msgspec.structs.replace(
        manifest, features=[Feature("x, y", "float64", policy="off"), Feature("z", "float64", policy="off")]
    )
    codec = RecordCodec(manifest, max_rows=64)
    columns = {"x, y": [float(i) for i in range(64)], "z": [0.5] * 64}
    records = [{"x, y": float(i), "z": 0.5} for i in range(64)]
    escaped = msgspec.json.encode({"inputs": columns}).replace(b'"x, y"', b'"x\\u002c y"')
    for body in (
        msgspec.json.encode({"inputs": columns}),
        msgspec.json.encode({"instances": records}),
        escaped,
    ):
        pretty = msgspec.json.format(body, indent=4)
        assert len(pretty) > max(codec._records_beyond, codec._columns_beyond)
        for text in (body, pretty):
            payload, form = codec.decode(text)
            assert codec.to_feeds(payload, form)[1] == 64


def test_int64_features_take_int64_without_wrapping():
    manifest = _manifest(1, "FP64", nullable=False)
    manifest = msgspec.structs.replace(manifest, features=[Feature("n", "int64", policy="off")])
    codec = RecordCodec(manifest, max_rows=8)
    for fine in (2**53 + 1, 2**63 - 1024, -(2**63), 1_700_000_000_000_000_000):  # a timestamp in ns
        payload, form = codec.decode(b'{"n": %d}' % fine)
        assert codec.to_feeds(payload, form)[0]["input"][0, 0] == float(fine)
    for bad in (b'{"n": 100000000000000000000}', b'{"n": ' + b"9" * 400 + b"}", b'{"n": 9223372036854775807}'):
        with pytest.raises(Unprocessable) as refused:
            payload, form = codec.decode(bad)
        assert refused.value.detail[0]["loc"] == ["body", "n"], refused.value.detail


def test_a_bare_nan_is_named_as_the_cause():
    """json.dumps(df.iloc[0].to_dict()) writes NaN for a missing value: say so, and what to send."""
    codec = RecordCodec(_manifest(2, "FP64", nullable=True), max_rows=8)
    with pytest.raises(BadRequest) as refused:
        codec.decode(b'{"feature 0": NaN, "feature 1": 1.0}')
    assert "send null for a missing value" in refused.value.message
    with pytest.raises(BadRequest) as refused:
        codec.decode(b'{"feature 0": 1.0, "feature 1": 1.0')
    assert "NaN" not in refused.value.message


@pytest.mark.parametrize("policy", ["reject", "clip", "allow"])
def test_v2_tensors_meet_the_records_range_policy(policy):
    manifest = _manifest(2, "FP32", nullable=False)
    manifest = msgspec.structs.replace(
        manifest,
        features=[Feature("a", "float64", min=0.0, max=10.0, policy=policy), Feature("b", "float64")],
    )
    codec = RecordCodec(manifest, max_rows=8)
    feeds = {"input": np.array([[5.0, 1.0], [20.0, 2.0]], dtype=np.float32)}
    if policy == "reject":
        with pytest.raises(Unprocessable) as refused:
            codec.check_tensors(feeds)
        assert "row 1, feature 'a'" in refused.value.detail[0]["msg"]
        return
    got = codec.check_tensors(feeds)["input"]
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_array_equal(got, [[5, 1], [10 if policy == "clip" else 20, 2]])
    assert feeds["input"][1, 0] == 20  # the request's own tensor is left as sent


def test_commas_spelt_as_escapes_in_values_are_not_taken_for_repeats():
    """A string value may spell a comma as \\u002c; it counts in its value as in the object."""
    manifest = _manifest(2, "FP64", nullable=False)
    manifest = msgspec.structs.replace(
        manifest, features=[Feature("s", "string", max_length=50), Feature("x", "float64", policy="off")]
    )
    codec = RecordCodec(manifest, max_rows=64)
    record = b'{"s": "a\\u002cb, c\\u002C", "x": 1.0}'
    body = b'{"instances": [' + b", ".join([record] * 64) + b"]}"
    assert len(body) > codec._records_beyond
    payload, _ = codec.decode(body)
    assert len(payload) == 64 and payload[0].f0 == "a,b, c,"
    with pytest.raises(Unprocessable):
        codec.decode(body[:-1] + b', "instances": []}')


def test_an_unknown_category_keeps_its_allowed_values_in_the_answer():
    """The client's value is clipped where it is quoted, then the allowed values follow:
    the answer's detail is a message, clipped as one, so the list is not cut away."""
    import orjson

    categories = [f"category-{i:02d}" for i in range(30)]
    manifest = msgspec.structs.replace(
        _manifest(1, "FP64", nullable=True),
        features=[Feature(name="plan", dtype="string", categories=categories)],
    )
    codec = RecordCodec(manifest, max_rows=16)
    with pytest.raises(Unprocessable) as refused:
        payload, form = codec.decode(msgspec.json.encode({"plan": "x" * 10_000}))
        codec.to_feeds(payload, form)
    msg = orjson.loads(refused.value.body())["detail"][0]["msg"]
    assert msg.startswith("Invalid enum value 'xxx") and "x" * 200 not in msg
    assert msg.endswith("'category-19' and 10 more")
