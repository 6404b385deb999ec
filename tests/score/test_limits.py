"""`gateway score` is bounded by bytes, not only rows: huge cells, dictionary-encoded
Parquet and compressed CSV cannot make it hold gigabytes, and a rejected value is quoted
clipped, so a small input cannot write a huge rejects file. A repeated column is refused."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.score.test_score import PEAK_RSS, _manifest, table

pa = pytest.importorskip("pyarrow", reason="batch scoring needs the score extra (pyarrow)")
pq = pytest.importorskip("pyarrow.parquet")

from gateway.errors import ECHO_LIMIT  # noqa: E402
from gateway.scoring import ColumnCodec, ScoreError, Scorer, score_file  # noqa: E402
from gateway.scoring.columns import MAX_CELL_BYTES  # noqa: E402

NAME = "diabetes"  # ten numeric features: age, sex, bmi, bp, s1 ... s6


def _score(repo: Path, source: Path, code: int = 1) -> tuple[float, Path, str]:
    """Peak RSS (MiB) of `gateway score` on `source`, its rejects file and its output;
    `code`: 1 when rows are rejected, 0 when none are."""
    out = source.with_name(source.name + ".out.parquet")
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "score", NAME, str(source), str(out), "--repo", str(repo),
         "--progress", "none"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    rejects = source.with_name(source.name + ".out.rejects.csv")
    return int(done.stdout.rsplit("peak_rss_kib=", 1)[1]) / 1024, rejects, done.stdout


@pytest.fixture(scope="module")
def baseline_mib(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Peak RSS of an ordinary run: the interpreter, ONNX Runtime, Arrow, one small chunk."""
    path = tmp_path_factory.mktemp("baseline") / "small.csv"
    table(demo_repo, NAME, 1_000).drop(columns="id").to_csv(path, index=False)
    return _score(demo_repo, path, 0)[0]


def _frame(repo: Path, rows: int) -> pd.DataFrame:
    frame = table(repo, NAME, rows).drop(columns="id")
    frame["age"] = frame["age"].map(repr)  # text, as a CSV column is: the value goes on in it
    return frame


@pytest.mark.slow
def test_one_huge_value_repeated_in_dictionary_parquet_is_never_decoded(demo_repo, tmp_path, baseline_mib):
    """A few KB of Parquet: one 256 KiB value, dictionary-encoded, in 4,096 rows. Decoded
    that is 1 GiB; read as a dictionary it is 256 KiB and the rows' indices."""
    rows, huge = 4_096, "9" * (256 * 1024)
    frame = _frame(demo_repo, rows)
    frame.loc[::2, "age"] = huge
    path = tmp_path / "dict.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, use_dictionary=True)
    assert path.stat().st_size < 1 << 20
    peak, rejects, output = _score(demo_repo, path)
    assert f"{rows // 2:,} of {rows:,} rows scored" in output
    bad = pd.read_csv(rejects)
    assert len(bad) == rows // 2 and set(bad["field"]) == {"age"}
    assert set(bad["reason"]) == {f"a value of {len(huge)} bytes; the limit is {MAX_CELL_BYTES}"}
    assert rejects.stat().st_size < 200 * (rows // 2)
    assert peak - baseline_mib < 150, (baseline_mib, peak)


@pytest.mark.slow
def test_a_gzipped_csv_of_huge_cells_is_read_in_chunks_bounded_by_bytes(demo_repo, tmp_path, baseline_mib):
    """A few MB of .csv.gz that is 400 MB of text: 800 rows of 500 KB cells. All 800 rows
    were one chunk (65,536 rows); now a chunk stops at CHUNK_BYTES, and each cell is a
    rejected row, quoted by its size."""
    rows, cell = 800, "7" * 500_000
    frame = _frame(demo_repo, 4)
    header = ",".join(frame.columns).encode()
    line = ",".join([cell, *(repr(float(v)) for v in frame.iloc[0, 1:])]).encode()
    path = tmp_path / "huge.csv.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header + b"\n")
        for _ in range(rows):
            out.write(line + b"\n")
    assert path.stat().st_size < 8 << 20
    peak, rejects, output = _score(demo_repo, path)
    assert f"0 of {rows:,} rows scored" in output
    bad = pd.read_csv(rejects)
    assert len(bad) == rows and set(bad["reason"]) == {
        f"a value of {len(cell)} bytes; the limit is {MAX_CELL_BYTES}"
    }
    assert peak - baseline_mib < 200, (baseline_mib, peak)  # measured 140; all in one chunk: 810


@pytest.mark.slow
def test_a_rejected_value_is_quoted_clipped(demo_repo, tmp_path, baseline_mib):
    """A 2 KB Parquet file of 5,000 rows with a 20 KB value that is no number (under the
    cell limit): each reject quotes it clipped, not 100 MB of rejects for a 2 KB input."""
    rows, text = 5_000, "x" * 20_000
    frame = _frame(demo_repo, rows)
    frame["age"] = text
    path = tmp_path / "text.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, use_dictionary=True)
    peak, rejects, _ = _score(demo_repo, path)
    bad = pd.read_csv(rejects)
    assert len(bad) == rows
    assert set(bad["reason"]) == {f"Expected `float`, got '{'x' * ECHO_LIMIT}...'"}
    assert rejects.stat().st_size < 300 * rows
    assert peak - baseline_mib < 150, (baseline_mib, peak)


def test_an_unknown_category_is_quoted_clipped_once_per_distinct_value() -> None:
    """The category check on a dictionary column runs on its distinct values."""
    manifest = _manifest()
    good = {"x": 1.5, "bounded": 0.5, "count": 3, "flag": True, "colour": "red", "maybe": 2.0, "note": "hi"}
    rows = [good, {**good, "colour": "g" * 20_000}, {**good, "colour": None}] * 1_000
    types = {"x": pa.float64(), "bounded": pa.float64(), "count": pa.float64(), "flag": pa.bool_(),
             "colour": pa.dictionary(pa.int32(), pa.string()), "maybe": pa.float64(), "note": pa.string()}  # fmt: skip
    batch = pa.Table.from_pylist(rows, schema=pa.schema(list(types.items())))
    checked = ColumnCodec(manifest).check(batch)
    assert checked.rejected.tolist() == [i for i in range(len(rows)) if i % 3]
    # clipped once, then the allowed values the encoder knows (it errors on others)
    assert set(checked.reason[0::2]) == {f"Invalid enum value '{'g' * ECHO_LIMIT}...'; expected one of 'red', 'blue'"}
    assert set(checked.reason[1::2]) == {"Expected `str`, got `null`"}
    assert checked.columns["colour"].tolist() == ["red"] * 1_000


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_repeated_column_is_refused_by_name(demo_repo, tmp_path, fmt) -> None:
    frame = table(demo_repo, NAME, 10).drop(columns="id")
    twice = pd.concat([frame, frame[["bmi"]]], axis=1)  # two columns named bmi, as a join leaves
    path = tmp_path / f"twice.{fmt}"
    if fmt == "csv":
        twice.to_csv(path, index=False)
    else:
        names = list(twice.columns)
        pq.write_table(
            pa.Table.from_arrays([pa.array(twice.iloc[:, i]) for i in range(len(names))], names), path
        )
    scorer = Scorer.from_repository(demo_repo, NAME)
    with pytest.raises(ScoreError, match=r"column 'bmi' appears more than once"):
        score_file(scorer, str(path), str(tmp_path / "out.parquet"), progress="none")
    assert not (tmp_path / "out.parquet").exists()
    assert np.isfinite(frame.to_numpy()).all()
