"""`gateway convert models:/...` against a real MLflow tracking store and model registry (a
sqlite backend and a file artifact store in a temporary directory: no traffic at all), then
the converted models served over HTTP with the original models' predictions."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import start_server

pytestmark = pytest.mark.slow


@dataclass
class Logged:
    uri: str
    predict: Any  # rows (DataFrame) -> the original model's predictions
    example: pd.DataFrame
    run_id: str
    version: str | None = None


class TorchNet:  # built lazily: torch is optional
    @staticmethod
    def make() -> Any:
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Logged]]:
    """Log and register three models: a scikit-learn pipeline, an XGBoost classifier and
    (where torch is installed) a PyTorch module, each with an input example."""
    tmp = tmp_path_factory.mktemp("mlflow")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecations and hints, not ours
        import mlflow
        import xgboost
        from sklearn.datasets import load_breast_cancer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = load_breast_cancer(return_X_y=True, as_frame=True)
        x.columns = [c.replace(" ", "_") for c in x.columns]
        example = x.iloc[::57].reset_index(drop=True)  # 10 rows
        client = mlflow.MlflowClient()
        mlflow.set_experiment(
            experiment_id=client.create_experiment("gw", artifact_location=f"file://{tmp}/art")
        )
        logged: dict[str, Logged] = {}
        with mlflow.start_run() as run:
            pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x, y)
            info = mlflow.sklearn.log_model(
                pipe, name="pipe", input_example=example, registered_model_name="gw-pipe"
            )
            logged["pipe"] = Logged("models:/gw-pipe/1", pipe.predict_proba, example, run.info.run_id, "1")
            booster = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x, y)
            info = mlflow.xgboost.log_model(
                booster, name="xgb", input_example=example, registered_model_name="gw-xgb"
            )
            client.set_registered_model_alias("gw-xgb", "champion", info.registered_model_version)
            logged["xgb"] = Logged(
                "models:/gw-xgb@champion", booster.predict_proba, example, run.info.run_id, "1"
            )
            # The signature names what the model never saw: the cross-check must refuse it.
            renamed = example.rename(columns={"mean_radius": "radius"})
            mlflow.sklearn.log_model(pipe, name="wrong", signature=mlflow.models.infer_signature(renamed))
            logged["wrong"] = Logged(f"runs:/{run.info.run_id}/wrong", None, example, run.info.run_id)
            try:
                import torch
            except ImportError:
                torch = None
            if torch is not None:
                net = TorchNet.make()
                array = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
                mlflow.pytorch.log_model(net, name="net", input_example=array, registered_model_name="gw-net")

                def forward(rows: pd.DataFrame) -> np.ndarray:
                    with torch.no_grad():
                        return net(torch.from_numpy(np.array(rows.to_numpy(np.float32)))).numpy()

                logged["net"] = Logged(
                    f"runs:/{run.info.run_id}/net", forward, pd.DataFrame(array), run.info.run_id
                )
    yield logged
    patch.undo()


def convert(uri: str, name: str, repo: Path) -> tuple[int, str]:
    from gateway.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["convert", uri, "--name", name, "--version", "1", "--repo", str(repo)])
    return code, name


@pytest.fixture(scope="module")
def converted(store: dict[str, Logged], tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for key in ("pipe", "xgb", "net"):
        if key in store:
            code, _ = convert(store[key].uri, key, repo)
            assert code == 0, f"{key}: gateway convert {store[key].uri} failed"
    return repo


def test_each_uri_form_converts_with_its_provenance(store: dict[str, Logged], converted: Path) -> None:
    from gateway.artifacts.repository import Repository

    repo = Repository(converted)
    for key in ("pipe", "xgb", "net"):
        if key not in store:
            continue
        manifest = repo.manifest(key, "1")
        assert manifest.source.uri == store[key].uri
        assert manifest.source.run_id == store[key].run_id
        assert manifest.source.model_version == store[key].version
        # No --sample: the logged input example was the parity sample.
        assert manifest.parity is not None and manifest.parity.rows == len(store[key].example)
        assert manifest.parity.sample == "given"
    assert [f.name for f in repo.manifest("pipe", "1").features] == list(store["pipe"].example.columns)
    if "net" not in store:
        pytest.skip("torch is not installed: the PyTorch model was not logged")


def test_converted_models_serve_the_original_predictions(
    store: dict[str, Logged], converted: Path, tmp_path: Path
) -> None:
    server = start_server(converted, tmp_path, "--log-level", "warning")
    try:
        for key in ("pipe", "xgb", "net"):
            if key not in store:
                continue
            logged = store[key]
            from gateway.artifacts.repository import Repository

            names = [f.name for f in Repository(converted).manifest(key, "1").features]
            rows = [dict(zip(names, map(float, r), strict=True)) for r in logged.example.to_numpy()]
            reply = httpx.post(f"{server.url}/v1/models/{key}/predict", json={"instances": rows}, timeout=30)
            assert reply.status_code == 200, reply.text
            predictions = reply.json()["predictions"]
            expected = logged.predict(logged.example)
            if key == "net":
                got = [p["value"] for p in predictions]
                np.testing.assert_allclose(got, expected.reshape(-1), rtol=1e-5, atol=1e-6)
            else:
                got = [[p["probabilities"][c] for c in ("0", "1")] for p in predictions]
                np.testing.assert_allclose(got, expected, atol=1e-5)
                assert [p["label"] for p in predictions] == list(np.argmax(expected, axis=1))
    finally:
        server.stop()
    if "net" not in store:
        pytest.skip("torch is not installed: the PyTorch model was not logged")


def test_a_signature_that_disagrees_with_the_model_is_refused(
    store: dict[str, Logged], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = convert(store["wrong"].uri, "wrong", tmp_path / "repo")
    assert code == 2
    err = capsys.readouterr().err
    assert "signature" in err and "mean_radius" in err and "radius" in err
    assert not (tmp_path / "repo" / "wrong").exists()


def test_a_local_mlflow_model_directory_is_a_source(store: dict[str, Logged], tmp_path: Path) -> None:
    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=store["pipe"].uri, dst_path=str(tmp_path / "dl")
        )
    code, _ = convert(local, "local", tmp_path / "repo")
    assert code == 0
    from gateway.artifacts.repository import Repository

    source = Repository(tmp_path / "repo").manifest("local", "1").source
    assert (source.uri, source.run_id) == (local, store["pipe"].run_id)
