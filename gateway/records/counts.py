"""Row counts of a records body bounded before its rows are decoded: a body within its byte
limit could otherwise build far more rows (or Python values) than the row limit allows.
"""

from __future__ import annotations

import msgspec

from gateway.artifacts.floats import msgpack_length
from gateway.artifacts.manifest import Manifest
from gateway.errors import TooLarge, Unprocessable

# A decoder of an object's members as raw bytes, JSON or msgpack.
Members = msgspec.json.Decoder[dict[str, msgspec.Raw]] | msgspec.msgpack.Decoder[dict[str, msgspec.Raw]]


class RowCounts:
    """413 for a body that holds more rows than `max_rows`, read as raw bytes."""

    def __init__(self, manifest: Manifest, max_rows: int) -> None:
        self.max_rows = max_rows
        self.features = {f.name: f for f in manifest.features}
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

    def envelope(self, msgpack: bool) -> Members:
        """The decoder of an object's members as raw bytes, shared with the codec."""
        return self._envelope_msgpack if msgpack else self._envelope_json

    def _members(self, text: bytes, msgpack: bool, where: list[str | int]) -> dict[str, msgspec.Raw] | None:
        """An object's members as raw bytes (no values made), or None if `text` is not an
        object. 422 if it names a key twice: a dict keeps the last value, so a count made
        from it would miss what the typed decoder builds for the earlier ones (a first
        "inputs" of 8 M numbers behind a second of one)."""
        decoder = self.envelope(msgpack)
        try:
            members: dict[str, msgspec.Raw] = decoder.decode(text)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None  # not an object: the typed decoders say what is wrong
        if _repeats_key(text, members, msgpack):
            raise Unprocessable("a key appears more than once", [{"loc": where, "msg": "repeated key"}])
        return members

    def check_column_lengths(self, body: bytes, msgpack: bool) -> None:
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
            feature = self.features.get(name)
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

    def check_instance_count(self, body: bytes, msgpack: bool) -> None:
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
