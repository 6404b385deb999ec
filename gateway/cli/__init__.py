"""The `gateway` command line: `main` parses and dispatches (convert, models, demo, score, serve).

`serve` and `score` are modules of their own, imported only when their subcommand runs.
"""

from gateway.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
