"""Stand-in for your training or fetch step: trains a small regressor on the diabetes data
that ships with scikit-learn and writes what the pipeline's next steps read:

    OUT/model.joblib   the trained model (what `gateway convert` converts)
    OUT/sample.csv     rows for the parity gate and the schema
    OUT/smoke.json     one request body for the smoke test after the rollout

Usage: python deploy/ci/train_example.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_diabetes
from sklearn.ensemble import HistGradientBoostingRegressor


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    model = HistGradientBoostingRegressor(max_iter=50, random_state=0).fit(x, y)
    joblib.dump(model, out / "model.joblib")
    x.head(200).to_csv(out / "sample.csv", index=False)
    (out / "smoke.json").write_text(json.dumps(x.iloc[0].to_dict()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
