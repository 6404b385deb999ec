"""Error types the request path raises, each with its status code, and their JSON body.

Bodies are `{"error": message, "detail": [{"loc": [...], "msg": ...}]}`: never a stack
trace, never a file path.
"""

from __future__ import annotations

import re
from typing import Any

import orjson


def first_line(exc: BaseException, limit: int = 200, default: str | None = None) -> str:
    """The reason an exception gives, for a message or a log line: ONNX Runtime's can
    carry file paths and stack frames after the first line. Empty: `default`, else its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else (default or type(exc).__name__)


# An absolute path inside a message: the repository's location, ONNX Runtime's sources.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s:'\"`,;()]+")


def public_reason(exc: BaseException, limit: int = 300, default: str | None = None) -> str:
    """`first_line`, with absolute paths replaced by <path>: fit for a client or /readyz."""
    return _ABSOLUTE_PATH.sub("<path>", first_line(exc, limit, default))


class GatewayError(Exception):
    status = 500
    headers: dict[str, str] = {}  # noqa: RUF012 -- read-only per class

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def body(self) -> bytes:
        """Every string a client could have put here (a field name, a value) is clipped:
        an error never carries a client's megabytes back."""
        payload: dict[str, Any] = {"error": clip_message(self.message)}
        if self.detail:
            payload["detail"] = [_clip_detail(d) for d in self.detail[:DETAIL_LIMIT]]
        return orjson.dumps(payload)


# The one clipping rule for client text (a model or tensor name, a path, a value) that
# reaches an error body, a gRPC status or a log line: `clip(text)` keeps ECHO_LIMIT
# characters of each such string where it is quoted, and a whole message, which may quote
# a few of them beside our own words, is cut at MESSAGE_LIMIT where it leaves the process.
ECHO_LIMIT = 100  # characters of one client string (field names, values, paths)
MESSAGE_LIMIT = 5 * ECHO_LIMIT  # characters of an error message
DETAIL_LIMIT = 20  # detail entries


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def clip_message(text: str) -> str:
    """A whole message as it leaves: an error body, a gRPC status, an access log line."""
    return clip(text, MESSAGE_LIMIT)


def _clip_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """A detail's `msg` is a message (client text in it is clipped where it was quoted, then
    our own words, such as the allowed values, follow); its other strings are client text."""
    return {
        k: clip_message(v) if k == "msg" and isinstance(v, str)
        else clip(v) if isinstance(v, str)
        else [clip(x) if isinstance(x, str) else x for x in v[:DETAIL_LIMIT]] if isinstance(v, list)
        else v
        for k, v in detail.items()
    }  # fmt: skip


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401
    headers = {"www-authenticate": "Bearer"}  # noqa: RUF012


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class MethodNotAllowed(GatewayError):
    status = 405
    headers = {"allow": "POST"}  # noqa: RUF012 -- the inference endpoints; Starlette's routes say theirs


class RequestTimeout(GatewayError):
    status = 408
    headers = {"connection": "close"}  # noqa: RUF012


class Conflict(GatewayError):
    status = 409


class TooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class Unprocessable(GatewayError):
    status = 422


class InferenceFailed(GatewayError):
    status = 500


class Overloaded(GatewayError):
    """Load shed on purpose: the queue is full. Clients should back off and retry."""

    status = 503
    headers = {"retry-after": "1"}  # noqa: RUF012


class Unavailable(GatewayError):
    status = 503
    headers = {"retry-after": "5"}  # noqa: RUF012


class DeadlineExceeded(GatewayError):
    status = 504


_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
# msgspec names the offending field in the message, not the path: move it to the path.
_FIELD_MSG = re.compile(r"^Object (?:contains unknown|missing required) field `([^`]*)`$")


def validation_detail(message: str, root: str = "body") -> list[dict[str, Any]]:
    """msgspec's 'Expected `int`, got `str` - at `$.a[0].b`' as a loc list and a reason."""
    match = _PATH.match(message)
    msg, path = (match.group("msg"), match.group("path")) if match else (message, None)
    loc: list[str | int] = [root]
    for name, index in _SEGMENT.findall(path.removeprefix("$") if path else ""):
        loc.append(int(index) if index else name)
    field = _FIELD_MSG.match(msg)
    if field:
        loc.append(field.group(1))
    return [{"loc": loc, "msg": msg}]
