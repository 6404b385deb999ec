"""`gateway serve`: settings in, uvicorn (uvloop + httptools) out.

With several workers, uvicorn starts each as a process that builds its own app from the
settings passed in the environment: every worker owns its sessions and batchers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import logging
import math
import os
import re
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator

import msgspec
import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.admission import connection_caps
from gateway.app import create_app
from gateway.http.server import ConnectionLimits, GatewayHttpProtocol, drain
from gateway.observability import logging as gateway_logging
from gateway.settings import Settings, SettingsError, build_settings
from gateway.types import ASGIApp

SETTINGS_ENV = "GATEWAY_RESOLVED_SETTINGS"
EXIT_NOT_STARTED = 3
# At most this long to take in the connections made before SIGTERM (new ones keep coming).
BACKLOG_S = 1.0


def app_factory() -> ASGIApp:
    """Entry point for worker processes: rebuild the app from the parent's settings."""
    settings = msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)
    gateway_logging.configure(settings.log_level, settings.log_format)
    quiet_onnxruntime()
    return create_app(settings)


def quiet_onnxruntime() -> None:
    """ONNX Runtime writes its own lines straight to file descriptor 2, outside our format:
    on import, on a read-only root, an ANSI-coloured warning that it cannot persist a
    telemetry device ID. Its import's output is caught and logged through our handler;
    after it, no telemetry, and only ONNX Runtime's errors (ours say what failed)."""
    try:
        with _native_stderr_logged("onnxruntime"):
            import onnxruntime as ort
    except ImportError:  # the error comes, clearer, when a model loads
        return
    ort.disable_telemetry_events()
    ort.set_default_logger_severity(3)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _native_stderr_logged(source: str) -> Iterator[None]:
    """Native code's writes to fd 2 go to a temporary file meanwhile, then one log line
    each. Without a writable temporary directory, they go to stderr as they are."""
    try:
        caught = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by the `with` below
    except OSError:
        yield
        return
    with caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        for line in caught.read().decode(errors="replace").splitlines():
            if line.strip():
                logging.getLogger("gateway.lifecycle").warning(
                    _ANSI.sub("", line).strip(), extra={"event": "native_output", "source": source}
                )


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


@contextlib.contextmanager
def _exit_quietly_after_drain() -> Iterator[None]:
    """uvicorn answers SIGTERM and SIGINT by draining, then raises the signal again so the
    process dies of it (exit 143 or a KeyboardInterrupt). A drain that finished is a clean
    exit: with these handlers in place underneath uvicorn's, the re-raised signal is
    swallowed and `run` returns 0. uvicorn installs its own handlers for the run, so a
    signal still starts the drain."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but connections a client made before SIGTERM are taken in first:
    uvicorn closes its listening sockets at once, and the kernel resets every connection
    still in their accept queues, requests written and all (measured: 28 of 50 connections
    that had each sent 20 requests). A connection taken in is then drained as any other, and
    the sockets stay open until the drain ends (`gateway.http.server.drain`)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = time.monotonic() + BACKLOG_S
        while _pending_accepts(self.servers) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # the loop accepts them meanwhile
        await drain(self, sockets)  # uvicorn's shutdown, answering new connections 503 meanwhile


def _pending_accepts(servers: list[asyncio.Server]) -> bool:
    """Whether a listening socket has connections waiting in its accept queue."""
    listening = [sock.fileno() for server in servers for sock in server.sockets]
    return bool(listening) and bool(select.select(listening, [], [], 0)[0])


def run(settings: Settings) -> int:
    # Decided once, here, where stderr is known: workers inherit the answer.
    settings = msgspec.structs.replace(
        settings, log_format=gateway_logging.resolve_format(settings.log_format)
    )
    gateway_logging.configure(settings.log_level, settings.log_format)
    quiet_onnxruntime()
    settings, workdir = _empty_working_directory(settings)
    target: str | ASGIApp
    if settings.workers > 1:
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        settings = msgspec.structs.replace(settings, metrics_dir=metrics_dir)
        os.environ[SETTINGS_ENV] = msgspec.json.encode(settings).decode()
        target = "gateway.cli.serve:app_factory"
    else:
        target = create_app(settings)
    grpc_cap = settings.grpc_max_connections if settings.grpc_port is not None else None
    http_cap, _ = connection_caps(settings.max_connections, grpc_cap)
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=http_cap,
    )
    config = uvicorn.Config(
        target,
        factory=isinstance(target, str),
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        loop=_loop(),
        http=functools.partial(GatewayHttpProtocol, limits=limits),  # type: ignore[arg-type]
        lifespan="on",
        access_log=False,
        log_config=None,  # uvicorn's loggers write through our handler, in our format
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_seconds) or None,
        timeout_keep_alive=math.ceil(settings.keepalive_s),
        # A backstop only: GatewayHttpProtocol answers connections beyond the cap with 503 +
        # Retry-After first (uvicorn's own 503 has no Retry-After).
        limit_concurrency=limits.max_connections + 1,
        proxy_headers=False,  # no client addresses are used; skip the per-request middleware
    )
    # One server on one or two sockets; the admin routes check which port a call came in on.
    try:
        sockets = [_bind(config)]
        if settings.admin_port is not None:
            admin = uvicorn.Config(target, host=settings.host, port=settings.admin_port, log_config=None)
            sockets.append(_bind(admin))
    except _PortInUse as exc:
        logging.getLogger("gateway.lifecycle").error(str(exc), extra={"event": "bind"})
        return EXIT_NOT_STARTED
    try:
        if settings.workers > 1:
            Multiprocess(config, sockets=sockets).run()
            return 0
        config.load_app()
        server = DrainingServer(config)
        with _exit_quietly_after_drain():
            server.run(sockets=sockets)
        return 0 if server.started else EXIT_NOT_STARTED
    finally:
        if settings.metrics_dir:
            shutil.rmtree(settings.metrics_dir, ignore_errors=True)
        if workdir:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)


class _PortInUse(Exception):
    pass


def _bind(config: uvicorn.Config) -> socket.socket:
    """uvicorn's bind, with the port named when it is taken: its own message is only
    `[Errno 98] Address already in use`, and it exits."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((config.host, config.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _PortInUse(
                f"port {config.port} on {config.host} is already in use "
                "(another gateway? --port to choose another)"
            ) from exc
    return config.bind_socket()


def _empty_working_directory(settings: Settings) -> tuple[Settings, str]:
    """Serve from an empty directory of our own: nothing a relative path (a model's
    external data, anything else) could name is there. Local paths in the settings are
    made absolute first. The directory is removed when the server stops."""

    def absolute(path: str | None) -> str | None:
        return os.path.abspath(path) if path is not None and "://" not in path else path

    settings = msgspec.structs.replace(
        settings, repo=absolute(settings.repo) or settings.repo, cache_dir=absolute(settings.cache_dir)
    )
    try:
        workdir = tempfile.mkdtemp(prefix="gateway-cwd-")
    except OSError as exc:  # a read-only root with no writable temp directory mounted
        logging.getLogger("gateway.lifecycle").warning(
            f"serving from the current directory: no empty one could be made ({exc.strerror})",
            extra={"event": "workdir"},
        )
        return settings, ""
    os.chdir(workdir)
    return settings, workdir


def serve_from_args(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(vars(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "://" not in settings.repo and not os.path.isdir(settings.repo):
        print(f"error: model repository {settings.repo!r} is not a directory", file=sys.stderr)
        return 2
    if settings.admin_port is not None and settings.admin_token is None:
        print(
            "error: --admin-port needs GATEWAY_ADMIN_TOKEN (the admin API is off without one)",
            file=sys.stderr,
        )
        return 2
    return run(settings)
