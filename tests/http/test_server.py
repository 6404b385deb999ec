"""The response writes of gateway/http/server.py: a head and the body behind it leave in one
write; nothing is reordered, delayed past the loop's next turn, or lost at a close.
(The connection limits themselves are tests/security/test_connections.py's.)"""

from __future__ import annotations

import asyncio

import pytest

from gateway.http.server import _JoinedWrites

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Transport:
    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def writelines(self, parts) -> None:
        self.sends.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.asyncio
async def test_a_head_and_its_body_leave_in_one_write():
    transport = Transport()
    writes = _JoinedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    writes.write(HEAD)
    assert transport.sends == []
    writes.write(b"{}")
    assert transport.sends == [HEAD + b"{}"]
    await asyncio.sleep(0)
    assert transport.sends == [HEAD + b"{}"]


@pytest.mark.asyncio
async def test_a_head_with_nothing_behind_it_leaves_at_the_next_turn_and_order_is_kept():
    transport = Transport()
    writes = _JoinedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    writes.write(HEAD)  # a stream's head: its first chunk comes later
    await asyncio.sleep(0)
    assert transport.sends == [HEAD]
    writes.write(b"chunk")
    assert transport.sends == [HEAD, b"chunk"]


@pytest.mark.asyncio
async def test_100_continue_is_never_held_and_a_close_sends_what_is_held():
    transport = Transport()
    writes = _JoinedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    writes.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.sends == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    writes.write(HEAD)
    writes.close()
    assert transport.sends[1:] == [HEAD] and transport.closed
    await asyncio.sleep(0)
    assert len(transport.sends) == 2  # the turn's flush finds nothing left to send
