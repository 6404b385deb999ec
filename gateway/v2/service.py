"""The Open Inference Protocol (KServe V2), once, on plain values.

HTTP (gateway.http.endpoints) and gRPC (gateway.grpc.service) turn their bytes into these
values and the `GatewayError`s raised here into their own status: the model lookup and
its wording, validation, classification, metadata, configuration, statistics, the
repository extension, the admin token and request ids are the same over both, so a
difference between transports is a bug in an adapter, not a second implementation.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gateway import __version__
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    Unauthorized,
    Unprocessable,
    clip,
    public_reason,
)
from gateway.explain import cache as explain_cache
from gateway.explain import outputs as explain_outputs
from gateway.inference import Call, Decoded, InferenceCore, deadline_after
from gateway.lifecycle.registry import LOAD_ERRORS, LoadedModel, ModelRegistry
from gateway.settings import Settings
from gateway.types import Arrays
from gateway.v2 import decode, encode, messages, triton

SHARED_MEMORY = "shared memory is not supported by onnx-gateway; send tensors in the request (binary data)"

EXTENSIONS = (
    "binary_tensor_data", "classification", "model_configuration", "parameters", "schedule_policy",
    "statistics",
)  # fmt: skip


def _quoted(text: str) -> str:
    """A client's name inside quotes as Triton writes it, clipped by the one rule, control
    characters escaped."""
    text = clip(text)
    return "'" + (text if text.isprintable() else text.encode("unicode_escape").decode()) + "'"


def unknown_model(name: str, version: str | None) -> NotFound:
    """Triton's words, which its clients and tests match by prefix; never the names of the
    other models (a caller learns nothing it did not ask about)."""
    at = f" version {_quoted(version)[1:-1]}" if version else ""
    return NotFound(f"Request for unknown model: {_quoted(name)}{at} is not found")


_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def version_key(version: str) -> tuple[Any, ...]:
    """Integers numerically, then semver by its numbers (a pre-release before its release),
    then anything else by text: "2" before "10", "1.2.0-rc1" before "1.2.0"."""
    if version.isdigit():
        return (0, int(version))
    match = _SEMVER.match(version)
    if match:
        numbers = tuple(int(match.group(i)) for i in (1, 2, 3))
        pre = match.group(4)
        return (1, numbers, pre is None, pre or "")
    return (2, version)


def sorted_versions(versions: Sequence[str]) -> list[str]:
    return sorted(versions, key=version_key)


def authorize(
    settings: Settings, values: Sequence[str], where: str = "the metadata authorization",
    on_admin_port: bool = False,
) -> None:  # fmt: skip
    """Admin calls: exactly one `authorization` value, `Bearer <token>`, compared in
    constant time. Two values are refused: proxies disagree on which one wins. With
    --admin-port, only a call that arrived on that port may go on (gRPC never does)."""
    token = settings.admin_token
    if token is None:
        raise Forbidden(
            "the model repository extension is part of the admin API, which is off: set "
            "GATEWAY_ADMIN_TOKEN to turn it on (calls then need authorization: Bearer <token>)"
        )
    if settings.admin_port is not None and not on_admin_port:
        raise Forbidden(f"the admin API is served on --admin-port {settings.admin_port} only")
    if len(values) > 1:
        raise BadRequest(f"send one authorization value; {len(values)} were sent")
    scheme, _, given = (values[0] if values else "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized(f"admin calls need {where}: Bearer <token>")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Forbidden("invalid admin token")


class InferAnswer(NamedTuple):
    """What an inference answers, before a transport writes it."""

    model: LoadedModel
    request: messages.InferRequest
    outputs: list[messages.OutputTensor]


# What an adapter reads from its bytes once the model is known: the request and the
# binary tail (HTTP's binary extension, gRPC's raw_input_contents).
Reader = Callable[[LoadedModel], tuple[messages.InferRequest, bytes]]


class V2Service:
    """The protocol's operations; `core` is needed for inference only."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry, core: InferenceCore | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.core = core

    # -- the model a call names -------------------------------------------------------------

    def model(self, name: str, version: str | None) -> LoadedModel:
        try:
            return self.registry.get(name, version or None)
        except NotFound:
            raise unknown_model(name, version) from None

    def server_metadata(self) -> dict[str, Any]:
        # Triton's repository extension is the admin API's: listed only with its token.
        admin = ["model_repository"] if self.settings.admin_token is not None else []
        return {"name": "onnx-gateway", "version": __version__, "extensions": [*EXTENSIONS, *admin]}

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.model(name, version)
        metadata = encode.model_metadata(model.manifest, self.versions(model.name), model.runtime.provider)
        return metadata

    def versions(self, name: str) -> list[str]:
        return sorted_versions(self.registry.versions(name))

    def model_ready(self, name: str, version: str | None) -> LoadedModel | None:
        """The model when it is ready; None when it is there but not (loading, retiring)."""
        try:
            model = self.model(name, version)
        except NotFound:
            raise
        except GatewayError:
            return None
        return model if model.ready else None

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.model(name, version)
        batcher = model.batcher
        scheduling = triton.Scheduling(
            batcher.max_batch_rows, batcher.max_delay, batcher.max_queue_rows, self.settings.lanes,
            self.settings.timeout_ms, model.runtime.provider,
        )  # fmt: skip
        return triton.model_config(model.manifest, self.versions(model.name), scheduling)

    def statistics(self, name: str | None, version: str | None) -> list[LoadedModel]:
        """Every loaded model (no name), one model's versions, or the version named."""
        if not name:
            return self.registry.loaded()
        if version:
            return [self.model(name, version)]
        models = [m for m in self.registry.loaded() if m.name == name]
        if not models:
            raise unknown_model(name, None)
        return sorted(models, key=lambda m: version_key(m.version))

    # -- Triton's repository extension (behind the admin token) -----------------------------

    def repository_index(self, ready_only: bool) -> list[dict[str, str]]:
        repository, live = self.registry.repository, self.registry.live
        ready = {(m.name, m.version) for m in self.registry.loaded() if m.ready}
        entries = []
        for name in repository.models():
            for version in sorted_versions(repository.versions(name)):
                loaded = (name, version) in ready
                if ready_only and not loaded:
                    continue
                entry = {"name": name, "version": version, "state": "READY" if loaded else "UNAVAILABLE"}
                if name in self.registry.failures and live.get(name) != version:
                    entry["reason"] = self.registry.failures[name]
                entries.append(entry)
        return entries

    def shared_memory_status(self, region: str | None) -> list[dict[str, Any]]:
        """No region is ever registered: the status is empty, and a named region is unknown."""
        if region:
            raise BadRequest(f"Unable to find shared memory region: {_quoted(region)}; {SHARED_MEMORY}")
        return []

    def shared_memory_register(self, region: str) -> None:
        raise BadRequest(f"cannot register shared memory region {_quoted(region)}: {SHARED_MEMORY}")

    def shared_memory_unregister(self, region: str | None) -> None:
        """Unregistering succeeds: whatever was named, nothing of it is registered afterwards."""

    async def repository_load(self, name: str, source: str) -> None:
        if name not in self.registry.repository.models():
            raise unknown_model(name, None)
        await self.switch(name, self.registry.repository.live_version(name), source)

    async def switch(
        self, name: str, version: str, source: str, persist: Callable[[], object] | None = None
    ) -> tuple[str, str | None]:
        """Make `version` live (the live one keeps serving if it cannot be): the repository
        extension's load and the admin API's promote, rollback and load alike."""
        try:
            return await self.registry.switch(name, version, persist=persist, source=source)
        except LOAD_ERRORS as exc:
            raise Unprocessable(
                f"{name}:{version} was not made live: {public_reason(exc)}; "
                f"{self.registry.live.get(name)} keeps serving"
            ) from None

    async def repository_unload(self, name: str) -> None:
        for model in [m for m in self.registry.loaded() if m.name == name]:
            await self.registry.unload(model.name, model.version)

    # -- inference --------------------------------------------------------------------------

    def resolve(self, call: Call, name: str, version: str | None) -> LoadedModel:
        assert self.core is not None  # a service built for metadata only never infers
        try:
            return self.core.resolve(call, name, version or None)
        except NotFound:
            raise unknown_model(name, version) from None

    def decode(
        self, model: LoadedModel, request: messages.InferRequest, tail: bytes,
        timeout_ms: bytes | None = None, remaining: float | None = None,
    ) -> Decoded:  # fmt: skip
        """Every check before any model time: sizes, data, classification's cost, deadline."""
        feeds, rows = decode.decode_infer(model.manifest, request, tail, self.settings.request_rows_limit)
        if request.outputs:
            encode.class_counts(model.manifest, request, rows)
        if model.records is not None:
            feeds = model.records.check_tensors(feeds)
        deadline = deadline_after(self.settings, (request.parameters or {}).get("timeout"), timeout_ms)
        if remaining is not None:  # the client's own deadline (gRPC's) is the request's too
            deadline = min(deadline, time.monotonic() + remaining)
        return Decoded(feeds, rows, deadline, request)

    async def infer(
        self, call: Call, name: str, version: str | None, read: Reader, raw: bytes,
        timeout_ms: bytes | None = None, remaining: float | None = None,
    ) -> InferAnswer:  # fmt: skip
        """Resolve, read, decode, run, classify: no await before the run, so a version
        switch cannot retire the model in between."""
        assert self.core is not None
        model, decoded, explaining = self.prepare(call, name, version, read, timeout_ms, remaining)
        # Zero-element tensors run too, as Triton passes them on: only the graph knows the
        # shape of what it answers to nothing (an output may keep a dimension of its own).
        arrays = await self.core.run(call, model, decoded)
        answer = self.conclude(call, model, decoded, arrays, raw)
        if explaining is not None:
            await self.explain(answer, decoded, arrays, explaining)
        return answer

    def prepare(
        self, call: Call, name: str, version: str | None, read: Reader,
        timeout_ms: bytes | None = None, remaining: float | None = None,
    ) -> tuple[LoadedModel, Decoded, explain_outputs.Asked | None]:  # fmt: skip
        """`infer` up to the run: the model that answers, the request decoded, and the
        explanations it asks for (refused here, before the run, when it cannot have them).
        A door that awaits the run itself calls this, `conclude` and, when asked, `explain`
        (one coroutine fewer a request)."""
        model = self.resolve(call, name, version)
        request, tail = read(model)
        decoded = self.decode(model, request, tail, timeout_ms, remaining)
        parameters = request.parameters
        explaining = explain_outputs.asked(model, parameters, decoded.rows) if parameters else None
        return model, decoded, explaining

    def conclude(
        self, call: Call, model: LoadedModel, decoded: Decoded, arrays: Arrays, raw: bytes
    ) -> InferAnswer:
        """`infer` after the run: the requested outputs, classified; the shadow's copy."""
        assert self.core is not None
        request: messages.InferRequest = decoded.request
        answer = InferAnswer(model, request, encode.infer_outputs(model.manifest, request, arrays))
        if decoded.rows:
            self.core.record(call, model, decoded, arrays, raw)
        return answer

    async def explain(
        self, answer: InferAnswer, decoded: Decoded, arrays: Arrays, explaining: explain_outputs.Asked
    ) -> None:
        """`"explain": true`: the attribution's outputs beside the answer's, after the batch."""
        explainers = explain_cache.shared(self.registry.repository)
        answer.outputs.extend(
            await explain_outputs.tensors(explainers, answer.model, decoded.feeds, arrays, explaining)
        )
