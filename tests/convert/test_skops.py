"""A .skops file is read through skops' trusted types: what skops does not trust by default
is listed and refused, nothing built, until the user names it with --trust."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from converters import ConversionError, convert
from tests.conftest import ROOT

sio = pytest.importorskip("skops.io")


@pytest.fixture(scope="module")
def data():
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    return x.abs() * 100, y


def test_a_skops_file_of_trusted_types_converts(data, tmp_path):
    x, y = data
    model = make_pipeline(StandardScaler(), Ridge()).fit(x, y)
    sio.dump(model, tmp_path / "model.skops")
    manifest = convert(tmp_path / "model.skops", name="m", version="1", repo=tmp_path / "repo", sample=x)
    assert manifest.source.framework == "sklearn" and manifest.source.file_name == "model.skops"
    assert manifest.parity.max_abs_diff < 1e-6


def test_an_untrusted_type_is_listed_and_refused_until_trusted(data, tmp_path):
    x, y = data
    model = make_pipeline(FunctionTransformer(np.log1p), GradientBoostingRegressor(n_estimators=10)).fit(x, y)
    sio.dump(model, tmp_path / "model.skops")
    untrusted = sio.get_untrusted_types(file=tmp_path / "model.skops")
    assert untrusted == ["sklearn.tree._tree.Tree"]  # not trusted by skops by default
    with pytest.raises(ConversionError) as caught:
        convert(tmp_path / "model.skops", name="m", version="1", repo=tmp_path / "repo", sample=x)
    message = str(caught.value)
    assert all(t in message for t in untrusted) and "--trust TYPE" in message and "\n" not in message
    assert not (tmp_path / "repo" / "m").exists()
    cli = [sys.executable, "-m", "gateway.cli", "convert", str(tmp_path / "model.skops"), "--name", "m",
           "--version", "1", "--repo", str(tmp_path / "repo")]  # fmt: skip
    for t in untrusted:
        cli += ["--trust", t]
    x.to_csv(tmp_path / "train.csv", index=False)
    done = subprocess.run([*cli, "--sample", str(tmp_path / "train.csv")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "m:1 written" in done.stdout


def test_a_file_that_is_not_skops_is_one_line(tmp_path):
    (tmp_path / "model.skops").write_bytes(b"not a zip")
    with pytest.raises(ConversionError) as caught:
        convert(tmp_path / "model.skops", name="m", version="1", repo=tmp_path / "repo")
    assert "not a skops file skops can read" in str(caught.value) and "\n" not in str(caught.value)
