"""Public entry points: `token_stats` and `token_stats_from_hidden`.

Both validate their arguments once, resolve the backend, and run the computation through a
``torch.library`` custom op (``mia_fast::token_stats``, ``mia_fast::token_stats_from_hidden``)
whose fake implementation makes them traceable by ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Iterator, Optional, Sequence

import torch

from . import reference
from .backends import cpp_extension, resolve_backend
from .stats import FIELDS, TEMPERED_FIELDS, TemperedStats, TokenStats, check_temperatures

__all__ = ["token_stats", "token_stats_from_hidden", "default_num_threads"]

_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Every integer dtype torch has (the unsigned 16/32/64-bit ones since torch 2.3). Targets are
# widened to int64 before any comparison (`_widen_targets`).
_UINT64 = getattr(torch, "uint64", None)
_TARGET_DTYPES = tuple(
    d
    for d in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
              getattr(torch, "uint16", None), getattr(torch, "uint32", None), _UINT64)
    if d is not None
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Elements of the (rows x vocabulary-chunk) fp32 logits buffer of the CPU fused path: 16 MiB.
_FUSED_BUFFER_ELEMENTS = 1 << 22

_Outputs = tuple[torch.Tensor, ...]


def default_num_threads() -> int:
    """Threads of the C++ kernel: ``MIA_FAST_NUM_THREADS`` or torch's intra-op setting."""
    env = os.environ.get("MIA_FAST_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"MIA_FAST_NUM_THREADS: expected a positive integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"MIA_FAST_NUM_THREADS: expected a positive integer, got {env!r}")
        return value
    return max(1, torch.get_num_threads())


# --------------------------------------------------------------------------------------------
# validation


def _check_targets(targets: torch.Tensor, lead: Sequence[int], name_of_lead: str) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype not in _TARGET_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _TARGET_DTYPES)
        raise TypeError(f"targets: expected an integer tensor, got dtype {targets.dtype} (integer dtypes: {names})")
    if tuple(targets.shape) != tuple(lead):
        raise ValueError(
            f"targets: expected shape {tuple(lead)} (the leading dimensions of {name_of_lead}), "
            f"got {tuple(targets.shape)}"
        )


def _check_ignore_index(ignore_index: object) -> int:
    """``ignore_index`` as a Python int: an integer (Python, numpy or a 0-d integer torch tensor;
    never a bool, float or string) in the int64 range, else ValueError."""
    import numpy as np

    value = None
    if isinstance(ignore_index, torch.Tensor):
        if ignore_index.dim() == 0 and ignore_index.dtype in _TARGET_DTYPES:
            value = int(ignore_index.item())
    elif isinstance(ignore_index, (int, np.integer)) and not isinstance(ignore_index, (bool, np.bool_)):
        value = int(ignore_index)
    if value is None or not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(
            f"ignore_index: expected an integer in the int64 range [-2**63, 2**63 - 1] (a Python int, "
            f"a numpy integer or a 0-d integer tensor; not a bool, float or string), got {ignore_index!r} "
            f"of type {type(ignore_index).__name__}"
        )
    return value


def _widen_targets(targets: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``targets`` as int64 (same shape), before any comparison with ``ignore_index`` or V, so that
    a narrow dtype never wraps a value (uint8 turning -100 into 156, int8 turning V = 5000 into
    -120). An ``ignore_index`` the dtype cannot hold (-100 for uint8) then simply never matches,
    for the mask and the statistics alike. Returns ``(wide, too_big)``: ``too_big`` marks the
    uint64 values >= 2**63 that int64 cannot hold (None for every other dtype)."""
    if targets.dtype == torch.int64:
        return targets, None
    if _UINT64 is not None and targets.dtype == _UINT64:
        wide = targets.view(torch.int64)  # the same bits: values >= 2**63 turn negative
        return wide, wide < 0
    return targets.to(torch.int64), None


def _prepare_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> torch.Tensor:
    """The int64 targets every backend and the mask use (`_widen_targets`); uint64 values that
    int64 cannot hold raise the IndexError of a target outside [0, V) here, for every backend."""
    wide, too_big = _widen_targets(targets)
    if too_big is not None and bool(too_big.any()):  # uint64 targets only
        _check_target_range(wide, vocab, ignore_index, too_big)
    return wide


def _check_float(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float16 or bfloat16, got {x.dtype}")
    return x


def _validate_logits(logits: torch.Tensor, targets: torch.Tensor) -> None:
    _check_float("logits", logits)
    if logits.dim() < 1:
        raise ValueError(f"logits: expected at least 1 dimension (..., V), got a {logits.dim()}-d tensor")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits: expected a non-empty vocabulary dimension, got shape {tuple(logits.shape)}")
    _check_targets(targets, logits.shape[:-1], "logits")
    if targets.device != logits.device:
        raise ValueError(f"targets: expected device {logits.device} (that of logits), got {targets.device}")


def _check_target_range(
    targets: torch.Tensor, vocab: int, ignore_index: int, too_big: Optional[torch.Tensor] = None
) -> None:
    """Raise IndexError for the first target outside [0, V) that is not ignore_index (the CPU
    backends; the Triton kernels find it themselves, without a device sync of their own).
    ``targets`` are the int64 targets of `_widen_targets`, ``too_big`` its uint64 overflow mask."""
    t = targets.reshape(-1)
    bad = ((t < 0) | (t >= vocab)) & (t != ignore_index)
    if too_big is not None:
        bad |= too_big.reshape(-1)  # uint64 values >= 2**63: far outside [0, V), never ignore_index
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        value = int(t[row]) + (2**64 if too_big is not None and bool(too_big.reshape(-1)[row]) else 0)
        raise reference.target_range_error(value, row, vocab, ignore_index)


def _rows_view(x: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (N, V) without copying when possible; the last dim must have stride 1."""
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    if rows.shape[0] > 1 and rows.shape[-1] > 1 and rows.stride(1) != 1:  # pragma: no cover
        rows = rows.contiguous()
    return rows


# --------------------------------------------------------------------------------------------
# backends: each returns the 9 non-mask fields flattened to (N,), in FIELDS order, then with
# temperatures the 3 tempered fields (N, T) in TEMPERED_FIELDS order


def _empty_outputs(n: int, device: torch.device) -> _Outputs:
    f = lambda: torch.empty(n, dtype=torch.float32, device=device)  # noqa: E731
    i = lambda: torch.empty(n, dtype=torch.int64, device=device)  # noqa: E731
    return (f(), f(), f(), f(), f(), i(), f(), f(), i())


def _empty_tempered(n: int, temperatures: tuple[float, ...], device: torch.device) -> _Outputs:
    if not temperatures:
        return ()
    return tuple(torch.empty(n, len(temperatures), dtype=torch.float32, device=device) for _ in TEMPERED_FIELDS)


def _inverse(temperatures: tuple[float, ...]) -> list[float]:
    """The kernels' inverse temperatures beta = 1 / tau (in double: 1 / 0.5 = 2 exactly)."""
    return [1.0 / t for t in temperatures]


def _raise_bad_row(row: int, lead: tuple[int, ...]) -> None:
    if row >= 0:
        raise reference.bad_row_error(row, lead)


def _numpy_view(x: torch.Tensor):
    """Zero-copy numpy view; bfloat16 is viewed as int16 and widened in C++."""
    if x.dtype == torch.bfloat16:
        x = x.view(torch.int16)
    return x.detach().numpy()


def _cpp_token_stats(
    rows: torch.Tensor, targets: torch.Tensor, ignore_index: int, lead, temperatures: tuple[float, ...]
) -> _Outputs:
    ext = cpp_extension()
    outs = _empty_outputs(rows.shape[0], rows.device)
    tempered = _empty_tempered(rows.shape[0], temperatures, rows.device)
    bad = ext.token_stats(
        _numpy_view(rows),
        str(rows.dtype).removeprefix("torch."),
        targets.numpy(),
        ignore_index,
        [o.numpy() for o in outs],
        default_num_threads(),
        _inverse(temperatures),
        [o.numpy() for o in tempered],
    )
    _raise_bad_row(bad, lead)
    return outs + tempered


def _reference_outputs(stats: TokenStats) -> _Outputs:
    outs = tuple(getattr(stats, f).reshape(-1) for f in FIELDS if f != "mask")
    if stats.tempered is None:
        return outs
    n_temps = len(stats.tempered.temperatures)
    return outs + tuple(getattr(stats.tempered, f).reshape(-1, n_temps) for f in TEMPERED_FIELDS)


def _compute_token_stats(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, backend: str, temperatures: tuple[float, ...] = ()
) -> _Outputs:
    lead = tuple(targets.shape)
    vocab = logits.shape[-1]
    if backend != "triton":
        _check_target_range(targets, vocab, ignore_index)
    flat_targets = targets.reshape(-1).to(torch.int64).contiguous()
    if backend == "torch":
        return _reference_outputs(
            reference.token_stats_reference(logits, targets, ignore_index, torch.float32, temperatures)
        )
    rows = _rows_view(logits)
    if backend == "cpp":
        return _cpp_token_stats(rows, flat_targets, ignore_index, lead, temperatures)
    from mia_fast.kernels.token_stats import token_stats_triton

    *outs, bad = token_stats_triton(rows, flat_targets, ignore_index, temperatures=temperatures)
    _raise_bad_row(bad, lead)
    return tuple(outs)


# --------------------------------------------------------------------------------------------
# fused lm_head path


# Columns of one logits tile of the CPU fused path; rows fill the buffer up to _FUSED_BUFFER_ELEMENTS.
_FUSED_CHUNK_COLUMNS = 2048
# Elements (rows x d) per step of the float64 target-logit computation (bounds its temporaries).
_TARGET_ELEMENTS = 1 << 20


def _target_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """z_y = h . weight[y] + bias[y] of every row, in float64 rounded once to fp32, by row blocks."""
    safe = torch.where(targets == ignore_index, 0, targets)
    z = torch.empty(h.shape[0], dtype=torch.float32)
    step = max(1, _TARGET_ELEMENTS // max(1, h.shape[1]))
    for r0 in range(0, h.shape[0], step):
        rows = slice(r0, r0 + step)
        zr = torch.linalg.vecdot(h[rows].double(), weight[safe[rows]].double())
        if bias is not None:
            zr += bias[safe[rows]].double()
        z[rows] = zr
    return z


@functools.lru_cache(maxsize=None)
def bf16_matrix_units() -> bool:
    """The CPU has bf16 matrix units (AMX-BF16, AVX512-BF16) and torch runs bf16 matmuls on them."""
    from .cpu_units import matrix_units

    return matrix_units().bf16


@contextlib.contextmanager
def _fp32_matmul_in_bf16(enabled: bool) -> Iterator[None]:
    """Let oneDNN run fp32 matmuls on the bf16 matrix units (inputs rounded to bf16, fp32
    accumulation and output) inside the block; the setting before is restored after it."""
    settings = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if not enabled or settings is None or not hasattr(settings, "fp32_precision"):
        yield
        return
    before = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        yield
    finally:
        settings.fp32_precision = before


def _cpp_token_stats_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    ignore_index: int,
    lead: tuple[int, ...],
    chunk: Optional[int] = None,
    row_block: Optional[int] = None,
    temperatures: tuple[float, ...] = (),
) -> _Outputs:
    """Tiled fp32 matmul into a bounded buffer, folded by the C++ accumulator.

    The logits are produced as (row_block, chunk) tiles, column chunk by column chunk, so that the
    weight slice stays in cache while the row blocks stream. Peak extra memory: the 16 MiB tile
    buffer, an fp32 copy of one (chunk, d) weight slice when the weight is not fp32, the fp32
    copy of ``hidden`` when it is not fp32, and O(N) state: independent of V.

    bf16 ``hidden`` and ``weight`` on a CPU with AMX (`_amx_head`, d a multiple of 32): the C++
    accumulator computes the logits itself on the AMX tiles, from the bf16 operands, in fp32, and
    folds each block while it is in cache (``Accumulator.update_amx``): no buffer, no conversion
    of the unembedding. Each product h_i w_i of bf16 values is exact in fp32 (8-bit by 8-bit
    significands) and the sums are fp32, so only the order of the additions differs from the
    fp32 GEMM on the same operands. On other CPUs with bf16 units (AVX512-BF16) the tiles are
    fp32 GEMMs that oneDNN runs on the units (`_fp32_matmul_in_bf16`): the same products, after
    widening each weight slice to fp32.

    Why not bf16 tiles: torch has no CPU GEMM from bf16 operands to an fp32 output (``aten::mm.dtype``
    has no CPU kernel), and a bf16 output rounds every logit to 8 significant bits. With d = 576,
    V = 49,152, N = 2,048 on 2 cores with AMX (``python benchmarks/bench_fused_linear.py --device cpu
    --dtype bfloat16 --rows 2048``): the statistics of bf16 logits differ from these by up to 0.04 in
    log p, and the bare bf16 GEMM alone (136 ms) takes longer than this whole fused call (104 ms).
    """
    ext = cpp_extension()
    n, vocab = hidden.shape[0], weight.shape[0]
    h = hidden.float()
    # The target logit comes first: rank and margin compare against it during the pass.
    acc = ext.Accumulator(
        targets.numpy(), _target_logits(h, weight, bias, targets, ignore_index).numpy(), ignore_index,
        _inverse(temperatures),
    )
    threads = default_num_threads()
    if _amx_head(ext, hidden, weight):
        acc.update_amx(hidden.contiguous().view(torch.int16).numpy(), weight.contiguous().view(torch.int16).numpy(),
                       None if bias is None else bias.float().contiguous().numpy(), 0, threads)
        return _finalize(acc, n, vocab, threads, temperatures, lead, hidden.device)
    chunk = min(vocab, chunk or _FUSED_CHUNK_COLUMNS)
    row_block = min(n, row_block or max(1, _FUSED_BUFFER_ELEMENTS // chunk))
    buffer = torch.empty(row_block, chunk, dtype=torch.float32)
    on_units = hidden.dtype == weight.dtype == torch.bfloat16 and bf16_matrix_units()
    # A non-fp32 weight slice is widened into one reused buffer: a fresh fp32 slice per chunk
    # costs an allocation and page faults as well as the copy.
    slice_buffer = None if weight.dtype == torch.float32 else torch.empty(chunk, weight.shape[1])
    with _fp32_matmul_in_bf16(on_units):
        for start in range(0, vocab, chunk):
            stop = min(vocab, start + chunk)
            if slice_buffer is None:
                w = weight[start:stop].T
            else:
                w = slice_buffer[: stop - start].copy_(weight[start:stop]).T
            b = None if bias is None else bias[start:stop].float()
            for r0 in range(0, n, row_block):
                r1 = min(n, r0 + row_block)
                out = buffer[: r1 - r0, : stop - start]
                torch.matmul(h[r0:r1], w, out=out)
                if b is not None:
                    out += b
                acc.update(out.numpy(), "float32", start, threads, r0)
    return _finalize(acc, n, vocab, threads, temperatures, lead, hidden.device)


def _finalize(acc: Any, n: int, vocab: int, threads: int, temperatures: tuple[float, ...], lead: tuple[int, ...],
              device: torch.device) -> _Outputs:
    """The accumulator's statistics of the n rows; raises on a bad row."""
    outs = _empty_outputs(n, device)
    tempered = _empty_tempered(n, temperatures, device)
    bad = acc.finalize(vocab, [o.numpy() for o in outs], threads, [o.numpy() for o in tempered])
    _raise_bad_row(bad, lead)
    return outs + tempered


def _amx_head(ext: Any, hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """The AMX path of the fused CPU head applies: bf16 operands, a hidden size the tiles take
    (a multiple of 32), an extension with the kernel on a CPU and OS that run it."""
    return (hidden.dtype == weight.dtype == torch.bfloat16 and hidden.shape[-1] % 32 == 0
            and hasattr(ext, "amx_bf16_available") and ext.amx_bf16_available())


def _compute_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    ignore_index: int,
    backend: str,
    temperatures: tuple[float, ...] = (),
) -> _Outputs:
    lead = tuple(targets.shape)
    if backend != "triton":
        _check_target_range(targets, weight.shape[0], ignore_index)
    h = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1).to(torch.int64).contiguous()
    if backend == "torch":
        stats = reference.token_stats_from_hidden_reference(
            h.float(), weight.float(), flat_targets, None if bias is None else bias.float(), ignore_index,
            torch.float32, temperatures,
        )
        return _reference_outputs(stats)
    if backend == "cpp":
        return _cpp_token_stats_from_hidden(
            h, weight, bias, flat_targets, ignore_index, lead, temperatures=temperatures
        )
    from mia_fast.kernels.fused_linear import token_stats_from_hidden_triton

    *outs, bad = token_stats_from_hidden_triton(
        h.contiguous(), weight.contiguous(), flat_targets, bias, ignore_index, temperatures=temperatures
    )
    _raise_bad_row(bad, lead)
    return tuple(outs)


# --------------------------------------------------------------------------------------------
# custom ops


def _shaped(outs: _Outputs, lead: Sequence[int]) -> list[torch.Tensor]:
    """Flat backend outputs -> lead (9 fields) and lead + (T,) (tempered fields)."""
    return [o.reshape(*lead, *o.shape[1:]) for o in outs]


@torch.library.custom_op("mia_fast::token_stats", mutates_args=())
def _token_stats_op(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, backend: str, temperatures: list[float]
) -> list[torch.Tensor]:
    return _shaped(_compute_token_stats(logits, targets, ignore_index, backend, tuple(temperatures)), targets.shape)


@torch.library.custom_op("mia_fast::token_stats_from_hidden", mutates_args=())
def _token_stats_from_hidden_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    ignore_index: int,
    backend: str,
    temperatures: list[float],
) -> list[torch.Tensor]:
    outs = _compute_from_hidden(hidden, weight, bias, targets, ignore_index, backend, tuple(temperatures))
    return _shaped(outs, targets.shape)


def _fake_outputs(targets: torch.Tensor, temperatures: Sequence[float]) -> list[torch.Tensor]:
    shape, dev = targets.shape, targets.device
    kinds = (torch.float32,) * 5 + (torch.int64,) + (torch.float32,) * 2 + (torch.int64,)
    outs = [torch.empty(shape, dtype=k, device=dev) for k in kinds]
    if temperatures:
        outs += [torch.empty(*shape, len(temperatures), dtype=torch.float32, device=dev) for _ in TEMPERED_FIELDS]
    return outs


@_token_stats_op.register_fake
def _(logits, targets, ignore_index, backend, temperatures):
    return _fake_outputs(targets, temperatures)


@_token_stats_from_hidden_op.register_fake
def _(hidden, weight, bias, targets, ignore_index, backend, temperatures):
    return _fake_outputs(targets, temperatures)


def _pack(
    outs: Sequence[torch.Tensor], targets: torch.Tensor, ignore_index: int, temperatures: tuple[float, ...]
) -> TokenStats:
    tempered = TemperedStats(temperatures, *outs[9:]) if temperatures else None
    return TokenStats(*outs[:9], mask=targets != ignore_index, tempered=tempered)


# --------------------------------------------------------------------------------------------
# public API


def token_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    backend: str = "auto",
    temperatures: Sequence[float] = (),
) -> TokenStats:
    """Per-token softmax statistics in one pass over the vocabulary.

    Parameters
    ----------
    logits : Tensor, shape (..., V)
        float32, float16 or bfloat16, CPU or CUDA. The last dimension should have stride 1
        (otherwise it is copied); leading dimensions may be strided.
    targets : Tensor, shape (...)
        Integer targets (any integer dtype: int8 to int64, uint8 to uint64), each in ``[0, V)``
        or equal to ``ignore_index``. They are widened to int64 before any comparison, so an
        ``ignore_index`` the dtype cannot hold (-100 for uint8) never matches.
    ignore_index : int
        Target value of positions that are not scored (their row is never read): an integer in
        the int64 range (Python int, numpy integer or 0-d integer tensor).
    backend : {'auto', 'cpp', 'triton', 'torch'}
        ``auto`` (default, overridden by ``MIA_FAST_BACKEND``) picks the fastest that can run.
    temperatures : sequence of float
        Temperatures tau > 0 (at most 8) at which the same pass also computes the statistics of
        ``softmax(z / tau)`` (`mia_fast.TemperedStats`). tau in {1/4, 1/2, 2, 4} (1 / tau a power of
        two) shares the pass's exponential; any other costs one more exponential per element.

    Returns
    -------
    TokenStats
        Every field of shape ``targets.shape``; see `mia_fast.TokenStats`. ``tempered`` holds the
        tempered statistics, each of shape ``targets.shape + (T,)``, or None without temperatures.

    Raises
    ------
    TypeError
        ``logits`` is not a float32/float16/bfloat16 tensor, or ``targets`` not an integer tensor.
    ValueError
        Shapes disagree, V = 0, an unknown backend, ``ignore_index`` is not an int64-range integer,
        or a scored row holds NaN/+inf (or is all -inf). Any finite logits are valid, however large.
    IndexError
        A target outside ``[0, V)`` that is not ``ignore_index``.
    NotImplementedError
        An explicitly requested backend cannot run on these tensors (every reason is listed).
    """
    _validate_logits(logits, targets)
    ignore = _check_ignore_index(ignore_index)
    temps = check_temperatures(temperatures)
    name = resolve_backend(backend, logits.device, logits.dtype)
    wide = _prepare_targets(targets, logits.shape[-1], ignore)
    if torch.compiler.is_compiling():  # traced: through the custom op and its fake implementation
        outs = _token_stats_op(logits, wide, ignore, name, list(temps))
    else:  # eager: straight to the kernel, without the custom-op dispatch overhead
        outs = _shaped(_compute_token_stats(logits, wide, ignore, name, temps), targets.shape)
    return _pack(outs, wide, ignore, temps)


def token_stats_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    backend: str = "auto",
    temperatures: Sequence[float] = (),
) -> TokenStats:
    """`token_stats` of ``hidden @ weight.T + bias`` without holding the ``(..., V)`` logits.

    The logits are produced tile by tile (fp32 accumulation) and folded into running statistics,
    so the extra memory does not grow with V.

    Parameters
    ----------
    hidden : Tensor, shape (..., d)
        Final hidden states (after the model's last norm), float32/float16/bfloat16.
    weight : Tensor, shape (V, d)
        Unembedding matrix, same dtype and device as ``hidden``.
    targets : Tensor, shape (...)
        Integer targets in ``[0, V)`` or ``ignore_index`` (any integer dtype, as in `token_stats`).
    bias : Tensor, shape (V,), optional
        Output bias.
    ignore_index : int
        An integer in the int64 range, as in `token_stats`.
    backend : {'auto', 'cpp', 'triton', 'torch'}
    temperatures : sequence of float
        As in `token_stats`.

    Returns
    -------
    TokenStats
        Every field of shape ``targets.shape`` (tempered fields ``targets.shape + (T,)``).
    """
    _check_float("hidden", hidden)
    _check_float("weight", weight)
    if hidden.dim() < 1:
        raise ValueError("hidden: expected at least 1 dimension (..., d), got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected shape (V, d), got a {weight.dim()}-d tensor of shape {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError(f"weight: expected a non-empty vocabulary dimension, got shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight: expected shape (V, {hidden.shape[-1]}) to match hidden's last dimension, got {tuple(weight.shape)}"
        )
    for name, x in (("weight", weight), ("bias", bias)):
        if x is not None and (x.dtype != hidden.dtype or x.device != hidden.device):
            raise TypeError(
                f"{name}: expected dtype {hidden.dtype} on {hidden.device} (as hidden), got {x.dtype} on {x.device}"
            )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    _check_targets(targets, hidden.shape[:-1], "hidden")
    if targets.device != hidden.device:
        raise ValueError(f"targets: expected device {hidden.device} (that of hidden), got {targets.device}")
    ignore = _check_ignore_index(ignore_index)
    temps = check_temperatures(temperatures)
    name = resolve_backend(backend, hidden.device, hidden.dtype)
    wide = _prepare_targets(targets, weight.shape[0], ignore)
    if torch.compiler.is_compiling():
        outs = _token_stats_from_hidden_op(hidden, weight, bias, wide, ignore, name, list(temps))
    else:
        outs = _shaped(_compute_from_hidden(hidden, weight, bias, wide, ignore, name, temps), targets.shape)
    return _pack(outs, wide, ignore, temps)
