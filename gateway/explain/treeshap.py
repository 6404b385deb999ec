"""Exact path-dependent TreeSHAP (Lundberg et al. 2020, algorithm 2) in numpy.

The recursive algorithm visits every node of every tree for each row. Here each
root-to-leaf path is one unit instead (as GPUTreeShap does): a path's splits on the same
feature merge into one element with a zero fraction (the share of training cover that
takes the path) and a one fraction (1 where the row takes the path, else 0). The EXTEND
step is a single vector operation per element, the UNWIND recurrence runs for all of a
path's elements at once, and all paths of the same length, for all rows, go together.
Only the one fractions depend on the row, so everything else is built once per model;
and only through which elements it satisfies: short paths look their weights up in a
table of every pattern, long ones compute them once per distinct (path, pattern) a
request holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from gateway.artifacts.manifest import TreeTables

# Elements (rows x paths x path length) per chunk: bounds memory at ~100 MB of float64.
CHUNK_ELEMENTS = 1 << 21
# A path's contributions depend on the row only through which of its elements the row
# satisfies: with L elements there are 2**L patterns, computed once at load where the
# table stays small (elements per group, and in all); longer paths are computed per row.
# Building a table costs ~length**2 passes over it: past 10 elements the work outgrows
# what it saves for any request size the explain route takes.
TABLE_ELEMENTS = 1 << 20
TABLE_LENGTH = 10
TABLES_TOTAL = 1 << 23
# A child with no training cover: its zero fraction, kept positive so that the UNWIND
# step (which divides by it) stays finite; its effect on a sum is below 1e-200.
_TINY = 1e-300


@dataclass(frozen=True)
class _Paths:
    """All root-to-leaf paths with `length` distinct features."""

    length: int
    feature: np.ndarray  # (paths, length) encoded column
    lo: np.ndarray  # (paths, length) the row's value must lie above lo ...
    hi: np.ndarray  # ... and at or below hi (for strict trees: at or above lo, below hi)
    nan_ok: np.ndarray  # (paths, length) a missing value takes the path
    zero: np.ndarray  # (paths, length) zero fractions
    value: np.ndarray  # (paths, targets) leaf outputs, scaled
    # (paths * 2**length, length): each path's weights for every pattern of its elements
    table: np.ndarray | None = None
    # Category-set elements: (paths, length) index into `sets` (-1: an interval), and
    # (sets, CODES) which codes take the path.
    category: np.ndarray | None = None
    sets: np.ndarray | None = None


# Category codes 0..255 and, last, the one missing and unknown categories read (as the
# ONNX graph's split columns do: scikit-learn's HistGradientBoosting bins).
CODES = 257
_ALL = (1 << CODES) - 1


@dataclass(frozen=True)
class _Element:
    lo: float = -np.inf
    hi: float = np.inf
    nan_ok: bool = True
    zero: float = 1.0
    allowed: int | None = None  # a category feature: the codes taking the path, as bits


class TreeShap:
    """SHAP values of a tree ensemble's summed (scaled) output, per encoded column."""

    def __init__(self, tables: TreeTables) -> None:
        self.n_targets = tables.n_targets
        self.strict = tables.strict
        values = np.asarray(tables.values, dtype=np.float64).reshape(-1, self.n_targets) * tables.scale
        base = np.asarray(tables.base or [0.0] * self.n_targets, dtype=np.float64)
        self.expected = base.copy()
        by_length: dict[int, list[tuple[list[int], list[_Element], np.ndarray]]] = {}
        splits = {c.column: (c.feature, sum(1 << code for code in c.yes)) for c in tables.categories}
        for root in tables.roots:
            for features, elements, leaf in _walk(tables, root, splits):
                self.expected += values[leaf] * float(np.prod([e.zero for e in elements]))
                by_length.setdefault(len(features), []).append((features, elements, values[leaf]))
        groups = [_group(length, paths) for length, paths in sorted(by_length.items()) if length]
        budget = TABLES_TOTAL
        self.groups = []
        for group in groups:
            size = group.feature.shape[0] * group.length << group.length
            if group.length <= TABLE_LENGTH and size <= min(TABLE_ELEMENTS, budget):
                budget -= size
                self.groups.append(replace(group, table=_table(group)))
            else:
                self.groups.append(group)
        self.n_features = 1 + max((int(g.feature.max()) for g in self.groups), default=-1)

    def shap_values(self, x: np.ndarray, columns: np.ndarray | None = None, width: int = 0) -> np.ndarray:
        """(rows, columns, targets): contributions summed onto `columns[j]` for encoded
        column j (identity when None); they add up to output - expected."""
        x = np.asarray(x, dtype=np.float64)
        rows = x.shape[0]
        if columns is None:
            width = max(x.shape[1], self.n_features)
            columns = np.arange(width)
        phi = np.zeros((rows, width * self.n_targets))
        for group in self.groups:
            step = max(1, CHUNK_ELEMENTS // max(1, rows * group.length))
            for start in range(0, group.feature.shape[0], step):
                part = slice(start, start + step)
                contrib = self._contributions(x, group, part)  # (rows, paths, length)
                _accumulate(phi, contrib, columns[group.feature[part]], group.value[part])
        return phi.reshape(rows, width, self.n_targets)

    def _contributions(self, x: np.ndarray, group: _Paths, part: slice) -> np.ndarray:
        one = self._one_fractions(x, group, part)
        if group.table is None:
            return _distinct_unwound(one, group.zero[part], group.length)
        patterns = _patterns(one)
        first = np.arange(part.start, min(part.stop, group.feature.shape[0]))
        found: np.ndarray = group.table[(first << group.length)[None, :] + patterns]
        return found

    def _one_fractions(self, x: np.ndarray, group: _Paths, part: slice) -> np.ndarray:
        values = x[:, group.feature[part]]  # (rows, paths, length)
        lo, hi = group.lo[part], group.hi[part]
        with np.errstate(invalid="ignore"):
            inside = (values >= lo) & (values < hi) if self.strict else (values > lo) & (values <= hi)
        one: np.ndarray = np.where(np.isnan(values), group.nan_ok[part], inside)
        if group.sets is not None and group.category is not None:
            category = group.category[part]
            member = group.sets[np.maximum(category, 0)[None], _codes(values)]
            one = np.where(category[None] >= 0, member, one)
        return one


def _codes(values: np.ndarray) -> np.ndarray:
    """Category codes as the graph's split columns read them: truncated to integers, and
    anything outside 0..255 (NaN included) the missing row."""
    with np.errstate(invalid="ignore"):
        outside = ~((values >= 0) & (values < CODES - 1))
    return np.where(outside, CODES - 1, np.nan_to_num(values)).astype(np.intp)


def _patterns(one: np.ndarray) -> np.ndarray:
    """(rows, paths): which of each path's elements the row satisfies, as bits."""
    patterns = np.zeros(one.shape[:2], dtype=np.int64)
    for e in range(one.shape[2]):
        patterns |= one[:, :, e].astype(np.int64) << e
    return patterns


def _distinct_unwound(one: np.ndarray, zero: np.ndarray, length: int) -> np.ndarray:
    """`_unwound` once per distinct (path, pattern) among the rows: rows share patterns
    (those on a path all satisfy it; most others miss it the same way), so a request's
    rows x paths hold a few times fewer distinct ones."""
    rows, paths = one.shape[:2]
    if length + paths.bit_length() > 62:  # the key would not fit an int64
        return _unwound(one.astype(np.float64), zero, length)
    keys = (_patterns(one) << paths.bit_length()) | np.arange(paths)
    distinct, inverse = np.unique(keys.ravel(), return_inverse=True)
    path, pattern = distinct & ((1 << paths.bit_length()) - 1), distinct >> paths.bit_length()
    bits = ((pattern[:, None] >> np.arange(length)) & 1).astype(np.float64)
    weights = _unwound(bits[None], zero[path], length)[0]  # (distinct, length)
    found: np.ndarray = weights[inverse.ravel()].reshape(rows, paths, length)
    return found


def _unwound(one: np.ndarray, zero: np.ndarray, length: int) -> np.ndarray:
    """Each element's SHAP weight times (one - zero): EXTEND the whole path (a dummy
    element first), then UNWIND each element from it (the UNWOUND_PATH_SUM step)."""
    rows, paths = one.shape[:2]
    top = length + 1  # elements with the dummy
    w = np.zeros((rows, paths, top))
    w[..., 0] = 1.0
    k = np.arange(top, dtype=np.float64)
    for e in range(length):
        depth = e + 1
        z, o = zero[None, :, e, None], one[:, :, e, None]
        shifted = np.concatenate([np.zeros((rows, paths, 1)), w[..., :-1]], axis=2)
        w = (z * w * (depth - k) + o * shifted * k) / (depth + 1)
        w[..., depth + 1 :] = 0.0
    z = zero[None, :, :]
    # Rows not on the path (one = 0): a closed form.
    scale = (length + 1) / (length - k[:length])
    total_cold = (w[..., :length] * scale).sum(axis=2)[..., None] / z
    # Rows on it (one = 1): the recurrence, for all elements at once.
    next_one = np.broadcast_to(w[..., length, None], one.shape).copy()
    total_hot = np.zeros_like(one)
    for j in range(length - 1, -1, -1):
        tmp = next_one * ((length + 1) / (j + 1))
        total_hot += tmp
        next_one = w[..., j, None] - tmp * z * ((length - j) / (length + 1))
    total = np.where(one > 0, total_hot, total_cold)
    result: np.ndarray = total * (one - z)
    return result


def _table(group: _Paths) -> np.ndarray:
    """Every path's contributions for all 2**length patterns of its elements."""
    length, paths = group.length, group.feature.shape[0]
    bits = (np.arange(1 << length)[:, None] >> np.arange(length)[None, :]) & 1  # (patterns, length)
    one = np.broadcast_to(bits[:, None, :].astype(np.float64), (1 << length, paths, length))
    weights = _unwound(np.ascontiguousarray(one), group.zero, length)  # (patterns, paths, length)
    return np.ascontiguousarray(weights.transpose(1, 0, 2)).reshape(paths << length, length)


def _accumulate(phi: np.ndarray, contrib: np.ndarray, columns: np.ndarray, value: np.ndarray) -> None:
    """Each path element's share, times its leaf's value, summed onto its user column.
    One pass per target: a dense (element -> column) matrix product does `width` times
    the work, and BLAS's threads spin on cores the batcher's lanes share."""
    rows = phi.shape[0]
    targets = value.shape[1]
    width = phi.shape[1] // targets
    index = (np.arange(rows)[:, None, None] * width + columns[None, :, :]).ravel()
    view = phi.reshape(rows, width, targets)
    for t in range(targets):
        weights = (contrib * value[None, :, None, t]).ravel()
        view[:, :, t] += np.bincount(index, weights, minlength=rows * width).reshape(rows, width)


def _walk(
    tables: TreeTables, root: int, splits: dict[int, tuple[int, int]]
) -> list[tuple[list[int], list[_Element], int]]:
    """Every leaf under `root`: the distinct features on its path, each with the interval
    a row's value must lie in (or, for a category feature, the codes it may take), and
    the leaf's index. A category split's own column counts as its feature's: all splits
    on one feature are one element, as thresholds on one feature are."""
    found: list[tuple[list[int], list[_Element], int]] = []
    stack: list[tuple[int, dict[int, _Element]]] = [(root, {})]
    while stack:
        node, conditions = stack.pop()
        yes = tables.yes[node]
        if yes < 0:
            features = list(conditions)
            found.append((features, [conditions[f] for f in features], node))
            continue
        no, feature, threshold = tables.no[node], tables.feature[node], tables.threshold[node]
        cover = tables.cover[node] or _TINY
        if feature in splits:
            feature, codes = splits[feature]
            for child, took_yes in ((yes, True), (no, False)):
                current = conditions.get(feature, _Element(allowed=_ALL))
                allowed = (current.allowed or 0) & (codes if took_yes else _ALL ^ codes)
                zero = current.zero * max(tables.cover[child] / cover, _TINY)
                stack.append((child, {**conditions, feature: replace(current, allowed=allowed, zero=zero)}))
            continue
        for child, took_yes in ((yes, True), (no, False)):
            current = conditions.get(feature, _Element())
            element = _Element(
                lo=current.lo if took_yes else max(current.lo, threshold),
                hi=min(current.hi, threshold) if took_yes else current.hi,
                nan_ok=current.nan_ok and tables.missing_yes[node] == took_yes,
                zero=current.zero * max(tables.cover[child] / cover, _TINY),
            )
            stack.append((child, {**conditions, feature: element}))
    return found


def _group(length: int, paths: list[tuple[list[int], list[_Element], np.ndarray]]) -> _Paths:
    def table(field: str) -> np.ndarray:
        return np.asarray([[getattr(e, field) for e in elements] for _, elements, _ in paths])

    allowed = [[e.allowed for e in elements] for _, elements, _ in paths]
    distinct = sorted({a for row in allowed for a in row if a is not None})
    category, sets = None, None
    if distinct:
        index = {a: i for i, a in enumerate(distinct)}
        category = np.asarray(
            [[index[a] if a is not None else -1 for a in row] for row in allowed], dtype=np.intp
        )
        sets = np.asarray([[(a >> code) & 1 for code in range(CODES)] for a in distinct], dtype=bool)
    return _Paths(
        length=length,
        category=category,
        sets=sets,
        feature=np.asarray([features for features, _, _ in paths], dtype=np.intp),
        lo=table("lo").astype(np.float64),
        hi=table("hi").astype(np.float64),
        nan_ok=table("nan_ok").astype(bool),
        zero=table("zero").astype(np.float64),
        value=np.asarray([v for _, _, v in paths], dtype=np.float64),
    )
