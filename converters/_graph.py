"""Edits to a converted ONNX graph: the user's names on its inputs, plain names on its
outputs, and a float32 cast between float64 preprocessing and a tree ensemble.

Converters rename inputs that are not identifiers ("mean radius" -> "mean_radius"); ONNX
itself allows any tensor name, so the graph gets the user's names back here, in the one
place names are mapped, and every layer above (records API, V2, metrics) uses them as is.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_UNSAFE = re.compile(r"[^0-9A-Za-z_]")


def safe_names(names: list[str]) -> list[str]:
    """Unique identifiers standing in for `names` where a library demands identifiers."""
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        base = _UNSAFE.sub("_", name) or "f"
        if base[0].isdigit() or keyword.iskeyword(base):
            base = f"f_{base}"
        candidate = base
        while candidate in seen:
            candidate = f"{base}_{i}"
        seen.add(candidate)
        out.append(candidate)
    return out


def rename_values(model: Any, mapping: Mapping[str, str]) -> None:
    """Rename graph inputs/outputs (and every use of them) in place."""
    mapping = {old: new for old, new in mapping.items() if old != new}
    if not mapping:
        return
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name in mapping:
            value.name = mapping[value.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]


def drop_zipmap(model: Any) -> tuple[str, list[Any]] | None:
    """Replace a ZipMap that ends a classifier graph (a list of {class: probability} maps,
    which no tensor API can carry) by the probability tensor feeding it, under the same
    output name; return that name and the classes the map was keyed by, or None."""
    from onnx import TensorProto, helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    node = next((n for n in graph.node if n.op_type == "ZipMap" and n.output[0] in outputs), None)
    if node is None:
        return None
    attrs = {a.name: a for a in node.attribute}
    if "classlabels_strings" in attrs:
        classes: list[Any] = [c.decode() for c in attrs["classlabels_strings"].strings]
    else:
        classes = [int(c) for c in attrs["classlabels_int64s"].ints]
    name = node.output[0]
    graph.node.remove(node)
    graph.node.append(helper.make_node("Identity", [node.input[0]], [name], name=f"{name}_tensor"))
    index = next(i for i, o in enumerate(graph.output) if o.name == name)
    graph.output.remove(graph.output[index])
    value = helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, len(classes)])
    graph.output.insert(index, value)
    return name, classes


def drop_unread_inputs(model: Any) -> set[str]:
    """Remove the graph inputs no node reads (columns a ColumnTransformer drops, which
    skl2onnx keeps as inputs) and return the names of those that remain."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [value for value in graph.input if value.name in used]
    del graph.input[:]
    graph.input.extend(kept)
    return {value.name for value in kept}


def cast_then(front: Any, back: Any, back_input: str, to: int) -> Any:
    """`front`'s single output cast to `to`, then fed to `back`'s input `back_input`."""
    import onnx
    from onnx import compose, helper

    out = front.graph.output[0].name
    cast_name = f"{out}_cast"
    front.graph.node.append(helper.make_node("Cast", [out], [cast_name], to=to, name=f"{out}_Cast"))
    del front.graph.output[:]
    front.graph.output.append(helper.make_tensor_value_info(cast_name, to, None))
    # merge_models insists on one IR version and one version per opset domain.
    opsets: dict[str, int] = {}
    for model in (front, back):
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    for model in (front, back):
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
        model.ir_version = max(front.ir_version, back.ir_version)
    merged = compose.merge_models(front, back, io_map=[(cast_name, back_input)], prefix2="est_")
    onnx.checker.check_model(merged)
    return merged


def label_from_probabilities(model: Any, classes: list[Any]) -> None:
    """Make the `label` output the first class of highest probability, as scikit-learn's
    tree ensembles predict; their ONNX operators break an exact tie (a forest's 25/25
    votes) the other way."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    original = "label_ensemble"
    rename_values(model, {"label": original})
    spec = next(o for o in graph.output if o.name == original)
    graph.output.remove(spec)
    values = np.asarray(classes)
    table = (
        numpy_helper.from_array(values.astype(np.int64), "label_classes")
        if values.dtype.kind in "biu"
        else numpy_helper.from_array(np.asarray([str(c) for c in classes], dtype=object), "label_classes")
    )
    graph.initializer.append(table)
    graph.node.extend(
        [
            helper.make_node(
                "ArgMax", ["probabilities"], ["label_index"], axis=1, keepdims=0, name="LabelArgMax"
            ),
            helper.make_node(
                "Gather", ["label_classes", "label_index"], ["label"], axis=0, name="LabelGather"
            ),
        ]
    )
    elem = TensorProto.INT64 if table.data_type == TensorProto.INT64 else TensorProto.STRING
    graph.output.insert(0, helper.make_tensor_value_info("label", elem, [None]))


def dynamic_batch_outputs(model: Any) -> None:
    """Declare every output's first dimension variable: onnxmltools declares a LightGBM
    label as [1], which ONNX Runtime warns about on every batch and V2 metadata would repeat."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"


def rows_of(model: Any, output: str, width: int) -> None:
    """Reshape `output` to [-1, width]: skl2onnx writes a multi-output MLPRegressor's
    values as one column of rows x width, which no answer can be sliced by row from."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    flat = f"{output}_flat"
    for node in graph.node:
        node.output[:] = [flat if name == output else name for name in node.output]
        node.input[:] = [flat if name == output else name for name in node.input]
    shape = numpy_helper.from_array(np.array([-1, width], dtype=np.int64), f"{output}_rows_shape")
    graph.initializer.append(shape)
    graph.node.append(helper.make_node("Reshape", [flat, shape.name], [output], name=f"{output}_rows"))
    for value in graph.output:
        if value.name == output:
            elem = value.type.tensor_type.elem_type
            value.CopyFrom(helper.make_tensor_value_info(output, elem or TensorProto.FLOAT, [None, width]))
