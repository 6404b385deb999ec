"""What every framework converter hands back to the shared conversion steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gateway.artifacts.manifest import Feature, Layout, Task

if TYPE_CHECKING:
    import onnx
    import pandas as pd


@dataclass(frozen=True)
class Predictions:
    """Outputs by role; a classifier fills label and probabilities, a regressor value."""

    label: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    value: np.ndarray | None = None


@dataclass(frozen=True)
class Converted:
    onnx_model: onnx.ModelProto
    layout: Layout
    task: Task
    features: list[Feature]
    estimator: str
    framework_version: str
    classes: list[bool | int | str] | None
    # The original model's prediction on a sample table, for the parity check.
    predict: Callable[[pd.DataFrame], Predictions]
    # ONNX output name for each role, in output order.
    roles: dict[str, str] = field(default_factory=dict)


class FrameworkConverter(Protocol):
    framework: str

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted: ...
