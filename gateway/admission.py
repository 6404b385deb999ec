"""One admission budget under every door: inference requests in flight and the bytes they
hold, shared by HTTP bodies and gRPC messages, and the file descriptors the doors' open
connections may take.

HTTP charges a request its declared Content-Length when its headers arrive. A gRPC
message declares no length where Python can see it, and grpc core buffers a message as
it arrives once a read of it is pending (measured: a read pending on a 16 MiB message
holds 16 MiB; with none pending and the BDP probe off, a stream holds at most its 64 KiB
window). So a gRPC read is charged the largest message it may be from the moment it is
pending until it completes: what is buffered stays within the budget.
"""

from __future__ import annotations

import resource
from collections.abc import Callable


class Admission:
    """Counts in-flight inference requests and the bytes they hold, for every door."""

    def __init__(
        self, max_requests: int, max_bytes: int, max_body_bytes: int,
        on_shed: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.on_shed = on_shed  # counts the refusal (gateway_rejected_total{reason="admission"})
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_body_bytes = max_body_bytes
        self.requests = 0
        self.bytes = 0
        self.shed = 0

    def charge(self, declared: bytes | None) -> int | None:
        """The bytes a request is charged, or None when admitting it would pass a bound.
        A request that declares no length (or a bad one) is charged the body limit."""
        try:
            size = int(declared) if declared is not None else self.max_body_bytes
        except ValueError:
            size = self.max_body_bytes
        return self.admit(min(max(size, 0), self.max_body_bytes))  # beyond the limit: 413, not here

    def admit(self, size: int) -> int | None:
        """Count a request of `size` bytes in, or None (counted as shed) past a bound."""
        if self.requests >= self.max_requests or (self.requests and self.bytes + size > self.max_bytes):
            self._refused()
            return None
        self.requests += 1
        self.bytes += size
        return size

    def grow(self, ticket: list[int], extra: int) -> bool:
        """Charge an admitted request `extra` bytes more (its body, inflated), or False when
        that passes the byte bound and others are in flight (nothing is then charged). Not
        counted as shed here: the request itself answers 503, and its outcome counts it."""
        if self.requests > 1 and self.bytes + extra > self.max_bytes:
            return False
        self.bytes += extra
        ticket[0] += extra
        return True

    def release(self, size: int) -> None:
        self.requests -= 1
        self.bytes -= size

    def hold(self, size: int) -> bool:
        """Bytes held by a message still arriving (no request counted): False, and nothing
        held, when they would pass the byte bound."""
        if not self.fits(size):
            self._refused()
            return False
        self.bytes += size
        return True

    def fits(self, size: int) -> bool:
        """Whether `size` bytes more stay within the byte bound (always, when none are held:
        a bound below the largest message still lets one in at a time)."""
        return not self.bytes or self.bytes + size <= self.max_bytes

    def unhold(self, size: int) -> None:
        self.bytes -= size

    def _refused(self) -> None:
        self.shed += 1
        if self.on_shed is not None:
            self.on_shed()


def connection_caps(http: int, grpc: int | None, cap: int = 4096, reserve: int = 64) -> tuple[int, int]:
    """Open connections for each door (HTTP, gRPC) within the process's file descriptors:
    the soft `nofile` limit less a reserve for model files, the repository watcher and
    logs. A cap given (non-zero) is kept; the rest of the budget is split, a quarter to
    gRPC when it serves (None: it does not)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = cap if soft == resource.RLIM_INFINITY else max(16, min(cap, soft - reserve))
    if grpc is None:
        return http or budget, 0
    grpc_cap = grpc or max(8, (budget - http) if http else budget // 4)
    return http or max(8, budget - grpc_cap), grpc_cap
