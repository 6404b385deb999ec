"""The README's promises: two set-up commands first, and curl examples that work as printed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)


def test_readme_starts_with_exactly_two_setup_commands():
    first = [line for line in BLOCKS[0].splitlines() if line.strip()]
    assert len(first) == 2
    assert first[0].endswith("gateway demo") and first[1].endswith("pytest")
    # The demo needs serving and conversion only; the dev tools are for the tests.
    assert "--extra dev" not in first[0] and "--extra dev" in first[1]
    # PEP 668: a system Python refuses `pip install` into itself, not into a --target folder,
    # and a uv the user already has is left alone.
    for command in first:
        assert command.startswith("python3 -m pip install -q -U --target .uv uv==")
    assert "/.uv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_ci_runs_the_readme_commands_as_printed():
    """.ci/run reads the two commands out of README.md (they cannot drift) and runs each."""
    ci = (ROOT / ".ci" / "run").read_text()
    definition = next(line for line in ci.splitlines() if line.startswith("readme_command()"))
    for n in (1, 2):
        extracted = subprocess.run(
            ["bash", "-c", f"{definition}\nreadme_command {n}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
        assert extracted == [line for line in BLOCKS[0].splitlines() if line.strip()][n - 1]
    for used in (
        'system_python "${COMMAND1% && *}"',
        'eval "exec ${COMMAND1##* && }"',
        'system_python "${COMMAND2% && *}"',
        'system_python "${COMMAND2##* && }"',
        'export PATH="/usr/bin:$PATH"',
    ):
        assert used in ci


def _examples(section: str) -> list[tuple[str, str | None]]:
    body = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.DOTALL):
        command, expected = [], None
        for line in [*block.splitlines(), ""]:
            if line.startswith("# ") and command:
                expected = line[2:]
            if line.startswith("curl") or (command and not line.startswith("#") and line.strip()):
                if line.startswith("curl") and command:
                    found.append(("\n".join(command), expected))
                    command, expected = [], None
                command.append(line)
            elif command and (not line.strip() or expected is not None):
                found.append(("\n".join(command), expected))
                command, expected = [], None
    return found


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_try_it_examples_work_as_printed(server):
    examples = _examples("Try it")
    assert len(examples) >= 4
    for command, expected in examples:
        run = command.replace("http://127.0.0.1:8000", server.url) + " -w '\\n%{http_code}'"
        result = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=30)
        body, status = result.stdout.rsplit("\n", 1)
        if expected is None:
            assert status == "200", (command, body)
            continue
        code = re.match(r"(\d{3}) ", expected)
        assert status == (code.group(1) if code else "200"), (command, body)
        want = json.loads(expected[4:] if code else expected)
        assert _close(json.loads(body), want), (command, body, want)
