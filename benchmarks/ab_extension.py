#!/usr/bin/env python
"""Interleaved A/B of two builds of ``mia_fast._C`` on the same logits (plain `token_stats`, no
temperatures): did a change slow the kernel down?

Usage::

    git worktree add /tmp/base <commit> && (cd /tmp/base && python setup.py build_ext --inplace)
    python benchmarks/ab_extension.py /tmp/base/mia_fast/_C.*.so mia_fast/_C.*.so

Prints, per dtype and V, the median time of each build over interleaved calls and their ratio B / A.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import numpy as np
import torch


def load(path: str):
    spec = importlib.util.spec_from_file_location("_C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="path of build A (the baseline) of mia_fast._C")
    p.add_argument("b", help="path of build B")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    builds = {"A": load(args.a), "B": load(args.b)}
    torch.manual_seed(0)
    print("| dtype | V | N | A ms | B ms | B / A |\n|---|---:|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        for vocab, rows in ((32000, 2048), (256000, 512)):
            x = (torch.randn(rows, vocab) * 3).to(dtype)
            t = torch.randint(0, vocab, (rows,)).numpy()
            view = (x.view(torch.int16) if dtype == torch.bfloat16 else x).numpy()
            name = str(dtype).removeprefix("torch.")
            times: dict[str, list[float]] = {k: [] for k in builds}
            for _ in range(args.rounds):
                for key, ext in builds.items():
                    outs = [np.empty(rows, np.float32)] * 5 + [np.empty(rows, np.int64)] + \
                           [np.empty(rows, np.float32)] * 2 + [np.empty(rows, np.int64)]
                    t0 = time.perf_counter()
                    ext.token_stats(view, name, t, -100, outs, args.threads)
                    times[key].append(time.perf_counter() - t0)
            a, b = (statistics.median(times[k]) for k in ("A", "B"))
            print(f"| {name} | {vocab} | {rows} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
