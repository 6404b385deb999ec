"""This tree against a git revision on the records hot path: the demo model served by both
(the revision from a worktree made for the run, with this environment's packages), driven
in alternating short wrk rounds, single-row records JSON, 64 connections. Both see the
same neighbours on a shared machine. What counts is each server's own CPU time per request
(from /proc, which neighbours barely move) and the ratio of the medians; requests/s are
reported beside it but swing with whatever else the machine runs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks import load
from benchmarks.servers import ROOT, _port

PATH = "/v1/models/breast_cancer/predict"


def _build_demo(tree: Path, repo: Path) -> None:
    """The demo repository as `tree`'s own converters write it (manifests change over time)."""
    code = "import sys; from pathlib import Path; from converters.demo import build_demo_repository; "
    code += "build_demo_repository(Path(sys.argv[1]), progress=lambda _: None)"
    subprocess.run([sys.executable, "-c", code, str(repo)], cwd=tree, check=True, capture_output=True)


@contextmanager
def _serving(tree: Path, repo: Path, log: Path) -> Iterator[tuple[str, int]]:
    port = _port()
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--repo", str(repo), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--poll-seconds", "0"]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=tree, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": ""}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{tree}: server not ready, see {log}")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _record(repo: Path) -> bytes:
    """One row at the middle of every feature's range, as records JSON."""
    manifest = json.loads((repo / "breast_cancer" / "1" / "manifest.json").read_text())
    row = {f["name"]: round((f["min"] + f["max"]) / 2, 3) for f in manifest["features"]}
    return json.dumps({"instances": [row]}).encode()


@contextmanager
def _worktree(revision: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gateway-ab-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False, capture_output=True
        )


def run(revision: str, rounds: int, seconds: float, connections: int, out: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gateway-ab-work-"))
    with ExitStack() as stack:
        trees = {"head": ROOT, revision: stack.enter_context(_worktree(revision))}
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for label, tree in trees.items():
            repo = work / f"repo-{label}"
            _build_demo(tree, repo)
            urls[label], pids[label] = stack.enter_context(_serving(tree, repo, work / f"{label}.log"))
        body = _record(work / "repo-head")
        for url in urls.values():  # both accept the same record, and warm up
            load.closed_loop(load.Target(url + PATH, body), connections, 2)
        rps: dict[str, list[float]] = {label: [] for label in urls}
        cpu_us: dict[str, list[float]] = {label: [] for label in urls}
        for n in range(rounds):
            order = list(urls) if n % 2 == 0 else list(reversed(urls))
            for label in order:
                before = _cpu_seconds(pids[label])
                result = load.closed_loop(load.Target(urls[label] + PATH, body), connections, seconds)
                if result.errors:
                    raise RuntimeError(f"{label}: {result.errors} errors in a round")
                rps[label].append(round(result.rps, 1))
                cpu_us[label].append(round((_cpu_seconds(pids[label]) - before) / result.requests * 1e6, 1))
    medians = {label: statistics.median(v) for label, v in rps.items()}
    cpu = {label: statistics.median(v) for label, v in cpu_us.items()}
    results = {
        "revision": revision, "connections": connections, "seconds_per_round": seconds,
        "rounds_rps": rps, "median_rps": medians, "rounds_cpu_us_per_request": cpu_us,
        "median_cpu_us_per_request": cpu,
        # neighbours only ever add CPU time: the lowest round is the closest to a server's own
        "lowest_cpu_us_per_request": {label: min(v) for label, v in cpu_us.items()},
        # requests/s the same CPU buys: the revision's CPU per request over this tree's
        "ratio_head_to_revision": cpu[revision] / cpu["head"],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / f"revision-ab-{revision}-{time.strftime('%Y-%m-%d')}.json").write_text(
        json.dumps(results, indent=2)
    )
    return results


def markdown(results: dict[str, Any]) -> str:
    rev = results["revision"]
    head_rounds = zip(
        results["rounds_rps"]["head"], results["rounds_cpu_us_per_request"]["head"], strict=True
    )
    rev_rounds = zip(results["rounds_rps"][rev], results["rounds_cpu_us_per_request"][rev], strict=True)
    return "\n".join([
        f"| round | this tree req/s | CPU µs/req | {rev} req/s | CPU µs/req |", "|---|---|---|---|---|",
        *(f"| {i + 1} | {h[0]} | {h[1]} | {r[0]} | {r[1]} |"
          for i, (h, r) in enumerate(zip(head_rounds, rev_rounds, strict=True))),
        f"| median | {results['median_rps']['head']} | {results['median_cpu_us_per_request']['head']} "
        f"| {results['median_rps'][rev]} | {results['median_cpu_us_per_request'][rev]} |",
        f"| lowest | | {results['lowest_cpu_us_per_request']['head']} | "
        f"| {results['lowest_cpu_us_per_request'][rev]} |",
        f"\nrequests per CPU second, this tree / {rev}: {results['ratio_head_to_revision']:.3f} (medians)",
    ])  # fmt: skip
