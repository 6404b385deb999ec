"""Framework name to converter, as import strings, so an optional framework is only
imported when a model of that framework is converted (uvicorn's pattern)."""

from __future__ import annotations

import importlib
from typing import Literal

from converters.errors import ConversionError
from converters.types import FrameworkConverter

Framework = Literal["sklearn", "xgboost", "lightgbm", "catboost", "torch", "onnx"]
FRAMEWORKS: tuple[Framework, ...] = ("sklearn", "xgboost", "lightgbm", "catboost", "torch", "onnx")

CONVERTERS: dict[Framework, str] = {
    "sklearn": "converters.sklearn:CONVERTER",
    "xgboost": "converters.xgboost:CONVERTER",
    "lightgbm": "converters.lightgbm:CONVERTER",
    "catboost": "converters.catboost:CONVERTER",
    "torch": "converters.torch:CONVERTER",
    "onnx": "converters.onnx:CONVERTER",
}

# What each framework needs installed, for the error that says how to get it.
_INSTALL_HINT: dict[Framework, str] = {
    "sklearn": "pip install 'onnx-gateway[convert,cpu]'",
    "xgboost": "pip install 'onnx-gateway[convert,cpu]' xgboost",
    "lightgbm": "pip install 'onnx-gateway[convert,cpu]' lightgbm",
    "catboost": "pip install 'onnx-gateway[convert,cpu]'",
    "torch": "pip install 'onnx-gateway[convert,cpu]' torch onnxscript",
    "onnx": "pip install 'onnx-gateway[convert,cpu]'",
}


def get_converter(framework: Framework) -> FrameworkConverter:
    module_name, attr = CONVERTERS[framework].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConversionError(
            f"converting a {framework} model needs {exc.name or 'a missing package'}: "
            f"{_INSTALL_HINT[framework]}"
        ) from exc
    converter: FrameworkConverter = getattr(module, attr)
    return converter
