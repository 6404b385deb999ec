"""The README's promises: two set-up commands first, curl examples that work as printed, and
every page of docs/ it points to (whose examples run too)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
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


def _examples(section: str, text: str = README) -> list[tuple[str, str]]:
    """(command, what it prints) pairs: a command starts at `curl` and runs to the `# ` line(s)
    that follow it, which are its output."""
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.DOTALL):
        if not block.startswith("curl"):
            continue  # set-up commands, not an example with its output
        command: list[str] = []
        expected: list[str] = []
        for line in [*block.splitlines(), "curl"]:
            if line.startswith("curl") and command:
                assert expected, f"no output shown for {command[0]!r}"
                found.append(("\n".join(command), "\n".join(expected)))
                command, expected = [], []
            if line.startswith("# "):
                expected.append(line[2:])
            elif line.strip() and not expected:
                command.append(line)
    return found


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _split_status(text: str) -> tuple[str, str | None]:
    """A body, and the status that `-w ' %{http_code}'` printed after it, if it did."""
    match = re.fullmatch(r"(.*) (\d{3})", text.strip(), re.DOTALL)
    return (match.group(1), match.group(2)) if match else (text.strip(), None)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_try_it_examples_print_what_the_readme_shows(server):
    examples = _examples("Try it")
    assert len(examples) >= 5
    for command, expected in examples:
        _check_example(server, command, expected)


def _check_example(server, command: str, expected: str) -> None:
    run = command.replace("http://127.0.0.1:8000", server.url)
    result = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=30)
    body, status = _split_status(result.stdout)
    want_body, want_status = _split_status(expected)
    assert status == want_status, (command, result.stdout)
    assert _close(json.loads(body), json.loads(want_body)), (command, body, want_body)
    if status is None:  # curl -s prints no status: the page shows none, so it is a 200
        check = subprocess.run(["bash", "-c", run + " -o /dev/null -w '%{http_code}'"],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert check.stdout == "200", (command, check.stdout)


def test_every_serve_flag_is_documented():
    from gateway.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = [f for action in serve._actions for f in action.option_strings if f.startswith("--")]
    page = (DOCS / "serve.md").read_text()
    missing = [f for f in flags if f != "--help" and f"`{f}`" not in page]
    assert not missing, f"flags missing from docs/serve.md's table: {missing}"


def test_readme_is_short_and_points_to_every_docs_page():
    assert len(README.splitlines()) <= 200
    pages = {p.name for p in DOCS.glob("*.md")}
    linked = set(re.findall(r"`docs/([\w-]+\.md)`", README))
    assert linked <= pages, f"README points to missing pages: {linked - pages}"
    assert pages <= linked, f"pages nobody is pointed to: {pages - linked}"


# Pages whose examples need more than the demo: rollout.md's walk-through needs two
# versions and the admin token (tests/rollout/test_canary.py runs it).
OWN_RUNNERS = {"rollout.md"}


def _page_examples() -> list[tuple[str, str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        if page.name in OWN_RUNNERS:
            continue
        text = page.read_text()
        for section in re.findall(r"^## (.+)$", text, re.MULTILINE):
            found += [(page.name, *example) for example in _examples(section, text)]
    return found


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize(("page", "command", "expected"), _page_examples())
def test_docs_examples_print_what_they_show(server, page, command, expected):
    _check_example(server, command, expected)
