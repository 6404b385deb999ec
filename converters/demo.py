"""The demo models: trained here, on data sets that ship inside scikit-learn."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import joblib
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters import convert
from gateway.artifacts.repository import Repository

DEMO_MODELS = ("breast_cancer", "diabetes")


def build_demo_repository(repo: Path, progress: Callable[[str], None] = print) -> list[str]:
    """Train and convert the demo models into `repo` (version 1), skipping those present."""
    built = []
    repository = Repository(repo)
    with tempfile.TemporaryDirectory() as tmp:
        x, y = load_breast_cancer(return_X_y=True, as_frame=True)
        x.columns = [c.replace(" ", "_") for c in x.columns]
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
        dx, dy = load_diabetes(return_X_y=True, as_frame=True)
        regressor = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(dx, dy)
        for name, model, sample in (
            ("breast_cancer", classifier, x),
            ("diabetes", regressor, dx),
        ):
            if "1" in repository.versions(name):
                progress(f"{name}:1 already in {repo}")
                continue
            path = Path(tmp) / f"{name}.joblib"
            joblib.dump(model, path)
            convert(
                path,
                name=name,
                version="1",
                repo=repo,
                sample=sample,
                progress=progress,
                metadata={"dataset": f"sklearn.datasets.load_{name}"},
            )
            built.append(name)
    return built
