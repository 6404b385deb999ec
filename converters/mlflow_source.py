"""MLflow as a conversion source: `gateway convert models:/NAME/VERSION` (or
`models:/NAME@alias`, `runs:/RUN_ID/PATH`, a local MLflow model directory).

The model is fetched with the MLflow client from whatever tracking and registry server
`MLFLOW_TRACKING_URI` names, loaded with its own flavor's loader (MLflow may have stored
it as skops, cloudpickle or a booster file), and handed to `convert()` as a file that
`converters.loading` reads. The signature is cross-checked against the model's own
feature names, the input example becomes the parity sample when none is given, and the
URI, run id and registered version go into the manifest's source.

MLflow is the optional `mlflow` extra; nothing here imports it until a URI asks for it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters._registry import Framework
from converters.errors import ConversionError

if TYPE_CHECKING:
    import pandas as pd

SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
# MLflow flavor -> our framework; onnx first: a model logged as ONNX is taken as it is.
FLAVORS: dict[str, Framework] = {
    "onnx": "onnx",
    "sklearn": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "pytorch": "torch",
}
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))/?$")
_RUNS_URI = re.compile(r"runs:/(?P<run>[^/]+)(?:/.*)?$")


def is_mlflow_source(location: str) -> bool:
    """A URI MLflow resolves, or a directory holding an `MLmodel` file."""
    if location.startswith(SCHEMES):
        return True
    path = Path(location)
    return path.is_dir() and (path / "MLmodel").is_file()


@dataclass(frozen=True)
class MlflowModel:
    path: Path  # the model as a file `convert()` reads
    framework: Framework
    flavor: str
    sample: pd.DataFrame | None  # the logged input example
    signature: list[str] | None  # input column names, when the signature is a column schema
    origin: dict[str, str] = field(default_factory=dict)  # uri, run_id, model_version for Source


def _client_error() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def fetch_mlflow_model(uri: str, progress: Callable[[str], None] = lambda _: None) -> MlflowModel:
    """Download (or read) an MLflow model and make it ready for `convert()`."""
    # MLflow reports usage to its authors unless told not to; a build step should not.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mlflow  # noqa: F401
            from mlflow.models import Model
    except ImportError as exc:
        raise ConversionError(
            f"{uri}: reading MLflow models needs the mlflow extra ({exc.name}): "
            "pip install 'onnx-gateway[mlflow,convert,cpu]'"
        ) from exc
    work = Path(tempfile.mkdtemp(prefix="gateway-mlflow-"))
    atexit.register(shutil.rmtree, work, True)
    try:
        local = _download(uri, work, progress)
        mlmodel = Model.load(str(local))
        flavor = next((f for f in FLAVORS if f in mlmodel.flavors), None)
        if flavor is None:
            raise ConversionError(
                f"{uri}: MLflow flavors {sorted(mlmodel.flavors)}; this converter reads {', '.join(FLAVORS)}"
            )
        progress(f"MLflow model: flavor {flavor}, run {mlmodel.run_id}")
        sample = _input_example(mlmodel, local)
        signature = _signature(mlmodel)
        native = _load_native(flavor, local, mlmodel)
        _cross_check(uri, signature, sample, native)
        path = _materialise(flavor, native, work, sample)
        origin = {"uri": uri, **_registry_info(uri, mlmodel)}
    except _client_error() as exc:
        raise ConversionError(f"{uri}: {exc}") from exc
    return MlflowModel(path, FLAVORS[flavor], flavor, sample, signature, origin)


def _download(uri: str, work: Path, progress: Callable[[str], None]) -> Path:
    if not uri.startswith(SCHEMES):
        return Path(uri)
    import mlflow

    progress(f"downloading {uri} from {mlflow.get_tracking_uri()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(work / "mlflow")))
    if not (local / "MLmodel").is_file():
        raise ConversionError(f"{uri}: no MLmodel file there; point at the model's directory")
    return local


def _input_example(mlmodel: Any, local: Path) -> pd.DataFrame | None:
    import numpy as np
    import pandas as pd

    if mlmodel.saved_input_example_info is None:
        return None
    example = mlmodel.load_input_example(str(local))
    if isinstance(example, pd.DataFrame):
        return example
    if isinstance(example, np.ndarray):  # a tensor model's example: positional features
        matrix = np.atleast_2d(example)
        return pd.DataFrame(matrix, columns=[f"f{i}" for i in range(matrix.shape[1])])
    if isinstance(example, dict | list):
        return pd.DataFrame(example)
    return None


def _signature(mlmodel: Any) -> list[str] | None:
    schema = mlmodel.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return list(schema.input_names())


def _load_native(flavor: str, local: Path, mlmodel: Any) -> Any:
    """The model object, through the flavor's own loader (it knows skops, cloudpickle,
    booster files); an ONNX model is read straight from its file."""
    import importlib

    if flavor == "onnx":
        return local / mlmodel.flavors["onnx"]["data"]
    module = importlib.import_module(f"mlflow.{flavor}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flavor == "pytorch":
            return module.load_model(str(local), map_location="cpu")
        return module.load_model(str(local))


def _own_feature_names(native: Any) -> list[str] | None:
    for attribute in ("feature_names_in_", "feature_names"):
        names = getattr(native, attribute, None)
        if names is not None and not callable(names):
            return [str(n) for n in names]
    return None


def _cross_check(uri: str, signature: list[str] | None, sample: pd.DataFrame | None, native: Any) -> None:
    """The signature, the input example and the model must name the same inputs."""
    own = _own_feature_names(native)
    if signature is not None and own is not None and signature != own:
        missing, extra = sorted(set(own) - set(signature)), sorted(set(signature) - set(own))
        raise ConversionError(
            f"{uri}: the MLflow signature's inputs do not match the model's own features"
            + (f"; the model reads {missing} which the signature lacks" if missing else "")
            + (f"; the signature has {extra} which the model never saw" if extra else "")
            + ("; same names in another order" if not missing and not extra else "")
        )
    if signature is not None and sample is not None:
        absent = [c for c in signature if c not in sample.columns]
        if absent:
            raise ConversionError(f"{uri}: the input example lacks signature columns {absent}")


def _materialise(flavor: str, native: Any, work: Path, sample: pd.DataFrame | None) -> Path:
    """A file `converters.loading` opens: a plain pickle where the model's classes are
    importable, else cloudpickle's (MLflow may hold a class from the training notebook by
    value), which plain pickle loads back as long as cloudpickle is installed. A PyTorch
    model MLflow saved with torch.export comes back as a graph module no pickle takes: it
    is traced to TorchScript on the input example's width."""
    if flavor == "onnx":
        return Path(native)
    import pickle

    import cloudpickle  # type: ignore[import-untyped]

    path = work / ("model.pt" if flavor == "pytorch" else "model.pkl")
    failure: BaseException | None = None
    for module in (pickle, cloudpickle):
        try:
            if flavor == "pytorch":
                import torch

                torch.save(native, path, pickle_module=module)
            else:
                with path.open("wb") as fh:
                    module.dump(native, fh, protocol=pickle.HIGHEST_PROTOCOL)
            return path
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            failure = exc
    if flavor == "pytorch" and sample is not None:
        return _torchscript(native, sample.shape[1], path)
    raise ConversionError(f"the {flavor} model MLflow loaded cannot be saved for conversion: {failure}")


def _torchscript(module: Any, width: int, path: Path) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream; still exportable
        traced = torch.jit.trace(module, torch.zeros((2, width), dtype=torch.float32))
        torch.jit.save(traced, str(path))
    return path


def _registry_info(uri: str, mlmodel: Any) -> dict[str, str]:
    """Run id and registered version: from the registry for models:/NAME/VERSION and
    models:/NAME@alias, from the URI for runs:/, else from the MLmodel file."""
    info = {"run_id": mlmodel.run_id} if mlmodel.run_id else {}
    match = _MODELS_URI.match(uri)
    if match:
        from mlflow import MlflowClient

        client = MlflowClient()
        name, version, alias = match.group("name", "version", "alias")
        found = None
        if alias is not None:
            found = client.get_model_version_by_alias(name, alias)
        elif version is not None and version.isdigit():
            found = client.get_model_version(name, version)
        if found is not None:
            info["model_version"] = str(found.version)
            if found.run_id:
                info["run_id"] = found.run_id
    runs = _RUNS_URI.match(uri)
    if runs:
        info["run_id"] = runs.group("run")
    return info
