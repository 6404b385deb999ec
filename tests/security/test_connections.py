"""Issue 16, the connection side: admission control before a body is read (M2, M6),
header size and time limits (M3, L5), a cap on connections, X-Request-ID on every answer
and Allow on every 405 (L10), no redirect built from Host (L9), one reading of repeated
headers (L8). Raw sockets where a well-behaved client cannot say what an attacker does.

Covers `gateway/http/admission.py`, `gateway/http/server.py`."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from tests.conftest import start_server
from tests.security.models import publish_identity

VALID = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
INFER = "/v2/models/ident/infer"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    repo = tmp_path_factory.mktemp("http-repo")
    publish_identity(repo)
    server = start_server(
        repo, tmp_path_factory.mktemp("http"), "--log-level", "warning",
        "--max-concurrency", "4", "--max-inflight-bytes", str(1024 * 1024),
        "--max-connections", "40", "--header-timeout-s", "1", "--keepalive-s", "1",
        "--max-header-bytes", str(16 * 1024), "--body-timeout-s", "5",
    )  # fmt: skip
    yield server
    server.stop()


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def _read_response(sock: socket.socket, until: bytes = b"\r\n\r\n") -> bytes:
    """What arrives until `until` has (the end of the headers by default) or the peer closes."""
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _status(response: bytes) -> int | None:
    return int(response[9:12]) if response.startswith(b"HTTP/1.1 ") else None


def _pending(url: str, length: int) -> socket.socket:
    """An inference request whose headers arrived and whose body has not: in flight."""
    sock = _connect(url)
    sock.sendall(
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return sock


def _ok(url: str) -> None:
    r = httpx.post(url + INFER, json=VALID, timeout=10)
    assert r.status_code == 200, r.text


def test_m6_requests_beyond_max_concurrency_are_shed_at_once(srv):
    held = [_pending(srv.url, 100) for _ in range(4)]
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        r = httpx.post(srv.url + INFER, json=VALID, timeout=10)
        elapsed = time.perf_counter() - started
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "x-request-id" in r.headers and r.json()["error"]
        assert elapsed < 0.5
        # health and metrics are never shed, and the refusal is counted
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert 'reason="admission"' in httpx.get(srv.url + "/metrics").text
    finally:
        for sock in held:
            sock.close()
    assert _wait(lambda: httpx.post(srv.url + INFER, json=VALID).status_code == 200)


def test_m2_bytes_held_in_flight_are_bounded(srv):
    """One request holding 900 KiB of a 1 MiB budget: a second large one is shed before its
    body is read; a small one still fits."""
    held = _pending(srv.url, 900 * 1024)
    try:
        time.sleep(0.3)
        big = httpx.post(srv.url + INFER, content=b"[" + b" " * (200 * 1024) + b"]",
                         headers={"content-type": "application/json"}, timeout=10)  # fmt: skip
        assert big.status_code == 503 and big.headers["retry-after"] == "1"
        _ok(srv.url)
    finally:
        held.close()


def test_a_compressed_body_is_charged_what_it_inflates_to(srv):
    """A gzip body declares its compressed length but is held inflated: charged its 2 KB,
    many could hold the byte budget many times over. What it inflates to is charged before
    it is decoded; past the budget (1 MiB here, 900 KiB held by another) it is a 503."""
    import gzip

    inflated = b"[" + b" " * 1_000_000 + b"]"
    packed = gzip.compress(inflated)
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    held = _pending(srv.url, 900 * 1024)
    try:
        time.sleep(0.3)
        r = httpx.post(srv.url + INFER, content=packed, headers=headers, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    finally:
        held.close()
    time.sleep(0.3)
    # Alone, the same body is admitted (and then refused for what it is, not for its size).
    r = httpx.post(srv.url + INFER, content=packed, headers=headers, timeout=10)
    assert r.status_code in (400, 422), r.text
    small = gzip.compress(msgspec.json.encode(VALID))
    r = httpx.post(srv.url + INFER, content=small, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    _ok(srv.url)


def test_m3_huge_headers_are_refused_early(srv):
    sock = _connect(srv.url)
    try:
        sock.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: ")
        started = time.perf_counter()
        try:
            for _ in range(64):  # up to 4 MiB, 64 KiB at a time; the server stops us long before
                sock.sendall(b"y" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = _read_response(sock)
        assert _status(response) in (431, None)
        assert time.perf_counter() - started < 2
    finally:
        sock.close()
    _ok(srv.url)


def test_l5_idle_and_slow_connections_are_closed(srv):
    idle = _connect(srv.url)  # sends nothing at all
    slow = _connect(srv.url)
    kept = None
    try:
        started = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(3):
            time.sleep(0.4)
            try:
                slow.sendall(b"X: y\r\n")  # one header at a time, never finishing
            except OSError:
                break
        assert idle.recv(1024) == b""
        assert _status(_read_response(slow)) in (408, None)
        assert time.monotonic() - started < 4
        kept = _connect(srv.url)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(_read_response(kept)) == 200
        kept.settimeout(3)  # --keepalive-s is 1: the idle connection is closed well before
        while kept.recv(65536):  # the rest of the answer, then the close
            pass
    finally:
        for sock in (idle, slow, kept):
            if sock is not None:
                sock.close()
    _ok(srv.url)


def test_connections_beyond_the_cap_get_503_with_retry_after(srv):
    socks = [_connect(srv.url) for _ in range(60)]
    try:
        refused = 0
        for sock in socks[40:]:
            sock.settimeout(2)
            response = _read_response(sock)
            if _status(response) == 503:
                assert b"retry-after: 1" in response.lower()
                refused += 1
        assert refused >= 15
    finally:
        for sock in socks:
            sock.close()
    assert _wait(lambda: httpx.post(srv.url + INFER, json=VALID).status_code == 200)


def test_l10_every_answer_has_a_request_id_and_405_says_allow(srv):
    for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v2"), ("GET", "/v2/models/ident"),
                         ("GET", "/nope"), ("GET", "/metrics"), ("POST", INFER), ("DELETE", "/readyz"),
                         ("GET", INFER), ("GET", "/v2/models/nope/infer")):  # fmt: skip
        r = httpx.request(method, srv.url + path, headers={"x-request-id": "trace-me-1"})
        assert r.headers.get("x-request-id") == "trace-me-1", (method, path, r.status_code)
        fresh = httpx.request(method, srv.url + path)
        assert len(fresh.headers.get("x-request-id", "")) >= 8, (method, path)
    r = httpx.delete(srv.url + "/readyz")
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    r = httpx.get(srv.url + INFER)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_l9_no_redirect_is_built_from_the_host_header(srv):
    r = httpx.get(srv.url + "/healthz/", headers={"host": "evil.example"}, follow_redirects=False)
    assert "evil.example" not in r.headers.get("location", "")
    assert r.status_code == 404


def test_l8_repeated_headers_are_read_once_the_same_way(srv):
    """The first of a repeated header wins on the hot path as in Starlette's handlers."""
    sock = _connect(srv.url)
    try:
        body = httpx.Request("POST", "http://x", json=VALID).content
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        assert _status(_read_response(sock)) == 200
    finally:
        sock.close()


def _wait(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def test_l8_two_authorization_headers_are_refused(tmp_path):
    repo = tmp_path / "repo"
    publish_identity(repo)
    server = start_server(repo, tmp_path, "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": "s3cret"})
    try:
        good = httpx.get(server.url + "/admin/models", headers={"authorization": "Bearer s3cret"})
        assert good.status_code == 200
        for pair in (("Bearer s3cret", "Bearer wrong"), ("Bearer wrong", "Bearer s3cret")):
            r = httpx.get(server.url + "/admin/models", headers=[("authorization", v) for v in pair])
            # the V2 service's one check, the same words over gRPC (tests/serve/test_v2_transports.py)
            assert r.status_code == 400 and "send one authorization value" in r.json()["error"]
    finally:
        server.stop()


def test_l2_admin_errors_carry_no_absolute_paths(tmp_path):
    from gateway.artifacts.repository import Repository

    repo = tmp_path / "repo"
    publish_identity(repo, version="1")
    publish_identity(repo, version="2")
    Repository(repo).set_live("ident", "1")
    server = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0",
                          env={"GATEWAY_ADMIN_TOKEN": "s3cret"})  # fmt: skip
    auth = {"authorization": "Bearer s3cret"}
    try:
        serving = repo / "ident" / "serving.json"
        serving.unlink()
        serving.mkdir()  # the promote's write of serving.json fails with an OSError naming paths
        r = httpx.post(server.url + "/admin/models/ident/promote", json={"version": "2"}, headers=auth)
        assert r.status_code == 422, r.text
        assert str(tmp_path) not in r.text and "serving.json" in r.text
        listing = httpx.get(server.url + "/admin/models", headers=auth)
        assert str(tmp_path) not in listing.text
        _ok(server.url)  # version 1 keeps serving
    finally:
        server.stop()


def test_a_shed_requests_unread_body_is_never_read_as_a_request(srv):
    """Shedding answers before the body is read; on the same keep-alive connection that
    body must be skipped, not parsed as the next request (no smuggling past the gate)."""
    held = [_pending(srv.url, 100) for _ in range(4)]
    sock = _connect(srv.url)
    try:
        time.sleep(0.3)
        smuggled = b"GET /nope-smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(smuggled)}\r\n\r\n".encode() + smuggled
        )
        first = _read_response(sock)
        assert _status(first) == 503
        for held_sock in held:
            held_sock.close()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(3)
        rest = _read_response(sock, b'{"live":true}')
        assert b"HTTP/1.1 200" in rest and b"404" not in rest and b"smuggled" not in rest
    finally:
        sock.close()
        for held_sock in held:
            held_sock.close()


@pytest.mark.parametrize(
    "request_line", [b"POST /healthz", b"GET /metrics", b"POST /nope", f"POST {INFER}".encode()]
)
def test_a_body_nobody_reads_still_has_the_body_timeout(srv, request_line):
    """Answered at once (405, 404, or 413 from its Content-Length), a body then trickled at
    a byte every 0.4 s kept its connection open for good: each byte put uvicorn's keep-alive
    off. The body must arrive within --body-timeout-s (5 s here) of its headers, read or not."""
    sock = _connect(srv.url)
    try:
        started = time.monotonic()
        sock.sendall(request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")  # fmt: skip
        assert _status(_read_response(sock)) is not None
        sock.settimeout(0.4)
        closed = False
        while time.monotonic() - started < 12:
            try:
                sock.sendall(b"x")
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "the connection outlived the body timeout"
        assert 4.5 < time.monotonic() - started < 8
    finally:
        sock.close()
    _ok(srv.url)
