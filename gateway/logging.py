"""Structured logs: one JSON object per line, with whatever `extra` the caller attached."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _envelope(when: dt.datetime, level: str, logger: str, msg: str) -> dict[str, Any]:
    """The fields every JSON line starts with, whichever path wrote it."""
    return {"ts": when.isoformat(timespec="milliseconds"), "level": level, "logger": logger, "msg": msg}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry = _envelope(when, record.levelname.lower(), record.name, record.getMessage())
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[1] is not None:
            entry["exc_type"] = type(record.exc_info[1]).__name__
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class AccessLog:
    """One JSON line per request without the logging module's per-record machinery.

    Lines are buffered and written together on the next loop turn (at most 100 ms later),
    one write for many requests instead of one write and flush each. The `gateway.access`
    logger's level still decides whether anything is written; with the text format the
    lines go through logging as usual.
    """

    FLUSH_SECONDS = 0.1
    MAX_BUFFERED = 512

    def __init__(self, fmt: str = "json") -> None:
        self.logger = logging.getLogger("gateway.access")
        self.fast = fmt == "json"
        self._buffer: list[bytes] = []
        self._scheduled = False

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def emit(self, entry: dict[str, Any]) -> None:
        if not self.fast:
            self.logger.info(entry.get("event", "request"), extra=entry)
            return
        line = _envelope(dt.datetime.now(dt.UTC), "info", "gateway.access", "request") | entry
        self._buffer.append(orjson.dumps(line, default=str) + b"\n")
        if len(self._buffer) >= self.MAX_BUFFERED:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop: write at once
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            data, self._buffer = b"".join(self._buffer), []
            try:
                sys.stderr.flush()
                sys.stderr.buffer.write(data)
                sys.stderr.buffer.flush()
            except (OSError, ValueError):  # stderr closed at exit: nothing to write to
                pass
