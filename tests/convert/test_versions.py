"""A model pickled by another scikit-learn: trained in a venv of scikit-learn 1.6.1 (a
typical notebook environment of its time), converted here, refused with both versions and the
fix named, never with a wrong diagnosis."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from converters import ConversionError, convert
from tests.conftest import ROOT

OLD_SKLEARN = "1.6.1"

TRAIN = """
import sys
import joblib, numpy as np, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

rng = np.random.default_rng(0)
frame = pd.DataFrame({"age": rng.integers(18, 80, 200), "income": rng.normal(50, 10, 200),
                      "state": rng.choice(["CA", "NY"], 200), "id": np.arange(200)})
pre = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income"]),
                         ("cat", OneHotEncoder(handle_unknown="ignore"), ["state"])])
joblib.dump(make_pipeline(pre, LogisticRegression()).fit(frame, frame["age"] > 40), sys.argv[1])
frame.to_csv(sys.argv[2], index=False)
"""


def _uv() -> str | None:
    for candidate in (shutil.which("uv"), ROOT / ".uv" / "bin" / "uv", Path("/work/main/.uv/bin/uv")):
        if candidate is not None and Path(candidate).is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def old_pickle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed: it builds the scikit-learn 1.6.1 venv")
    folder = tmp_path_factory.mktemp("old-sklearn")
    venv = folder / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), f"scikit-learn=={OLD_SKLEARN}",
         "pandas==2.2.3", "numpy<2.3", "joblib"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "UV_HTTP_TIMEOUT": "60"},
    )  # fmt: skip
    if install.returncode != 0:
        pytest.skip(f"the package registry is unreachable: {install.stderr.strip().splitlines()[-1:]}")
    model, sample = folder / "model.joblib", folder / "train.csv"
    subprocess.run([str(python), "-c", TRAIN, str(model), str(sample)], check=True, timeout=120)
    return model, sample


@pytest.mark.slow
def test_a_pickle_from_another_sklearn_names_both_versions_and_the_fix(old_pickle, tmp_path):
    import sklearn

    from converters import load_sample

    model, sample = old_pickle
    with pytest.raises(ConversionError) as caught:
        convert(model, name="old", version="1", repo=tmp_path / "repo", sample=load_sample(sample))
    message = str(caught.value)
    assert f"pickled with scikit-learn {OLD_SKLEARN}" in message, message
    assert f"this environment has scikit-learn {sklearn.__version__}" in message, message
    assert "pip install 'onnx-gateway[convert]' in the training environment" in message, message
    assert "__main__" not in message and "\n" not in message
    assert not (tmp_path / "repo" / "old").exists()


@pytest.mark.slow
def test_the_cli_says_the_same_in_one_line(old_pickle, tmp_path):
    model, sample = old_pickle
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "convert", str(model), "--name", "old", "--version", "1",
         "--repo", str(tmp_path / "repo"), "--sample", str(sample)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[convert]")]
    assert len(lines) == 1 and f"scikit-learn {OLD_SKLEARN}" in lines[0], result.stderr
