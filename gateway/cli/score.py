"""`gateway score NAME[:VERSION] --repo R INPUT OUTPUT`: the command line of batch scoring.

Kept apart from `gateway.scoring` so that building the `gateway` parser never imports
pyarrow: only running the command does.

Exit status: 0 every row scored; 1 some rows were rejected (the rest are in OUTPUT, the
rejected ones in the rejects file with their row number and reason); 2 nothing usable
was written (a usage error, an unreadable input, a missing column, a model that fails its
sha256 check).
"""

from __future__ import annotations

import argparse
import sys

EXIT_REJECTED = 1
EXIT_FAILED = 2


def add_score_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "score",
        help="score a CSV or Parquet table offline with a model from the repository",
        description="Score every row of INPUT with NAME[:VERSION] (the live version by default) and "
        "write OUTPUT: the --keep columns, then the predictions. Rows that fail validation go to the "
        "rejects file with their row number (0 is the first data row) and the reason. Exit status: 0 "
        "all rows scored, 1 some rejected, 2 failed.",
    )
    p.add_argument("model", metavar="NAME[:VERSION]", help="the model, its live version unless one is given")
    p.add_argument("input", help="CSV (.csv, .csv.gz) or Parquet file: a local path or an fsspec URL")
    p.add_argument("output", help="where the predictions go (.csv or .parquet), replaced at the end")
    p.add_argument("--repo", required=True, help="model repository: a directory or an fsspec URL")
    p.add_argument("--keep", default="", help="input columns to copy to the output, comma-separated (id,...)")
    p.add_argument("--rejects", help="rejects file (CSV); default: OUTPUT's name with .rejects.csv")
    p.add_argument("--format", dest="input_format", choices=["csv", "parquet"], help="INPUT's format")
    p.add_argument("--output-format", choices=["csv", "parquet"], help="OUTPUT's format")
    p.add_argument("--chunk-rows", type=int, default=65_536, help="rows read, validated and written at once")
    p.add_argument("--batch-rows", type=int, default=4_096, help="rows per ONNX Runtime call")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime EP")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads; 0: every usable core")
    p.add_argument(
        "--range-policy", choices=["manifest", "allow", "clip", "reject"], default="manifest",
        help="out-of-range values: as the manifest says, or one policy for all",
    )  # fmt: skip
    p.add_argument(
        "--progress", choices=["auto", "bar", "lines", "none"], default="auto",
        help="a bar on a terminal, a line every --progress-every seconds otherwise",
    )  # fmt: skip
    p.add_argument(
        "--progress-every", type=float, default=10.0, metavar="SECONDS", help="seconds between progress lines"
    )
    p.set_defaults(func=cmd_score)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILED


def cmd_score(args: argparse.Namespace) -> int:
    try:
        from gateway.scoring import ScoreError, Scorer, score_file
    except ImportError as exc:
        return _fail(f"batch scoring needs pyarrow ({exc.name}): pip install 'onnx-gateway[score]'")
    from gateway.artifacts.repository import RepositoryError
    from gateway.runtime import ModelLoadError

    if args.chunk_rows < 1 or args.batch_rows < 1 or args.threads < 0:
        return _fail("--chunk-rows and --batch-rows must be at least 1, --threads at least 0")
    name, _, version = args.model.partition(":")
    try:
        scorer = Scorer.from_repository(
            args.repo, name, version or None, provider=args.provider, threads=args.threads,
            batch_rows=args.batch_rows, range_policy=args.range_policy,
        )  # fmt: skip
        report = score_file(
            scorer, args.input, args.output, keep=[c for c in args.keep.split(",") if c],
            rejects=args.rejects, chunk_rows=args.chunk_rows, input_format=args.input_format,
            output_format=args.output_format, progress=args.progress, progress_every=args.progress_every,
        )  # fmt: skip
    except (ScoreError, RepositoryError, ModelLoadError, ValueError) as exc:
        return _fail(str(exc))
    m = scorer.manifest
    print(
        f"{m.name}:{m.version}: {report.scored:,} of {report.rows:,} rows scored into {report.output} "
        f"in {report.seconds:.1f}s ({report.rows_per_second:,.0f} rows/s); "
        + (f"{report.rejected:,} rejected, see {report.rejects}" if report.rejected else "none rejected")
    )
    return EXIT_REJECTED if report.rejected else 0
