"""Where the time of the Triton token-statistics path goes, on a CUDA machine.

For each (dtype, V), loop variant (``--slot-shift``: 0 = one running maximum per program, agreed
by its threads at every tile; 1 = per-thread maxima merged at the end) and kernel configuration
(BLOCK_V, num_warps) it reports, side by side:
the device time of the kernel alone (torch.profiler, CUDA time of `_token_stats_kernel`), the
wall time of one `token_stats_triton` call and of one public `mia_fast.token_stats` call (host
work + launches + the device sync that reads the status word), and the device copy bandwidth of the
same tensor. It separates kernel speed from host overhead.

    python benchmarks/triton_probe.py [--rows 4096] [--vocab 32000,128256] [--configs "2048,8;4096,8"] [--slot-shift 0,1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def wall_ms(fn, repeats: int = 30) -> float:
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def kernel_ms(fn, name: str, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    total = sum(e.device_time_total for e in prof.key_averages() if name in e.key)
    return total / repeats / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--vocab", default="32000,128256")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--configs", default="", help="'BLOCK_V,WARPS;...', an empty entry for the built-in default (default: it alone)")
    parser.add_argument("--slot-shift", default="0", help="loop variants to time: 0, 1 or 0,1")
    args = parser.parse_args()

    import mia_fast
    from mia_fast.kernels.token_stats import CONFIG_ENV, SLOT_SHIFT_ENV, token_stats_triton

    print("| dtype | V | slot shift | config | kernel ms | kernel GB/s | kernel / copy | token_stats_triton ms | mia_fast.token_stats ms | copy GB/s |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    configs = args.configs.split(";")  # "" = the built-in default
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for vocab in (int(v) for v in args.vocab.split(",")):
            x = (torch.randn(args.rows, vocab, device="cuda") * 3).to(dtype)
            t = torch.randint(0, vocab, (args.rows,), device="cuda")
            y = torch.empty_like(x)
            nbytes = x.numel() * x.element_size()
            copy_ms = kernel_ms(lambda: y.copy_(x), "copy") or wall_ms(lambda: y.copy_(x))
            copy_gbs = 2 * nbytes / copy_ms / 1e6
            for variant, config in ((v, c) for v in args.slot_shift.split(",") for c in configs):
                os.environ[SLOT_SHIFT_ENV] = variant
                if config:
                    os.environ[CONFIG_ENV] = config
                else:
                    os.environ.pop(CONFIG_ENV, None)
                k = kernel_ms(lambda: token_stats_triton(x, t, -100), "_token_stats_kernel")
                w = wall_ms(lambda: token_stats_triton(x, t, -100))
                a = wall_ms(lambda: mia_fast.token_stats(x, t))
                gbs = nbytes / k / 1e6 if k else float("nan")
                print(
                    f"| {dtype_name} | {vocab} | {variant} | {config or 'default'} | {k:.3f} | {gbs:.0f} | "
                    f"{gbs / copy_gbs:.2f} | {w:.3f} | {a:.3f} | {copy_gbs:.0f} |",
                    flush=True,
                )
            os.environ.pop(CONFIG_ENV, None)
            os.environ.pop(SLOT_SHIFT_ENV, None)
            del x, y, t
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
