"""One line per step of a long benchmark, timestamped and flushed at once."""

from __future__ import annotations

import time


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
