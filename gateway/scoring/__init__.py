"""Offline batch scoring (`gateway score`): the served model over a table of any size.

Needs pyarrow (`pip install 'onnx-gateway[score]'`); the server never imports this package.
"""

from gateway.scoring.columns import Checked, ColumnCodec, SchemaMismatch
from gateway.scoring.scorer import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_CHUNK_ROWS,
    ScoreError,
    Scorer,
    ScoreReport,
    default_rejects_path,
    score_file,
)

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_CHUNK_ROWS",
    "Checked",
    "ColumnCodec",
    "SchemaMismatch",
    "ScoreError",
    "ScoreReport",
    "Scorer",
    "default_rejects_path",
    "score_file",
]
