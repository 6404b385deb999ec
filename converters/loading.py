"""Open a model file and say which framework made it, with errors a data scientist can act on.

Unpickling happens here, at build time only: the serving side never sees a pickle.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converters._registry import FRAMEWORKS, Framework
from converters.errors import ConversionError
from gateway.errors import first_line

_PICKLE_SUFFIXES = {".joblib", ".pkl", ".pickle", ".sav"}
_TORCH_SUFFIXES = {".pt", ".pth"}
_XGBOOST_SUFFIXES = {".ubj", ".json"}
_LIGHTGBM_SUFFIXES = {".txt", ".lgb"}
_CATBOOST_SUFFIXES = {".cbm", ".bin"}
_ROOT_MODULES: dict[str, Framework] = {
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "catboost": "catboost",
    "torch": "torch",
    "sklearn": "sklearn",
    "onnx": "onnx",
}


def detect_framework(model: Any) -> Framework:
    """The framework whose package defines the model's class.

    An XGBoost or LightGBM estimator subclasses scikit-learn's base classes, so the
    first known package in the MRO (the most specific class) decides.
    """
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root in _ROOT_MODULES:
            return _ROOT_MODULES[root]
    raise ConversionError(
        f"{type(model).__module__}.{type(model).__qualname__} is not a model this "
        f"converter knows; supported frameworks: {', '.join(FRAMEWORKS)}"
    )


def load_model(
    path: Path, framework: Framework | None = None, trust: Sequence[str] = ()
) -> tuple[Any, Framework]:
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".skops":
        model = _load_skops(path, trust)
        return model, detect_framework(model)
    if framework == "onnx" or (framework is None and suffix == ".onnx"):
        return _load_onnx(path), "onnx"
    if framework == "torch" or (framework is None and suffix in _TORCH_SUFFIXES):
        return _load_torch(path), "torch"
    if framework == "xgboost" and suffix in _XGBOOST_SUFFIXES:
        return _load_xgboost_booster(path), "xgboost"
    if framework == "lightgbm" and suffix in _LIGHTGBM_SUFFIXES:
        return _load_lightgbm_booster(path), "lightgbm"
    if (framework is None and suffix == ".cbm") or (framework == "catboost" and suffix in _CATBOOST_SUFFIXES):
        return _load_catboost(path), "catboost"
    if framework is None and suffix in _XGBOOST_SUFFIXES | _LIGHTGBM_SUFFIXES:
        raise ConversionError(
            f"{path}: a {suffix} file may be an XGBoost or a LightGBM model; "
            "say which with --framework xgboost|lightgbm"
        )
    model = _unpickle(path)
    inner = getattr(model, "best_estimator_", None)
    if inner is not None and detect_framework(model) == "sklearn" and detect_framework(inner) != "sklearn":
        model = inner  # a scikit-learn search over an XGBoost/LightGBM model: convert the model
    detected = detect_framework(model)
    if framework is not None and framework != detected:
        raise ConversionError(f"{path}: --framework {framework}, but the file holds a {detected} model")
    return model, detected


_MODULE_OF = re.compile(r"on <module '([^']+)'")


def _unpickle(path: Path) -> Any:
    """joblib.load, with scikit-learn's version warnings turned into one refusal: a pickle
    only loads faithfully in the scikit-learn that wrote it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = _joblib_load(path, caught)
        finally:
            others = [w for w in caught if _versions(w) is None]
    for w in others:  # not ours to swallow
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    found = [v for v in map(_versions, caught) if v is not None]
    if found:
        raise ConversionError(_version_advice(path, found[0]))
    return model


def _versions(w: warnings.WarningMessage) -> tuple[str, str] | None:
    """(pickled, installed) scikit-learn versions from an InconsistentVersionWarning."""
    original = getattr(w.message, "original_sklearn_version", None)
    current = getattr(w.message, "current_sklearn_version", None)
    return (str(original), str(current)) if original is not None and current is not None else None


def _version_advice(path: Path, versions: tuple[str | None, str]) -> str:
    pickled, installed = versions
    return (
        f"{path}: pickled with scikit-learn {pickled or 'of another version'}, and this environment "
        f"has scikit-learn {installed}; a scikit-learn pickle only loads faithfully in the version "
        "that wrote it. Convert where the model was trained (pip install 'onnx-gateway[convert]' "
        "in the training environment, then run gateway convert there), or refit the model with "
        f"scikit-learn {installed}"
    )


def _installed_sklearn() -> str:
    try:
        from importlib.metadata import version

        return version("scikit-learn")
    except Exception:
        return "(not installed)"


def _from_sklearn(module: str | None) -> bool:
    return module is not None and module.split(".")[0] == "sklearn"


def _joblib_load(path: Path, caught: list[warnings.WarningMessage]) -> Any:
    import joblib

    def mismatch() -> ConversionError:
        # The warnings emitted before the failure carry the pickle's version, if any came.
        known = next((v for v in map(_versions, caught) if v is not None), None)
        return ConversionError(_version_advice(path, known or (None, _installed_sklearn())))

    try:
        return joblib.load(path)
    except ModuleNotFoundError as exc:
        if _from_sklearn(exc.name):  # a private module scikit-learn has since moved
            raise mismatch() from exc
        raise ConversionError(
            f"{path}: the pickle needs the module {exc.name!r}, which is not installed here; "
            "install the package that provides it (the same version the model was trained "
            "with) and convert again"
        ) from exc
    except AttributeError as exc:
        # pickle's own wording: "Can't get attribute 'X' on <module 'm' ...>"
        module = _MODULE_OF.search(str(exc))
        if _from_sklearn(module.group(1) if module else None):  # a class another version has
            raise mismatch() from exc
        raise ConversionError(
            f"{path}: the pickle needs a class that cannot be imported ({exc}). A class "
            "defined in a notebook lives in __main__ and is lost with it: move it into a "
            "module on PYTHONPATH, import it from there, retrain or re-pickle, then convert"
        ) from exc
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConversionError(
            f"{path}: not a model file this converter can read (expected a joblib or pickle "
            f"file, an .onnx file, a PyTorch .pt file, or an XGBoost/LightGBM model file): {exc}"
        ) from exc


LISTED_TYPES = 10


def _load_skops(path: Path, trust: Sequence[str]) -> Any:
    """A .skops file is read through skops' trusted types: nothing in it is built unless
    skops trusts its type by default or the user names it (`--trust TYPE`), so unlike a
    pickle it never runs arbitrary code."""
    try:
        import skops.io as sio  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConversionError(
            f"{path}: reading a .skops file needs skops: pip install 'onnx-gateway[convert]'"
        ) from exc
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises several types for a file it cannot parse
        raise ConversionError(f"{path}: not a skops file skops can read: {first_line(exc)}") from exc
    refused = [t for t in untrusted if t not in set(trust)]
    if refused:
        more = f" and {len(refused) - LISTED_TYPES} more" if len(refused) > LISTED_TYPES else ""
        raise ConversionError(
            f"{path}: the file holds types skops does not trust by default: "
            f"{', '.join(refused[:LISTED_TYPES])}{more}; nothing was loaded. If you trust them, "
            "pass --trust TYPE for each"
        )
    try:
        return sio.load(path, trusted=list(untrusted))
    except Exception as exc:
        raise ConversionError(f"{path}: skops cannot load the file: {first_line(exc)}") from exc


def _load_onnx(path: Path) -> Any:
    import onnx

    from converters.onnx import check_runs

    try:
        model = onnx.load_model(str(path))
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise ConversionError(f"{path}: not a valid ONNX model: {exc}") from exc
    check_runs(model, path)
    return model


def _load_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ConversionError("converting a PyTorch model needs torch installed") from exc
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream, but users still hold scripted files.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError):
        pass
    try:
        # A whole pickled nn.Module needs weights_only=False: this runs the pickle, which
        # is acceptable at build time on the data scientist's own file, never at serving.
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConversionError(f"{path}: not a PyTorch module torch can load: {exc}") from exc


def _load_xgboost_booster(path: Path) -> Any:
    import xgboost

    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as exc:
        raise ConversionError(f"{path}: not an XGBoost model: {exc}") from exc
    return booster


def _load_lightgbm_booster(path: Path) -> Any:
    import lightgbm

    try:
        return lightgbm.Booster(model_file=str(path))
    except lightgbm.basic.LightGBMError as exc:
        raise ConversionError(f"{path}: not a LightGBM model: {exc}") from exc


def _load_catboost(path: Path) -> Any:
    try:
        from converters.catboost import load_cbm
    except ImportError as exc:
        raise ConversionError(
            f"{path}: loading a CatBoost model needs catboost: pip install 'onnx-gateway[convert,cpu]'"
        ) from exc
    import catboost

    try:
        return load_cbm(path)
    except catboost.CatBoostError as exc:
        raise ConversionError(f"{path}: not a CatBoost model: {first_line(exc)}") from exc
