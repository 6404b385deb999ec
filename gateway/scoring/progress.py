"""How far a scoring run is: a redrawn bar on a terminal, a line every so often otherwise
(a CI log or `kubectl logs` shows a stream of lines, not carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import Literal, TextIO

Mode = Literal["auto", "bar", "lines", "none"]
_WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _rate(rows_per_s: float) -> str:
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.2f}M"
    if rows_per_s >= 1e3:
        return f"{rows_per_s / 1e3:.1f}k"
    return f"{rows_per_s:.0f}"


class Progress:
    """Rows done, rows/s and an ETA from rows (Parquet knows its row count) or, for a
    CSV file, from the bytes read so far."""

    def __init__(
        self,
        total_rows: int | None,
        total_bytes: int | None,
        mode: Mode = "auto",
        every: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        tty = self.stream.isatty() if hasattr(self.stream, "isatty") else False
        self.mode: Mode = ("bar" if tty else "lines") if mode == "auto" else mode
        self.total_rows = total_rows
        self.total_bytes = total_bytes
        self.every = 0.1 if self.mode == "bar" else every
        self.started = time.monotonic()
        self._last = self.started
        self.rows = 0
        self.rejected = 0
        self._fraction: float | None = 0.0 if (total_rows or total_bytes) else None

    def update(self, rows: int, rejected: int, position: int | None) -> None:
        self.rows, self.rejected = rows, rejected
        if self.total_rows:
            self._fraction = min(1.0, rows / self.total_rows)
        elif self.total_bytes and position is not None:
            self._fraction = min(1.0, position / self.total_bytes)
        now = time.monotonic()
        if self.mode != "none" and now - self._last >= self.every:
            self._last = now
            self._show(now)

    def finish(self) -> None:
        if self.mode == "none":
            return
        self._fraction = 1.0 if self._fraction is not None else None
        self._show(time.monotonic(), done=True)

    def _show(self, now: float, done: bool = False) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.rows / elapsed
        parts = [f"{self.rows:,} rows" + (f"/{self.total_rows:,}" if self.total_rows else "")]
        parts.append(f"{_rate(rate)} rows/s")
        fraction = self._fraction
        if done:
            parts.append(f"in {_duration(elapsed)}")
        elif fraction:
            parts.append(f"ETA {_duration(elapsed * (1 - fraction) / fraction)}")
        if self.rejected:
            parts.append(f"{self.rejected:,} rejected")
        text = ", ".join(parts)
        if self.mode == "bar":
            bar = ""
            if fraction is not None:
                filled = int(fraction * _WIDTH)
                bar = f"{fraction * 100:3.0f}% |{'#' * filled}{' ' * (_WIDTH - filled)}| "
            self.stream.write(f"\r[score] {bar}{text}\033[K" + ("\n" if done else ""))
        else:
            percent = f" ({fraction * 100:.0f}%)" if fraction is not None and not done else ""
            self.stream.write(f"[score] {text}{percent}\n")
        self.stream.flush()
