"""What `gateway --help` and each command's --help tell a newcomer: every command listed,
a line for every flag, the defaults, an example; and a taken port named in the error."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys

import pytest

from gateway.artifacts.repository import Repository
from gateway.cli.main import _what_serves, build_parser
from tests.conftest import ROOT, free_port


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _every_parser() -> dict[str, argparse.ArgumentParser]:
    found = {}
    for name, parser in _commands(build_parser()).items():
        found[name] = parser
        if name == "models":
            found.update({f"models {n}": p for n, p in _commands(parser).items()})
    return found


def test_top_level_help_lists_every_command_with_examples():
    parser = build_parser()
    text = parser.format_help()
    commands = _commands(parser)
    assert set(commands) == {"convert", "models", "demo", "serve", "score"}
    first = text.split("\n\n")[1]  # the description line
    for name in commands:
        assert name in first, first
        assert f"\n    {name} " in text  # and each with its help line
    assert "examples:" in text and "gateway serve --repo" in text


@pytest.mark.parametrize("command", sorted(_every_parser()))
def test_every_flag_has_a_help_line(command):
    parser = _every_parser()[command]
    missing = [
        a.option_strings or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()
    ]
    assert not missing, f"`gateway {command}`: no help for {missing}"


@pytest.mark.parametrize("command", ["convert", "models", "demo", "serve", "score"])
def test_every_command_has_an_example(command):
    parser = _every_parser()[command]
    assert parser.epilog and f"gateway {command}" in parser.epilog
    assert f"gateway {command}" in parser.format_help()


def test_defaults_are_shown():
    commands = _every_parser()
    convert = commands["convert"].format_help()
    assert convert.count("(default: 0.0001)") == 2  # --tolerance and --rtol
    assert "--name NAME" in convert and "the model's name" in convert
    serve = " ".join(commands["serve"].format_help().split())  # argparse wraps lines
    for flag, default in [("--host", "127.0.0.1"), ("--port", "8000"), ("--workers", "1")]:
        after = serve.split(f"{flag} ", 2)[2]  # past the usage line, into the flag's entry
        assert f"(default: {default}); env GATEWAY_{flag[2:].upper()}" in after.split(" --")[0], after[:200]
    assert "(default: None)" not in serve and "(default: False)" not in serve


def test_repo_is_shown_as_required_for_serve_only():
    commands = _every_parser()
    serve = commands["serve"].format_help()
    assert "required:\n  --repo, unless GATEWAY_REPO" in serve
    assert "required:" not in commands["demo"].format_help()  # demo builds demo-repo itself
    assert "(default: demo-repo)" in commands["demo"].format_help()


def test_a_taken_port_is_named(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--repo", str(tmp_path), "--port", str(port),
             "--log-format", "json"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    said = [e["msg"] for e in lines if e["level"] == "error"]
    assert said == [f"port {port} on 127.0.0.1 is already in use (another gateway? --port to choose another)"]
    assert "Errno" not in done.stderr


def test_convert_says_whether_a_watching_server_serves_the_new_version(demo_repo, tmp_path):
    import shutil

    shutil.copytree(demo_repo, tmp_path / "repo")
    repo = str(tmp_path / "repo")
    assert _what_serves(repo, "diabetes", "1").startswith(
        "a server watching this repository will serve diabetes:1 now (no serving.json pins a version"
    )
    Repository(tmp_path / "repo").set_live("diabetes", "1")
    assert _what_serves(repo, "diabetes", "2") == (
        f"serving.json keeps diabetes:1 live; `gateway models promote diabetes 2 --repo {repo}` serves this one"
    )


def test_native_output_during_the_onnxruntime_import_becomes_log_lines():
    """ONNX Runtime's own stderr writes (ANSI-coloured, not JSON) are caught and logged."""
    import logging
    import os

    from gateway.cli.serve import _native_stderr_logged

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gateway.lifecycle")
    logger.addHandler(handler)
    try:
        with _native_stderr_logged("onnxruntime"):
            os.write(2, b"\x1b[0;93m[W:onnxruntime:Default, telemetry_1ds.cc:613] Failed to persist\x1b[m\n")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "[W:onnxruntime:Default, telemetry_1ds.cc:613] Failed to persist"
    ]
    assert records[0].levelname == "WARNING" and records[0].source == "onnxruntime"  # type: ignore[attr-defined]
