"""onnx-gateway: serve verified ONNX artifacts over HTTP with micro-batching.

Importing this package never imports scikit-learn, torch or pickle.
"""

from gateway.artifacts.manifest import Feature, Manifest, TensorSpec
from gateway.artifacts.repository import IntegrityError, Repository, RepositoryError
from gateway.batching import BatchReport, MicroBatcher
from gateway.errors import GatewayError
from gateway.runtime import OrtRuntime, Runtime, choose_provider
from gateway.settings import Settings, SettingsError, build_settings

__version__ = "0.1.0"

__all__ = [
    "BatchReport",
    "Feature",
    "GatewayError",
    "IntegrityError",
    "Manifest",
    "MicroBatcher",
    "OrtRuntime",
    "Repository",
    "RepositoryError",
    "Runtime",
    "Settings",
    "SettingsError",
    "TensorSpec",
    "__version__",
    "build_settings",
    "choose_provider",
    "create_app",
]


def __getattr__(name: str) -> object:
    # create_app pulls in Starlette; keep `import gateway` light for the converters.
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    raise AttributeError(name)
