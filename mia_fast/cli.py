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
    saved, sys.argv = sys.argv, [str(script), *args.bench_args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:  # the script ends with sys.exit(status)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
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
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mia-fast``; returns the process exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":  # everything after `bench` belongs to the benchmark script
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
