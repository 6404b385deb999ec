"""Start-up output a person can read: JSON lines for machines (uvicorn's too), short text
lines on a terminal, a "ready" line after the models are warm with a curl per model that
works as printed, and exit 0 after a clean drain.

Covers `gateway/cli/main.py`, `gateway/cli/serve.py`, `gateway/observability/logging.py`."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port, start_server


def _run_curls(commands: list[str]) -> None:
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=30
        )
        body, status = result.stdout.rsplit("\n", 1)
        assert status == "200", (command, body)
        assert json.loads(body)["predictions"], body


@pytest.mark.slow
def test_json_lines_only_ready_after_warm_up_and_curls_that_work(demo_repo, tmp_path):
    srv = start_server(demo_repo, tmp_path, "--log-format", "json")
    try:
        # Logged before the first request could be answered, so it is there already.
        ready = next(json.loads(line) for line in srv.log().splitlines() if '"msg":"ready"' in line)
        _run_curls(ready["try"])  # as printed
        httpx.get(srv.url + "/nowhere")  # something for the access log to say
    finally:
        assert srv.stop() == 0, srv.log()  # SIGTERM after a clean drain is a clean exit
    lines = [line for line in srv.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, uvicorn's included
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "gateway.lifecycle", "gateway.registry", "gateway.access"} <= loggers
    assert not any("Uvicorn running on" in e["msg"] for e in entries)
    messages = [e["msg"] for e in entries]
    warmed = [i for i, e in enumerate(entries) if e["msg"] == "model ready"]
    assert len(warmed) == 2 and max(warmed) < messages.index("ready")
    assert ready["url"] == srv.url and ready["docs"] == srv.url + "/docs"
    assert ready["models"] == {"breast_cancer": "1", "diabetes": "1"}
    assert len(ready["try"]) == 2


def _read_until(fd: int, pattern: str, timeout: float) -> str:
    seen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline and not re.search(pattern, seen.decode(errors="replace")):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the other end closed
                break
    return seen.decode(errors="replace")


@pytest.mark.slow
def test_text_on_a_terminal_by_default(demo_repo):
    """`--log-format auto` (the default) writes readable lines when stderr is a terminal."""
    port = free_port()
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--repo", str(demo_repo), "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        cwd=ROOT,
    )
    os.close(secondary)
    try:
        head = _read_until(primary, r"Application startup complete", 60)
        process.send_signal(signal.SIGTERM)
        tail = _read_until(primary, r"Finished server process", 30)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    lines = [line for line in (head + tail).splitlines() if line.strip()]
    assert not any(line.lstrip().startswith("{") for line in lines), lines
    stamped = [line for line in lines if re.match(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ", line)]
    assert any("Started server process" in line for line in stamped)  # uvicorn's, in our format
    ready = next(line for line in stamped if re.search(r"INFO +ready ", line))
    assert f"url=http://127.0.0.1:{port}" in ready
    curls = [line.strip() for line in lines if line.startswith("    curl ")]
    assert len(curls) == 2 and all(f"http://127.0.0.1:{port}/v1/models/" in c for c in curls)


def test_access_log_writes_every_line_off_the_loop_in_order(monkeypatch):
    import io
    import logging

    from gateway.observability.logging import AccessLog

    out = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(out, write_through=True))
    access = logging.getLogger("gateway.access")
    previous = access.level
    access.setLevel(logging.INFO)
    try:
        _write_and_check(AccessLog("json"), out)
    finally:
        access.setLevel(previous)  # setLevel, not an attribute: it clears the enabled cache


def _write_and_check(log, out) -> None:
    for i in range(3000):  # more than MAX_BUFFERED: the writer is woken early too
        log.emit({"event": "request", "n": i, "route": "predict", "prediction": {"labels": {"1": 1}}})
    deadline = time.monotonic() + 5
    while out.getvalue().count(b"\n") < 3000 and time.monotonic() < deadline:
        time.sleep(0.02)  # written by the writer thread, with no flush from this one
    lines = out.getvalue().decode().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["n"] for e in entries] == list(range(3000))
    first = entries[0]
    assert list(first)[:5] == ["ts", "level", "logger", "msg", "event"]
    assert first["logger"] == "gateway.access" and first["msg"] == "request"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["ts"])
    import datetime as dt

    assert abs(dt.datetime.fromisoformat(first["ts"]).timestamp() - time.time()) < 60
    log.emit({"event": "request", "n": "last"})
    log.flush()  # shutdown drains what the writer has not written yet
    assert json.loads(out.getvalue().decode().splitlines()[-1])["n"] == "last"


@pytest.mark.slow
def test_first_hour_log_lines_say_what_happened(demo_repo, tmp_path):
    """An unmatched route's line carries the id its answer carries; a 422's line names the
    field; a version added without serving.json is said to go live as the newest version."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(demo_repo / "diabetes" / "1", repo / "diabetes" / "1")
    srv = start_server(repo, tmp_path, "--log-format", "json", "--poll-seconds", "0.2")
    try:
        lost = httpx.get(srv.url + "/nowhere")
        assert lost.status_code == 404
        bad = httpx.post(srv.url + "/v1/models/diabetes/predict", json={"age": "old"})
        assert bad.status_code == 422
        fields = [".".join(map(str, d["loc"])) for d in bad.json()["detail"]]
        version = repo / "diabetes" / "2"
        shutil.copytree(repo / "diabetes" / "1", version)
        manifest = (version / "manifest.json").read_text()
        (version / "manifest.json").write_text(manifest.replace('"version": "1"', '"version": "2"'))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and '"version":"2"' not in srv.log():
            time.sleep(0.2)
    finally:
        assert srv.stop() == 0, srv.log()
    entries = [json.loads(line) for line in srv.log().splitlines() if line.strip()]
    access = [e for e in entries if e["logger"] == "gateway.access"]
    unmatched = next(e for e in access if e.get("path") == "/nowhere")
    assert unmatched["request_id"] == lost.headers["x-request-id"]
    rejected = next(e for e in access if e.get("status") == 422)
    assert rejected["request_id"] == bad.headers["x-request-id"]
    assert (
        rejected["error"].startswith("invalid record (")
        and fields[0].removeprefix("body.") in rejected["error"]
    )
    switched = [e for e in entries if e.get("version") == "2" and "source" in e]
    assert switched and switched[0]["source"] == "newest version", switched
