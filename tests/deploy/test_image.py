"""The CPU image, built and run for real with podman (daemonless, `runc`), the way
Kubernetes runs it: read-only root with an empty /tmp, the non-root user, the k8s
ConfigMap's environment, loopback only. The base is the official python image when
GATEWAY_PYTHON_IMAGE names one a registry serves; otherwise a Debian bookworm rootfs made
by deploy/container/make-base.sh (no registry answers here, as in air-gapped build farms).

Podman's storage lives in one CI-local directory (GATEWAY_IMAGE_CACHE), so a rerun reuses
the layers whose inputs did not change; the debootstrap rootfs is reused for a week.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from gateway.artifacts.repository import Repository
from tests.conftest import ROOT, free_port

# The first test to use an image waits for its build. Measured on 2 shared cores: cold, the
# base 4.6 min, the demo image 3.1, the custom one 0.7 (9.4 min in all); warm, 1.5 min.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CACHE = Path(os.environ.get("GATEWAY_IMAGE_CACHE", "/var/tmp/onnx-gateway-image"))
BASE_TAG = "localhost/bookworm-python:3.11"
ROOTFS_MAX_AGE_S = 7 * 24 * 3600  # Debian's security updates: a week-old base is rebuilt
SERVING_LAYERS_LIMIT_MB = 150
RESULTS = ROOT / "benchmarks" / "results" / "image.json"
# What the build needs from the repository (the rest of it stays out of the context).
CONTEXT = [
    "pyproject.toml",
    "uv.lock",
    "README.md",
    "gateway",
    "converters",
    "Dockerfile.cpu",
    ".dockerignore",
]
CA_BUNDLE = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")


def _podman_base() -> list[str]:
    """Root podman with no daemon and no systemd: files for events, cgroupfs, runc (crun
    fails on hybrid cgroups), overlay storage on the CI disk (vfs: GATEWAY_PODMAN_STORAGE)."""
    driver = os.environ.get("GATEWAY_PODMAN_STORAGE", "overlay")
    return [
        shutil.which("podman") or "podman",
        "--root", str(CACHE / f"storage-{driver}"),
        "--runroot", str(CACHE / f"run-{driver}"),
        "--storage-driver", driver,
        "--runtime", "runc",
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "file",
    ]  # fmt: skip


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*_podman_base(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])}... exit {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def base_image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (.ci/run installs podman, runc and debootstrap)")
    given = os.environ.get("GATEWAY_PYTHON_IMAGE")
    if given:
        podman("pull", given, timeout=600)
        return given
    assert os.geteuid() == 0, "debootstrap needs root to build the base (or set GATEWAY_PYTHON_IMAGE)"
    tarball = CACHE / "rootfs" / "bookworm-python.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime > ROOTFS_MAX_AGE_S:
        tarball.unlink()
    env = {**os.environ, "ROOTFS_CACHE": str(tarball.parent), "BASE_TAG": BASE_TAG,
           "PODMAN": " ".join(_podman_base())}  # fmt: skip
    started, reused = time.monotonic(), tarball.exists()
    made = subprocess.run(
        [ROOT / "deploy" / "container" / "make-base.sh"], env=env, capture_output=True, text=True, timeout=900
    )
    assert made.returncode == 0, made.stderr[-4000:]
    _record({"base_seconds": round(time.monotonic() - started, 1), "base_rootfs_reused": reused})
    return BASE_TAG


def _context(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    shutil.copytree(ROOT / "deploy" / "container", target / "deploy" / "container")
    return target


def build(base: str, tag: str, context: Path, *build_args: str) -> float:
    started = time.monotonic()
    args = ["build", "--format", "docker", "--network", "host", "--layers", "-f", "Dockerfile.cpu", "-t", tag]
    args += ["--build-arg", f"PYTHON_IMAGE={base}"]
    if Path(CA_BUNDLE).is_file():  # the host's trust store, for a TLS-intercepting proxy
        args += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    for arg in build_args:
        args += ["--build-arg", arg]
    podman(*args, str(context), timeout=1200)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def demo_image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag = "localhost/onnx-gateway:cpu-test"
    seconds = build(base_image, tag, _context(tmp_path_factory.mktemp("context")))
    _record({"build_seconds_demo": round(seconds, 1)})
    yield tag


def _k8s_environment() -> dict[str, str]:
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "configmap.yaml").read_text())
    return {k: str(v) for k, v in configmap["data"].items()}


@dataclass
class Running:
    name: str
    url: str
    grpc: str
    log_path: Path

    def logs(self) -> list[str]:
        """What the container wrote, from its own log file: `podman logs` would mix in
        podman's lines (no systemd here for healthcheck timers). k8s-file lines are
        `time stream P|F text`; P is a part of a line that the next lines complete."""
        lines, part = [], ""
        for raw in self.log_path.read_text(errors="replace").splitlines():
            _, _, flag, text = [*raw.split(" ", 3), "", "", "", ""][:4]
            part += text
            if flag != "P":
                lines.append(part)
                part = ""
        return lines


def _limits() -> list[str]:
    """runc may not set rlimits as high as podman's defaults here (EPERM): the ones this
    process has, capped as a pod's runtime would."""
    flags = []
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, _ = resource.getrlimit(which)
        value = min(soft if soft != resource.RLIM_INFINITY else 16384, 16384)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


def run(image: str, name: str, logs: Path) -> Running:
    """As the Deployment runs it, on loopback ports of the host's network."""
    port, grpc_port = free_port(), free_port()
    env = {**_k8s_environment(), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
           "GATEWAY_GRPC_PORT": str(grpc_port)}  # fmt: skip
    podman("rm", "--force", "--ignore", name)
    log_path = logs / f"{name}.log"
    podman(
        "run", "--detach", "--name", name, "--network", "host",
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m",
        "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--memory", "1g", *_limits(),
        # The image's HEALTHCHECK stays; no timer runs it (that needs systemd), the test does.
        "--health-interval", "disable",
        "--log-driver", "k8s-file", "--log-opt", f"path={log_path}",
        *[a for k, v in env.items() for a in ("--env", f"{k}={v}")],
        image,
    )  # fmt: skip
    running = Running(name, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", f"container {state}:\n" + "\n".join(running.logs()[-30:])
        time.sleep(0.5)
    raise AssertionError("not ready in 120 s:\n" + "\n".join(running.logs()[-30:]))


def stop(running: Running, drain_s: float) -> tuple[int, float]:
    started = time.monotonic()
    podman("kill", "--signal", "TERM", running.name)
    code = int(podman("wait", running.name, timeout=drain_s + 30).stdout.strip().splitlines()[-1])
    return code, time.monotonic() - started


def _record(figures: dict[str, object]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    kept.update(figures)
    RESULTS.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


def _reference(repo: Path, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    manifest, data = Repository(repo).load_verified(name, "1")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in manifest.outputs]
    return dict(zip(names, session.run(names, {manifest.inputs[0].name: rows}), strict=True))


def _copy_models(container: str, target: Path) -> Path:
    podman("cp", f"{container}:/models", str(target))
    return target / "models"


# A V2 ModelInfer over gRPC with gateway/proto's messages, in a process of its own:
# tritonclient, imported by other tests, registers the same message names in protobuf's pool.
GRPC_CLIENT = """
import json, sys
import grpc
import numpy as np
from gateway.proto import grpc_service_pb2 as pb
address, model, rows = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), dtype=np.float64)
request = pb.ModelInferRequest(model_name=model, id="image-test")
tensor = request.inputs.add(name="input", datatype="FP64", shape=list(rows.shape))
request.raw_input_contents.append(rows.tobytes())
with grpc.insecure_channel(address) as channel:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString)
    answer = call(request, timeout=10)
out = {o.name: np.frombuffer(raw, dtype=np.float64 if o.datatype == "FP64" else np.float32).tolist()
       for o, raw in zip(answer.outputs, answer.raw_output_contents)}
print(json.dumps({"id": answer.id, "version": answer.model_version, "outputs": out}))
"""


def _grpc_infer(address: str, model: str, rows: np.ndarray) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", GRPC_CLIENT, address, model, json.dumps(rows.tolist())],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def _assert_json_lines(lines: list[str]) -> list[dict[str, object]]:
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line that is not JSON: {line!r}")
    return parsed


def test_demo_image_serves_as_kubernetes_runs_it(demo_image, tmp_path):
    served = run(demo_image, "gateway-image-test", tmp_path)
    try:
        rows = np.random.default_rng(0).normal(0.0, 0.05, (3, 10))
        fields = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
        body = {"instances": [dict(zip(fields, r.tolist(), strict=True)) for r in rows]}
        answer = httpx.post(f"{served.url}/v1/models/diabetes/predict", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        want = _reference(_copy_models(served.name, tmp_path), "diabetes", rows)["value"][:, 0]
        got = [p["value"] for p in answer.json()["predictions"]]
        np.testing.assert_allclose(got, want, rtol=1e-6)

        metrics = httpx.get(f"{served.url}/metrics", timeout=10)
        assert metrics.status_code == 200 and "gateway_requests_total{" in metrics.text

        remote = _grpc_infer(served.grpc, "diabetes", rows)
        assert remote["id"] == "image-test" and remote["version"] == "1"
        np.testing.assert_allclose(remote["outputs"]["value"], want, rtol=1e-6)  # type: ignore[index]

        health = podman("healthcheck", "run", served.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        code, seconds = stop(served, float(_k8s_environment()["GATEWAY_DRAIN_SECONDS"]))
    lines = served.logs()
    podman("rm", "--force", served.name)
    assert code == 0, "\n".join(lines[-20:])
    assert seconds < float(_k8s_environment()["GATEWAY_DRAIN_SECONDS"])
    logged = _assert_json_lines(lines)
    assert any(e.get("msg") == "ready" for e in logged)
    assert any(e.get("event") == "shutdown_complete" for e in logged)
    # ONNX Runtime's own warning on a read-only root (its telemetry ID) arrives as JSON too.
    assert not any("\x1b[" in line for line in lines)


def test_image_config_and_size(demo_image, base_image):
    config = json.loads(podman("image", "inspect", demo_image).stdout)[0]
    # Podman keeps a docker-format image's healthcheck beside its Config; an OCI image has none.
    health = config["Healthcheck"]["Test"]
    assert "/healthz" in " ".join(health)
    assert config["Config"]["User"] == "10001:10001"
    assert config["Config"]["Entrypoint"] == ["gateway", "serve"]
    size = config["Size"]
    base = json.loads(podman("image", "inspect", base_image).stdout)[0]["Size"]
    serving_mb = (size - base) / 1e6
    figures = {"image_mb": round(size / 1e6, 1), "base_mb": round(base / 1e6, 1),
               "serving_layers_mb": round(serving_mb, 1), "base": base_image}  # fmt: skip
    _record(figures)
    print(f"\nimage {figures}")
    assert serving_mb <= SERVING_LAYERS_LIMIT_MB, figures
    # Nothing but serving: no build tools, caches or sources beside the venv.
    listing = podman(
        "run", "--rm", "--network", "none", *_limits(), "--health-interval", "disable",
        "--entrypoint", "python", demo_image, "-c",
        "import importlib.util as u, os, sys;"
        "print([m for m in ('sklearn', 'torch', 'pip', 'skl2onnx', 'onnx', 'pandas') if u.find_spec(m)]);"
        "print(os.path.exists('/root/.cache/uv'), os.path.exists('/src'))",
    ).stdout.split("\n")  # fmt: skip
    assert listing[:2] == ["[]", "False False"], listing


@pytest.fixture(scope="module")
def custom_image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A user's own model through the build args: a scikit-learn pipeline on iris."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    work = tmp_path_factory.mktemp("custom")
    x, y = load_iris(return_X_y=True, as_frame=True)
    x.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    joblib.dump(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y), work / "iris.joblib"
    )
    x.sample(50, random_state=0).to_csv(work / "sample.csv", index=False)
    context = _context(work / "context")
    (context / "models").mkdir()
    shutil.copy2(work / "iris.joblib", context / "models" / "iris.joblib")
    shutil.copy2(work / "sample.csv", context / "models" / "sample.csv")
    tag = "localhost/iris:1-test"
    seconds = build(
        base_image, tag, context,
        "MODEL_FILE=models/iris.joblib", "MODEL_NAME=iris", "MODEL_VERSION=1", "SAMPLE_FILE=models/sample.csv",
    )  # fmt: skip
    _record({"build_seconds_custom_after_demo": round(seconds, 1)})
    return tag


def test_custom_model_image(custom_image, tmp_path):
    served = run(custom_image, "gateway-image-custom", tmp_path)
    try:
        rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
        names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
        body = {"instances": [dict(zip(names, r, strict=True)) for r in rows]}
        answer = httpx.post(f"{served.url}/v1/models/iris/predict", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        want = _reference(_copy_models(served.name, tmp_path), "iris", np.array(rows, dtype=np.float64))
        predictions = answer.json()["predictions"]
        assert [p["label"] for p in predictions] == want["label"].tolist()
        got = [[p["probabilities"][str(k)] for k in range(3)] for p in predictions]
        np.testing.assert_allclose(got, want["probabilities"], rtol=1e-6)
    finally:
        code, _ = stop(served, float(_k8s_environment()["GATEWAY_DRAIN_SECONDS"]))
    lines = served.logs()
    podman("rm", "--force", served.name)
    assert code == 0, "\n".join(lines[-20:])
    _assert_json_lines(lines)
