"""The ``mia-fast`` command line (also ``python -m mia_fast``)."""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_token_stats.py"
    if not script.is_file():
        print(
            f"mia-fast bench: {script} not found; the benchmarks ship with the source tree "
            "(run from a checkout installed with `pip install -e .`)",
            file=sys.stderr,
        )
        return 2
    sys.argv = [str(script), *args.bench_args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mia-fast", description="Membership-inference scoring engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, built backends (and why not), SIMD level in use")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_cmd_info)
    bench = sub.add_parser(
        "bench",
        help="token-statistics throughput vs torch eager, torch.compile and the memory roofline",
        description="Runs benchmarks/bench_token_stats.py; arguments after `bench` are passed to it "
        "(e.g. `mia-fast bench --quick`, `mia-fast bench --help`).",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mia-fast``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
