#!/usr/bin/env python
"""Interleaved A/B of two builds of ``mia_fast._C`` on the same logits (plain `token_stats`, no
temperatures): did a change slow the kernel down?

Usage::

    git worktree add /tmp/base <commit> && (cd /tmp/base && python setup.py build_ext --inplace)
    python benchmarks/ab_extension.py /tmp/base/mia_fast/_C.*.so mia_fast/_C.*.so

Each build runs in its own worker process: one process cannot hold two builds of the same
extension module (CPython hands back the module it loaded first under that name, whatever the
path). The workers build the same logits from the same seed, and the rounds alternate A, B, A,
B, ... so that both builds see the same drift of a shared machine. Prints, per dtype and V, the
median time of each build and their ratio B / A.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import time

CASES = (("float32", 32000, 2048), ("float32", 256000, 512), ("bfloat16", 32000, 2048), ("bfloat16", 256000, 512))


def _worker(path: str, threads: int, simd: str | None, conn) -> None:
    """Load one build, then time `token_stats` once per request ``(dtype, V, N)``; None stops."""
    if simd:
        os.environ["MIA_FAST_SIMD"] = simd
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    spec = importlib.util.spec_from_file_location("_C", path)
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    conn.send((os.path.realpath(ext.__file__), ext.simd_level()))
    case = data = None
    while (request := conn.recv()) is not None:
        if request != case:
            dtype, vocab, rows = case = request
            torch.manual_seed(0)
            x = (torch.randn(rows, vocab) * 3).to(getattr(torch, dtype))
            targets = torch.randint(0, vocab, (rows,)).numpy()
            view = (x.view(torch.int16) if x.dtype == torch.bfloat16 else x).numpy()
            data = view, targets
        view, targets = data
        outs = [np.empty(rows, np.float32)] * 5 + [np.empty(rows, np.int64)] + \
               [np.empty(rows, np.float32)] * 2 + [np.empty(rows, np.int64)]
        t0 = time.perf_counter()
        ext.token_stats(view, dtype, targets, -100, outs, threads)
        conn.send(time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="path of build A (the baseline) of mia_fast._C")
    p.add_argument("b", help="path of build B")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per build and case")
    p.add_argument("--simd-a", default=None, help="MIA_FAST_SIMD for build A (e.g. avx2)")
    p.add_argument("--simd-b", default=None, help="MIA_FAST_SIMD for build B")
    args = p.parse_args(argv)
    for path in (args.a, args.b):
        if not os.path.isfile(path):
            p.error(f"no such build: {path}")
    ctx = mp.get_context("spawn")
    workers = {}
    for key, path, simd in (("A", args.a, args.simd_a), ("B", args.b, args.simd_b)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(path, args.threads, simd, child), daemon=True)
        proc.start()
        workers[key] = (proc, parent)
    try:
        for key, (_, conn) in workers.items():
            origin, level = conn.recv()
            print(f"{key}: {origin} (SIMD level {level})")
        print(f"threads: {args.threads}, rounds: {args.rounds}\n")
        print("| dtype | V | N | A ms | B ms | B / A |\n|---|---:|---:|---:|---:|---:|")
        for case in CASES:
            times: dict[str, list[float]] = {k: [] for k in workers}
            for r in range(args.warmup + args.rounds):
                for key, (_, conn) in workers.items():
                    conn.send(case)
                    elapsed = conn.recv()
                    if r >= args.warmup:
                        times[key].append(elapsed)
            a, b = (statistics.median(times[k]) for k in ("A", "B"))
            dtype, vocab, rows = case
            print(f"| {dtype} | {vocab} | {rows} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.3f} |")
    finally:
        for proc, conn in workers.values():
            if proc.is_alive():
                conn.send(None)
            proc.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
