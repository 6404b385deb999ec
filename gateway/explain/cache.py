"""One explainer per loaded model version, built on its first explain request.

Building needs the verified model bytes (read again from the repository: the sha256 is
checked as at load) and a second ONNX Runtime session, so it happens in a worker thread
and only for models someone asks to explain; model loading is left as it is.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from gateway.errors import GatewayError, Unavailable, Unprocessable, public_reason
from gateway.explain.explainer import Explainer, NotExplainable, background_feeds
from gateway.lifecycle.loading import LOAD_ERRORS

# Versions whose explainers are kept; the oldest is dropped beyond this.
KEEP = 16


class Explainers:
    def __init__(self, repository: Any) -> None:
        self._repository = repository
        self._built: dict[tuple[str, str, str], asyncio.Future[Explainer]] = {}

    async def get(self, model: Any) -> Explainer:
        key = (model.name, model.version, model.manifest.onnx.sha256)
        future = self._built.get(key)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(self._build, model))
            self._built[key] = future
            while len(self._built) > KEEP:
                del self._built[next(iter(self._built))]
        try:
            return await asyncio.shield(future)
        except NotExplainable as exc:
            raise Unprocessable(str(exc)) from None
        except GatewayError:
            self._built.pop(key, None)  # a failed read may succeed next time
            raise
        except LOAD_ERRORS as exc:  # the artifact unreadable now, or ORT refusing a session
            self._built.pop(key, None)  # not cached: the next request tries again
            raise Unavailable(
                f"model {model.name}:{model.version} cannot be explained now: {public_reason(exc)}"
            ) from None

    def _build(self, model: Any) -> Explainer:
        manifest, data = self._repository.load_verified(model.name, model.version)
        background = background_feeds(manifest, model.records) if model.records is not None else None
        return Explainer(manifest, data, background)


_SHARED: weakref.WeakKeyDictionary[Any, Explainers] = weakref.WeakKeyDictionary()


def shared(repository: Any) -> Explainers:
    """The one cache of a repository's explainers: `/explain` and V2 over HTTP and gRPC
    build a model version's explainer (a second session, the model read again) once."""
    explainers = _SHARED.get(repository)
    if explainers is None:
        explainers = _SHARED[repository] = Explainers(repository)
    return explainers
