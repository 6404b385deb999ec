"""Explainers built on first use (`gateway/explain/cache.py`): a build that fails on an
unreadable artifact answers 503 and is not remembered, so the next request tries again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.artifacts.repository import IntegrityError
from gateway.errors import Unavailable
from gateway.explain.cache import Explainers


class FlakyRepository:
    def __init__(self) -> None:
        self.reads = 0

    def load_verified(self, name: str, version: str) -> tuple[object, bytes]:
        self.reads += 1
        raise IntegrityError(f"{name}:{version}: sha256 mismatch in /abs/secret/model.onnx")


@pytest.mark.asyncio
async def test_a_failed_build_is_a_503_without_paths_and_is_tried_again():
    repository = FlakyRepository()
    explainers = Explainers(repository)
    model = SimpleNamespace(name="m", version="1", manifest=SimpleNamespace(onnx=SimpleNamespace(sha256="ab")))
    for attempt in (1, 2):
        with pytest.raises(Unavailable) as refused:
            await explainers.get(model)
        assert "/abs/secret" not in refused.value.message
        assert repository.reads == attempt  # read again: the failure was not cached
