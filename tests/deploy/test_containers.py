"""What can be proven about the images and manifests without a Docker engine or a cluster:
lint, schema validation, the Dockerfiles' promises, and that the serving dependency set
alone serves a model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port

BIN = Path(sys.executable).parent
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (it is a dev dependency)")
    return str(path)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([_tool("hadolint"), dockerfile], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Instructions per stage name, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / dockerfile).read_text())
    stages: dict[str, list[str]] = {}
    current = "_"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            current = line.split()[-1] if " AS " in line.upper() else line.split()[1]
        stages.setdefault(current, []).append(line)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runtime_stage_promises(dockerfile):
    stages = _stages(dockerfile)
    runtime = stages["runtime"]
    assert list(stages)[-1] == "runtime"
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = next(line for line in runtime if line.startswith("HEALTHCHECK"))
    assert "/healthz" in health
    assert "STOPSIGNAL SIGTERM" in runtime
    assert any(line.startswith("ENTRYPOINT") and '"gateway", "serve"' in line for line in runtime)
    # conversion happens at build time, in its own stage; the runtime installs no convert extras
    runtime_and_deps = runtime + stages.get("serving-deps", [])
    assert not any(
        "--extra convert" in line or "scikit-learn" in line or "torch" in line for line in runtime_and_deps
    )
    assert any("--extra convert" in line for line in stages["convert"])
    assert any("gateway convert" in line or "gateway demo" in line for line in stages["convert"])
    copies = [line for line in runtime if line.startswith("COPY --from=convert")]
    assert copies and all("/repository" in c for c in copies)
    provider = "cuda" if "gpu" in dockerfile else "cpu"
    assert any(f"GATEWAY_PROVIDER={provider}" in line for line in runtime)
    # the V2 protocol over gRPC beside HTTP, on Triton's port
    assert any("GATEWAY_GRPC_PORT=8001" in line for line in runtime)
    assert "EXPOSE 8000 8001" in runtime


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_overlays_validate_against_kubernetes_schemas(overlay, tmp_path):
    built = subprocess.run(
        [_tool("kubectl"), "kustomize", f"deploy/k8s/overlays/{overlay}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(built.stdout)
    check = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", str(manifest)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(built.stdout)}
    assert set(docs) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > int(docs["ConfigMap"]["data"]["GATEWAY_DRAIN_SECONDS"])
    assert "preStop" in container["lifecycle"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GATEWAY_GRPC_PORT"] == "8001"
    assert {"name": "grpc", "containerPort": 8001, "protocol": "TCP"} in container["ports"]
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} == {"http", "grpc"}
    assert docs["ConfigMap"]["data"]["GATEWAY_PROVIDER"] == ("cuda" if overlay == "gpu" else "cpu")
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_kserve_runtime_speaks_v2():
    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    service = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    assert runtime["kind"] == "ServingRuntime" and runtime["spec"]["protocolVersions"] == ["v2"]
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert runtime["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


@pytest.mark.slow
def test_serving_dependencies_alone_serve_the_demo_model(demo_repo, tmp_path):
    """The runtime image's dependency set, in a fresh environment: no scikit-learn, no torch."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (the README's set-up command installs it)")
    env_dir = tmp_path / "serving-venv"
    requirements = tmp_path / "requirements.txt"
    subprocess.run(
        [
            uv,
            "export",
            "--frozen",
            "--no-dev",
            "--extra",
            "cpu",
            "--no-emit-project",
            "--no-hashes",
            "-o",
            str(requirements),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert "scikit-learn" not in requirements.read_text() and "torch" not in requirements.read_text()
    subprocess.run(
        [uv, "venv", "-q", "--python", sys.executable, str(env_dir)], check=True, capture_output=True
    )
    python = env_dir / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), "-r", str(requirements)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), "--no-deps", str(ROOT)],
        check=True,
        capture_output=True,
    )
    missing = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([m for m in ('sklearn', 'torch', 'skl2onnx', 'pandas')"
                            " if u.find_spec(m)])"], capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert missing.stdout.strip() == "[]"
    port, grpc_port = free_port(), free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen([str(env_dir / "bin" / "gateway"), "serve", "--repo", str(demo_repo), "--port",
                                    str(port), "--grpc-port", str(grpc_port)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        features = httpx.get(url + "/openapi.json").json()["components"]["schemas"]["diabetes_record"][
            "required"
        ]
        r = httpx.post(url + "/v1/models/diabetes/predict", json=dict.fromkeys(features, 0.02))
        assert r.status_code == 200, (tmp_path / "serve.log").read_text()
        import grpc  # the serving set serves gRPC too: ServerLive answers `live: true`

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=10)
        assert live == b"\x08\x01"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


# SIGTERM to exit: one drain of GATEWAY_DRAIN_SECONDS for both doors, then the batchers'
# last batches and the process's exit (measured: under 1.5 s on the demo models).
EXIT_MARGIN_S = 5


def _drain_seconds(entries: dict[str, str]) -> float:
    return float(entries["GATEWAY_DRAIN_SECONDS"])


def test_grace_periods_cover_pre_stop_and_one_drain():
    """A pod killed mid-drain drops what it had accepted: each shipped manifest's grace must
    cover the preStop pause, the drain and the exit."""
    k8s = ROOT / "deploy" / "k8s" / "base"
    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    drain = _drain_seconds(yaml.safe_load((k8s / "configmap.yaml").read_text())["data"])
    (container,) = deployment["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert deployment["terminationGracePeriodSeconds"] >= pre_stop + drain + EXIT_MARGIN_S

    task = json.loads((ROOT / "deploy" / "ecs" / "task-definition.json").read_text())
    for definition in task["containerDefinitions"]:
        env = {e["name"]: e["value"] for e in definition.get("environment", [])}
        assert definition["stopTimeout"] >= _drain_seconds(env) + EXIT_MARGIN_S

    # Cloud Run kills an instance 10 s after SIGTERM, whatever the manifest says.
    run = yaml.safe_load((ROOT / "deploy" / "cloudrun" / "service.yaml").read_text())
    for spec in run["spec"]["template"]["spec"]["containers"]:
        env = {e["name"]: e["value"] for e in spec.get("env", []) if "value" in e}
        assert _drain_seconds(env) + 1.5 <= 10
