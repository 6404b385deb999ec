"""The benchmark models, trained on data shipped with scikit-learn: a small pipeline, a
100-tree forest, and heavy models where compute (and so batching) matters: a 4x1024 MLP
and, for the GPU benchmark, 1,000 boosted trees."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import joblib
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters import convert
from gateway.artifacts.repository import Repository


@dataclass(frozen=True)
class BenchModel:
    name: str
    joblib_path: Path
    sample: pd.DataFrame


def _factories() -> dict[str, object]:
    return {
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
        "forest": RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1),
        "mlp": make_pipeline(
            StandardScaler(), MLPClassifier(hidden_layer_sizes=(1024,) * 4, max_iter=5, random_state=0)
        ),
        # The GPU benchmark's second heavy model: 1,000 boosted trees.
        "gbm": GradientBoostingClassifier(n_estimators=1000, max_depth=4, random_state=0),
    }


def build(work: Path, names: tuple[str, ...]) -> tuple[Path, dict[str, BenchModel]]:
    """Train, pickle (for the seed recipe) and convert (for the gateway), once per work dir."""
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x.columns = [c.replace(" ", "_") for c in x.columns]
    repo = work / "repo"
    out = {}
    for name, model in _factories().items():
        if name not in names:
            continue
        path = work / f"{name}.joblib"
        if not path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(x, y)  # type: ignore[attr-defined]
            joblib.dump(model, path)
        if "1" not in Repository(repo).versions(name):
            convert(path, name=name, version="1", repo=repo, sample=x)
        out[name] = BenchModel(name, path, x)
    return repo, out
