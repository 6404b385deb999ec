"""HTTP body compression: gzip and deflate request bodies in, compressed responses out.

A compressed body is inflated at most to the body limit plus one byte: a small body that
would inflate to gigabytes (a zip bomb) is refused (413) after the limit, never inflated
past it. Responses are compressed only when the client asks (Accept-Encoding) and the
body is large enough for it to pay.
"""

from __future__ import annotations

import asyncio
import zlib

from gateway.errors import BadRequest, TooLarge, UnsupportedMediaType

# zlib's window bits: gzip's header and trailer; deflate as HTTP means it (zlib-wrapped).
_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}
# Below this a compressed body saves less than its headers and the CPU cost.
MIN_COMPRESS_BYTES = 1024
LEVEL = 1  # the fastest level: the point is fewer bytes on the wire, not the fewest
# Above this a response is deflated in a thread (zlib lets go of the GIL): a 40 MB answer
# took 0.6-2 s of event loop; below it the thread hop costs more than it frees.
OFFLOAD_BYTES = 256 * 1024


def decode_body(body: bytes, encoding: bytes | None, limit: int) -> bytes:
    """The body a Content-Encoding describes, at most `limit` bytes once inflated."""
    if encoding is None:
        return body
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {name.decode(errors='replace')!r} is not supported; use gzip or deflate"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {name.decode()}: {exc}") from None
    if len(data) > limit:
        raise TooLarge(f"body inflates beyond the {limit}-byte limit")
    if not inflater.eof:
        raise BadRequest(f"{name.decode()} body is truncated")
    if inflater.unused_data:
        raise BadRequest(f"{len(inflater.unused_data)} bytes after the end of the {name.decode()} stream")
    return data


def choose(accept_encoding: bytes | None) -> bytes | None:
    """gzip or deflate if Accept-Encoding allows one (q > 0), gzip first; else None."""
    if not accept_encoding:
        return None
    allowed: dict[bytes, float] = {}
    for part in accept_encoding.lower().split(b","):
        token, _, params = part.partition(b";")
        quality = 1.0
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip() == b"q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        allowed[token.strip()] = quality
    best = None
    for name in (b"gzip", b"deflate"):
        quality = allowed.get(name, allowed.get(b"*", 0.0))
        if quality > 0 and (best is None or quality > allowed.get(best, allowed.get(b"*", 0.0))):
            best = name
    return best


def encode_body(body: bytes, accept_encoding: bytes | None) -> tuple[bytes, bytes | None]:
    """The response body, compressed when the client accepts it and it is worth it."""
    if len(body) < MIN_COMPRESS_BYTES:
        return body, None
    name = choose(accept_encoding)
    if name is None:
        return body, None
    deflater = zlib.compressobj(LEVEL, zlib.DEFLATED, _WBITS[name])
    return deflater.compress(body) + deflater.flush(), name


async def encode_response(body: bytes, accept_encoding: bytes | None) -> tuple[bytes, bytes | None]:
    """`encode_body`, off the event loop for a large body."""
    if len(body) <= OFFLOAD_BYTES:
        return encode_body(body, accept_encoding)
    return await asyncio.to_thread(encode_body, body, accept_encoding)
