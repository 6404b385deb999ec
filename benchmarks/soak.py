"""A soak: mixed valid and invalid traffic against one gateway for a long, bounded time
(10 minutes by default), recording what was sent, how it was answered, and the server's
memory at the start and the end. Loopback only; it stops by itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import msgspec

from benchmarks import models, servers
from benchmarks.progress import progress

PROGRESS_SECONDS = 30.0


def _bodies(sample: Any) -> list[tuple[str, str, bytes, str]]:
    """(kind, path, body, content type) in the proportions of the mix."""
    record = sample.iloc[0].to_dict()
    batch = {"instances": sample.sample(32, random_state=0).to_dict(orient="records")}
    v2 = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                      "data": sample.iloc[1].astype(float).tolist()}]}  # fmt: skip
    json_type, predict, infer = "application/json", "/v1/models/forest/predict", "/v2/models/forest/infer"
    mix = [("valid record", predict, msgspec.json.encode(record), json_type)] * 14
    mix += [("valid batch of 32", predict, msgspec.json.encode(batch), json_type)] * 2
    mix += [("valid v2", infer, msgspec.json.encode(v2), json_type)] * 2
    mix += [("wrong type (422)", predict, msgspec.json.encode({**record, "mean_radius": "big"}), json_type)]
    mix += [("truncated (400)", predict, msgspec.json.encode(record)[:40], json_type)]
    mix += [("unknown model (404)", "/v1/models/nope/predict", b"{}", json_type)]
    mix += [("msgpack NaN (422)", predict, msgspec.msgpack.encode({**record, "mean_radius": float("nan")}),
             "application/msgpack")]  # fmt: skip
    return mix + _hostile(v2, infer)


def _hostile(v2: dict[str, Any], infer: str) -> list[tuple[str, str, bytes, str]]:
    """Issue 16's attacks, each once in the mix: declared sizes that lie, junk where
    numbers belong, values that must not be echoed, bodies over the model's bound."""
    tensor = v2["inputs"][0]
    json_type = "application/json"

    def body(**changes: Any) -> bytes:
        return msgspec.json.encode({"inputs": [{**tensor, **changes}]})

    head = msgspec.json.encode({"inputs": [{**{k: v for k, v in tensor.items() if k != "data"},
                                            "parameters": {"binary_data_size": 1 << 20}}]})  # fmt: skip
    return [
        ("hostile: shape of 400 M rows (413)", infer, body(shape=[400_000_000, 30]), json_type),
        ("hostile: shape 1e13 (422)", infer, body(shape=[1e13, 30]), json_type),
        ("hostile: nested junk data (422)", infer,
         b'{"inputs":[{"name":"input","shape":[1,30],"datatype":"FP32","data":[' + b",".join([b"[[]]"] * 40_000)
         + b"]}]}", json_type),
        ("hostile: strings and booleans as FP32 (422)", infer, body(data=["1e5", True, *tensor["data"][2:]]),
         json_type),
        ("hostile: timeout 10**400 (400)", infer,
         b'{"parameters":{"timeout":1' + b"0" * 400 + b"}," + body()[1:], json_type),
        ("hostile: 256 KiB id (422)", infer, msgspec.json.encode({"id": "x" * (1 << 18), **v2}), json_type),
        ("hostile: binary_data_size beyond the body (422)", infer, head, json_type),
        ("hostile: body over the model's bound (413)", infer, b"[" + b" " * (9 << 20) + b"]", json_type),
    ]


async def _idle_and_slow(url: str, stop: float, counts: Counter[str]) -> None:
    """Connections that send nothing, or trickle their headers: each must be closed by the
    server (--header-timeout-s), and reopened here, for the whole soak."""
    host, port = url.split("//", 1)[1].split(":")

    async def hold(trickle: bool) -> None:
        kind = "slow headers" if trickle else "idle"
        while time.monotonic() < stop:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                if trickle:
                    writer.write(b"GET /healthz HTTP/1.1\r\n")
                while time.monotonic() < stop:
                    if trickle:
                        writer.write(b"X-Slow: 1\r\n")
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 1.0)
                    except TimeoutError:
                        continue  # still open: keep trickling, or keep waiting
                    if not data or data.startswith(b"HTTP/1.1 408"):
                        counts[f"closed by the server ({kind})"] += 1
                        break
            except ConnectionError:
                counts[f"reset by the server ({kind})"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(hold(i % 2 == 1) for i in range(20)))


async def _drive(
    url: str, pid: int, mix: list[tuple[str, str, bytes, str]], seconds: float, connections: int
) -> dict[str, Any]:
    answered: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    rng = random.Random(0)

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while time.monotonic() < stop:
                kind, path, body, content_type = rng.choice(mix)
                sent[kind] += 1
                try:
                    r = await client.post(path, content=body, headers={"content-type": content_type})
                    answered[f"{kind} -> {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    errors[f"{kind}: {type(exc).__name__}"] += 1

    async def report() -> None:
        started = time.monotonic()
        while time.monotonic() < stop:
            await asyncio.sleep(min(PROGRESS_SECONDS, max(0.0, stop - time.monotonic())))
            progress(
                f"soak: {time.monotonic() - started:.0f}/{seconds:.0f} s, {sum(answered.values()):,} answered, "
                f"{sum(errors.values())} client errors, server RSS {servers.rss_mb(pid):.1f} MB"
            )

    held: Counter[str] = Counter()
    await asyncio.gather(report(), _idle_and_slow(url, stop, held), *(worker() for _ in range(connections)))
    return {"sent": dict(sent), "answered": dict(sorted(answered.items())), "client_errors": dict(errors),
            "idle_and_slow_connections": dict(held)}  # fmt: skip


def run(out: Path, seconds: float, connections: int = 32) -> dict[str, Any]:
    servers.pin_self()
    work = Path(__file__).resolve().parent / ".work"
    work.mkdir(exist_ok=True)
    progress(f"soak: {seconds:.0f} s of mixed traffic over {connections} connections")
    repo, bench = models.build(work, ("forest",))
    started = dt.datetime.now(dt.UTC)
    with servers.running(servers.gateway(repo), "/readyz") as url:
        pid = _server_pid(url)
        rss_start = servers.rss_mb(pid)
        traffic = asyncio.run(_drive(url, pid, _bodies(bench["forest"].sample), seconds, connections))
        rss_end = servers.rss_mb(pid)
        metrics_ok = httpx.get(f"{url}/readyz").status_code == 200
    total_sent = sum(traffic["sent"].values())
    total_answered = sum(traffic["answered"].values())
    statuses: Counter[str] = Counter()
    for key, n in traffic["answered"].items():
        statuses[key.rsplit(" ", 1)[1]] += n
    results = {
        "started": started.isoformat(timespec="seconds"), "seconds": seconds, "connections": connections,
        "requests_sent": total_sent, "requests_answered": total_answered, "by_status": dict(statuses),
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(rss_end, 1), "ready_at_end": metrics_ok,
        **traffic,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{started.strftime('%Y-%m-%d')}-{socket.gethostname()}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("answered", "sent")}, indent=2))
    return results


def _server_pid(url: str) -> int:
    """The pid of the process listening on the URL's port (the benchmark started it)."""
    port = int(url.rsplit(":", 1)[1])
    inode = None
    with open("/proc/net/tcp") as tcp:
        for line in list(tcp)[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                inode = fields[9]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if fd.readlink().name == f"socket:[{inode}]":
                    return int(proc.name)
        except OSError:
            continue
    raise RuntimeError(f"no process listens on {port}")
