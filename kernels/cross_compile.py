"""Compile the Triton kernels for a CUDA GPU on a machine that has none.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, but it accepts code that
the compiler rejects and says nothing about registers, spills or instructions. This module runs
the real host functions (`token_stats_triton`, `token_stats_from_hidden_triton`) on CPU tensors
with every kernel launch replaced by a compilation for a chosen CUDA architecture (Triton's own
argument specialisation, then ``triton.compile`` down to a cubin with the bundled ``ptxas``), so
that each launch configuration the host code produces is built exactly as a GPU would build it.

For each compiled variant it reports the registers per thread, local memory (spills), shared
memory, and, for the token-statistics kernel, the SASS instructions of its tile loop (every path
through the loop body, the rarely taken ones included) per logit held by a thread: a static
measure of the work per element, which bounds the kernel where it is instruction-bound (16-bit
logits on an H100/H200). Timing still needs a GPU (``benchmarks/gpu_check.sh``).

Run it with ``TRITON_INTERPRET`` unset (the kernels must be Triton JIT functions)::

    python -m mia_fast.kernels.cross_compile [--arch 90] [--sass-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from mia_fast.kernels import fused_linear, token_stats

__all__ = ["CompiledVariant", "intercept_launches", "default_cases", "main"]

# SM count of an H100/H200 (the host code sizes its grids and splits with it).
_H200_SMS = 132


@dataclasses.dataclass
class CompiledVariant:
    """One compiled launch configuration.

    ``loop_instructions`` / ``elements_per_iteration`` = SASS instructions of the kernel's main
    loop per element and thread (``None`` when no loop is identified).
    """

    case: str
    kernel: str
    arch: int
    num_warps: int
    constexprs: dict
    registers: int
    local_bytes: int
    shared_bytes: int
    sass: str
    loop_instructions: Optional[int] = None
    elements_per_iteration: Optional[int] = None

    @property
    def per_element(self) -> Optional[float]:
        if not self.loop_instructions or not self.elements_per_iteration:
            return None
        return self.loop_instructions / self.elements_per_iteration


def _tool(name: str) -> str:
    """Path of a CUDA binary bundled with triton's NVIDIA backend (``cuobjdump``)."""
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name}: not bundled with this triton ({path})")
    return str(path)


def _resources(cubin: bytes, name: str) -> tuple[int, int, str]:
    """(registers, local-memory bytes, SASS) of kernel ``name`` in ``cubin``, via cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", str(path)], check=True, capture_output=True, text=True
        ).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(path)], check=True, capture_output=True, text=True).stdout
    found = re.search(r"Function " + re.escape(name) + r":\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    if found is None:
        raise RuntimeError(f"cuobjdump -res-usage: no entry for {name}:\n{usage}")
    registers, stack, _, local = (int(g) for g in found.groups())
    return registers, stack + local, sass


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def longest_loop(sass: str) -> Optional[tuple[int, dict[str, int]]]:
    """Instructions of the largest loop in ``sass``: the longest span closed by a backward branch.

    Returns ``(count, by_opcode)`` (opcode without modifiers, e.g. ``FFMA``), or None.
    """
    program = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _SASS_LINE.finditer(sass)]
    best: Optional[tuple[int, int]] = None
    for i, (address, opcode, operands) in enumerate(program):
        if opcode.split(".")[0] != "BRA":
            continue
        target = re.search(r"0x([0-9a-f]+)", operands)
        if target is None or int(target.group(1), 16) >= address:
            continue
        start = int(target.group(1), 16)
        first = next(j for j, (a, _, _) in enumerate(program) if a >= start)
        if best is None or i - first > best[1] - best[0]:
            best = (first, i)
    if best is None:
        return None
    body = program[best[0] : best[1] + 1]
    by_opcode: dict[str, int] = {}
    for _, opcode, _ in body:
        key = opcode.split(".")[0]
        by_opcode[key] = by_opcode.get(key, 0) + 1
    return len(body), by_opcode


@contextlib.contextmanager
def intercept_launches(
    kernels: Sequence[JITFunction], arch: int, sink: Callable[[JITFunction, Any, dict], None]
) -> Iterator[None]:
    """Within the block, a launch of one of ``kernels`` compiles it for ``sm_<arch>`` instead.

    ``sink(kernel, compiled, launch_kwargs)`` receives each compiled kernel (a
    ``triton.compiler.CompiledKernel``); nothing runs, so outputs stay as allocated.
    """
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    saved = {}
    for kernel in kernels:
        if not isinstance(kernel, JITFunction):
            raise TypeError(f"{kernel!r}: expected a Triton JIT function (is TRITON_INTERPRET set?)")
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)

        def compile_instead(*args, grid, warmup, _kernel=kernel, _binder=binder, **kwargs):
            bound, specialization, options = _binder(*args, **kwargs)
            options, signature, constexprs, attrs = _kernel._pack_args(backend, kwargs, bound, specialization, options)
            compiled = triton.compile(ASTSource(_kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
            sink(_kernel, compiled, kwargs)

        saved[kernel] = kernel.__dict__.get("run")
        kernel.run = compile_instead
    try:
        yield
    finally:
        for kernel, run in saved.items():
            if run is None:
                del kernel.run
            else:
                kernel.run = run


@contextlib.contextmanager
def _as_gpu_host(arch: int) -> Iterator[None]:
    """Host decisions as on a GPU of compute capability ``arch`` / 10 with an H100/H200's SM
    count, and the inline-PTX exponential."""
    saved = (token_stats.num_sms, token_stats.fast_exp_available, fused_linear.num_sms, fused_linear.device_capability)
    token_stats.num_sms = lambda device: _H200_SMS
    token_stats.fast_exp_available = lambda device: True
    fused_linear.num_sms = lambda device: _H200_SMS
    fused_linear.device_capability = lambda device: divmod(arch, 10)
    try:
        yield
    finally:
        token_stats.num_sms, token_stats.fast_exp_available, fused_linear.num_sms, fused_linear.device_capability = saved


def default_cases() -> dict[str, Callable[[], Any]]:
    """Host calls covering every launch variant: 32/16-bit logits, one program per row and split
    rows (merge kernel), with and without temperatures, both loop variants (``slot``: per-thread
    maxima); the fused lm_head path in each operand dtype, with and without bias and temperatures. Shapes are the smallest that take the
    default tile sizes."""
    cases: dict[str, Callable[[], Any]] = {}
    rows_finalize = 2 * _H200_SMS  # >= 2 programs per SM: one program per row
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        for rows, kind in ((rows_finalize, "row"), (8, "split")):
            for temps in ((), (0.7, 2.0)):
                label = f"token_stats {name} {kind}" + (" temps" if temps else "")

                def call(dtype=dtype, rows=rows, temps=temps):
                    logits = torch.zeros(rows, 32000, dtype=dtype)
                    targets = torch.zeros(rows, dtype=torch.int64)
                    return token_stats.token_stats_triton(logits, targets, -100, temperatures=temps)

                cases[label] = call
        for rows, kind, temps in ((rows_finalize, "row", ()), (8, "split", (0.7, 2.0))):
            label = f"token_stats {name} {kind} slot" + (" temps" if temps else "")

            def call(dtype=dtype, rows=rows, temps=temps):
                logits = torch.zeros(rows, 32000, dtype=dtype)
                targets = torch.zeros(rows, dtype=torch.int64)
                return token_stats.token_stats_triton(logits, targets, -100, temperatures=temps, slot_shift=True)

            cases[label] = call
        for bias in (False, True):
            for temps in ((), (0.7, 2.0)):
                label = f"fused {name}" + (" bias" if bias else "") + (" temps" if temps else "")

                def call(dtype=dtype, bias=bias, temps=temps):
                    hidden = torch.zeros(512, 576, dtype=dtype)
                    weight = torch.zeros(4096, 576, dtype=dtype)
                    b = torch.zeros(4096, dtype=dtype) if bias else None
                    targets = torch.zeros(512, dtype=torch.int64)
                    return fused_linear.token_stats_from_hidden_triton(hidden, weight, targets, b, -100,
                                                                       temperatures=temps)

                cases[label] = call
    return cases


def compile_cases(cases: dict[str, Callable[[], Any]], arch: int) -> list[CompiledVariant]:
    """Run each host call with its launches compiled for ``sm_<arch>``; one entry per launch."""
    kernels = [token_stats._token_stats_kernel, token_stats._merge_kernel, fused_linear._fused_linear_kernel]
    out: list[CompiledVariant] = []
    current = [""]

    def sink(kernel: JITFunction, compiled: Any, kwargs: dict) -> None:
        name = compiled.metadata.name
        registers, local, sass = _resources(compiled.asm["cubin"], name)
        constexprs = {k: v for k, v in kwargs.items() if k.isupper()}
        variant = CompiledVariant(
            case=current[0], kernel=kernel.__name__, arch=arch, num_warps=compiled.metadata.num_warps,
            constexprs=constexprs, registers=registers, local_bytes=local,
            shared_bytes=int(compiled.metadata.shared), sass=sass,
        )
        if kernel is token_stats._token_stats_kernel:
            loop = longest_loop(sass)
            if loop is not None:
                variant.loop_instructions = loop[0]
                variant.elements_per_iteration = constexprs["BLOCK_V"] // (32 * variant.num_warps)
        out.append(variant)

    with _as_gpu_host(arch), intercept_launches(kernels, arch, sink):
        for label, call in cases.items():
            current[0] = label
            call()
    return out


def _table(variants: list[CompiledVariant]) -> str:
    lines = [
        "| case | kernel | sm | warps | tile | registers | local B | shared B | loop SASS / elements per thread | per element |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        tile = ",".join(str(v.constexprs[k]) for k in ("BLOCK_N", "BLOCK_V", "BLOCK_D") if k in v.constexprs)
        loop = f"{v.loop_instructions} / {v.elements_per_iteration}" if v.per_element else ""
        per = f"{v.per_element:.2f}" if v.per_element else ""
        lines.append(
            f"| {v.case} | {v.kernel} | {v.arch} | {v.num_warps} | {tile} | {v.registers} | {v.local_bytes} "
            f"| {v.shared_bytes} | {loop} | {per} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mia_fast.kernels.cross_compile", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, action="append", help="CUDA compute capability x10 (default 90)")
    parser.add_argument("--cases", help="only the cases whose label contains this text")
    parser.add_argument("--sass-dir", type=Path, help="write each variant's SASS there")
    parser.add_argument("--fail-on-spills", action="store_true", help="exit 1 when a variant uses local memory")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: unset it, the kernels must be compiled, not interpreted")
    cases = default_cases()
    if args.cases:
        cases = {k: v for k, v in cases.items() if args.cases in k}
    variants: list[CompiledVariant] = []
    for arch in args.arch or [90]:
        variants += compile_cases(cases, arch)
    print(f"triton {triton.__version__}, torch {torch.__version__}: {len(variants)} launches compiled")
    print(_table(variants))
    if args.sass_dir:
        args.sass_dir.mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(variants):
            slug = re.sub(r"[^a-z0-9]+", "_", f"{v.case} {v.kernel} sm{v.arch}".lower()).strip("_")
            (args.sass_dir / f"{i:02d}_{slug}.sass").write_text(v.sass)
    spilling = [v for v in variants if v.local_bytes]
    if spilling:
        print("local memory (register spills): " + "; ".join(f"{v.case} / {v.kernel} {v.local_bytes} B" for v in spilling))
    return 1 if spilling and args.fail_on_spills else 0


if __name__ == "__main__":
    sys.exit(main())
