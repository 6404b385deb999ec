"""Logs: one JSON object per line for machines, or short readable lines on a terminal, with
whatever `extra` the caller attached; uvicorn's own lines go through the same handler."""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import logging
import sys
import threading
import time
from typing import Any

import orjson

from gateway.errors import clip

# uvicorn attaches an ANSI-coloured copy of each message; neither format wants it.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}
# uvicorn's own loggers, routed to our handler so every line on stderr has one format.
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


FIELDS_LOGGED = 5  # a 422 names its first few fields; the client's answer has them all


def error_with_fields(message: str, detail: list[dict[str, Any]] | None) -> str:
    """An error for the access log with the fields it is about: `invalid record` alone does
    not say which field of which row was wrong. `body` starts every path and is left out."""
    if not detail:
        return message
    places = []
    for entry in detail[:FIELDS_LOGGED]:
        loc = [str(part) for part in entry.get("loc", [])]
        where = clip(".".join(loc[1:] if loc[:1] == ["body"] else loc))
        reason = clip(str(entry.get("msg", "")))
        places.append(f"{where}: {reason}" if where else reason)
    more = f"; {len(detail) - FIELDS_LOGGED} more" if len(detail) > FIELDS_LOGGED else ""
    return f"{message} ({'; '.join(places)}{more})"


def resolve_format(fmt: str) -> str:
    """`auto`: readable text for a person at a terminal, JSON lines for anything else."""
    if fmt != "auto":
        return fmt
    try:
        return "text" if sys.stderr.isatty() else "json"
    except (AttributeError, ValueError):  # stderr replaced or closed
        return "json"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _envelope(when: dt.datetime, level: str, logger: str, msg: str) -> dict[str, Any]:
    """The fields every JSON line starts with, whichever path wrote it."""
    return {"ts": when.isoformat(timespec="milliseconds"), "level": level, "logger": logger, "msg": msg}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry = _envelope(when, record.levelname.lower(), record.name, record.getMessage())
        entry.update(_extras(record))
        if record.exc_info and record.exc_info[1] is not None:
            entry["exc_type"] = type(record.exc_info[1]).__name__
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def printable(text: str) -> str:
    """Text with every character a terminal would act on written as its escape (newline,
    tab, ESC, NUL, the other C0 and C1 controls, Unicode's line separators): a client's
    text in a log line can neither start a forged line nor send terminal escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """`16:40:32 INFO  model ready  model=diabetes version=1`: the message first, then the
    fields; a list of lines under `try` (the ready line's curl commands) one per line.
    Newlines come only from this formatter: the message and the values are `printable`."""

    MULTILINE = ("try",)

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = _extras(record)
        fields.pop("event", None)
        lines = [fields.pop(key) for key in self.MULTILINE if isinstance(fields.get(key), list)]
        text = f"{when} {record.levelname:<7} {printable(record.getMessage())}"
        if fields:
            text += "  " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        for block in lines:
            text += "".join(f"\n    {printable(str(line))}" for line in block)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text_value(value: Any) -> str:
    # repr escapes what is not printable; orjson escapes every control character in JSON.
    if isinstance(value, str):
        return value if value and value.isprintable() and " " not in value else repr(value)
    return orjson.dumps(value, default=str).decode()


class _DropUvicornBanner(logging.Filter):
    """uvicorn says "Uvicorn running on ..." when the socket is bound, before any model is
    loaded; our "ready" line says it when requests can be answered."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Uvicorn running on")


def configure(level: str = "info", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    handler.addFilter(_DropUvicornBanner())
    for name in ("gateway", *_UVICORN):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in ("gateway", "uvicorn") else []
        logger.propagate = name not in ("gateway", "uvicorn")
    logging.getLogger("gateway").setLevel(level.upper())
    logging.getLogger("uvicorn").setLevel(level.upper())


class AccessLog:
    """One JSON line per request, written off the event loop.

    `emit` only queues the entry with its time (a deque append, safe across threads); a
    writer thread formats the queued entries and writes them in one call every 100 ms,
    or sooner when many are waiting. Every request is still logged: `flush` (shutdown,
    exit) drains what is left in the caller's thread. The timestamp is formatted once per
    millisecond, not once per line. The `gateway.access` logger's level still decides
    whether anything is written; with the text format the lines go through logging.
    """

    FLUSH_SECONDS = 0.1
    MAX_BUFFERED = 512

    def __init__(self, fmt: str = "auto") -> None:
        self.logger = logging.getLogger("gateway.access")
        self.fast = resolve_format(fmt) == "json"
        self._queue: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time: lines stay in order
        self._writer: threading.Thread | None = None
        self._stamp: tuple[int, bytes] = (-1, b"")
        self._second: tuple[int, str] = (-1, "")

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def emit(self, entry: dict[str, Any]) -> None:
        if not self.fast:
            self.logger.info(entry.get("event", "request"), extra=entry)
            return
        self._queue.append((time.time(), entry))
        if self._writer is None:
            self._start_writer()
        elif len(self._queue) >= self.MAX_BUFFERED:
            self._wake.set()

    def _start_writer(self) -> None:
        self._writer = threading.Thread(target=self._write_forever, name="access-log", daemon=True)
        self._writer.start()
        atexit.register(self.flush)

    def _write_forever(self) -> None:
        while True:
            self._wake.wait(self.FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def _prefix(self, when: float) -> bytes:
        """The line's opening fields as JSON bytes, formatted once per millisecond (time.strftime
        alone costs several microseconds), once per second for the date and time."""
        ms = int(when * 1000)
        if ms != self._stamp[0]:
            second, fraction = divmod(ms, 1000)
            if second != self._second[0]:
                self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            ts = f"{self._second[1]}.{fraction:03d}+00:00"
            opening = f'{{"ts":"{ts}","level":"info","logger":"gateway.access","msg":"request",'
            self._stamp = (ms, opening.encode())
        return self._stamp[1]

    def flush(self) -> None:
        with self._write_lock:
            lines = []
            while True:
                try:
                    when, entry = self._queue.popleft()
                except IndexError:
                    break
                # The entry's own object, opened by the envelope fields: `{` + envelope + `...}`.
                body = orjson.dumps(entry, default=str)
                lines.append(
                    self._prefix(when) + body[1:] if len(body) > 2 else self._prefix(when)[:-1] + b"}"
                )
            if not lines:
                return
            lines.append(b"")
            try:
                sys.stderr.flush()
                sys.stderr.buffer.write(b"\n".join(lines))
                sys.stderr.buffer.flush()
            except (OSError, ValueError, AttributeError):  # stderr closed at exit: nowhere to write
                pass
