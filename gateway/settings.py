"""Server settings: a frozen value built once from CLI flags, then `GATEWAY_*` environment
variables, then an optional TOML file, then defaults. A bad value stops start-up with a
message naming the setting."""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

Provider = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["auto", "json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]
RangePolicyOverride = Literal["manifest", "allow", "clip", "reject"]

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]

ENV_PREFIX = "GATEWAY_"


class SettingsError(ValueError):
    """A setting has a value the server cannot start with."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    repo: str
    host: str = "127.0.0.1"
    port: Port = 8000
    workers: Positive = 1
    provider: Provider = "auto"
    device_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_batch_rows: Positive = 256
    max_delay_ms: NonNegative | None = None  # None: 0 on CPU, 2 ms on CUDA to fill batches
    lanes: Positive = 1
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: cores // lanes
    max_queue_rows: Positive = 8192
    # Batches whose warm-up inference took under this run on the event loop, not a thread.
    inline_budget_us: NonNegative = 250.0
    max_request_rows: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: 16 * max_batch_rows
    timeout_ms: NonNegative = 10_000.0
    max_body_bytes: Positive = 16 * 1024 * 1024
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0  # a trickled body is cut off
    # Admission control (issue 16): inference requests in flight and the body bytes they
    # hold; beyond either, 503 + Retry-After before the body is read. See SECURITY.md.
    max_concurrency: Positive = 512
    max_inflight_bytes: Positive = 256 * 1024 * 1024
    max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: the nofile limit less 64, at most 4096
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # connect to end of headers
    keepalive_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0  # idle keep-alive connections close
    load_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0  # read, verify, open and warm one version
    range_policy: RangePolicyOverride = "manifest"
    admin_token: str | None = None  # GATEWAY_ADMIN_TOKEN or the config file, never a flag
    admin_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    # The V2 protocol over gRPC on this port too (same host, process and batchers); None: off.
    grpc_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    # Open gRPC connections (0: a quarter of what the nofile limit leaves) and the calls
    # each may have open at once: together they bound the idle calls a client may hold.
    grpc_max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    grpc_max_streams: Positive = 64
    poll_seconds: NonNegative = 2.0  # how often to re-read serving.json; 0: never
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"  # text on a terminal, JSON lines otherwise
    log_inputs: bool = False
    metrics: bool = True
    drain_seconds: NonNegative = 30.0
    cache_dir: str | None = None  # remote repositories' local mirror and model cache
    # Set by `serve` for several workers: where each publishes its metrics for the others.
    metrics_dir: str | None = None

    @property
    def request_rows_limit(self) -> int:
        return self.max_request_rows or 16 * self.max_batch_rows

    def threads_per_lane(self) -> int:
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, usable_cpus() // self.lanes)


def usable_cpus() -> int:
    """The CPUs this process may run on (a cpuset, taskset or Kubernetes' static CPU
    manager narrows it), not the machine's count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


_FIELDS = Settings.__struct_fields__


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    return {f: environ[ENV_PREFIX + f.upper()] for f in _FIELDS if ENV_PREFIX + f.upper() in environ}


def _from_toml(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path}: {exc}") from exc
    table = data.get("gateway", data)
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise SettingsError(f"config file {path}: unknown settings {unknown}")
    return {k: v for k, v in table.items()}


def build_settings(cli: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Merge sources, highest first: CLI flags, GATEWAY_* variables, the TOML file."""
    environ = dict(os.environ) if environ is None else environ
    env = _from_env(environ)
    config = cli.get("config") or env.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    merged = _from_toml(config) if config else {}
    merged.update(env)
    merged.update({k: v for k, v in cli.items() if k in _FIELDS and v is not None})
    if "repo" not in merged:
        raise SettingsError("no model repository: pass --repo DIR or set GATEWAY_REPO")
    try:
        # strict=False lets "8" from the environment become 8, "true" become True.
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from exc


def add_serve_arguments(parser: argparse.ArgumentParser, repo_default: str | None) -> None:
    """Flags for every setting; unset flags stay None so lower sources can fill them."""
    parser.add_argument(
        "--repo", default=repo_default, help="model repository: a directory, or s3://, gs://... (fsspec)"
    )
    parser.add_argument("--cache-dir", dest="cache_dir", help="local cache for a remote repository")
    parser.add_argument("--config", help="TOML settings file ([gateway] table)")
    parser.add_argument("--host")
    parser.add_argument("--port")
    parser.add_argument("--workers", help="worker processes sharing the port")
    parser.add_argument("--provider", help="auto | cpu | cuda")
    parser.add_argument("--device-id", dest="device_id")
    parser.add_argument("--max-batch-rows", dest="max_batch_rows")
    parser.add_argument("--max-delay-ms", dest="max_delay_ms", help="wait this long to fill a batch")
    parser.add_argument("--lanes", help="batches that may run at once per model")
    parser.add_argument("--intra-op-threads", dest="intra_op_threads")
    parser.add_argument("--max-queue-rows", dest="max_queue_rows", help="shed load beyond this")
    parser.add_argument(
        "--inline-budget-us",
        dest="inline_budget_us",
        help="run batches inline on the event loop when warm-up inference took less (0: never)",
    )
    parser.add_argument("--max-request-rows", dest="max_request_rows")
    parser.add_argument("--timeout-ms", dest="timeout_ms", help="default request deadline")
    parser.add_argument("--max-body-bytes", dest="max_body_bytes")
    parser.add_argument("--body-timeout-s", dest="body_timeout_s", help="408 for a body slower than this")
    parser.add_argument(
        "--max-concurrency", dest="max_concurrency", help="inference requests in flight; beyond: 503"
    )
    parser.add_argument(
        "--max-inflight-bytes", dest="max_inflight_bytes", help="body bytes held by requests in flight"
    )
    parser.add_argument(
        "--max-connections", dest="max_connections", help="open connections (0: from the nofile limit)"
    )
    parser.add_argument("--max-header-bytes", dest="max_header_bytes", help="431 beyond this")
    parser.add_argument("--header-timeout-s", dest="header_timeout_s", help="close if headers are slower")
    parser.add_argument("--keepalive-s", dest="keepalive_s", help="close idle keep-alive connections")
    parser.add_argument("--load-timeout-s", dest="load_timeout_s", help="a version taking longer fails")
    parser.add_argument("--range-policy", dest="range_policy", help="manifest | allow | clip | reject")
    parser.add_argument("--admin-port", dest="admin_port", help="serve /admin on this port only")
    parser.add_argument(
        "--grpc-port", dest="grpc_port", help="also serve the V2 protocol over gRPC on this port"
    )
    parser.add_argument(
        "--grpc-max-connections", dest="grpc_max_connections",
        help="open gRPC connections (0: from the nofile limit, beside --max-connections)",
    )  # fmt: skip
    parser.add_argument(
        "--grpc-max-streams", dest="grpc_max_streams", help="gRPC calls open at once on one connection"
    )
    parser.add_argument(
        "--poll-seconds", dest="poll_seconds", help="re-read serving.json this often (0: off)"
    )
    parser.add_argument("--log-level", dest="log_level")
    parser.add_argument(
        "--log-format", dest="log_format", help="auto (text on a terminal, else JSON) | json | text"
    )
    parser.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_const",
        const=False,
        help="skip metric collection (for measuring what observability costs)",
    )
    parser.add_argument(
        "--log-inputs",
        dest="log_inputs",
        action="store_const",
        const=True,
        help="log raw request bodies (default: only their hash)",
    )
