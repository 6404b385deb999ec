"""Two `gateway serve` replicas behind a real nginx (Debian's, installed by .ci/run), on
loopback, running deploy/nginx/gateway.conf as shipped but for the addresses: a rolling
restart under steady load loses no request, and the gateway mounted under /ml/ gets the
client's X-Request-ID and traceparent through the proxy."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Server, free_port, start_server

SHIPPED = ROOT / "deploy/nginx/gateway.conf"
BODY = {"age": 0.03, "sex": 0.05, "bmi": 0.06, "bp": 0.02, "s1": -0.04, "s2": -0.03, "s3": -0.04,
        "s4": 0.0, "s5": 0.02, "s6": -0.01}  # fmt: skip
PREDICT = "/ml/v1/models/diabetes/predict"
MAX_REQUESTS = 1500  # the load thread's bound, whatever happens


def _nginx() -> str:
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if path is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx-light)")
    return path


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """Accepts the replicas' span exports, so tracing is on and access logs carry trace ids."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Fleet:
    tmp: Path
    repo: Path
    env: dict[str, str]
    ports: list[int]
    replicas: list[Server] = field(default_factory=list)
    generation: int = 0

    def start(self, port: int) -> Server:
        self.generation += 1
        logs = self.tmp / f"replica-{self.generation}"
        logs.mkdir()
        return start_server(self.repo, logs, "--poll-seconds", "0", env=self.env, port=port)


def _write_config(prefix: Path, listen: int, replicas: list[int]) -> Path:
    """The shipped include, with loopback addresses, inside a main config that keeps every
    file nginx writes under `prefix` (no root-owned paths, no daemon)."""
    shipped = SHIPPED.read_text()
    servers = re.findall(r"^\s*server \S+:8000 .*$", shipped, re.MULTILINE)
    assert len(servers) == len(replicas) == 2
    for line, port in zip(servers, replicas, strict=True):
        shipped = shipped.replace(line, re.sub(r"\S+:8000", f"127.0.0.1:{port}", line), 1)
    assert shipped.count("listen 80;") == 1
    shipped = shipped.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    (prefix / "gateway.conf").write_text(shipped)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    main = prefix / "nginx.conf"
    main.write_text(
        f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/gateway.conf;
}}
"""
    )
    return main


def _start_nginx(nginx: str, prefix: Path, replicas: list[int]) -> tuple[subprocess.Popen[bytes], str]:
    """nginx in front of `replicas`, checked with -t, answering /ml/readyz: (process, url)."""
    prefix.mkdir()
    listen = free_port()
    config = _write_config(prefix, listen, replicas)
    args = ["-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
    check = subprocess.run([nginx, "-t", *args], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proxy = subprocess.Popen([nginx, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{listen}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/ml/readyz", timeout=1).status_code == 200:
                return proxy, url
        except httpx.HTTPError:
            pass
        if proxy.poll() is not None or time.monotonic() > deadline:
            _stop_nginx(proxy)
            raise AssertionError("nginx did not answer /ml/readyz: " + (prefix / "error.log").read_text())
        time.sleep(0.1)


def _stop_nginx(proxy: subprocess.Popen[bytes]) -> None:
    proxy.send_signal(signal.SIGQUIT)  # graceful stop
    try:
        proxy.wait(10)
    except subprocess.TimeoutExpired:
        proxy.kill()
        proxy.wait(5)


@pytest.fixture(scope="module")
def fleet(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Fleet]]:
    nginx = _nginx()
    tmp = tmp_path_factory.mktemp("fleet")
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "GATEWAY_DRAIN_SECONDS": "10",
    }
    fleet = Fleet(tmp, demo_repo, env, [free_port(), free_port()])
    proxy: subprocess.Popen[bytes] | None = None
    try:
        fleet.replicas = [fleet.start(port) for port in fleet.ports]
        proxy, url = _start_nginx(nginx, tmp / "nginx", fleet.ports)
        yield url, fleet
    finally:
        if proxy is not None:
            _stop_nginx(proxy)
        for replica in fleet.replicas:
            replica.stop()
        sink.shutdown()
        sink.server_close()


class Load(threading.Thread):
    """Steady, bounded load through nginx: one keep-alive client, about 40 requests/s."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.statuses: Counter[int | str] = Counter()
        self.sent = 0

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set() and self.sent < MAX_REQUESTS:
                self.sent += 1
                try:
                    r = client.post(self.url + PREDICT, json=BODY)
                    ok = r.status_code == 200 and "predictions" in r.json()
                    self.statuses[r.status_code if ok or r.status_code != 200 else "bad body"] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                time.sleep(0.025)

    def finish(self) -> Counter[int | str]:
        self.stop.set()
        self.join(30)
        return self.statuses


def _served(replica: Server) -> int:
    return sum(1 for line in replica.log().splitlines() if '"event": "request"' in line or '"event":"request"' in line)


@pytest.mark.slow
def test_rolling_restart_behind_nginx_loses_no_request(fleet):
    url, fleet = fleet
    load = Load(url)
    load.start()
    time.sleep(1.0)
    for i, port in enumerate(fleet.ports):
        old = fleet.replicas[i]
        # SIGTERM: the replica stops accepting, answers what it holds, exits 0
        assert old.stop(signal.SIGTERM) == 0, old.log()
        successor = fleet.start(port)  # waits for /readyz
        fleet.replicas[i] = successor
        # nginx retries a replica it marked failed after fail_timeout (2 s): wait past it, so
        # traffic reaches the successor before the next replica goes
        time.sleep(3.0)
    statuses = load.finish()
    total = sum(statuses.values())
    assert load.sent < MAX_REQUESTS, "the restarts took longer than the load's bound"
    assert total >= 100, statuses
    assert statuses == Counter({200: total}), statuses
    # both successors served part of the load: nginx moved traffic onto them
    assert all(_served(replica) > 0 for replica in fleet.replicas), [_served(r) for r in fleet.replicas]
    print(f"rolling restart behind nginx: {total} requests, {dict(statuses)}, per successor "
          f"{[_served(r) for r in fleet.replicas]}")  # fmt: skip


@pytest.mark.slow
def test_prefix_request_id_and_traceparent_through_nginx(fleet):
    url, fleet = fleet
    with httpx.Client(timeout=10) as client:
        given = client.post(url + PREDICT, json=BODY, headers={"X-Request-ID": "lb-check-42"})
        assert given.status_code == 200, given.text
        assert given.headers["x-request-id"] == "lb-check-42"
        # none given: nginx's own $request_id (32 hex digits) is what the gateway echoes
        generated = client.post(url + PREDICT, json=BODY)
        assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"]), generated.headers
        # the prefix is nginx's: the gateway itself answers only the stripped path
        assert client.get(url + "/ml/readyz").status_code == 200
        assert client.get(url + "/readyz").status_code == 404
        assert client.get(fleet.replicas[0].url + "/ml/readyz").status_code == 404
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        traced = client.post(
            url + PREDICT,
            json=BODY,
            headers={"X-Request-ID": "lb-trace-7", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert traced.status_code == 200
    # the replica that served it logged the client's trace id and request id together
    deadline = time.monotonic() + 5
    while True:
        entries = [
            json.loads(line)
            for replica in fleet.replicas
            for line in replica.log().splitlines()
            if "lb-trace-7" in line and line.startswith("{")
        ]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e.get("trace_id") for e in entries] == [trace_id], entries


def _statements(text: str) -> set[str]:
    """nginx directives and block openers, comments dropped, whitespace collapsed."""
    text = re.sub(r"#[^\n]*", "", text)
    return {" ".join(s.split()) for s in re.split(r"[;{}]", text) if s.strip()}


def test_docs_show_the_tested_config():
    page = (ROOT / "docs" / "deploy.md").read_text()
    (block,) = re.findall(r"```nginx\n(.*?)```", page, re.DOTALL)
    missing = _statements(block) - _statements(SHIPPED.read_text())
    assert not missing, f"docs/deploy.md's nginx config says what deploy/nginx/gateway.conf does not: {missing}"


@pytest.mark.slow
def test_rolling_model_promote_across_replicas_behind_nginx(demo_repo, tmp_path):
    """Each replica has its own copy of the repository (a pod's volume); version 2 is
    promoted on one replica, then the other, under steady load through nginx: no request
    fails, both versions answer during the rollout, and only version 2 after it."""
    import joblib
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    from converters import convert
    from gateway.artifacts.repository import Repository

    nginx = _nginx()
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    joblib.dump(Ridge(alpha=0.5).fit(x, y), tmp_path / "ridge.joblib")
    token = "rolling-promote-token"
    ports, replicas, repos = [free_port(), free_port()], [], []
    proxy = None
    try:
        for i, port in enumerate(ports):
            repo = tmp_path / f"repo-{i}"
            shutil.copytree(demo_repo, repo)
            convert(tmp_path / "ridge.joblib", name="diabetes", version="2", repo=repo, sample=x)
            Repository(repo).set_live("diabetes", "1")  # version 2 waits for its promote
            logs = tmp_path / f"replica-{i}"
            logs.mkdir()
            env = {"GATEWAY_ADMIN_TOKEN": token, "GATEWAY_DRAIN_SECONDS": "10"}
            replicas.append(start_server(repo, logs, "--poll-seconds", "0", env=env, port=port))
            repos.append(repo)
        proxy, url = _start_nginx(nginx, tmp_path / "nginx", ports)
        versions: Counter[str] = Counter()
        statuses: Counter[int | str] = Counter()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                for _ in range(MAX_REQUESTS):
                    if stop.is_set():
                        return
                    try:
                        r = client.post(url + PREDICT, json=BODY)
                        statuses[r.status_code] += 1
                        versions[r.headers.get("x-model-version", "?")] += 1
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                    time.sleep(0.02)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        time.sleep(1.0)
        for replica in replicas:
            r = httpx.post(
                f"{replica.url}/admin/models/diabetes/promote",
                json={"version": "2"},
                headers={"authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            time.sleep(1.5)  # the load sees one replica on 2 and the other on 1
        before = versions["2"]
        time.sleep(1.0)
        stop.set()
        thread.join(30)
        after = {r.url: httpx.post(r.url + "/v1/models/diabetes/predict", json=BODY) for r in replicas}
    finally:
        if proxy is not None:
            _stop_nginx(proxy)
        for replica in replicas:
            replica.stop()
    total = sum(statuses.values())
    assert total >= 100 and statuses == Counter({200: total}), statuses
    assert versions["1"] > 0 and before > 0 and versions["2"] > before, versions
    assert all(r.headers["x-model-version"] == "2" for r in after.values()), after
    for repo in repos:  # each replica recorded its promote where a restart reads it
        assert json.loads((repo / "diabetes" / "serving.json").read_text())["live"] == "2"
    print(f"rolling promote behind nginx: {total} requests, {dict(statuses)}, versions {dict(versions)}")
