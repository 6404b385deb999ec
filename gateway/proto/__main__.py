"""`python -m gateway.proto [--check]`: regenerate the protobuf modules, or check them.

Runs protoc from grpcio-tools with the repository root as the import root, so the
generated modules import each other as `gateway.proto.*`.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTOS = ("model_config", "grpc_service")
GENERATED = tuple(f"{name}_pb2{ext}" for name in PROTOS for ext in (".py", ".pyi"))


def generate(out: Path) -> None:
    """Write the generated modules under `out`/gateway/proto/."""
    from grpc_tools import protoc

    include = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
        *(f"gateway/proto/{name}.proto" for name in PROTOS),
    ]  # fmt: skip
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def stale() -> list[str]:
    """The generated files that differ from what the .proto files generate now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "gateway" / "proto"
        return [
            name
            for name in GENERATED
            if not (HERE / name).exists() or not filecmp.cmp(fresh / name, HERE / name, shallow=False)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.proto", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args()
    if args.check:
        names = stale()
        for name in names:
            print(f"gateway/proto/{name} is stale: run python -m gateway.proto", file=sys.stderr)
        return 1 if names else 0
    generate(ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
