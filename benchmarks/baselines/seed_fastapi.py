"""The seed checklist's recipe, as teams write it by hand: FastAPI, a pydantic model per
request, the pickled scikit-learn model, one predict_proba per request.

    SEED_MODEL=forest.joblib uvicorn benchmarks.baselines.seed_fastapi:app
"""

from __future__ import annotations

import os

import joblib
import pandas as pd
from fastapi import FastAPI
from pydantic import create_model

model = joblib.load(os.environ["SEED_MODEL"])  # the pickle the gateway never needs
FEATURES = [str(f) for f in model.feature_names_in_]
Record = create_model("Record", **{name: (float, ...) for name in FEATURES})  # type: ignore[call-overload]

app = FastAPI()


@app.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}


@app.post("/predict")
def predict(record: Record) -> dict[str, object]:  # type: ignore[valid-type]
    frame = pd.DataFrame([record.model_dump()], columns=FEATURES)  # type: ignore[attr-defined]
    proba = model.predict_proba(frame)[0]
    return {"label": int(proba.argmax()), "probabilities": proba.tolist()}
