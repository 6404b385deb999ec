"""Build time: a notebook model in, a verified and versioned ONNX artifact out."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from converters._graph import dynamic_batch_outputs
from converters._registry import FRAMEWORKS, Framework, get_converter
from converters.errors import ConversionError
from converters.loading import load_model
from converters.onnx_info import onnx_info, signature
from converters.parity import check_parity
from converters.schema import align_sample, reference_stats, synthesise
from converters.triton_config import TritonConfig, check_against_graph, narrowed, read_triton_config
from gateway.artifacts.manifest import Manifest, Source
from gateway.artifacts.onnx_refs import check_external_data
from gateway.artifacts.remote import open_repository
from gateway.artifacts.repository import RepositoryError, check_name, check_version, sha256_file
from gateway.errors import first_line

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FRAMEWORKS", "ConversionError", "convert", "load_sample"]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
SYNTHESISED_ROWS = 256


def load_sample(path: Path) -> pd.DataFrame:
    """Sample rows for schema, parity and drift reference: CSV, Parquet, JSON or .npy."""
    import numpy as np
    import pandas as pd

    if not path.is_file():
        raise ConversionError(f"{path}: no such sample file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".json", ".jsonl"):
            frame = pd.read_json(path, lines=suffix == ".jsonl")
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            frame = pd.DataFrame(np.atleast_2d(array))
        else:
            raise ConversionError(f"{path}: sample must be .csv, .parquet, .json, .jsonl or .npy")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ConversionError(f"{path}: cannot read the sample: {exc}") from exc
    if frame.empty:
        raise ConversionError(f"{path}: the sample has no rows")
    return frame


@contextmanager
def _step(step: str, subject: str, hint: str) -> Iterator[None]:
    """Any failure inside a step becomes one ConversionError that names the step and what it
    was working on: `gateway convert` exits 2 with it, never with a traceback."""
    try:
        yield
    except ConversionError as exc:
        message = str(exc)
        if not message.startswith(f"{step}"):
            message = f"{step}: {message}"
        raise ConversionError(message) from exc
    except Exception as exc:
        reason = first_line(exc) or type(exc).__name__
        raise ConversionError(f"{step} failed for {subject}: {type(exc).__name__}: {reason}; {hint}") from exc


def _output_specs(converted: Any, onnx_model: Any) -> tuple[list[Any], list[Any]]:
    inputs, outputs = signature(onnx_model)
    role_of = {name: role for role, name in converted.roles.items()}
    return inputs, [msgspec.structs.replace(o, role=role_of.get(o.name, "other")) for o in outputs]


def _with_explain(
    manifest: Manifest, model: Any, framework: str, converted: Any, model_bytes: bytes,
    table: pd.DataFrame, progress: Callable[[str], None],
) -> Manifest:  # fmt: skip
    """Record how `/explain` attributes predictions, proven against SHAP on sample rows."""
    from converters import _explain

    try:
        explain = _explain.record(model, framework, converted, table)
        if explain is None:
            return manifest
        progress(f"checking {explain.method} explanations against the original model")
        explain = _explain.finish(explain, model, framework, converted, manifest, model_bytes, table)
    except ConversionError:
        raise  # explanations measured and found different from SHAP's: as a parity failure
    except Exception as exc:
        # A model whose predictions convert and pass parity is served whatever our
        # explanation recording could not handle: /explain then says it has nothing to
        # explain by, and the build says why here.
        progress(f"explain: left out, predictions are served ({type(exc).__name__}: {first_line(exc)})")
        return manifest
    return manifest if explain is None else msgspec.structs.replace(manifest, explain=explain)


def convert(
    model_path: Path,
    *,
    name: str,
    version: str,
    repo: Path | str,
    sample: pd.DataFrame | None = None,
    framework: Framework | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    metadata: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda _: None,
    origin: dict[str, str] | None = None,
    labels: dict[str, Path] | None = None,
    trust: Sequence[str] = (),
    triton_config: Path | None = None,
) -> Manifest:
    """Convert, verify parity, and publish `<repo>/<name>/<version>`; nothing is written on failure.
    `labels`: a file of labels (one a line) per output, for the classification extension.
    `triton_config`: a plain ONNX model's config.pbtxt (its batching and label files)."""
    started = time.perf_counter()
    check_name(name)
    check_version(version)
    config = read_triton_config(triton_config) if triton_config is not None else None
    try:
        repository = open_repository(repo)
    except RepositoryError as exc:
        raise ConversionError(str(exc)) from exc
    if repository.version_dir(name, version).exists():
        raise ConversionError(
            f"{name}:{version} already exists in {repo}; versions are immutable, choose a new --version"
        )
    progress(f"loading {model_path}")
    with _step("load", str(model_path), "check the file is the model and its framework is installed"):
        model, detected = load_model(model_path, framework, trust)
        converter = get_converter(detected)
    estimator = type(model).__name__
    progress(f"converting {estimator} ({detected}) to ONNX")
    with _step("convert", estimator, "see the supported estimators in the README"):
        converted = converter.convert(model, sample)
        if converted.layout != "tensors":
            dynamic_batch_outputs(converted.onnx_model)
        model_bytes = converted.onnx_model.SerializeToString()
        # A published model is self-contained: the sha256 in its manifest covers all it reads.
        check_external_data(model_bytes)
        inputs, outputs = _output_specs(converted, converted.onnx_model)
    if config is not None:
        labels = _triton_labels(config, converted.layout, inputs, outputs, labels)
        inputs, outputs = narrowed(config, inputs), narrowed(config, outputs)
    manifest = Manifest(
        name=name,
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        task=converted.task,
        layout=converted.layout,
        source=Source(
            framework=detected,
            framework_version=converted.framework_version,
            estimator=converted.estimator,
            file_name=model_path.name,
            file_sha256=sha256_file(model_path),
            **(origin or {}),  # uri, run_id, model_version: an MLflow model's provenance
        ),
        onnx=onnx_info(converted.onnx_model, model_bytes),
        inputs=inputs,
        outputs=outputs,
        features=converted.features,
        classes=converted.classes,
        metadata=metadata or {},
        unbatched=config is not None and config.max_batch_size == 0,
    )
    if labels:
        manifest = _with_labels(manifest, labels)
    if converted.layout == "tensors":
        progress("ONNX pass-through: ONNX Runtime opened it as given; no tabular parity to run")
        table = None
    else:
        synthesised = sample is None
        table = (
            synthesise(converted.features, SYNTHESISED_ROWS)
            if sample is None
            else align_sample(sample, [f.name for f in converted.features])
        )
        progress(f"checking parity on {len(table)} {'synthesised' if synthesised else 'sample'} rows")
        with _step("parity", converted.estimator, "check the sample has the training columns and dtypes"):
            parity, original = check_parity(converted, manifest, model_bytes, table, atol, rtol, synthesised)
        prediction = original.label if original.label is not None else original.value
        manifest = msgspec.structs.replace(
            manifest,
            parity=parity,
            reference=reference_stats(converted.features, table, prediction, original.label is not None)
            if not synthesised
            else None,
        )
        with _step("explain", converted.estimator, "convert with --sample rows of the training data"):
            manifest = _with_explain(manifest, model, detected, converted, model_bytes, table, progress)
    progress(f"writing {repo}/{name}/{version}")
    try:
        repository.publish(manifest, model_bytes)
    except (RepositoryError, OSError) as exc:
        raise ConversionError(f"cannot write {name}:{version} to {repo}: {exc}") from exc
    progress(f"done in {time.perf_counter() - started:.1f}s")
    return manifest


def _triton_labels(
    config: TritonConfig, layout: str, inputs: list[Any], outputs: list[Any], labels: dict[str, Path] | None
) -> dict[str, Path]:
    """The labels to keep once the configuration is found to fit the graph: its
    label_filenames, and `--labels`, which win where both name an output."""
    if layout != "tensors" and (config.max_batch_size == 0 or config.reshapes):  # a table's rows are fixed
        raise ConversionError(
            f"{config.path}: a model of one table of features keeps its batch dimension and shape; "
            "max_batch_size 0 and reshape are for models that take tensors"
        )
    check_against_graph(config, inputs, outputs)
    return {**config.labels, **(labels or {})}


def _with_labels(manifest: Manifest, files: dict[str, Path]) -> Manifest:
    """Labels per output, like Triton's label_filename, kept inside the manifest: a served
    version reads nothing beside its artifact. Each file's sha256 is recorded with it."""
    outputs = {o.name: o for o in manifest.outputs}
    labels: dict[str, list[str]] = {}
    sources: dict[str, dict[str, str]] = {}
    for output, path in files.items():
        spec = outputs.get(output)
        if spec is None:
            raise ConversionError(
                f"--labels names output {output!r}; the model's outputs are {sorted(outputs)}"
            )
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConversionError(f"cannot read the labels of {output!r} from {path}: {exc}") from exc
        width = spec.shape[-1] if len(spec.shape) > 1 else -1
        if not lines or (width > 0 and len(lines) != width):
            raise ConversionError(
                f"{path} holds {len(lines)} labels; output {output!r} has {width} scores per row"
                if lines
                else f"{path} holds no labels"
            )
        labels[output] = lines
        sources[output] = {"file": Path(path).name, "sha256": sha256_file(Path(path))}
    metadata = {**manifest.metadata, "label_files": sources}
    return msgspec.structs.replace(manifest, labels=labels, metadata=metadata)
