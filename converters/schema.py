"""Infer the input schema and drift reference from the model and its sample rows.

pandas 3 reads text columns as the `str` dtype, not `object`: we ask pandas whether a
column is numeric instead of comparing dtypes, so categories are never taken for numbers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from converters.errors import ConversionError
from gateway.artifacts.manifest import Feature, FeatureDType, FeatureReference, Reference

if TYPE_CHECKING:
    import pandas as pd

QUANTILE_BINS = 10


def is_text_column(column: pd.Series) -> bool:
    import pandas as pd

    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def feature_names(
    model_names: Sequence[str] | None, n_features: int | None, sample: pd.DataFrame | None
) -> list[str]:
    if model_names is not None:
        return [str(n) for n in model_names]
    if sample is not None and not _is_positional(sample):
        return [str(c) for c in sample.columns]
    if n_features is None:
        if sample is None:
            raise ConversionError("cannot tell how many features the model takes: pass --sample")
        n_features = sample.shape[1]
    return [f"f{i}" for i in range(n_features)]


def _is_positional(sample: pd.DataFrame) -> bool:
    return [str(c) for c in sample.columns] == [str(i) for i in range(sample.shape[1])]


def align_sample(sample: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The sample's columns in the model's order; a mismatch is the user's to fix."""
    if _is_positional(sample) and sample.shape[1] == len(names):
        sample = sample.set_axis(names, axis=1)
    columns = [str(c) for c in sample.columns]
    missing = [n for n in names if n not in columns]
    extra = [c for c in columns if c not in names]
    index = [c for c in extra if c.startswith("Unnamed: ")]
    if index and not missing and len(index) == len(extra):
        raise ConversionError(
            f"the sample's column {index[0]!r} is the row index pandas wrote with to_csv, not a "
            "feature: save the frame with to_csv(..., index=False), or drop the column"
        )
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {missing[:10]}")
        if extra:
            detail.append(f"not model features {extra[:10]} (drop the target column?)")
        raise ConversionError(
            f"the sample's columns do not match the model's {len(names)} features: " + "; ".join(detail)
        )
    return sample.set_axis(columns, axis=1)[names]


TEXT_MAX_LENGTH = 10_000


def _categories(column: pd.Series | None) -> list[str] | None:
    """A pandas `category` column's own categories, when they are labels, not numbers."""
    import pandas as pd

    if column is None or not isinstance(column.dtype, pd.CategoricalDtype):
        return None
    cats = column.dtype.categories
    if pd.api.types.is_numeric_dtype(cats) or pd.api.types.is_bool_dtype(cats):
        return None
    return [str(c) for c in cats]


def _string_feature(
    name: str, column: pd.Series | None, encoded: Encoded | None, free_text: bool, imputed: bool
) -> Feature:
    nullable = imputed or bool(column is not None and column.isna().any())
    if free_text:
        longest = int(column.dropna().astype(str).str.len().max() or 0) if column is not None else 0
        return Feature(
            name=name, dtype="string", nullable=nullable, max_length=max(TEXT_MAX_LENGTH, 2 * longest)
        )
    categories = (encoded.categories if encoded is not None else None) or _categories(column)
    if categories is None and column is not None:
        categories = sorted({str(v) for v in column.dropna()})
    return Feature(
        name=name,
        dtype="string",
        categories=categories,
        nullable=nullable,
        open_categories=bool(encoded is not None and encoded.open),
    )


def _numeric_dtype(column: pd.Series | None, encoded: Encoded | None) -> FeatureDType:
    """bool and int columns keep their type in the API (JSON true, 3), null included where
    the model imputes (the tensor is a float either way, NaN for null); others are floats.
    Without a sample, an encoder that learnt whole numbers says the column holds integers."""
    import pandas as pd

    if column is None:
        return "int64" if encoded is not None and encoded.integers else "float32"
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int64"
    return "float32"


@dataclass(frozen=True)
class Encoded:
    """What a fitted encoder says about the column it reads."""

    categories: list[str] | None  # text categories; None for numeric ones
    open: bool  # unknown values are ignored (handle_unknown="ignore"/"infrequent_if_exist")
    integers: bool = False  # numeric categories, all whole numbers
    low: float | None = None  # the numeric categories' span
    high: float | None = None


def infer_features(
    names: list[str],
    sample: pd.DataFrame | None,
    encoded: Mapping[str, Encoded],
    handles_missing: Collection[str],
    free_text: Collection[str] = (),
) -> list[Feature]:
    """Features with dtype, range and categories; `handles_missing` names the columns the
    model fills in itself, which may be null in a request; `free_text` those a text
    vectorizer reads, which take any string up to a length. The pipeline decides what it
    can (categories, nullability); the sample adds dtypes and ranges."""
    features = []
    for name in names:
        column = sample[name] if sample is not None else None
        enc = encoded.get(name)
        text = enc is not None and enc.categories is not None
        if (
            name in free_text
            or text
            or _categories(column) is not None
            or (column is not None and is_text_column(column))
        ):
            features.append(_string_feature(name, column, enc, name in free_text, name in handles_missing))
            continue
        values = column.to_numpy(dtype=np.float64, na_value=np.nan) if column is not None else None
        finite = values[np.isfinite(values)] if values is not None else np.empty(0)
        nullable = name in handles_missing or bool(values is not None and np.isnan(values).any())
        low = float(finite.min()) if finite.size else enc.low if enc is not None else None
        high = float(finite.max()) if finite.size else enc.high if enc is not None else None
        features.append(
            Feature(name=name, dtype=_numeric_dtype(column, enc), min=low, max=high, nullable=nullable)
        )
    return features


def ignore_unread(features: list[Feature], read: Collection[str]) -> list[Feature]:
    """Features the graph never reads become ignored: any value, or none, is accepted."""
    return [f if f.name in read else Feature(name=f.name, dtype=f.dtype, ignored=True) for f in features]


def synthesise(features: list[Feature], rows: int = 256, seed: int = 0) -> pd.DataFrame:
    """Rows drawn from the schema, for the parity check when no sample is given."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    for f in features:
        if f.dtype == "string":
            cats = f.categories or ["a"]
            data[f.name] = pd.Series([cats[i % len(cats)] for i in range(rows)], dtype=object)
        elif f.dtype == "int64":
            low, high = int(f.min if f.min is not None else 0), int(f.max if f.max is not None else 9)
            data[f.name] = rng.integers(low, high + 1, rows)
        elif f.min is not None and f.max is not None:
            data[f.name] = rng.uniform(f.min, f.max, rows)
        else:
            data[f.name] = rng.normal(0.0, 1.0, rows)
    return pd.DataFrame(data)


def _numeric_reference(values: np.ndarray) -> FeatureReference | None:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None
    qs = np.quantile(values, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1])
    edges = np.unique(qs)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)
    return FeatureReference(
        edges=[float(e) for e in edges], fractions=[float(c) for c in counts / values.size]
    )


def is_nan(value: object) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _categorical_reference(values: Sequence[object]) -> FeatureReference | None:
    labels = [str(v) for v in values if v is not None and not is_nan(v)]
    if not labels:
        return None
    cats, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return FeatureReference(
        categories=[str(c) for c in cats], fractions=[float(c) for c in counts / len(labels)]
    )


def reference_stats(
    features: list[Feature],
    sample: pd.DataFrame,
    prediction: np.ndarray | None,
    categorical_prediction: bool,
) -> Reference:
    refs: dict[str, FeatureReference] = {}
    for f in features:
        if f.max_length is not None or f.ignored:  # free text has no distribution to compare
            continue
        column = sample[f.name]
        ref = (
            _categorical_reference(column.tolist())
            if f.dtype == "string"
            else _numeric_reference(column.to_numpy(dtype=np.float64, na_value=np.nan))
        )
        if ref is not None:
            refs[f.name] = ref
    pred_ref = None
    if prediction is not None:
        pred_ref = (
            _categorical_reference(prediction.ravel().tolist())
            if categorical_prediction
            else _numeric_reference(np.asarray(prediction, dtype=np.float64).ravel())
        )
    return Reference(rows=len(sample), features=refs, prediction=pred_ref)
