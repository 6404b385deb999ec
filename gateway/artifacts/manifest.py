"""The artifact's contract: what a converted model expects and produces.

Written once by `gateway convert`, read by every server that loads the model.
Unknown fields are refused so that a manifest from a newer schema fails loudly.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import msgspec

SCHEMA_VERSION = 1

FeatureDType = Literal["float32", "float64", "int64", "string", "bool"]
RangePolicy = Literal["allow", "clip", "reject"]
# Open Inference Protocol datatypes (KServe V2).
V2DType = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "BF16",
    "FP32",
    "FP64",
    "BYTES",
]
OutputRole = Literal["label", "probabilities", "value", "other"]
Layout = Literal["matrix", "columns", "tensors"]
Task = Literal["classification", "regression", "other"]


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Feature(_Struct, frozen=True):
    """One named input of a tabular model, as a records request spells it."""

    name: str
    dtype: FeatureDType
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    nullable: bool = False
    policy: RangePolicy = "allow"
    # A free-text feature (read by a text vectorizer): any string up to this many characters.
    max_length: int | None = None
    # A category outside `categories` is accepted (the encoder ignores it) and counted,
    # instead of refused.
    open_categories: bool = False
    # A column the model never reads (a ColumnTransformer drops it): a request may send it
    # with any value or leave it out; it is not validated and never reaches the graph.
    ignored: bool = False


class TensorSpec(_Struct, frozen=True):
    """One ONNX graph input or output; -1 marks a variable dimension."""

    name: str
    datatype: V2DType
    shape: list[int]
    role: OutputRole | None = None
    # The graph declares no shape at all (ONNX Runtime then takes any rank): `shape` is []
    # and requests are not checked against it.
    any_shape: bool = False
    # Triton's reshape, given at convert (config.pbtxt): the graph's own shape, while
    # `shape` is the one clients send and receive (gateway/v2/reshape.py).
    reshape: list[int] | None = None


class Source(_Struct, frozen=True):
    framework: str
    framework_version: str
    estimator: str
    file_name: str
    file_sha256: str
    # Where the model came from when it was not a local file (`gateway convert models:/...`).
    uri: str | None = None
    run_id: str | None = None
    model_version: str | None = None


class OnnxInfo(_Struct, frozen=True):
    sha256: str
    size: int
    opset: dict[str, int]
    producer: str
    ir_version: int


class Parity(_Struct, frozen=True):
    rows: int
    tolerance: float
    max_abs_diff: float
    label_agreement: float | None = None
    sample: Literal["given", "synthesised"] = "given"


class FeatureReference(_Struct, frozen=True):
    """Quantile bin edges of one feature (numeric) or category frequencies (string)."""

    edges: list[float] | None = None
    fractions: list[float] | None = None
    categories: list[str] | None = None


class Reference(_Struct, frozen=True):
    rows: int
    features: dict[str, FeatureReference]
    prediction: FeatureReference | None = None


class CategorySplit(_Struct, frozen=True):
    """A split on a set of categories, which the ONNX graph computes as a 0/1 column of its
    own (`column`, read as `<= 0.5`) from the category code in `feature`: TreeSHAP merges
    it with the other splits on that feature, as it merges a feature's thresholds."""

    column: int
    feature: int
    yes: list[int]  # codes taking the `yes` branch; 256 stands for missing or unknown


class TreeTables(_Struct, frozen=True):
    """The explained tree ensemble, one entry per node of every tree (read from the ONNX
    graph's TreeEnsemble attributes), with each node's training cover (recorded from the
    original model: ONNX keeps no covers, path-dependent TreeSHAP weighs by them).
    `yes`/`no` index the child taken when the test holds or not (-1 at a leaf); a leaf's
    outputs are `values[node * n_targets : (node + 1) * n_targets]`."""

    roots: list[int]
    feature: list[int]
    threshold: list[float]
    yes: list[int]
    no: list[int]
    missing_yes: list[bool]
    cover: list[float]
    values: list[float]
    n_targets: int
    # BRANCH_LT (x < t) rather than BRANCH_LEQ (x <= t).
    strict: bool = False
    base: list[float] = []
    scale: float = 1.0
    categories: list[CategorySplit] = []


class Linear(_Struct, frozen=True):
    """coef[target][encoded column]; contributions coef * (x - mean)."""

    coef: list[list[float]]
    intercept: list[float]
    mean: list[float]


class ExplainCheck(_Struct, frozen=True):
    """What `gateway convert` measured against SHAP on the original model."""

    rows: int
    reference: str
    max_abs_diff: float
    tolerance: float


ExplainMethod = Literal["tree", "linear", "sampling"]
ExplainOutput = Literal["probability", "margin", "value"]


class Explain(_Struct, frozen=True):
    """How `/explain` attributes a prediction to the user's columns.

    tree and linear explain the estimator's input (`encoded`, a value inside the ONNX
    graph), whose column j came from user feature `columns[j]`; sampling perturbs the
    user's own columns against `background`, rows of the training sample."""

    method: ExplainMethod
    output: ExplainOutput
    # The class each explained target stands for (classifiers); a binary margin model
    # explains class 1 alone and class 0 is its negation.
    targets: list[int] = []
    encoded: str | None = None
    columns: list[int] = []
    trees: TreeTables | None = None
    linear: Linear | None = None
    background: list[dict[str, Any]] = []
    check: ExplainCheck | None = None


class Manifest(_Struct, frozen=True, dict=True):  # dict: room for cached properties
    name: str
    version: str
    created_at: str
    task: Task
    layout: Layout
    source: Source
    onnx: OnnxInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    features: list[Feature] = []
    classes: list[bool | int | str] | None = None  # a bool target stays bool (True/False)
    # Labels per output, given at convert (Triton's label_filename): the classification
    # extension's "score:index:label" for a model that carries no classes of its own.
    labels: dict[str, list[str]] = {}
    parity: Parity | None = None
    reference: Reference | None = None
    metadata: dict[str, Any] = {}
    explain: Explain | None = None
    # Triton's max_batch_size 0, given at convert: the graph's first dimension is not a
    # batch dimension even where it is variable (the graph alone cannot say).
    unbatched: bool = False
    schema_version: int = SCHEMA_VERSION

    def output(self, role: OutputRole) -> TensorSpec | None:
        return next((o for o in self.outputs if o.role == role), None)

    @cached_property  # read per V2 request
    def reshaped(self) -> bool:
        """An output the graph shapes otherwise than clients see it (Triton's reshape)."""
        return any(o.reshape is not None for o in self.outputs)

    @cached_property  # read per V2 request
    def batched(self) -> bool:
        """Every input and output has a variable first dimension, so requests can be joined
        by rows (Triton's max_batch_size > 0). Otherwise (a fixed first dimension, a scalar,
        no shape), or when declared unbatched, each request is one whole call of the model."""
        return not self.unbatched and all(
            s.shape and s.shape[0] == -1 and not s.any_shape for s in [*self.inputs, *self.outputs]
        )


_decoder = msgspec.json.Decoder(Manifest)


def decode_manifest(data: bytes) -> Manifest:
    manifest = _decoder.decode(data)
    if manifest.schema_version > SCHEMA_VERSION:
        raise ValueError(
            f"manifest schema {manifest.schema_version} is newer than this gateway "
            f"understands ({SCHEMA_VERSION}); upgrade onnx-gateway"
        )
    return manifest


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"
