"""A bare HTTP/2 client over a socket, for what no gRPC client will send: a message that
stops short of its declared length, headers that are never followed by a message. It
keeps to the server's flow control (a server ends a connection that overruns it) and
reads no header values: a stream's end is told by its END_STREAM or RST_STREAM."""

from __future__ import annotations

import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK: a literal header field without indexing, new name, no Huffman (short strings)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_prefix(length: int) -> bytes:
    return b"\x00" + struct.pack(">I", length)


class RawH2:
    def __init__(self, host: str, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.authority = f"{host}:{port}".encode()
        self.conn_window = 65535
        self.initial_window = 65535
        self.windows: dict[int, int] = {}
        self.ended: set[int] = set()
        self.closed = False  # the server closed the connection (EOF or GOAWAY)
        self.next_stream = 1
        self._buffer = b""
        self._write(PREFACE + _frame(SETTINGS, 0, 0))

    def open(self, path: bytes) -> int:
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        block = b"".join(
            _literal(n, v)
            for n, v in (
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                (b":authority", self.authority), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
            )
        )  # fmt: skip
        self.windows[stream] = self.initial_window
        self._write(_frame(HEADERS, END_HEADERS, stream, block))
        return stream

    def _write(self, data: bytes) -> None:
        """A server that refuses a connection over its cap may close it before our first
        frame lands: the write then fails with EPIPE or ECONNRESET, which is that closing."""
        if self.closed:
            return
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.closed = True

    def send(self, stream: int, data: bytes, end: bool = False, timeout: float = 30) -> int:
        """Send what flow control allows within `timeout`; the bytes sent."""
        sent, deadline = 0, time.monotonic() + timeout
        while sent < len(data) and not self.closed and stream not in self.ended:
            room = min(self.conn_window, self.windows[stream], 16384, len(data) - sent)
            if room <= 0:
                if time.monotonic() > deadline:
                    break
                self.pump(0.05)
                continue
            chunk = data[sent : sent + room]
            last = end and sent + room == len(data)
            self._write(_frame(DATA, END_STREAM if last else 0, stream, chunk))
            sent += room
            self.conn_window -= room
            self.windows[stream] -= room
        return sent

    def pump(self, wait: float) -> None:
        """Read and answer what the server sent within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        self._buffer += data
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload, self._buffer = self._buffer[9 : 9 + length], self._buffer[9 + length :]
            self._on_frame(kind, flags, stream, payload)

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                key, value = struct.unpack(">HI", payload[i : i + 6])
                if key == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                    for s in self.windows:
                        self.windows[s] += value - self.initial_window
                    self.initial_window = value
            self._write(_frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._write(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self.conn_window += increment
            elif stream in self.windows:
                self.windows[stream] += increment
        elif (kind in (HEADERS, DATA) and flags & END_STREAM) or kind == RST_STREAM:
            self.ended.add(stream)
        elif kind == GOAWAY:
            self.closed = True

    def wait_ended(self, streams: set[int], timeout: float) -> bool:
        """True once every one of `streams` has ended (or the connection closed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.closed or streams <= self.ended:
                return True
            self.pump(0.05)
        return self.closed or streams <= self.ended

    def close(self) -> None:
        self.sock.close()
