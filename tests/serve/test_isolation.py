"""The serving side never needs scikit-learn, torch or a pickle."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import textwrap
import time

import httpx

from tests.conftest import ROOT, free_port

FORBIDDEN = (
    "sklearn",
    "torch",
    "joblib",
    "skl2onnx",
    "onnxmltools",
    "pandas",
    "cloudpickle",
    "dill",
    "xgboost",
    "lightgbm",
    "converters",
)

BOOTSTRAP = textwrap.dedent("""
    import importlib.abc, pickle, sys
    FORBIDDEN = {forbidden!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"blocked import of {{name}} on the serving path")
            return None

    sys.meta_path.insert(0, Block())

    def refuse(*args, **kwargs):
        raise RuntimeError("something unpickled at serving time")

    # numpy itself imports pickle, so the module cannot be blocked; using it can.
    pickle.load = pickle.loads = refuse
    pickle.Unpickler = refuse
    from gateway.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_serve_runs_with_training_libraries_blocked_and_pickle_disabled(demo_repo, tmp_path):
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                BOOTSTRAP.format(forbidden=set(FORBIDDEN)),
                "serve",
                "--repo",
                str(demo_repo),
                "--port",
                str(port),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        features = httpx.get(url + "/openapi.json").json()["components"]["schemas"]["diabetes_record"][
            "required"
        ]
        r = httpx.post(url + "/v1/models/diabetes/predict", json=dict.fromkeys(features, 0.01))
        assert r.status_code == 200, r.text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert "blocked import" not in (tmp_path / "serve.log").read_text()


def test_no_gateway_module_imports_pickle_or_training_libraries():
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        name = path.relative_to(ROOT / "gateway").as_posix()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for imported in names:
                if imported.split(".")[0] in {*FORBIDDEN, "pickle", "_pickle", "marshal", "shelve"}:
                    offenders.append(f"{name}: {imported}")
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                offenders.append(f"{name}: allow_pickle")
    # The CLI may import converters lazily, inside the convert and demo commands only.
    lazy = _converter_imports_inside((ROOT / "gateway" / "cli" / "main.py"), {"cmd_convert", "cmd_demo"})
    offenders = [o for o in offenders if not (o.startswith("cli/main.py: converters") and o.split(": ")[1] in lazy)]
    # The Dask adapter maps pandas partitions (its [score] users have pandas through dask);
    # nothing that serves imports it.
    offenders = [o for o in offenders if o != "scoring/dask_engine.py: pandas"]
    assert offenders == []


def _converter_imports_inside(path, functions):
    """The `converters` modules imported in the body of the named functions (and nowhere else)."""
    tree = ast.parse(path.read_text())
    inside, everywhere = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("converters"):
            everywhere.add(node.module)
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in functions:
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("converters"):
                    inside.add(node.module)
    outside = everywhere - inside
    assert not outside, f"cli/main.py imports {sorted(outside)} outside {sorted(functions)}"
    return inside


def test_gateway_import_is_light():
    code = (
        "import sys, gateway, gateway.app, gateway.cli.serve, gateway.cli\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {set(FORBIDDEN)!r})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
