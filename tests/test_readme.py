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
    ci = (ROOT / ".ci" / "run").read_text()
    install = first[1].rsplit("&&", 1)[0].split("&&")
    for step in install:
        assert step.strip() in ci, f"CI does not run the README's set-up step {step.strip()!r}"
    assert first[1].rsplit("&&", 1)[1].strip() in ci


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
