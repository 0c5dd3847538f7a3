#!/usr/bin/env python
"""Time and peak extra memory of `mia_fast.token_stats_from_hidden` (the fused lm_head path)
against materialising the logits, measured in one run on the same tensors.

Providers, on one device, for ``hidden (N, d)``, ``weight (V, d)`` (optionally ``bias (V,)``) and
N random targets:

* ``fused``    ``mia_fast.token_stats_from_hidden(hidden, weight, targets, bias=bias)`` with the
               device's kernel: ``triton`` on CUDA, ``cpp`` on CPU;
* ``unfused``  ``logits = hidden @ weight.T (+ bias)`` in the input dtype, then
               ``mia_fast.token_stats(logits, targets)`` with the same kernel family;
* ``matmul``   ``hidden @ weight.T`` alone: the floor both are bound by;
* ``fused_gemm`` (bf16 on a CPU with AMX) the fused path with its tiles made by torch's fp32 GEMM
               on the matrix units (every weight slice widened to fp32), as on CPUs without AMX:
               what ``fused`` computing the logits on the AMX tiles itself replaces.

Providers are timed interleaved round-robin (rotating the order each round) so that the ratios
compare samples taken under the same load. Times are medians with min-max and IQR. Peak extra
memory of one call: ``torch.cuda.max_memory_allocated`` delta on CUDA; on CPU the peak resident
set (VmHWM) delta of one call in a fresh subprocess per provider (torch's CPU allocator is not
tracked otherwise). Both include the outputs.

Usage::

    python benchmarks/bench_fused_linear.py            # CUDA: N=8192 d=2048 V=128256 bf16; CPU: N=512 d=576 V=49152 fp32
    python benchmarks/bench_fused_linear.py --quick    # smoke run (< 30 s on CPU)
    python benchmarks/bench_fused_linear.py --device cpu --rows 1024 --out fused.md --json fused.json

The exit status is 0 whenever the benchmark ran (the numbers are reported, never judged), 1 when
the fused provider raised.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

PROVIDERS = ("fused", "unfused", "matmul")


def providers(hidden, weight) -> tuple[str, ...]:
    """The providers of a run: ``fused_gemm`` only where ``fused`` takes the AMX tiles instead."""
    from mia_fast import api
    from mia_fast.backends import cpp_extension

    ext = cpp_extension()
    amx = hidden.device.type == "cpu" and ext is not None and api._amx_head(ext, hidden, weight)
    return PROVIDERS + (("fused_gemm",) if amx else ())


FIELDS = ("logprob", "lse", "entropy", "var_logp", "max_logprob", "argmax", "log1m_p", "margin", "rank")
DEFAULTS = {  # (rows, dim, vocab, dtype)
    "cuda": (8192, 2048, 128256, "bfloat16"),
    "cpu": (512, 576, 49152, "float32"),
}
QUICK = {
    "cuda": (1024, 576, 32000, "bfloat16"),
    "cpu": (64, 128, 4096, "float32"),
}
_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}


# ---------------------------------------------------------------------------------------------
# inputs and providers


def make_inputs(rows: int, dim: int, vocab: int, dtype_name: str, device: str, bias: bool, seed: int = 0):
    """hidden ~ N(0, 1), weight ~ N(0, 9/d) (logits ~ N(0, 9)), optional bias, random targets."""
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=gen, device=device).to(dtype)
    weight = torch.empty(vocab, dim, dtype=dtype, device=device)
    step = max(1, (1 << 22) // dim)  # generated in chunks: no full-size fp32 temporary
    for start in range(0, vocab, step):
        stop = min(vocab, start + step)
        weight[start:stop] = torch.randn(stop - start, dim, generator=gen, device=device) * (3.0 / math.sqrt(dim))
    b = torch.randn(vocab, generator=gen, device=device).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=gen, device=device)
    return hidden, weight, b, targets


def kernel_backend(device: str) -> str:
    return "triton" if device == "cuda" else "cpp"


def build_provider(name: str, hidden, weight, bias, targets) -> Callable[[], object]:
    import mia_fast

    backend = kernel_backend(hidden.device.type)
    if name == "fused":
        return lambda: mia_fast.token_stats_from_hidden(hidden, weight, targets, bias=bias, backend=backend)
    if name == "unfused":

        def unfused():
            logits = hidden @ weight.T
            if bias is not None:
                logits += bias
            return mia_fast.token_stats(logits, targets, backend=backend)

        return unfused
    if name == "matmul":
        return lambda: hidden @ weight.T
    if name == "fused_gemm":
        from mia_fast import api

        def fused_gemm():
            tiles = api._amx_head
            api._amx_head = lambda *a: False
            try:
                return mia_fast.token_stats_from_hidden(hidden, weight, targets, bias=bias, backend=backend)
            finally:
                api._amx_head = tiles

        return fused_gemm
    raise ValueError(f"unknown provider {name!r}")


def compare(fused, unfused) -> dict:
    """Largest disagreement of the two token-stat results (unfused logits are rounded to the input
    dtype, fused ones are not: with 16-bit inputs they differ by that rounding)."""
    out: dict = {}
    for name in FIELDS:
        a, b = getattr(fused, name), getattr(unfused, name)
        if name in ("argmax", "rank"):
            out[name] = {"agree_fraction": float((a == b).double().mean())}
        else:
            finite = a.isfinite() & b.isfinite()
            out[name] = {"max_abs": float((a[finite].double() - b[finite].double()).abs().max()) if finite.any() else 0.0}
    return out


# ---------------------------------------------------------------------------------------------
# memory probes


def cpu_memory_child(args) -> None:
    """Entry of the ``--_child-mem PROVIDER`` subprocess: one JSON line with the peak extra
    resident memory of one call of PROVIDER (VmHWM after - before, warmed up, peak reset)."""
    name = args._child_mem
    hidden, weight, bias, targets = make_inputs(args.rows, args.dim, args.vocab, args.dtype, "cpu", args.bias, args.seed)
    resettable = C.reset_peak_rss()
    result: dict = {"provider": name, "peak_reset": resettable}
    fn = build_provider(name, hidden, weight, bias, targets)
    if resettable:
        fn()  # warm-up (thread pools, lazily built code) on the full input; its peak is reset below
    else:  # warm up on 2 rows only, so that the high-water mark stays at the inputs
        build_provider(name, hidden[:2], weight, bias, targets[:2])()
    gc.collect()
    C.release_free_memory()
    C.reset_peak_rss()
    before = C.peak_rss_bytes()
    out = fn()
    after = C.peak_rss_bytes()
    del out
    result["extra_bytes"] = after - before
    result["method"] = "VmHWM delta after resetting the peak" if resettable else "ru_maxrss delta (no reset)"
    print(json.dumps(result))


def measure_cpu_memory(name: str, args) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--_child-mem", name, "--device", "cpu",
        "--rows", str(args.rows), "--dim", str(args.dim), "--vocab", str(args.vocab), "--dtype", args.dtype,
        "--threads", str(args.threads), "--seed", str(args.seed),
    ] + (["--bias"] if args.bias else [])
    env = dict(os.environ, MIA_FAST_NUM_THREADS=str(args.threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    except subprocess.TimeoutExpired:
        return {"failed": "memory subprocess timed out"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"memory subprocess exited {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# the run


def run(args) -> dict:
    import torch

    device = args.device
    result: dict = {
        "device": device, "rows": args.rows, "dim": args.dim, "vocab": args.vocab, "dtype": args.dtype,
        "bias": args.bias, "backend": kernel_backend(device), "providers": {},
        "logits_bytes": args.rows * args.vocab * torch.empty(0, dtype=getattr(torch, args.dtype)).element_size(),
        "fp32_logits_bytes": args.rows * args.vocab * 4,
    }
    C.log(f"[{device} {args.dtype} N={args.rows} d={args.dim} V={args.vocab}] inputs ...")
    hidden, weight, bias, targets = make_inputs(args.rows, args.dim, args.vocab, args.dtype, device, args.bias, args.seed)
    timer = C.Timer(device)
    fns: dict = {}
    firsts: dict = {}
    for name in providers(hidden, weight):
        entry: dict = {}
        result["providers"][name] = entry
        C.log(f"    build + warm up {name} ...")
        try:
            fn = build_provider(name, hidden, weight, bias, targets)
            t0 = time.perf_counter()
            firsts[name] = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            entry["first_call_s"] = time.perf_counter() - t0  # includes the kernel compile on CUDA
            for _ in range(max(0, args.warmup - 1)):
                fn()
            inner = 1
            if device == "cuda":
                one = timer(fn)
                inner = int(min(50, max(1, math.ceil(2e-3 / max(one, 1e-7)))))
            entry["inner"] = inner
            fns[name] = fn
        except Exception as exc:  # noqa: BLE001 - a failure is a result
            entry["failed"] = C.short_reason(exc)
            C.log(f"    {name} failed: {entry['failed']}")
    if "fused" in firsts and "unfused" in firsts:
        result["fused_vs_unfused"] = compare(firsts["fused"], firsts["unfused"])
    firsts.clear()

    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)] if names else []
        for name in order:
            try:
                samples[name].append(timer(fns[name], result["providers"][name]["inner"]))
            except Exception as exc:  # noqa: BLE001
                result["providers"][name]["failed"] = C.short_reason(exc)
                names.remove(name)
        C.log(f"    round {r + 1}/{args.repeats}: " + ", ".join(f"{n}={C.fmt_ms(s[-1])}ms" for n, s in samples.items() if s))
    for name, xs in samples.items():
        entry = result["providers"][name]
        entry["samples_s"] = xs
        entry["summary"] = C.summarize(xs)
        if xs:
            entry["tokens_per_s"] = args.rows / entry["summary"]["median"]

    if args.memory:
        for name, fn in fns.items():
            if name == "matmul":  # its extra memory is the logits themselves
                continue
            C.log(f"    memory of {name} ...")
            try:
                entry = result["providers"][name]
                entry["memory"] = C.measure_cuda_memory(fn) if device == "cuda" else measure_cpu_memory(name, args)
            except Exception as exc:  # noqa: BLE001
                result["providers"][name]["memory"] = {"failed": C.short_reason(exc)}
    fns.clear()
    del hidden, weight, bias, targets
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------
# report


def _median(result: dict, name: str) -> Optional[float]:
    e = result["providers"].get(name) or {}
    return e["summary"]["median"] if e.get("samples_s") else None


def _memory(result: dict, name: str) -> Optional[int]:
    mem = (result["providers"].get(name) or {}).get("memory") or {}
    return mem.get("extra_bytes")


def markdown(result: dict, machine: dict, command: str) -> str:
    r = result
    lines = ["# Fused lm_head token statistics: `token_stats_from_hidden` vs logits + `token_stats`", ""]
    lines.append(f"Command: `{command}`  ")
    lines.append(
        f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_count')} cores; torch {machine.get('torch')}; "
        f"GPU: {machine.get('gpu') or 'none'}; triton {machine.get('triton', '-')}  "
    )
    lines.append(
        f"Device {r['device']}, kernels `backend=\"{r['backend']}\"`; hidden ({r['rows']}, {r['dim']}), "
        f"weight ({r['vocab']}, {r['dim']}) {r['dtype']}{', bias' if r['bias'] else ''}; logits ~ N(0, 9). "
        f"Times per call over the N rows: median [min–max] (IQR) of n samples, providers interleaved round-robin. "
        f"Extra memory: peak allocation above the inputs during one call, outputs included "
        f"({'torch.cuda.max_memory_allocated delta' if r['device'] == 'cuda' else 'VmHWM delta in a fresh subprocess per provider'}); "
        f"the (N, V) logits are {r['logits_bytes'] / 2**20:.0f} MiB in {r['dtype']}."
    )
    lines += ["", "| provider | median ms | min–max ms | IQR ms | n | tokens/s | extra memory MiB | time ÷ unfused | memory ÷ unfused | notes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    med_u, mem_u = _median(r, "unfused"), _memory(r, "unfused")
    for name, e in r["providers"].items():
        s = e.get("summary") or {}
        notes = []
        if e.get("failed"):
            notes.append(f"FAILED: {e['failed']}")
        if "first_call_s" in e:
            notes.append(f"1st call {e['first_call_s']:.2f} s")
        if e.get("inner", 1) > 1:
            notes.append(f"{e['inner']} calls/sample")
        mem_entry = e.get("memory") or {}
        if mem_entry.get("failed"):
            notes.append(f"memory: {mem_entry['failed']}")
        med, mem = _median(r, name), _memory(r, name)
        if s.get("n"):
            cells = [C.fmt_ms(s["median"]), f"{C.fmt_ms(s['min'])}–{C.fmt_ms(s['max'])}",
                     f"{C.fmt_ms(s['q1'])}–{C.fmt_ms(s['q3'])}", str(s["n"]), C.fmt_rate(e.get("tokens_per_s"))]
        else:
            cells = ["-", "-", "-", "0", "-"]
        cells.append("-" if mem is None else f"{mem / 2**20:.1f}")
        cells.append("-" if med is None or med_u is None else C.fmt_ratio(med / med_u))
        cells.append("-" if mem is None or not mem_u else f"{mem / mem_u:.3f}")
        cells.append("; ".join(notes))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    diff = r.get("fused_vs_unfused")
    if diff:
        parts = []
        for f in FIELDS:
            d = diff[f]
            parts.append(f"{f} {d['agree_fraction']:.4f} agree" if "agree_fraction" in d else f"{f} {d['max_abs']:.2g}")
        why = "" if r["dtype"] == "float32" else f"; the unfused logits are rounded to {r['dtype']}, the fused ones stay fp32"
        lines += ["", f"fused vs unfused (max |difference|, agreement of the integer fields{why}): " + ", ".join(parts) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available, else CPU")
    p.add_argument("--rows", type=int, default=None, help="N tokens (default: CUDA 8192, CPU 512)")
    p.add_argument("--dim", type=int, default=None, help="d, the hidden size (default: CUDA 2048, CPU 576)")
    p.add_argument("--vocab", type=int, default=None, help="V (default: CUDA 128256, CPU 49152)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: CUDA bfloat16, CPU float32)")
    p.add_argument("--bias", action="store_true", help="add an output bias")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; --quick 3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per provider (>= 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch and of the cpp kernel")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (CUDA N=1024 d=576 V=32000; CPU N=64 d=128 V=4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the markdown report to this file")
    p.add_argument("--json", default=None, help="write raw numbers and machine info to this JSON file")
    p.add_argument("--_child-mem", dest="_child_mem", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available to torch")
    rows, dim, vocab, dtype = (QUICK if args.quick else DEFAULTS)[args.device]
    args.rows = args.rows or rows
    args.dim = args.dim or dim
    args.vocab = args.vocab or vocab
    args.dtype = _DTYPE_ALIASES.get((args.dtype or dtype).lower())
    if args.dtype is None:
        p.error("--dtype: expected float32, bfloat16 or float16")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if min(args.rows, args.dim, args.vocab, args.repeats, args.warmup) < 1:
        p.error("--rows, --dim, --vocab, --repeats and --warmup must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.threads = C.set_threads(args.threads)
    if args._child_mem is not None:
        cpu_memory_child(args)
        return 0
    machine = C.machine_info()
    C.log(f"machine: {machine}")
    command = C.command_line(__file__, argv)
    t0 = time.perf_counter()
    result = run(args)
    result["elapsed_s"] = time.perf_counter() - t0
    report = markdown(result, machine, command)
    sys.stdout.write(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "machine": machine, "result": result}, f, indent=1, default=str)
    C.log(f"done in {result['elapsed_s']:.1f} s")
    return 1 if result["providers"]["fused"].get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
