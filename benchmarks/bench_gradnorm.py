#!/usr/bin/env python
"""Per-sample gradient norms: batched ``torch.func.vmap(grad)`` against one backward per sample.

Cases (random weights and inputs: the time does not depend on what the model learned):

* ``gpt2``: a GPT-2 with 2 layers, n_embd 64, 2 heads and a 4096-token vocabulary (tied
  embeddings), N sequences of T tokens, `mia_fast.scoring.gradients.lm_gradient_norms`;
* ``digits mlp``: an MLP 64 -> 128 -> 10 on sklearn's digits images,
  `mia_fast.scoring.gradients.classifier_gradient_norms`.

Each with ``params="all"`` and ``params="head"`` (GPT-2's head is tied to its input embedding, so
its gradient still runs through the whole model), and the methods ``vmap`` and ``loop`` timed
interleaved (the order rotates every round) so that the ratio compares samples taken under the
same load. A time is one call over all N samples: median [min-max] (IQR) of n rounds after one
warm-up; "vmap speed-up" = loop median / vmap median; "max rel diff" compares the two methods' norms.

Usage::

    python benchmarks/bench_gradnorm.py            # writes benchmarks/results/cpu_bench_gradnorm.md
    python benchmarks/bench_gradnorm.py --quick    # < 30 s, writes nothing unless --out/--json
    python benchmarks/bench_gradnorm.py --json benchmarks/results/cpu_bench_gradnorm.json
    python benchmarks/bench_gradnorm.py --threads 2     # intra-op threads (default 1)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

FULL = {"sequences": 32, "seq_lens": (64, 128), "images": 512, "repeats": 7}
QUICK = {"sequences": 6, "seq_lens": (64,), "images": 128, "repeats": 3}
VOCAB = 4096
RESULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu_bench_gradnorm.md")
METHODS = ("vmap", "loop")
PARAMS = ("all", "head")


def gpt2_case(n: int, seq_len: int, seed: int):
    """A random 2-layer GPT-2 (n_embd 64) and ``n`` right-padded sequences of 3/4 to all of ``seq_len`` tokens."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=seq_len,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq_len), generator=generator)
    lengths = torch.randint(3 * seq_len // 4, seq_len + 1, (n,), generator=generator)
    mask = (torch.arange(seq_len).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
    return model, ids, mask


def digits_case(n: int, seed: int):
    """A random MLP 64 -> 128 -> 10 and ``n`` digits images (scaled to [0, 1]) with their labels."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    return model, torch.tensor(x[idx] / 16.0, dtype=torch.float32), torch.tensor(y[idx])


def cases(args) -> list[tuple[str, int, int, Callable[[str, str], np.ndarray]]]:
    """(case name, samples, tokens per call, fn(params, method) -> norms)."""
    from mia_fast.scoring.gradients import classifier_gradient_norms, lm_gradient_norms

    out = []
    for seq_len in args.seq_lens:
        model, ids, mask = gpt2_case(args.sequences, seq_len, args.seed)
        out.append((f"gpt2 T={seq_len}", args.sequences, int(mask.sum()),
                    lambda params, method, m=model, i=ids, a=mask: lm_gradient_norms(m, i, a, params=params, method=method)))
    mlp, x, y = digits_case(args.images, args.seed)
    out.append(("digits mlp", args.images, 0,
                lambda params, method: classifier_gradient_norms(mlp, x, y, params=params, method=method)))
    return out


def run(args) -> list[dict]:
    rows = []
    for case, n, tokens, fn in cases(args):
        for params in PARAMS:
            firsts = {m: fn(params, m) for m in METHODS}  # warm-up, and the norms compared below
            samples: dict[str, list[float]] = {m: [] for m in METHODS}
            for r in range(args.repeats):
                for method in METHODS[r % 2:] + METHODS[: r % 2]:
                    t0 = time.perf_counter()
                    fn(params, method)
                    samples[method].append(time.perf_counter() - t0)
            summaries = {m: C.summarize(s) for m, s in samples.items()}
            diff = float(np.max(np.abs(firsts["vmap"] - firsts["loop"]) / np.abs(firsts["loop"])))
            speedup = summaries["loop"]["median"] / summaries["vmap"]["median"]
            C.log(f"  {case} params={params}: vmap {C.fmt_ms(summaries['vmap']['median'])} ms, "
                  f"loop {C.fmt_ms(summaries['loop']['median'])} ms ({C.fmt_ratio(speedup)})")
            for method in METHODS:
                rows.append({"case": case, "params": params, "method": method, "samples": n, "tokens": tokens,
                             "summary": summaries[method], "samples_per_s": n / summaries[method]["median"],
                             "vmap_speedup": speedup if method == "vmap" else None,
                             "max_rel_diff": diff if method == "vmap" else None})
    return rows


def markdown(rows: list[dict], args, machine: dict, command: str) -> str:
    lines = ["# Per-sample gradient norms: vmap vs one backward per sample", ""]
    lines.append(f"Command: `{command}`  ")
    lines.append(f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_count')} cores "
                 f"({machine.get('affinity_cores')} usable), torch {machine.get('torch')} with "
                 f"{machine.get('torch_num_threads')} threads  ")
    lines.append(
        f"GPT-2: 2 layers, n_embd 64, vocabulary {VOCAB}, tied embeddings, {args.sequences} sequences of "
        f"3/4 to all of T tokens (right-padded); digits MLP 64-128-10, {args.images} images. A time is one "
        "call over all samples: median [min–max] (IQR) of n rounds, methods interleaved; vmap speed-up = "
        "loop median ÷ vmap median; max rel diff = largest |vmap − loop| / loop over the samples."
    )
    lines += ["", "| case | params | method | median ms | min–max ms | IQR ms | n | samples/s | tokens/s | vmap speed-up | max rel diff |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["summary"]
        cells = [r["case"], r["params"], r["method"], C.fmt_ms(s["median"]), f"{C.fmt_ms(s['min'])}–{C.fmt_ms(s['max'])}",
                 f"{C.fmt_ms(s['q1'])}–{C.fmt_ms(s['q3'])}", str(s["n"]), C.fmt_rate(r["samples_per_s"]),
                 C.fmt_rate(r["tokens"] / s["median"]) if r["tokens"] else "-",
                 C.fmt_ratio(r["vmap_speedup"]) if r["vmap_speedup"] is not None else "-",
                 f"{r['max_rel_diff']:.1e}" if r["max_rel_diff"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run (< 30 s); writes no file unless asked")
    p.add_argument("--sequences", type=int, default=None, help="GPT-2 sequences per call (default 32; --quick 6)")
    p.add_argument("--seq-lens", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                   help="comma-separated sequence lengths T (default 64,128; --quick 64)")
    p.add_argument("--images", type=int, default=None, help="digits images per call (default 512; --quick 128)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; --quick 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these models are too small to split over cores, and on a "
                   "shared machine more threads mostly add contention)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"markdown report (default without --quick: {os.path.relpath(RESULT_FILE)})")
    p.add_argument("--json", default=None, help="also write the rows and the machine as JSON here")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key in ("sequences", "seq_lens", "images", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, sizes[key])
    if min(args.sequences, args.images, args.repeats, *args.seq_lens) < 1 or min(args.seq_lens) < 2:
        p.error("--sequences, --images and --repeats must be positive, every --seq-lens at least 2")
    if args.out is None and not args.quick:
        args.out = RESULT_FILE
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    C.set_threads(args.threads)
    machine = C.machine_info()
    command = C.command_line(__file__, argv)
    t0 = time.perf_counter()
    rows = run(args)
    report = markdown(rows, args, machine, command)
    sys.stdout.write(report)
    if args.out:
        C.write_text(args.out, report)
    if args.json:
        C.write_text(args.json, json.dumps({"command": command, "machine": machine, "vocab": VOCAB, "rows": rows}, indent=2))
    C.log(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
