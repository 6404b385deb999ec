"""The `gateway` command: convert, models, demo, serve, score.

Conversion imports the `converters` package (scikit-learn and friends) only when asked,
so `gateway serve` runs in an image without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.artifacts.manifest import Feature, Manifest
from gateway.artifacts.remote import open_repository
from gateway.artifacts.repository import Repository, RepositoryError, ServingState

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _progress(message: str) -> None:
    print(f"[convert] {message}", file=sys.stderr, flush=True)


def _labels(given: list[str] | None) -> dict[str, Path] | None:
    """`--labels OUTPUT=FILE`, repeatable: one labels file per output."""
    if not given:
        return None
    files: dict[str, Path] = {}
    for entry in given:
        output, sep, path = entry.partition("=")
        if not sep or not output or not path:
            raise ValueError(f"--labels takes OUTPUT=FILE, got {entry!r}")
        files[output] = Path(path)
    return files


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        from converters import ConversionError, convert, load_sample
    except ImportError as exc:
        return _fail(
            f"conversion needs the convert extra ({exc.name}): pip install 'onnx-gateway[convert,cpu]'"
        )
    try:
        sample = load_sample(Path(args.sample)) if args.sample else None
        model, origin = Path(args.model), None
        framework = None if args.framework == "auto" else args.framework
        from converters.mlflow_source import fetch_mlflow_model, is_mlflow_source

        if is_mlflow_source(args.model):  # models:/NAME/VERSION, models:/NAME@alias, runs:/..., a dir
            found = fetch_mlflow_model(args.model, progress=_progress)
            model, framework, origin = found.path, found.framework, found.origin
            sample = sample if sample is not None else found.sample
        manifest = convert(
            model,
            name=args.name,
            version=args.version,
            repo=args.repo,  # a URL (s3://...) must not go through Path, which drops a slash
            sample=sample,
            framework=framework,
            atol=args.tolerance,
            rtol=args.rtol,
            progress=_progress,
            origin=origin,
            labels=_labels(args.labels),
            trust=args.trust,
            triton_config=Path(args.triton_config) if args.triton_config else None,
        )
    except (ConversionError, RepositoryError, ValueError) as exc:
        return _fail(str(exc))
    parity = manifest.parity
    if manifest.features:
        print(contract(manifest))
    print(
        f"{manifest.name}:{manifest.version} written to {args.repo} "
        f"({manifest.onnx.size} bytes, sha256 {manifest.onnx.sha256[:12]}…"
        + (f", parity max diff {parity.max_abs_diff:.2g} on {parity.rows} rows" if parity else "")
        + ")"
    )
    print(_what_serves(args.repo, manifest.name, manifest.version))
    return 0


def _what_serves(repo: str, name: str, version: str) -> str:
    """What a server that follows this repository (--poll-seconds) does with the new version,
    said at once: without serving.json the newest version is live."""
    try:
        state = open_repository(repo).serving(name)
    except RepositoryError:
        state = None
    if state is None:
        return (
            f"a server watching this repository will serve {name}:{version} now "
            f"(no serving.json pins a version; `gateway models promote` writes one)"
        )
    return (
        f"serving.json keeps {name}:{state.live} live; "
        f"`gateway models promote {name} {version} --repo {repo}` serves this one"
    )


SHOWN_CATEGORIES = 6


def _accepts(f: Feature) -> str:
    """What a request may send for one feature, in a few words."""
    if f.ignored:
        return "ignored: not read by the model, any value or none"
    if f.max_length is not None:
        return f"free text, up to {f.max_length} characters"
    if f.categories:
        shown = ", ".join(f.categories[:SHOWN_CATEGORIES])
        more = f", … ({len(f.categories)} in all)" if len(f.categories) > SHOWN_CATEGORIES else ""
        rule = "others accepted and counted" if f.open_categories else "others refused"
        return f"{shown}{more}; {rule}"
    if f.min is not None and f.max is not None:
        return f"trained range [{f.min:g}, {f.max:g}] ({f.policy} outside)"
    return "any string" if f.dtype == "string" else "any number"


def contract(manifest: Manifest) -> str:
    """The records API's contract, a line a column: what `gateway convert` made of the model."""
    rows = [["COLUMN", "TYPE", "NULL", "ACCEPTS"]]
    for f in manifest.features:
        rows.append([f.name, "-" if f.ignored else f.dtype, "yes" if f.nullable or f.ignored else "no",
                     _accepts(f)])  # fmt: skip
    return _table(rows)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_models_list(args: argparse.Namespace) -> int:
    repo = open_repository(args.repo)
    rows = [["NAME", "VERSION", "LIVE", "CREATED", "SIZE", "PARITY"]]
    try:
        for name in repo.models():
            live = repo.live_version(name) if repo.versions(name) else ""
            state = repo.serving(name)
            for version in repo.versions(name):
                m = repo.manifest(name, version)
                parity = f"{m.parity.max_abs_diff:.1e}/{m.parity.rows}" if m.parity else "-"
                rows.append(
                    [
                        name,
                        version,
                        _role(version, live, state),
                        m.created_at,
                        f"{m.onnx.size / 1024:.1f}K",
                        parity,
                    ]
                )
    except RepositoryError as exc:
        return _fail(str(exc))
    print(_table(rows) if len(rows) > 1 else f"no models in {args.repo}")
    return 0


def _role(version: str, live: str, state: ServingState | None) -> str:
    """The LIVE column: `*` for the live version, `canary:P%` and `shadow` for candidates."""
    roles = ["*"] if version == live else []
    if state is not None and state.canary is not None and state.canary.version == version:
        roles.append(f"canary:{state.canary.weight:g}%")
    if state is not None and state.shadow == version:
        roles.append("shadow")
    return ",".join(roles)


def cmd_models_show(args: argparse.Namespace) -> int:
    import msgspec

    repo = open_repository(args.repo)
    name, _, version = args.model.partition(":")
    try:
        manifest = repo.manifest(name, version or repo.live_version(name))
    except RepositoryError as exc:
        return _fail(str(exc))
    if manifest.features and not args.json:
        print(contract(manifest) + "\n")
    print(msgspec.json.format(msgspec.json.encode(manifest), indent=2).decode())
    return 0


def _change_live(args: argparse.Namespace, change: Callable[[Repository], ServingState]) -> int:
    """Rewrite serving.json; running servers that follow the repository switch by themselves."""
    try:
        state = change(open_repository(args.repo))
    except RepositoryError as exc:
        return _fail(str(exc))
    canary = f", canary {state.canary.version} at {state.canary.weight:g}%" if state.canary else ""
    shadow = f", shadow {state.shadow}" if state.shadow else ""
    print(f"{args.name}: live {state.live}{canary}{shadow} (previous {state.previous})")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    return _change_live(args, lambda repo: repo.set_live(args.name, args.version))


def cmd_models_rollback(args: argparse.Namespace) -> int:
    return _change_live(args, lambda repo: repo.rollback(args.name))


def cmd_models_shadow(args: argparse.Namespace) -> int:
    if (args.version is None) != args.stop:
        return _fail("give a VERSION to shadow, or --stop to end the shadow")
    return _change_live(args, lambda repo: repo.set_shadow(args.name, args.version))


def cmd_models_canary(args: argparse.Namespace) -> int:
    return _change_live(args, lambda repo: repo.set_canary(args.name, args.version, args.weight))


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from converters import ConversionError
        from converters.demo import build_demo_repository
    except ImportError as exc:
        return _fail(f"the demo trains models and needs the convert extra ({exc.name})")
    try:
        build_demo_repository(Path(args.repo), progress=_progress)
    except ConversionError as exc:
        return _fail(str(exc))
    if args.no_serve:
        return cmd_models_list(args)
    from gateway.cli.serve import serve_from_args

    return serve_from_args(args)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one (not `None`, not an off switch); epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


_CONVERT = "gateway convert model.joblib --name churn --version 1 --repo models --sample sample.csv"
EXAMPLES = {
    name: "\n".join(lines)
    for name, lines in {
        "gateway": [
            "examples:",
            "  gateway demo          # train, convert and serve two models",
            f"  {_CONVERT}",
            "  gateway serve --repo models --port 8000",
            "  gateway models list --repo models",
            "  gateway score churn input.csv predictions.parquet --repo models",
            "",
            "`gateway COMMAND --help` for each command's flags.",
        ],
        "convert": [
            "example:",
            f"  {_CONVERT}",
            "",
            "The version is verified before it is written: ONNX Runtime against the original model",
            "on the sample rows. Without serving.json, a server watching the repository serves the",
            "newest version.",
        ],
        "models": [
            "examples:",
            "  gateway models list --repo models",
            "  gateway models promote churn 2 --repo models",
            "  gateway models canary churn 3 --weight 10 --repo models",
            "  gateway models rollback churn --repo models",
        ],
        "demo": ["example:", "  gateway demo --port 8000      # then open http://127.0.0.1:8000/docs"],
        "serve": [
            "examples:",
            "  gateway serve --repo models",
            "  gateway serve --repo s3://bucket/models --host 0.0.0.0 --grpc-port 8001",
            "  GATEWAY_REPO=/models gateway serve",
            "",
            "Every flag is also a GATEWAY_* variable and a key of the --config file: flags win over",
            "the environment, the environment over the file.",
        ],
        "score": [
            "example:",
            "  gateway score churn:2 customers.parquet scores.parquet --repo models --keep id",
        ],
    }.items()
}


def build_parser() -> argparse.ArgumentParser:
    from gateway.settings import add_serve_arguments

    parser = argparse.ArgumentParser(
        prog="gateway",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES["gateway"],
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, epilog=EXAMPLES[name], formatter_class=HelpFormatter, **kwargs)

    p = add("convert", help="convert a trained model into a verified ONNX artifact")
    p.add_argument(
        "model",
        help="model file (.joblib/.pkl, .onnx, .pt, XGBoost .json/.ubj, LightGBM .txt) or an MLflow "
        "model: models:/NAME/VERSION, models:/NAME@alias, runs:/RUN_ID/PATH, a local MLflow model directory",
    )
    p.add_argument("--name", required=True, help="the model's name in the repository and in URLs")
    p.add_argument("--version", required=True, help="a positive integer or semver; never reused")
    p.add_argument(
        "--repo", required=True, metavar="DIR_OR_URL", help="model repository: a directory or an fsspec URL"
    )
    p.add_argument(
        "--sample", metavar="FILE", help="sample rows (.csv, .parquet, .json, .npy) for parity and schema"
    )
    p.add_argument(
        "--framework",
        default="auto",
        choices=["auto", "sklearn", "xgboost", "lightgbm", "catboost", "torch", "onnx"],
        help="what the model file is; auto: from its suffix and content",
    )
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest absolute difference ONNX vs the original model"
    )
    p.add_argument(
        "--rtol", type=float, default=1e-4, help="relative difference allowed on top of --tolerance"
    )
    p.add_argument(
        "--labels", action="append", metavar="OUTPUT=FILE",
        help="labels for an output's scores, one a line (Triton's label_filename): the classification "
        "extension answers score:index:label; repeat for several outputs",
    )  # fmt: skip
    p.add_argument(
        "--triton-config", metavar="FILE",
        help="a plain ONNX model's Triton config.pbtxt: max_batch_size 0 (no batch dimension) and each "
        "output's label_filename are honoured",
    )  # fmt: skip
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="TYPE",
        help="a type a .skops file may build beyond those skops trusts by default (repeatable)",
    )
    p.set_defaults(func=cmd_convert)

    models = add("models", help="list, show, promote and roll back model versions")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for cmd, func, helptext in (
        ("list", cmd_models_list, "every model and version"),
        ("show", cmd_models_show, "one manifest: NAME or NAME:VERSION"),
        ("promote", cmd_models_promote, "make VERSION live"),
        ("rollback", cmd_models_rollback, "end the canary, or make the previous version live again"),
        ("canary", cmd_models_canary, "send --weight percent of requests to VERSION beside the live one"),
        ("shadow", cmd_models_shadow, "mirror live requests to VERSION off the hot path (--stop ends it)"),
    ):
        mp = msub.add_parser(cmd, help=helptext, description=helptext, formatter_class=HelpFormatter)
        mp.add_argument("--repo", required=True, help="model repository: a directory or an fsspec URL")
        if cmd == "show":
            mp.add_argument("model", metavar="NAME[:VERSION]", help="the live version when none is given")
            mp.add_argument("--json", action="store_true", help="the manifest only, without the contract")
        elif cmd == "shadow":
            mp.add_argument("name", help="model name")
            mp.add_argument("version", nargs="?", help="version to mirror requests to")
            mp.add_argument("--stop", action="store_true", help="end the shadow")
        elif cmd in ("promote", "rollback", "canary"):
            mp.add_argument("name", help="model name")
            if cmd in ("promote", "canary"):
                mp.add_argument("version", help="a version in the repository")
            if cmd == "canary":
                mp.add_argument(
                    "--weight", type=float, required=True, help="percent of requests (0-100); 0 ends it"
                )
        mp.set_defaults(func=func)

    d = add("demo", help="train the demo models, convert them and serve them")
    d.add_argument("--no-serve", action="store_true", help="build the demo repository and stop")
    add_serve_arguments(d, repo_default="demo-repo")
    d.set_defaults(func=cmd_demo)

    s = add("serve", help="serve a model repository over HTTP (and gRPC with --grpc-port)")
    add_serve_arguments(s, repo_default=None)
    s.set_defaults(func=lambda a: __import__("gateway.cli.serve", fromlist=["x"]).serve_from_args(a))

    from gateway.cli.score import add_score_parser  # argparse only: pyarrow loads when it runs

    add_score_parser(sub)
    score = sub.choices["score"]
    score.formatter_class, score.epilog = HelpFormatter, EXAMPLES["score"]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args: Any = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
