"""The scorer on a real Dask cluster (LocalCluster: worker processes bound to 127.0.0.1, no
dashboard) gives what `gateway score` gives on one machine, loading the model once per
worker process.

Covers `gateway/scoring/dask_engine.py`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pa = pytest.importorskip("pyarrow", reason="batch scoring needs the score extra (pyarrow)")
pq = pytest.importorskip("pyarrow.parquet")
dd = pytest.importorskip("dask.dataframe", reason="the Dask scorer's test needs dask[dataframe]")
distributed = pytest.importorskip("distributed", reason="the Dask scorer's test needs distributed")

from gateway.artifacts.repository import Repository  # noqa: E402
from gateway.scoring import Scorer, score_file  # noqa: E402
from gateway.scoring.dask_engine import loaded_models, score_dataframe  # noqa: E402


@pytest.mark.slow
def test_dask_partitions_score_as_the_single_machine_run(demo_repo: Path, tmp_path: Path) -> None:
    manifest = Repository(demo_repo).manifest("breast_cancer", "1")
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({f.name: rng.uniform(f.min, f.max, 6_000) for f in manifest.features})
    frame.insert(0, "id", np.arange(len(frame)))
    first = manifest.features[0].name
    frame.loc[[10, 4_321], first] = np.nan  # two rows the model refuses: null, not nullable
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source, row_group_size=1_000)

    report = score_file(
        Scorer.from_repository(demo_repo, "breast_cancer"), str(source), str(tmp_path / "one.parquet"),
        keep=["id"], chunk_rows=1_500, progress="none",
    )  # fmt: skip
    assert report.rejected == 2
    single = pq.read_table(tmp_path / "one.parquet").to_pandas()
    single_rejects = pd.read_csv(tmp_path / "one.rejects.csv")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed's own start-up notices
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, worker_dashboard_address=None,
        )  # fmt: skip
        client = distributed.Client(cluster)
        try:
            ddf = dd.read_parquet(str(source), split_row_groups=True)
            assert ddf.npartitions == 6
            # Written as a user would (Dask's Parquet writer plans its schema from the output's
            # empty frame), then read back.
            score_dataframe(ddf, demo_repo, "breast_cancer", keep=("id",)).to_parquet(str(tmp_path / "out"))
            per_worker = client.run(loaded_models)
            addresses = list(client.scheduler_info()["workers"])
        finally:
            client.close()
            cluster.close()

    result = pd.read_parquet(tmp_path / "out")
    assert all(a.startswith("tcp://127.0.0.1:") for a in addresses)
    assert sorted(per_worker.values()) in ([1, 1], [0, 1])  # each worker loaded it once at most
    result = result.sort_values("id").reset_index(drop=True)
    scored = result[result["reason"].isna()].reset_index(drop=True)
    rejected = result[result["reason"].notna()]
    assert scored["id"].tolist() == single["id"].tolist()
    assert scored["label"].astype("int64").tolist() == single["label"].tolist()
    for column in ("probability_0", "probability_1"):
        np.testing.assert_allclose(scored[column].astype(float), single[column], rtol=1e-12)
    assert rejected["id"].tolist() == single_rejects["id"].astype(int).tolist() == [10, 4_321]
    assert rejected["reason"].tolist() == single_rejects["reason"].tolist()
    assert rejected["probability_0"].isna().all()
