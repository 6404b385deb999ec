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
    # Bytes of live requests (their decoded inputs and live outputs) a shadow may hold while
    # they wait for the candidate: outside --max-inflight-bytes, since the live answer is sent.
    shadow_max_bytes: Positive = 64 * 1024 * 1024
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


# Each serve flag: (flag, what it sets). The default shown is Settings' own, and each flag
# is also a GATEWAY_* variable and a key of the --config file.
_FLAG_HELP: tuple[tuple[str, str], ...] = (
    ("--cache-dir", "local cache for a remote repository"),
    ("--host", "address to listen on; 0.0.0.0 for every interface"),
    ("--port", "HTTP port"),
    ("--grpc-port", "also serve the V2 protocol over gRPC on this port (default: off)"),
    ("--grpc-max-connections", "open gRPC connections; 0: a quarter of what the nofile limit leaves"),
    ("--grpc-max-streams", "gRPC calls open at once on one connection"),
    ("--admin-port", "serve /admin on this port only; needs GATEWAY_ADMIN_TOKEN (default: off)"),
    ("--workers", "worker processes sharing the port"),
    ("--provider", "ONNX Runtime execution provider: auto | cpu | cuda"),
    ("--device-id", "CUDA device number"),
    ("--max-batch-rows", "rows in one ONNX Runtime call, from requests batched together"),
    ("--max-delay-ms", "wait this long to fill a batch (default: 0 on CPU, 2 on CUDA)"),
    ("--lanes", "batches that may run at once per model"),
    ("--intra-op-threads", "ONNX Runtime threads per lane; 0: usable cores / lanes"),
    ("--max-queue-rows", "rows waiting per model; beyond: 503 + Retry-After"),
    ("--inline-budget-us", "run batches inline on the event loop when warm-up inference took less; 0: never"),
    ("--max-request-rows", "rows in one request; 0: 16 x --max-batch-rows"),
    ("--timeout-ms", "default request deadline"),
    ("--max-body-bytes", "largest request body; beyond: 413"),
    ("--body-timeout-s", "408 for a body slower than this"),
    ("--max-concurrency", "inference requests in flight; beyond: 503"),
    ("--max-inflight-bytes", "body bytes held by requests in flight; beyond: 503"),
    ("--shadow-max-bytes", "bytes of live requests held for a shadow; beyond: the mirror is dropped"),
    ("--max-connections", "open connections; 0: from the nofile limit"),
    ("--max-header-bytes", "largest request head; beyond: 431"),
    ("--header-timeout-s", "close a connection whose headers are slower"),
    ("--keepalive-s", "close idle keep-alive connections after this"),
    ("--load-timeout-s", "a version taking longer to read, verify, open and warm fails"),
    ("--range-policy", "values outside a feature's training range: manifest (each model's own) | allow "
     "| clip | reject"),
    ("--poll-seconds", "re-read serving.json this often; 0: off"),
    ("--log-level", "debug | info | warning | error"),
    ("--log-format", "auto (text on a terminal, else JSON lines) | json | text"),
)  # fmt: skip


def _help(flag: str, text: str) -> str:
    field = flag[2:].replace("-", "_")
    default = next(f.default for f in msgspec.structs.fields(Settings) if f.name == field)
    shown = "" if default in (None, msgspec.NODEFAULT) or "(default:" in text else f" (default: {default})"
    return f"{text}{shown}; env {ENV_PREFIX}{field.upper()}"


_UNITS = {
    "-ms": "MS",
    "-s": "SECONDS",
    "-seconds": "SECONDS",
    "-us": "US",
    "-bytes": "BYTES",
    "-port": "PORT",
    "-dir": "DIR",
}
_WORDS = {"--host": "ADDRESS", "--port": "PORT", "--provider": "NAME", "--range-policy": "POLICY",
          "--log-level": "LEVEL", "--log-format": "FORMAT"}  # fmt: skip


def _metavar(flag: str) -> str:
    return _WORDS.get(flag) or next((v for k, v in _UNITS.items() if flag.endswith(k)), "N")


def add_serve_arguments(parser: argparse.ArgumentParser, repo_default: str | None) -> None:
    """Flags for every setting; unset flags stay None so lower sources can fill them."""
    where = "a directory, or s3://, gs://... (fsspec)"
    if repo_default is None:  # `serve`: no repository, no server
        parser.add_argument_group(
            "required", "--repo, unless GATEWAY_REPO or the --config file names the repository"
        ).add_argument("--repo", metavar="DIR_OR_URL", help=f"model repository: {where}; env GATEWAY_REPO")
    else:
        parser.add_argument(
            "--repo", default=repo_default, help=f"model repository to build and serve: {where}"
        )
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="settings file ([gateway] table); flags > GATEWAY_* > this file > defaults",
    )
    for flag, text in _FLAG_HELP:
        parser.add_argument(
            flag, dest=flag[2:].replace("-", "_"), metavar=_metavar(flag), help=_help(flag, text)
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
