"""Many deadlines on one loop timer, armed at the earliest of them.

Every request has two deadlines (its body must arrive in time; its answer must come before
its timeout), and almost every request finishes long before either. A timer of its own
(uvloop's call_later + cancel, measured: ~2.8 us) is then paid twice by every request for
nothing. Here a request's deadline is a dict entry added and removed (~0.1 us), and one
timer per loop stands at the earliest deadline of all: a request whose deadline is later
than the armed one (the usual case, the same timeout for everyone) arms nothing. When the
timer fires, it expires what is due and stands again at the earliest that remains. Each
deadline fires at its own time, as a timer of its own would.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

# libuv timers have millisecond resolution and may fire within it: what falls due within
# it is expired in the same pass rather than by a timer re-armed a moment later.
_RESOLUTION_S = 0.001


class Deadlines:
    """Deadlines on one loop's clock: `add` one under a key, `discard` it when its work is
    done; a deadline reached first calls its callback (once, on the loop)."""

    __slots__ = ("__weakref__", "_armed", "_entries", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._entries: dict[object, tuple[float, Callable[[], Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: object, when: float, callback: Callable[[], Any]) -> None:
        """`callback()` at loop time `when`, unless `key` is discarded first."""
        self._entries[key] = (when, callback)
        if self._timer is None or when < self._armed:
            self._arm(when)

    def discard(self, key: object) -> None:
        self._entries.pop(key, None)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        due = self._loop.time() + _RESOLUTION_S
        expired = [key for key, (when, _) in self._entries.items() if when <= due]
        for key in expired:
            _, callback = self._entries.pop(key)
            try:
                callback()
            except Exception as exc:  # one failing callback must not strand the others
                self._loop.call_exception_handler({"message": "deadline callback failed", "exception": exc})
        if self._entries and self._timer is None:  # a callback may have added (and armed) one
            self._arm(min(when for when, _ in self._entries.values()))


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = weakref.WeakKeyDictionary()
_last: tuple[asyncio.AbstractEventLoop | None, Deadlines | None] = (None, None)


def on_loop(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The deadlines of `loop` (one set per loop: a process may run several, as tests do)."""
    global _last  # noqa: PLW0603 - a one-entry cache in front of the weak table
    last_loop, last = _last
    if last_loop is loop and last is not None:
        return last
    deadlines = _by_loop.get(loop)
    if deadlines is None:
        deadlines = _by_loop[loop] = Deadlines(loop)
    _last = (loop, deadlines)
    return deadlines
