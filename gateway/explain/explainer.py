"""Per-row explanations of a converted model in its user's columns.

Built once per model version from its manifest's `explain` section and the verified
model bytes. Tree and linear models are explained exactly on the estimator's input (a
value inside the ONNX graph, exposed as an extra output of a second session), then each
encoded column's contribution is summed onto the user column it came from: SHAP values
are additive in features, so the sum is exact. Other models get a permutation-sampling
Shapley estimate over the user's own columns against rows of the training sample.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from gateway.artifacts.manifest import Explain, Manifest
from gateway.explain.graph import with_outputs
from gateway.explain.treeshap import TreeShap

Arrays = dict[str, np.ndarray]
DEFAULT_SAMPLES = 64
MAX_SAMPLES = 1024
# Hybrid rows per ONNX Runtime call while sampling: bounds memory, not work.
SAMPLING_CHUNK = 8192
# TreeSHAP's numpy work releases the GIL: a request of many rows is split over this many
# threads (as shap's own C++ TreeExplainer runs its rows in parallel); measured 1.7x the
# rows/s on 2 cores at 256 rows. Parts of fewer rows than PART_ROWS are not worth a thread.
# The CPUs this process may use where the OS says (Linux), else the machine's (macOS, where
# notebooks convert: `gateway convert` checks explanations through this module).
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
THREADS = max(1, min(_CPUS, 4))
PART_ROWS = 32
_POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="treeshap") if THREADS > 1 else None


class NotExplainable(ValueError):
    """The model has nothing to explain by (no user columns or no recorded method)."""


@dataclass(frozen=True)
class Attribution:
    """Per row and explained target: base value and contributions per user column."""

    base: np.ndarray  # (rows, targets)
    phi: np.ndarray  # (rows, columns, targets)
    error: np.ndarray | None = None  # (rows,) sampling: 95 % half-width, worst column


class Explainer:
    def __init__(self, manifest: Manifest, model: bytes, background: Arrays | None = None) -> None:
        spec = manifest.explain
        if spec is None or not manifest.features:
            raise NotExplainable(
                f"model {manifest.name!r} has no explanation method recorded: it was converted "
                "without user columns (tensors in, tensors out) or by a gateway without /explain; "
                "convert it again with `gateway convert` and a sample"
            )
        self.spec: Explain = spec
        self.names = [f.name for f in manifest.features]
        self.layout = manifest.layout
        self.columns = np.asarray(spec.columns, dtype=np.intp)
        self._trees = TreeShap(spec.trees) if spec.trees is not None else None
        names = [spec.encoded] if spec.encoded is not None else []
        self._session = _session(with_outputs(model, names) if names else model)
        self._output = _explained_output(manifest)
        self._background = background
        self._input_names = [i.name for i in self._session.get_inputs()]

    @property
    def method(self) -> str:
        return self.spec.method

    def attribute(self, feeds: Arrays, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> Attribution:
        if self.spec.method == "sampling":
            return self._sampling(feeds, samples, seed)
        encoded = self.encoded(feeds)
        if self._trees is not None:
            phi = self._tree_values(self._trees, encoded)
            base = np.broadcast_to(self._trees.expected, (encoded.shape[0], self._trees.n_targets))
            return Attribution(np.array(base), phi)
        return self._linear(encoded)

    def _tree_values(self, trees: TreeShap, encoded: np.ndarray) -> np.ndarray:
        parts = min(THREADS, encoded.shape[0] // PART_ROWS)
        if _POOL is None or parts < 2:
            return trees.shap_values(encoded, self.columns, len(self.names))
        chunks = np.array_split(encoded, parts)
        return np.concatenate(
            list(_POOL.map(lambda rows: trees.shap_values(rows, self.columns, len(self.names)), chunks))
        )

    def encoded(self, feeds: Arrays) -> np.ndarray:
        """The estimator's input for these rows, as the graph computes it."""
        out = self._session.run([self.spec.encoded], {n: feeds[n] for n in self._input_names})[0]
        return np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)

    def _linear(self, encoded: np.ndarray) -> Attribution:
        linear = self.spec.linear
        if linear is None:
            raise NotExplainable("the manifest's linear explanation has no coefficients")
        coef = np.asarray(linear.coef, dtype=np.float64)  # (targets, encoded)
        mean = np.asarray(linear.mean, dtype=np.float64)
        terms = (encoded - mean)[:, :, None] * coef.T[None, :, :]  # (rows, encoded, targets)
        onto = np.zeros((len(self.columns), len(self.names)))
        onto[np.arange(len(self.columns)), self.columns] = 1.0  # encoded column -> user column
        phi = np.einsum("rjt,ju->rut", terms, onto)
        base = coef @ mean + np.asarray(linear.intercept, dtype=np.float64)
        return Attribution(np.broadcast_to(base, (encoded.shape[0], coef.shape[0])).copy(), phi)

    def _sampling(self, feeds: Arrays, samples: int, seed: int) -> Attribution:
        """Permutation sampling (Štrumbelj and Kononenko 2014): each sample draws an order
        of the columns and a background row, then swaps the row's columns in one at a
        time; a column's share is the mean change it makes. The samples' increments add
        up to f(x) - f(background row), so the base is the mean over the rows drawn."""
        if self._background is None:
            raise NotExplainable("the manifest holds no background rows to sample against")
        rows, width = _rows(feeds), len(self.names)
        rng = np.random.default_rng(seed)
        order = np.argsort(rng.random((samples, width)), axis=1)  # (samples, columns)
        position = np.argsort(order, axis=1)
        drawn = np.arange(samples) % _rows(self._background)
        # mask[s, k, j]: at step k of sample s, column j already comes from the row.
        mask = position[:, None, :] < np.arange(width + 1)[None, :, None]
        hybrid = self._hybrids(feeds, mask, drawn, rows)
        f = self._predict(hybrid).reshape(rows, samples, width + 1, -1)
        steps = np.diff(f, axis=2)  # (rows, samples, width, targets): step k adds column order[s, k]
        per_column = np.take_along_axis(steps, position[None, :, :, None], axis=2)
        phi = per_column.mean(axis=1)
        spread = per_column.std(axis=1, ddof=1) if samples > 1 else np.zeros_like(phi)
        error = 1.96 * spread.max(axis=(1, 2)) / np.sqrt(samples)
        return Attribution(f[:, :, 0, :].mean(axis=1), phi, error)

    def _hybrids(self, feeds: Arrays, mask: np.ndarray, drawn: np.ndarray, rows: int) -> Arrays:
        background = self._background
        if background is None:
            raise NotExplainable("the manifest holds no background rows to sample against")
        samples, steps, _ = mask.shape
        out: Arrays = {}
        for name in self._input_names:
            x, b = feeds[name], background[name][drawn]  # (rows, k), (samples, k)
            k = x.shape[1]
            take = self._mask_for(name, mask, k)
            mixed = np.where(take[None], x[:, None, None, :], b[None, :, None, :])
            out[name] = mixed.reshape(rows * samples * steps, k)
        return out

    def _mask_for(self, name: str, mask: np.ndarray, k: int) -> np.ndarray:
        """Which of input `name`'s k columns come from the row at each step."""
        if self.layout == "matrix":
            return mask[:, :, :k]
        j = self.names.index(name)
        return np.repeat(mask[:, :, j : j + 1], k, axis=2)

    def _predict(self, feeds: Arrays) -> np.ndarray:
        total = _rows(feeds)
        parts = []
        for start in range(0, total, SAMPLING_CHUNK):
            chunk = {n: v[start : start + SAMPLING_CHUNK] for n, v in feeds.items()}
            out = self._session.run([self._output], chunk)[0]
            parts.append(np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1))
        return np.concatenate(parts)


def _rows(feeds: Arrays) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _explained_output(manifest: Manifest) -> str:
    spec = manifest.output("probabilities") or manifest.output("value") or manifest.outputs[0]
    return spec.name


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # An explanation runs beside the batcher's sessions: one thread, as each lane has.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def background_feeds(manifest: Manifest, codec: Any) -> Arrays | None:
    """The manifest's background rows as tensors, through the records codec."""
    spec = manifest.explain
    if spec is None or not spec.background:
        return None
    payload, form = codec.decode(msgspec.json.encode({"instances": spec.background}), False)
    feeds, _ = codec.to_feeds(payload, form)
    return dict(feeds)
