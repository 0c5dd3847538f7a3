#!/usr/bin/env python
"""Throughput and memory of `mia_fast.token_stats` against torch eager, torch.compile and the
machine's own memory roofline, measured in one run on the same tensors.

Providers, per (device, dtype, V) on one (N, V) logits tensor and N random targets:

* ``cpp``      ``mia_fast.token_stats(x, t, backend="cpp")`` (CPU; all fields);
* ``triton``   the same with ``backend="triton"`` (CUDA only);
* ``eager``    the same fields in plain torch as users write them (`eager_token_stats`), bf16/fp16
               logits upcast with ``x.float()``;
* ``compile``  `eager_token_stats` under ``torch.compile`` (inductor; compiled once per shape,
               warmed up, then timed; a failed compile marks the row failed);
* ``roofline`` ``x.amax(-1)``: a plain read reduction of the same bytes;
* ``copy``     (CUDA only) ``y.copy_(x)``, the device copy bandwidth, counted as read + write bytes.

Providers are timed interleaved round-robin (rotating the order every round) so that the ratios
compare samples taken under the same machine load. Times are medians with min-max and IQR.

Usage::

    python benchmarks/bench_token_stats.py                       # full run (several minutes)
    python benchmarks/bench_token_stats.py --quick               # smoke run, < 30 s (CI)
    python benchmarks/bench_token_stats.py --vocab 32000,50257 --dtypes float32 --measure-memory \
        --out results.md --json results.json

The exit status is 0 whenever the benchmark ran, whatever the PASS/FAIL of the targets; it is 1
only when the kernel under test (``cpp``, or ``triton`` on CUDA) raised.
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

DEFAULT_VOCABS = (32000, 50257, 128256, 256000)
DEFAULT_ROWS = 2048
QUICK_ROWS = 256
QUICK_VOCABS = (32000,)
LOGIT_SCALE = 3.0  # logits ~ N(0, 3^2): a peaked but non-degenerate softmax
FIELDS = ("logprob", "lse", "entropy", "var_logp", "max_logprob", "argmax", "log1m_p", "margin", "rank")
INT_FIELDS = ("argmax", "rank")

# Targets printed beside the results (never adjusted to pass).
CPU_ROOFLINE_MAX = {"float32": 1.5, "bfloat16": 2.5, "float16": 2.5}  # cpp time / roofline time
CPU_EAGER_MIN = 30.0  # eager time / cpp time
CPU_COMPILE_MIN = 8.0  # compile time / cpp time
GPU_COPY_FRACTION_MIN = 0.85  # triton read GB/s / copy (read+write) GB/s
GPU_EAGER_MIN = 3.0
GPU_COMPILE_MIN = 1.5
CPU_TEMPERATURE_MAX = 0.25  # extra time per temperature / kernel time without temperatures

# Temperature sets timed beside the kernel (providers "cpp@0.5,2" etc.): on the ladder of
# squarings (1/tau in {1/4, 1/2, 2, 4}: no extra exponential) and off it (one per temperature).
DEFAULT_TEMPERATURE_SETS = "0.5,2;0.25,0.5,2,4;0.7;0.7,3"
QUICK_TEMPERATURE_SETS = "0.5,2;0.7"

_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}


# ---------------------------------------------------------------------------------------------
# the baseline as users write it


def eager_token_stats(logits, targets, ignore_index: int = -100):
    """Every `TokenStats` field with the usual torch recipe (several (N, V) temporaries)."""
    import torch

    z = logits.float()
    mask = targets != ignore_index
    y = torch.where(mask, targets, 0).unsqueeze(-1)
    logp = torch.log_softmax(z, dim=-1)
    p = torch.softmax(z, dim=-1)
    lse = torch.logsumexp(z, dim=-1)
    entropy = -(p * logp).sum(-1)
    var_logp = (p * logp * logp).sum(-1) - entropy * entropy  # E_p[logp^2] - E_p[logp]^2
    logprob = logp.gather(-1, y).squeeze(-1)
    max_logprob = logp.amax(-1)
    argmax = z.argmax(-1)
    z_y = z.gather(-1, y)
    z_other = z.scatter(-1, y, float("-inf"))
    log1m_p = torch.logsumexp(z_other, dim=-1) - lse
    margin = z_y.squeeze(-1) - z_other.amax(-1)
    rank = (z > z_y).sum(-1)
    nan = torch.tensor(float("nan"), device=z.device)
    floats = [torch.where(mask, f, nan) for f in (logprob, lse, entropy, var_logp, max_logprob)]
    argmax = torch.where(mask, argmax, -1)
    log1m_p, margin = torch.where(mask, log1m_p, nan), torch.where(mask, margin, nan)
    rank = torch.where(mask, rank, -1)
    return (*floats, argmax, log1m_p, margin, rank)


# ---------------------------------------------------------------------------------------------
# inputs and providers


def make_inputs(rows: int, vocab: int, dtype_name: str, device: str, seed: int = 0):
    """(rows, vocab) logits and (rows,) targets, generated in row chunks so that no full-size
    fp32 temporary raises the process's peak memory above the inputs themselves."""
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty(rows, vocab, dtype=dtype, device=device)
    step = max(1, (1 << 22) // vocab)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        x[start:stop] = torch.randn(stop - start, vocab, generator=gen, device=device) * LOGIT_SCALE
    t = torch.randint(0, vocab, (rows,), generator=gen, device=device)
    return x, t


def build_provider(name: str, x, t) -> tuple[Optional[Callable[[], object]], dict]:
    """The zero-argument callable of provider ``name`` on (x, t), and info (compile time, failure)."""
    import torch

    import mia_fast

    info: dict = {}
    kernel, _, temps = name.partition("@")
    if kernel in ("cpp", "triton"):
        temperatures = tuple(float(v) for v in temps.split(",")) if temps else ()
        return (lambda: mia_fast.token_stats(x, t, backend=kernel, temperatures=temperatures)), info
    if name == "eager":
        return (lambda: eager_token_stats(x, t)), info
    if name == "roofline":
        return (lambda: x.amax(-1)), info
    if name == "copy":
        y = torch.empty_like(x)
        return (lambda: y.copy_(x)), info
    if name == "compile":
        try:
            torch._dynamo.reset()
            compiled = torch.compile(eager_token_stats, dynamic=False)
            t0 = time.perf_counter()
            compiled(x, t)
            if x.is_cuda:
                torch.cuda.synchronize()
            info["compile_s"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a failed compile is a result, not a crash
            info["failed"] = C.short_reason(exc)
            return None, info
        return (lambda: compiled(x, t)), info
    raise ValueError(f"unknown provider {name!r}")


def as_tuple(result) -> tuple:
    """Provider output as the 9 fields in FIELDS order (TokenStats or the eager tuple)."""
    if hasattr(result, "_fields"):
        return tuple(getattr(result, f) for f in FIELDS)
    return tuple(result)


def compare(result, reference) -> dict:
    """Worst disagreement of ``result`` with ``reference`` per field (both on the same device)."""
    out: dict = {}
    ok = True
    for name, a, b in zip(FIELDS, as_tuple(result), as_tuple(reference)):
        if name in INT_FIELDS:
            mism = int((a.long() != b.long()).sum())
            out[name] = {"mismatches": mism}
            ok &= mism == 0
        else:
            a64, b64 = a.double(), b.double()
            err = (a64 - b64).abs()
            tol = 1e-3 + 1e-3 * b64.abs()
            out[name] = {"max_abs": float(err.max()), "within_tol": bool((err <= tol).all())}
            ok &= out[name]["within_tol"]
    out["agree"] = bool(ok)
    return out


# ---------------------------------------------------------------------------------------------
# memory probes


def cpu_memory_child(args) -> None:
    """Entry of the ``--_child-mem PROVIDER`` subprocess: print one JSON line with the peak
    extra resident memory of one call of PROVIDER (ru_maxrss after - before)."""
    import torch

    threads = args.threads
    torch.set_num_threads(threads)
    os.environ["MIA_FAST_NUM_THREADS"] = str(threads)
    name = args._child_mem
    x, t = make_inputs(args.rows, int(args.vocab), args.dtypes, "cpu")
    resettable = C.reset_peak_rss()
    result: dict = {"provider": name, "peak_reset": resettable}
    if not resettable and name == "compile":
        result["failed"] = "peak RSS cannot be reset here (/proc/self/clear_refs); compile peak not measurable"
        print(json.dumps(result))
        return
    # Warm up: on the full input when the peak can be reset afterwards, else on 2 rows only so
    # that the high-water mark stays at the inputs.
    warm_x, warm_t = (x, t) if resettable else (x[:2], t[:2])
    fn, info = build_provider(name, warm_x, warm_t)
    if fn is None:
        result.update(info)
        print(json.dumps(result))
        return
    fn()
    if not resettable:
        fn, _ = build_provider(name, x, t)
    del warm_x, warm_t
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


def measure_cpu_memory(provider: str, rows: int, vocab: int, dtype: str, threads: int) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--_child-mem", provider,
        "--rows", str(rows), "--vocab", str(vocab), "--dtypes", dtype, "--threads", str(threads),
    ]
    env = dict(os.environ, MIA_FAST_NUM_THREADS=str(threads))
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
# one configuration


def run_config(device: str, dtype: str, vocab: int, args, kernel_errors: list) -> dict:
    import torch

    rows = args.rows
    providers = ["cpp"] if device == "cpu" else ["triton"]
    providers += [f"{providers[0]}@{temps}" for temps in args.temperature_sets]
    providers += ["eager"]
    if args.compile:
        providers.append("compile")
    providers.append("roofline")
    if device == "cuda":
        providers.append("copy")
    itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    cfg: dict = {
        "device": device, "dtype": dtype, "vocab": vocab, "rows": rows,
        "logits_bytes": rows * vocab * itemsize, "fp32_nv_bytes": rows * vocab * 4,
        "providers": {},
    }
    C.log(f"[{device} {dtype} V={vocab} N={rows}] inputs ...")
    x, t = make_inputs(rows, vocab, dtype, device, seed=args.seed)
    timer = C.Timer(device)
    fns: dict = {}
    outputs: dict = {}
    for name in providers:
        entry: dict = {}
        cfg["providers"][name] = entry
        C.log(f"[{device} {dtype} V={vocab}] build + warm up {name} ...")
        try:
            fn, info = build_provider(name, x, t)
            entry.update(info)
            if fn is None:
                C.log(f"    {name} failed: {info.get('failed')}")
                continue
            first = None
            for i in range(max(1, args.warmup)):
                t0 = time.perf_counter()
                out = fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                if first is None and name in ("cpp", "triton", "eager", "compile"):
                    first = out
                if i >= 1 and dt > 1.0:  # a slow provider: enough warm-up
                    break
            if first is not None:
                outputs[name] = first
            inner = 1
            if device == "cuda":
                one = timer(fn)
                inner = int(min(100, max(1, math.ceil(1e-3 / max(one, 1e-7)))))
            entry["inner"] = inner
            fns[name] = fn
        except Exception as exc:  # noqa: BLE001
            entry["failed"] = C.short_reason(exc)
            C.log(f"    {name} failed: {entry['failed']}")
            if name in ("cpp", "triton"):
                kernel_errors.append(f"{device} {dtype} V={vocab} {name}: {entry['failed']}")

    # Correctness sanity check: the baselines must compute the same fields as the kernel.
    kernel = "cpp" if device == "cpu" else "triton"
    checks = {}
    if kernel in outputs:
        for name in ("eager", "compile"):
            if name in outputs:
                checks[f"{name}_vs_{kernel}"] = compare(outputs[name], outputs[kernel])
    cfg["checks"] = checks
    outputs.clear()

    # Timing: interleaved round-robin, rotating the order; slow providers stop after their budget
    # once they have min_samples samples.
    samples = {name: [] for name in fns}
    spent = {name: 0.0 for name in fns}
    names = list(fns)
    min_samples = min(3, args.repeats)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)] if names else []
        ran = []
        for name in order:
            if len(samples[name]) >= min_samples and spent[name] >= args.budget:
                continue
            inner = cfg["providers"][name]["inner"]
            try:
                dt = timer(fns[name], inner)
            except Exception as exc:  # noqa: BLE001
                cfg["providers"][name]["failed"] = C.short_reason(exc)
                names.remove(name)
                continue
            samples[name].append(dt)
            spent[name] += dt * inner
            ran.append(name)
        if not ran:
            break
        C.log(f"    round {r + 1}/{args.repeats}: " + ", ".join(f"{n}={C.fmt_ms(samples[n][-1])}ms" for n in ran))

    for name, xs in samples.items():
        entry = cfg["providers"][name]
        entry["samples_s"] = xs
        entry["summary"] = C.summarize(xs)
        if xs:
            med = entry["summary"]["median"]
            moved = 2 * cfg["logits_bytes"] if name == "copy" else cfg["logits_bytes"]
            entry["tokens_per_s"] = rows / med
            entry["gb_per_s"] = moved / med / 1e9

    if device == "cuda" and args.measure_memory_cuda:
        for name, fn in fns.items():
            try:
                cfg["providers"][name]["memory"] = C.measure_cuda_memory(fn)
            except Exception as exc:  # noqa: BLE001
                cfg["providers"][name]["memory"] = {"failed": C.short_reason(exc)}

    fns.clear()
    del x, t
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    if device == "cpu" and args.measure_memory:
        for name in providers:
            if cfg["providers"][name].get("failed") or "@" in name:
                continue
            C.log(f"[{device} {dtype} V={vocab}] memory of {name} (subprocess) ...")
            cfg["providers"][name]["memory"] = measure_cpu_memory(name, rows, vocab, dtype, args.threads)

    cfg["ratios"], cfg["targets"] = ratios_and_targets(cfg)
    return cfg


def _median(cfg: dict, name: str) -> Optional[float]:
    entry = cfg["providers"].get(name)
    if not entry or entry.get("failed") or not entry.get("samples_s"):
        return None
    return entry["summary"]["median"]


def ratios_and_targets(cfg: dict) -> tuple[dict, dict]:
    ratios: dict = {}
    targets: dict = {}

    def check(key: str, value: Optional[float], bound: float, kind: str) -> None:
        ratios[key] = value
        if value is None:
            targets[key] = {"bound": bound, "kind": kind, "status": "n/a"}
        else:
            passed = value <= bound if kind == "max" else value >= bound
            targets[key] = {"bound": bound, "kind": kind, "status": "PASS" if passed else "FAIL"}

    med = {name: _median(cfg, name) for name in cfg["providers"]}
    div = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
    kernel = "cpp" if cfg["device"] == "cpu" else "triton"
    for name in cfg["providers"]:
        if name.startswith(kernel + "@"):  # extra time per temperature, relative to the kernel alone
            n_temps = len(name.partition("@")[2].split(","))
            extra = div(med.get(name), med.get(kernel))
            value = None if extra is None else (extra - 1.0) / n_temps
            key = f"+T/T {name.partition('@')[2]}"
            if cfg["device"] == "cpu":
                check(key, value, CPU_TEMPERATURE_MAX, "max")
            else:
                ratios[key] = value
    if cfg["device"] == "cpu":
        check("cpp/roofline", div(med.get("cpp"), med.get("roofline")), CPU_ROOFLINE_MAX.get(cfg["dtype"], 2.5), "max")
        check("eager/cpp", div(med.get("eager"), med.get("cpp")), CPU_EAGER_MIN, "min")
        if "compile" in cfg["providers"]:
            check("compile/cpp", div(med.get("compile"), med.get("cpp")), CPU_COMPILE_MIN, "min")
    else:
        tri = cfg["providers"].get("triton", {}).get("gb_per_s") if med.get("triton") else None
        cp = cfg["providers"].get("copy", {}).get("gb_per_s") if med.get("copy") else None
        check("triton GB/s / copy GB/s", div(tri, cp), GPU_COPY_FRACTION_MIN, "min")
        ratios["triton/roofline"] = div(med.get("triton"), med.get("roofline"))
        check("eager/triton", div(med.get("eager"), med.get("triton")), GPU_EAGER_MIN, "min")
        if "compile" in cfg["providers"]:
            check("compile/triton", div(med.get("compile"), med.get("triton")), GPU_COMPILE_MIN, "min")
    return ratios, targets


# ---------------------------------------------------------------------------------------------
# report


def markdown(results: dict) -> str:
    info = results["machine"]
    a = results["args"]
    lines = ["# mia_fast.token_stats benchmark", ""]
    lines.append(f"Command: `{results['command']}`  ")
    lines.append(
        f"Machine: {info.get('cpu_model')}, {info.get('cpu_count')} cores "
        f"({info.get('affinity_cores')} usable), {info.get('mem_total_gib')} GiB; torch {info.get('torch')}; "
        f"mia_fast._C SIMD level: {info.get('simd_level')}; GPU: {info.get('gpu') or 'none'}  "
    )
    lines.append(
        f"Threads: torch.set_num_threads({a['threads']}) and MIA_FAST_NUM_THREADS={a['threads']} (cpp kernel)  "
    )
    lines.append(
        f"N = {a['rows']} rows per call; logits ~ N(0, {LOGIT_SCALE:g}²), random targets. Times per call over all N rows: "
        f"median [min–max] (IQR) of n samples, providers interleaved round-robin in the same run "
        f"(repeats ≤ {a['repeats']}, slow providers stop after {a['budget']:g} s once they have 3 samples). "
        "tokens/s = N / median; GB/s = N·V·itemsize / median (logits bytes read once); "
        "copy GB/s counts read + write (2·N·V·itemsize / median)."
    )
    if results.get("memory_note"):
        lines.append("")
        lines.append(results["memory_note"])
    for device in ("cpu", "cuda"):
        cfgs = [c for c in results["configs"] if c["device"] == device]
        if not cfgs:
            continue
        lines += ["", f"## {device.upper()}", ""]
        lines.append(
            "| dtype | V | provider | median ms | min–max ms | IQR ms | n | tokens/s | GB/s | "
            "extra mem MB | ÷ (N,V) fp32 | notes |"
        )
        lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for cfg in cfgs:
            nv_mb = cfg["fp32_nv_bytes"] / 2**20
            for name, e in cfg["providers"].items():
                s = e.get("summary") or {}
                notes = []
                if e.get("failed"):
                    notes.append(f"FAILED: {e['failed']}")
                if "compile_s" in e:
                    notes.append(f"compile+1st call {e['compile_s']:.1f} s")
                if e.get("inner", 1) > 1:
                    notes.append(f"{e['inner']} calls/sample")
                mem = e.get("memory") or {}
                if mem.get("failed"):
                    notes.append(f"memory: {mem['failed']}")
                mem_mb = mem["extra_bytes"] / 2**20 if "extra_bytes" in mem else None
                if s.get("n"):
                    cells = [
                        C.fmt_ms(s["median"]), f"{C.fmt_ms(s['min'])}–{C.fmt_ms(s['max'])}",
                        f"{C.fmt_ms(s['q1'])}–{C.fmt_ms(s['q3'])}", str(s["n"]),
                        C.fmt_rate(e.get("tokens_per_s")), f"{e['gb_per_s']:.1f}",
                    ]
                else:
                    cells = ["-", "-", "-", "0", "-", "-"]
                cells += [
                    "-" if mem_mb is None else (f"{mem_mb:.1f}" if mem_mb >= 10 else f"{mem_mb:.3f}"),
                    "-" if mem_mb is None else f"{mem_mb / nv_mb:.2f}",
                    "; ".join(notes),
                ]
                lines.append(f"| {cfg['dtype']} | {cfg['vocab']} | {name} | " + " | ".join(cells) + " |")
        lines += ["", f"### {device.upper()} ratios (medians of the same run) and targets", ""]
        keys: list = []
        for cfg in cfgs:
            for k in cfg["ratios"]:
                if k not in keys:
                    keys.append(k)
        lines.append("| dtype | V | " + " | ".join(keys) + " | checks |")
        lines.append("|---|---:|" + "---:|" * len(keys) + "---|")
        for cfg in cfgs:
            cells = []
            for k in keys:
                v = cfg["ratios"].get(k)
                tg = cfg["targets"].get(k)
                if v is None:
                    cells.append("-" if not tg else f"- ({tg['status']})")
                    continue
                text = f"{v:.2f}" if "GB/s" in k else C.fmt_ratio(v)
                if tg:
                    op = "≤" if tg["kind"] == "max" else "≥"
                    bound = f"{tg['bound']:g}" if "GB/s" in k else f"{tg['bound']:g}×"
                    text += f" {tg['status']} ({op}{bound})"
                cells.append(text)
            chk = []
            for cname, c in cfg.get("checks", {}).items():
                if c["agree"]:
                    chk.append(f"{cname}: agree")
                else:
                    bad = [f for f in FIELDS if not (c[f].get("within_tol", True) and c[f].get("mismatches", 0) == 0)]
                    chk.append(f"{cname}: DIFFER in {','.join(bad)}")
            lines.append(f"| {cfg['dtype']} | {cfg['vocab']} | " + " | ".join(cells) + " | " + "; ".join(chk) + " |")
        if device == "cpu":
            lines.append("")
            lines.append(
                "cpp/roofline = cpp time ÷ `x.amax(-1)` time (target ≤ 1.5× fp32, ≤ 2.5× bf16/fp16); eager/cpp and "
                "compile/cpp = speedups of cpp (targets ≥ 30×, ≥ 8×). +T/T τ-list = extra time per temperature "
                "of `temperatures=τ-list` over the kernel alone, (t(cpp@τ-list) ÷ t(cpp) − 1) ÷ T (target ≤ 0.25): "
                "1/τ ∈ {1/4, 1/2, 2, 4} shares the pass's exponential (squarings), any other τ costs one more "
                "exponential per element."
            )
        else:
            lines.append("")
            lines.append(
                "triton GB/s / copy GB/s = triton logits-read GB/s ÷ `y.copy_(x)` GB/s counted as read + write "
                "(target ≥ 0.85); eager/triton and compile/triton = speedups (targets ≥ 3×, ≥ 1.5×); "
                "triton/roofline = triton time ÷ `x.amax(-1)` time (no target)."
            )
    fails = [
        f"{c['device']} {c['dtype']} V={c['vocab']} {k}"
        for c in results["configs"] for k, tg in c["targets"].items() if tg["status"] == "FAIL"
    ]
    lines += ["", f"Targets: {sum(1 for c in results['configs'] for tg in c['targets'].values() if tg['status'] == 'PASS')} PASS, "
              f"{len(fails)} FAIL" + (f" ({'; '.join(fails)})" if fails else "") + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=None, help=f"N, rows per call (default {DEFAULT_ROWS}; --quick {QUICK_ROWS})")
    p.add_argument("--vocab", default=None, help="comma-separated V list (default 32000,50257,128256,256000; --quick 32000)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated logits dtypes (float32,bfloat16,float16)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; --quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per provider (default 2; --quick 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls after which a provider stops, once it has 3 samples (default 30; --quick 3)")
    p.add_argument("--threads", type=int, default=None, help="threads of torch and of the cpp kernel (default torch.get_num_threads())")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CPU, and CUDA too when torch.cuda.is_available()")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (< 30 s): N=256, V=32000, few repeats, no compile")
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="time torch.compile (default on, off with --quick)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile provider")
    p.add_argument("--measure-memory", action="store_true",
                   help="CPU: peak extra RSS of one call of each provider, each in a fresh subprocess (CUDA is always measured)")
    p.add_argument("--temperatures", default=None,
                   help="semicolon-separated temperature sets timed beside the kernel, e.g. '0.5,2;0.7' "
                        f"(default {DEFAULT_TEMPERATURE_SETS!r}; --quick {QUICK_TEMPERATURE_SETS!r}; 'none' to skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the markdown report to this file")
    p.add_argument("--json", default=None, help="write raw numbers and machine info to this JSON file")
    p.add_argument("--_child-mem", dest="_child_mem", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = QUICK_ROWS if args.quick else DEFAULT_ROWS
    if args.vocab is None:
        args.vocab = ",".join(str(v) for v in (QUICK_VOCABS if args.quick else DEFAULT_VOCABS))
    if args.repeats is None:
        args.repeats = 5 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.budget is None:
        args.budget = 3.0 if args.quick else 30.0
    if args.compile is None:
        args.compile = not args.quick
    if args.temperatures is None:
        args.temperatures = QUICK_TEMPERATURE_SETS if args.quick else DEFAULT_TEMPERATURE_SETS
    args.temperature_sets = []
    if args.temperatures.strip().lower() != "none":
        for group in args.temperatures.split(";"):
            try:
                values = [float(v) for v in group.split(",") if v.strip()]
            except ValueError:
                p.error(f"--temperatures: expected sets like '0.5,2;0.7', got {args.temperatures!r}")
            if not values or min(values) <= 0:
                p.error(f"--temperatures: expected non-empty sets of positive values, got {group!r}")
            args.temperature_sets.append(",".join(f"{v:g}" for v in values))
    if args.rows < 1 or args.repeats < 1:
        p.error("--rows and --repeats must be positive")
    if args._child_mem is not None:  # child: one vocab, one dtype
        return args
    try:
        args.vocab_list = [int(v) for v in str(args.vocab).split(",") if v.strip()]
    except ValueError:
        p.error(f"--vocab: expected comma-separated integers, got {args.vocab!r}")
    if not args.vocab_list or min(args.vocab_list) < 1:
        p.error(f"--vocab: expected positive integers, got {args.vocab!r}")
    dtypes = []
    for d in str(args.dtypes).split(","):
        d = d.strip().lower()
        if d and d not in _DTYPE_ALIASES:
            p.error(f"--dtypes: expected float32, bfloat16 or float16, got {d!r}")
        if d:
            dtypes.append(_DTYPE_ALIASES[d])
    args.dtype_list = dtypes
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    args.threads = C.set_threads(args.threads)
    if args._child_mem is not None:
        cpu_memory_child(args)
        return 0

    import mia_fast  # noqa: F401 - fail early when the package is not installed

    devices = ["cpu"] if args.device in ("auto", "cpu") else []
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        C.log("--device cuda: no CUDA device is available to torch; nothing to do")
        return 0
    args.measure_memory_cuda = True
    info = C.machine_info()
    info["torch_num_threads"] = torch.get_num_threads()
    C.log(f"machine: {info}")
    command = C.command_line(__file__, argv)
    results: dict = {"command": command, "machine": info, "configs": []}
    t_start = time.perf_counter()
    kernel_errors: list = []
    results["args"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    results["memory_note"] = memory_note(args, devices)
    for device in devices:
        for dtype in args.dtype_list:
            for vocab in args.vocab_list:
                results["configs"].append(run_config(device, dtype, vocab, args, kernel_errors))
                results["elapsed_s"] = time.perf_counter() - t_start
                write_files(results, args, partial=True)  # what has been measured survives an interruption
    results["elapsed_s"] = time.perf_counter() - t_start
    report = markdown(results)
    sys.stdout.write(report)
    sys.stdout.flush()
    write_files(results, args, partial=False)
    C.log(f"done in {results['elapsed_s']:.1f} s")
    if kernel_errors:
        C.log("the kernel under test raised: " + "; ".join(kernel_errors))
        return 1
    return 0


def write_files(results: dict, args, partial: bool) -> None:
    results["complete"] = not partial
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(results) + ("\n(partial: the run is still going or was interrupted)\n" if partial else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


def memory_note(args, devices) -> Optional[str]:
    if args.measure_memory and "cpu" in devices:
        return (
            "Extra mem (CPU): peak resident memory of one call above the inputs: the process's peak RSS "
            "(VmHWM, the mark `getrusage(RUSAGE_SELF).ru_maxrss` reports) read before and after the call, in a fresh "
            "subprocess per provider, warmed up, free heap returned (malloc_trim), peak reset (/proc/self/clear_refs); "
            "it includes the outputs. "
            "Extra mem (CUDA): `torch.cuda.max_memory_allocated()` delta. ÷ (N,V) fp32 = that size in (N, V) float32 tensors."
        )
    if "cuda" in devices:
        return (
            "Extra mem (CUDA): `torch.cuda.max_memory_allocated()` delta of one call (includes the outputs)"
            + ("" if "cpu" not in devices else "; CPU memory not measured (use --measure-memory)") + "."
        )
    return None


if __name__ == "__main__":
    sys.exit(main())
