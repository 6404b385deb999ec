"""`gateway score`: the real command on real files, checked against the records API of a
real server on the same repository, and against the records codec row by row.

Covers `gateway/cli/score.py`, `gateway/scoring/scorer.py`, `gateway/scoring/tables.py`,
`gateway/scoring/columns.py`, `gateway/scoring/progress.py`."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, Server

pa = pytest.importorskip("pyarrow", reason="batch scoring needs the score extra (pyarrow)")
pq = pytest.importorskip("pyarrow.parquet")

from gateway.artifacts.manifest import Feature, Manifest, OnnxInfo, Source, TensorSpec  # noqa: E402
from gateway.artifacts.repository import Repository  # noqa: E402
from gateway.errors import GatewayError  # noqa: E402
from gateway.records.codec import RecordCodec  # noqa: E402
from gateway.scoring import ColumnCodec, ScoreError, Scorer, score_file  # noqa: E402
from gateway.scoring.progress import Progress  # noqa: E402


def score(*args: str, check: int | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "score", *args, "--progress", "lines"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    if check is not None:
        assert done.returncode == check, done.stdout + done.stderr
    return done


def features_of(repo: Path, name: str) -> list[str]:
    return [f.name for f in Repository(repo).manifest(name, "1").features]


def table(repo: Path, name: str, rows: int, seed: int = 0) -> pd.DataFrame:
    """Rows spread across each feature's trained range, with an id column first."""
    manifest = Repository(repo).manifest(name, "1")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f.name: rng.uniform(f.min, f.max, rows) for f in manifest.features})
    frame.insert(0, "id", [f"row-{i}" for i in range(rows)])
    return frame


def records_api(server: Server, name: str, frame: pd.DataFrame) -> list[dict]:
    out: list[dict] = []
    for start in range(0, len(frame), 1000):
        records = frame.iloc[start : start + 1000].drop(columns="id").to_dict(orient="records")
        reply = httpx.post(f"{server.url}/v1/models/{name}/predict", json={"instances": records}, timeout=60)
        assert reply.status_code == 200, reply.text
        out.extend(reply.json()["predictions"])
    return out


def test_larger_than_a_chunk_gives_the_records_api_predictions(
    demo_repo: Path, server: Server, tmp_path: Path
) -> None:
    frame = table(demo_repo, "breast_cancer", 2_500)
    frame.to_csv(tmp_path / "in.csv", index=False)
    done = score("breast_cancer", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--repo", str(demo_repo),
                 "--keep", "id", "--chunk-rows", "1000", "--batch-rows", "300", check=0)  # fmt: skip
    assert "2,500 of 2,500 rows scored" in done.stdout
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["id", "label", "probability_0", "probability_1"]
    assert out["id"].tolist() == frame["id"].tolist()
    expected = records_api(server, "breast_cancer", frame)
    assert out["label"].tolist() == [p["label"] for p in expected]
    for c in ("0", "1"):
        np.testing.assert_allclose(
            out[f"probability_{c}"], [p["probabilities"][c] for p in expected], rtol=1e-9
        )
    assert pd.read_csv(tmp_path / "out.rejects.csv").empty


def test_parquet_regressor_matches_the_records_api(demo_repo: Path, server: Server, tmp_path: Path) -> None:
    frame = table(demo_repo, "diabetes", 1_800, seed=1)
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet", row_group_size=500
    )
    score("diabetes:1", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--repo", str(demo_repo),
          "--keep", "id", "--chunk-rows", "700", check=0)  # fmt: skip
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert out["id"].tolist() == frame["id"].tolist()
    expected = [p["value"] for p in records_api(server, "diabetes", frame)]
    np.testing.assert_allclose(out["value"], expected, rtol=1e-6)


def test_rejected_rows_are_reported_with_row_and_reason(demo_repo: Path, tmp_path: Path) -> None:
    frame = table(demo_repo, "breast_cancer", 50)
    first, second = features_of(demo_repo, "breast_cancer")[:2]
    text = frame.astype(object)
    text.loc[3, first] = "abc"  # not a number
    text.loc[7, second] = None  # null where the model imputes nothing
    text.loc[8, first] = "inf"
    text.loc[9, first] = "1e400"  # beyond float64: parsed as infinity, refused as such
    text.loc[40, second] = 1e6  # far outside the trained range: refused under --range-policy reject
    text.to_csv(tmp_path / "in.csv", index=False)
    done = score("breast_cancer", str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"), "--repo",
                 str(demo_repo), "--keep", "id", "--range-policy", "reject", "--chunk-rows", "16",
                 "--rejects", str(tmp_path / "bad.csv"), check=1)  # fmt: skip
    assert "45 of 50 rows scored" in done.stdout and "5 rejected" in done.stdout
    rejects = pd.read_csv(tmp_path / "bad.csv")
    assert rejects["row"].tolist() == [3, 7, 8, 9, 40]
    assert rejects["id"].tolist() == [f"row-{i}" for i in (3, 7, 8, 9, 40)]
    assert rejects["field"].tolist() == [first, second, first, first, second]
    reasons = rejects["reason"].tolist()
    assert reasons[0] == "Expected `float`, got 'abc'"
    assert reasons[1] == "Expected `float`, got `null`"
    assert reasons[2] == reasons[3] == "NaN and Infinity are not accepted"
    assert "outside the trained range" in reasons[4]
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == 45 and "row-3" not in out.column("id").to_pylist()


def test_a_missing_column_fails_before_writing_anything(demo_repo: Path, tmp_path: Path) -> None:
    frame = table(demo_repo, "breast_cancer", 5)
    missing = features_of(demo_repo, "breast_cancer")[4]
    frame.drop(columns=missing).to_csv(tmp_path / "in.csv", index=False)
    done = score("breast_cancer", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--repo", str(demo_repo),
                 check=2)  # fmt: skip
    assert f"no column '{missing}'" in done.stderr
    assert not (tmp_path / "out.csv").exists() and list(tmp_path.glob(".out*")) == []


def test_a_tampered_artifact_is_refused(demo_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo / "diabetes", repo / "diabetes")
    model = repo / "diabetes" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    table(demo_repo, "diabetes", 5).to_csv(tmp_path / "in.csv", index=False)
    done = score(
        "diabetes", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--repo", str(repo), check=2
    )
    assert "sha256" in done.stderr and not (tmp_path / "out.csv").exists()


def test_fsspec_urls_in_and_out(demo_repo: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    frame = table(demo_repo, "diabetes", 300)
    fs = fsspec.filesystem("memory")
    fs.pipe("/score-test/in.csv", frame.to_csv(index=False).encode())
    scorer = Scorer.from_repository(demo_repo, "diabetes")
    report = score_file(scorer, "memory://score-test/in.csv", "memory://score-test/out.parquet",
                        keep=["id"], chunk_rows=128, progress="none")  # fmt: skip
    assert (report.rows, report.rejected) == (300, 0)
    out = pq.read_table(io.BytesIO(fs.cat("/score-test/out.parquet")))
    assert out.column("id").to_pylist() == frame["id"].tolist()
    direct = scorer.score(pa.Table.from_pandas(frame, preserve_index=False))[1]
    np.testing.assert_array_equal(out.column("value").to_numpy(), direct.column("value").to_numpy())


def test_progress_bar_on_a_terminal_and_lines_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = Terminal()
    meter = Progress(1_000, None, stream=bar)
    meter.every = 0
    meter.update(250, 1, None)
    meter.finish()
    assert "\r[score]  25% |######" in bar.getvalue() and "ETA" in bar.getvalue()
    assert "1 rejected" in bar.getvalue() and bar.getvalue().endswith("\n")
    lines = io.StringIO()
    meter = Progress(None, 4_000, every=0, stream=lines)
    meter.update(100, 0, 1_000)
    meter.finish()
    first, last = lines.getvalue().splitlines()
    assert first.startswith("[score] 100 rows,") and "rows/s" in first and "(25%)" in first and "ETA" in first
    assert "\r" not in lines.getvalue() and " in " in last


def _manifest() -> Manifest:
    """A mixed model: free numbers, a bounded one, an integer, a flag, categories, nullable."""
    features = [
        Feature("x", "float64"),
        Feature("bounded", "float64", min=0.0, max=1.0, policy="reject"),
        Feature("count", "int64"),
        Feature("flag", "bool"),
        Feature("colour", "string", categories=["red", "blue"]),
        Feature("maybe", "float64", nullable=True),
        Feature("note", "string", nullable=True),
    ]
    return Manifest(
        name="mixed", version="1", created_at="", task="regression", layout="columns",
        source=Source("test", "0", "test", "-", "-"), onnx=OnnxInfo("-", 0, {}, "-", 8),
        inputs=[TensorSpec(f.name, "BYTES" if f.dtype == "string" else "FP64", [-1, 1]) for f in features],
        outputs=[TensorSpec("y", "FP64", [-1, 1], "value")], features=features,
    )  # fmt: skip


def test_the_column_codec_rejects_exactly_the_rows_the_records_api_refuses() -> None:
    manifest = _manifest()
    good = {"x": 1.5, "bounded": 0.5, "count": 3, "flag": True, "colour": "red", "maybe": 2.0, "note": "hi"}
    rows = [
        good,
        {**good, "bounded": 1.5},
        {**good, "count": 2.5},
        {**good, "colour": "green"},
        {**good, "colour": None},
        {**good, "maybe": None, "note": None},
        {**good, "x": None},
        {**good, "flag": None},
        {**good, "x": -3e300, "bounded": 0.0},
    ]
    records = RecordCodec(manifest, 100)
    refused = []
    for i, row in enumerate(rows):
        try:
            records.to_feeds(*records.decode(msgspec.json.encode(row)))
        except GatewayError as exc:
            assert exc.status == 422, exc.message
            refused.append(i)
    types = {"x": pa.float64(), "bounded": pa.float64(), "count": pa.float64(), "flag": pa.bool_(),
             "colour": pa.string(), "maybe": pa.float64(), "note": pa.string()}  # fmt: skip
    batch = pa.Table.from_pylist(rows, schema=pa.schema(list(types.items())))
    checked = ColumnCodec(manifest).check(batch)
    assert checked.rejected.tolist() == refused == [1, 2, 3, 4, 6, 7]
    assert checked.reason[2] == "Invalid enum value 'green'; expected one of 'red', 'blue'"
    assert checked.good.tolist() == [0, 5, 8]
    assert np.isnan(checked.columns["maybe"][1]) and checked.columns["note"][1] == ""


PEAK_RSS = """
import sys
from gateway.cli import main
code = main(sys.argv[1:])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
status = open("/proc/self/status").read()
print("peak_rss_kib=" + status.split("VmHWM:")[1].split()[0])
sys.exit(code)
"""


@pytest.mark.slow
def test_two_million_parquet_rows_score_in_bounded_memory(demo_repo: Path, tmp_path: Path) -> None:
    """Peak RSS scoring 2M rows is about that of scoring 400k (both many chunks long): the
    table's decoded size (2M x 31 x 8 bytes = 474 MiB) never has to fit in memory."""
    name = "breast_cancer"
    sample = table(demo_repo, name, 4_096)
    sample["id"] = np.arange(len(sample))
    batch = pa.Table.from_pandas(sample, preserve_index=False)

    def write(path: Path, rows: int) -> None:
        with pq.ParquetWriter(path, batch.schema) as writer:
            for start in range(0, rows, len(sample)):
                ids = pa.array(np.arange(start, start + len(sample)))
                writer.write_table(batch.set_column(0, "id", ids), row_group_size=65_536)

    def peak_mib(path: Path) -> tuple[float, str]:
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, "score", name, str(path), f"{path}.out.parquet",
             "--repo", str(demo_repo), "--keep", "id", "--progress", "none"],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return int(done.stdout.rsplit("peak_rss_kib=", 1)[1]) / 1024, done.stdout

    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    write(big, 489 * 4096)  # 2,002,944 rows
    write(small, 100 * 4096)  # 6 chunks of 65,536 rows and a bit
    small_mib, _ = peak_mib(small)
    big_mib, output = peak_mib(big)
    assert "2,002,944 of 2,002,944 rows scored" in output
    assert pq.ParquetFile(f"{big}.out.parquet").metadata.num_rows == 2_002_944
    decoded_mib = 2_002_944 * 31 * 8 / 2**20
    # Measured 323 and 389 MiB: a few chunks in flight at the peak, more or fewer by timing;
    # holding the table would add 380 MiB and more.
    assert big_mib - small_mib < 0.25 * decoded_mib, (small_mib, big_mib, decoded_mib)


def test_gzipped_csv_and_a_prediction_name_clash(demo_repo: Path, tmp_path: Path) -> None:
    frame = table(demo_repo, "diabetes", 700)
    frame.to_csv(tmp_path / "in.csv.gz", index=False)  # gzip, from the name
    frame.to_csv(tmp_path / "in.csv", index=False)
    scorer = Scorer.from_repository(demo_repo, "diabetes")
    for name in ("in.csv.gz", "in.csv"):
        report = score_file(scorer, str(tmp_path / name), str(tmp_path / f"{name}.parquet"), keep=["id"],
                            chunk_rows=256, progress="none")  # fmt: skip
        assert (report.rows, report.rejected) == (700, 0)
    gz, plain = (pq.read_table(tmp_path / f"{n}.parquet") for n in ("in.csv.gz", "in.csv"))
    assert gz.equals(plain)
    frame.rename(columns={"id": "value"}).to_csv(tmp_path / "clash.csv", index=False)
    with pytest.raises(ScoreError, match="the predictions use that name"):
        score_file(scorer, str(tmp_path / "clash.csv"), str(tmp_path / "clash.parquet"), keep=["value"])
