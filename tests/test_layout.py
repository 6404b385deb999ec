"""The layout rule of issue #24: every module of `gateway/` has a module test named after it
(`tests/<package>/test_<module>*.py`, as `gateway/records/codec.py` has
`tests/records/test_codec_decode.py`), or is named, as a path or a dotted name, in the
docstring of a test file that covers it. Generated protobuf modules are exempt."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

GATEWAY = ROOT / "gateway"
TESTS = ROOT / "tests"


def _modules() -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for p in GATEWAY.rglob("*.py")
        if p.stem not in ("__init__", "__main__") and not (p.parent.name == "proto" and "_pb2" in p.stem)
    )


def _has_module_test(module: Path) -> bool:
    package = TESTS.joinpath(*module.parts[1:-1])
    return any(package.glob(f"test_{module.stem}*.py"))


def _named_in_docstrings() -> str:
    docstrings = (ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) for p in TESTS.rglob("test_*.py"))
    return "\n".join(d for d in docstrings if d)


def test_every_gateway_module_has_a_test_named_after_it_or_is_named_where_it_is_covered():
    named = _named_in_docstrings()
    untested = [
        str(m)
        for m in _modules()
        if not _has_module_test(m) and str(m) not in named and ".".join(m.with_suffix("").parts) not in named
    ]
    assert not untested, f"no module test and no covering test file names: {untested}"


def test_the_rule_sees_every_package():
    modules = {m.parts[1] for m in _modules() if len(m.parts) > 2}
    assert {"artifacts", "records", "v2", "http", "grpc", "lifecycle", "observability"} <= modules
    assert Path("gateway/proto/grpc_service_pb2.py") not in _modules()
