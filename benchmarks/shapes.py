"""Batching by shape: rows/s of the batcher in-process on a model with a dynamic sequence
axis, when every request has one sequence length (uniform), when three lengths of the same
mean are in flight at once (mixed, each batched with its own kind), and the same mix with
each request run alone (one by one: what a batch that cannot be joined used to become)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gateway.batching import MicroBatcher
from gateway.runtime import OrtRuntime

WIDTH = 64
CLIENTS = 64


def sequence_model() -> bytes:
    """tokens [N, S, 64] -> relu(tokens @ W) [N, S, 64]: a token-wise layer, any S."""
    weights = np.random.default_rng(0).normal(size=(WIDTH, WIDTH)).astype(np.float32) / 8
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["tokens", "w"], ["h"]), helper.make_node("Relu", ["h"], ["encoded"])],
        "sequence",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", "S", WIDTH])],
        [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["N", "S", WIDTH])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


async def _drive(batcher: MicroBatcher, lengths: list[int], seconds: float) -> float:
    """CLIENTS closed-loop clients, each cycling through `lengths`: rows/s answered."""
    rng = np.random.default_rng(1)
    feeds = {n: {"tokens": rng.normal(size=(1, n, WIDTH)).astype(np.float32)} for n in set(lengths)}
    rows = 0
    stop = time.monotonic() + seconds

    async def client(offset: int) -> None:
        nonlocal rows
        i = offset
        while time.monotonic() < stop:
            await batcher.submit(feeds[lengths[i % len(lengths)]], 1, time.monotonic() + 30)
            rows += 1
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(client(c) for c in range(CLIENTS)))
    return rows / (time.monotonic() - started)


async def _case(model: bytes, lengths: list[int], max_batch_rows: int, seconds: float) -> float:
    batcher = MicroBatcher(OrtRuntime(model, provider="cpu", threads=1), max_batch_rows=max_batch_rows)
    batcher.start()
    try:
        await _drive(batcher, lengths, 0.3)  # warm: allocations, kernel choices
        return await _drive(batcher, lengths, seconds)
    finally:
        await batcher.close()


def run(quick: bool) -> dict[str, Any]:
    seconds = 2.0 if quick else 8.0
    model = sequence_model()
    cases = {
        "uniform (S=32)": ([32], 64),
        "mixed (S=16/32/48), batched by kind": ([16, 32, 48], 64),
        "mixed (S=16/32/48), one by one": ([16, 32, 48], 1),
    }
    return {
        name: asyncio.run(_case(model, lengths, rows, seconds)) for name, (lengths, rows) in cases.items()
    }


def markdown(results: dict[str, Any]) -> str:
    uniform = results["uniform (S=32)"]
    lines = [f"| requests ({CLIENTS} clients, 1 row each) | rows/s | vs uniform |", "|---|---:|---:|"]
    lines += [f"| {name} | {value:,.0f} | {value / uniform:.2f} |" for name, value in results.items()]
    return "\n".join(lines)
