"""The Triton kernels (``kernels/token_stats.py``, ``kernels/fused_linear.py``) against the float64
reference (design.md §3, §8).

Without a usable CUDA device the kernels run on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, set below before triton or the kernel modules are imported) on small
shapes; the interpreter has no bf16 arithmetic, so bf16 runs only on a GPU. On a CUDA machine
(with ``TRITON_INTERPRET`` unset) the same small-shape tests run compiled on the GPU, and the tests
marked ``gpu`` add real sizes through the public API.
"""

from __future__ import annotations

import os

import torch  # importing torch does not import triton

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

import mia_fast  # noqa: E402
from mia_fast.reference import token_stats_reference  # noqa: E402
from mia_fast.stats import FLOAT_FIELDS, INT_FIELDS, TEMPERED_FIELDS, TemperedStats, TokenStats  # noqa: E402

from conftest import ATOL, IGNORE, RTOL, make_case, reference_errors  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (and TRITON_INTERPRET unset)")


def _kernel_modules():
    """The kernel modules, (re)loaded so that their @triton.jit functions match the mode.

    ``triton.jit`` decides between compiled and interpreted functions when a module is
    imported; a module imported earlier in the session under the other mode is reloaded.
    """
    import mia_fast.kernels.fused_linear as fl
    import mia_fast.kernels.token_stats as ts
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(ts._token_stats_kernel, InterpretedFunction) == ON_GPU:
        ts = importlib.reload(ts)
        fl = importlib.reload(fl)
    return ts, fl


TS, FL = _kernel_modules()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
if ON_GPU:
    DTYPES["bf16"] = torch.bfloat16
CASES = ("randn", "strided", "3d", "neginf", "equal", "huge", "peaked")


# ------------------------------------------------------------------------------------------------
# helpers


def to_device(x: torch.Tensor) -> torch.Tensor:
    """``x`` on DEVICE with the same strides and storage offset (``.to`` would compact a slice)."""
    if x.device.type == DEVICE:
        return x
    extent = x.storage_offset() + 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride()) if n > 0)
    y = torch.empty(extent, dtype=x.dtype, device=DEVICE).as_strided(x.shape, x.stride(), x.storage_offset())
    return y.copy_(x)


def run_token_stats(logits, targets, ignore_index=IGNORE, **kw):
    """`token_stats_triton` on ``logits (..., V)`` on DEVICE: (TokenStats on CPU, bad_row)."""
    vocab = logits.shape[-1]
    rows = to_device(logits)
    if rows.dim() != 2:
        rows = rows.reshape(-1, vocab)
    flat = targets.reshape(-1).to(torch.int64).contiguous().to(DEVICE)
    *outs, bad = TS.token_stats_triton(rows, flat, ignore_index, **kw)
    return _as_stats(outs, targets, ignore_index), bad


def run_fused(hidden, weight, targets, bias=None, ignore_index=IGNORE, **kw):
    """`token_stats_from_hidden_triton` on DEVICE: (TokenStats on CPU, bad_row)."""
    dev = lambda x: None if x is None else x.to(DEVICE).contiguous()  # noqa: E731
    flat = targets.reshape(-1).to(torch.int64).contiguous().to(DEVICE)
    *outs, bad = FL.token_stats_from_hidden_triton(dev(hidden), dev(weight), flat, dev(bias), ignore_index, **kw)
    return _as_stats(outs, targets, ignore_index), bad


def _as_stats(outs, targets, ignore_index) -> TokenStats:
    fields = [o.reshape(targets.shape).cpu() for o in outs]
    return TokenStats(*fields, mask=targets != ignore_index)


def references(logits, targets, ignore_index=IGNORE):
    """float64 ground truth and torch's own float32 computation (fp16/bf16 values upcast)."""
    ref64 = token_stats_reference(logits, targets, ignore_index, dtype=torch.float64)
    ref32 = token_stats_reference(logits.float(), targets, ignore_index, dtype=torch.float32)
    return ref64, ref32


def assert_close_to_reference(stats, logits, targets, ignore_index=IGNORE):
    ref64, ref32 = references(logits, targets, ignore_index)
    problems = reference_errors(stats, ref64, ref32, targets, ignore_index)
    assert not problems, "\n".join(problems)


def assert_bitwise_equal(a: TokenStats, b: TokenStats):
    for name in FLOAT_FIELDS + INT_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x.view(torch.int32) if x.is_floating_point() else x,
                           y.view(torch.int32) if y.is_floating_point() else y), name


# ------------------------------------------------------------------------------------------------
# token_stats_triton: the reference grid (mirrors the C++ grid at small sizes)

GRID = [
    pytest.param(case, dt, vocab, rows, id=f"{case}-{dt}-V{vocab}-N{rows}")
    for case, dt, vocab, rows in itertools.product(CASES, DTYPES, (8, 41, 1000), (1, 3, 17))
]


@pytest.mark.parametrize("case,dtype_name,vocab,rows", GRID)
def test_matches_reference(case, dtype_name, vocab, rows):
    logits, targets = make_case(case, rows, vocab, DTYPES[dtype_name])
    stats, bad = run_token_stats(logits, targets)
    assert bad == -1
    assert_close_to_reference(stats, logits, targets)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", ["strided", "neginf", "huge", "peaked"])
@pytest.mark.parametrize("vocab,block_v,split", [(120, 16, None), (120, 16, 5), (1000, 64, 3)])
def test_small_blocks_and_split(case, dtype_name, vocab, block_v, split):
    """Many tiles (the max moves, tails are masked) and the split path with its merge kernel."""
    logits, targets = make_case(case, 3, vocab, DTYPES[dtype_name])  # V is no multiple of the block
    stats, bad = run_token_stats(logits, targets, block_v=block_v, split=split)
    assert bad == -1
    assert_close_to_reference(stats, logits, targets)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("vocab,block_v", [(300, 128), (4100, None), (2049, 256)])
def test_vocabulary_not_a_multiple_of_the_block(dtype_name, vocab, block_v):
    logits, targets = make_case("randn", 3, vocab, DTYPES[dtype_name])
    stats, _ = run_token_stats(logits, targets, block_v=block_v)
    assert_close_to_reference(stats, logits, targets)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("offset,stride", [(0, 303), (1, 300), (3, 320), (5, 301)])
def test_strided_rows(dtype_name, offset, stride):
    """A slice ``big[:, a:a+V]`` of a wider tensor: row starts at every alignment."""
    g = torch.Generator().manual_seed(stride + offset)
    big = torch.randn(3, stride + offset, generator=g).to(DTYPES[dtype_name])
    logits = big[:, offset : offset + 300]
    targets = torch.tensor([3, IGNORE, 299])
    stats, _ = run_token_stats(logits, targets, block_v=64)
    assert_close_to_reference(stats, logits, targets)


@pytest.mark.parametrize("block_v,split", [(None, None), (16, None), (16, 4)])
def test_ties_take_the_first_index(block_v, split):
    """argmax = first index of the max across tiles and splits; rank counts strictly greater."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(4, 200, generator=g)
    z[:, [5, 40, 190]] = 10.0  # the same max in different tiles and splits
    z[2, 3] = 9.0
    targets = torch.tensor([40, 190, 3, 5])
    stats, _ = run_token_stats(z, targets, block_v=block_v, split=split)
    assert stats.argmax.tolist() == [5, 5, 5, 5]
    assert stats.rank.tolist() == [0, 0, 3, 0]
    assert stats.margin.tolist()[:2] == [0.0, 0.0] and stats.margin[3].item() == 0.0
    assert_close_to_reference(stats, z, targets)


@pytest.mark.parametrize("split", [None, 4])
@pytest.mark.parametrize("vocab", [1000, 2049])
def test_log1m_p_of_a_peaked_row(vocab, split):
    """p_y -> 1: log1m_p = log sum_{v != y} p_v stays finite and fp32-accurate."""
    g = torch.Generator().manual_seed(vocab)
    z = torch.randn(4, vocab, generator=g)
    targets = torch.tensor([0, 5, vocab // 2, vocab - 1])
    z[torch.arange(4), targets] = z.amax(-1) + 40.0
    stats, _ = run_token_stats(z, targets, block_v=256, split=split)
    ref = token_stats_reference(z, targets, dtype=torch.float64)
    assert torch.isfinite(stats.log1m_p).all() and (stats.log1m_p < -30).all()
    torch.testing.assert_close(stats.log1m_p.double(), ref.log1m_p, rtol=2e-6, atol=0)
    assert torch.isfinite(stats.phi).all()


def test_vocabulary_of_one_and_empty_batch():
    z = torch.tensor([[3.0], [-2.0], [0.5]])
    stats, bad = run_token_stats(z, torch.tensor([0, 0, IGNORE]))
    assert bad == -1
    assert stats.logprob[:2].tolist() == [0.0, 0.0] and stats.lse[:2].tolist() == [3.0, -2.0]
    assert stats.log1m_p[:2].tolist() == [-math.inf] * 2 and stats.margin[:2].tolist() == [math.inf] * 2
    assert stats.entropy[:2].tolist() == [0.0, 0.0] and stats.var_logp[:2].tolist() == [0.0, 0.0]
    assert stats.rank.tolist() == [0, 0, -1] and stats.argmax.tolist() == [0, 0, -1]
    empty, bad = run_token_stats(torch.randn(0, 5), torch.zeros(0, dtype=torch.long))
    assert bad == -1 and empty.logprob.shape == (0,) and empty.rank.dtype == torch.int64


@pytest.mark.parametrize("split", [None, 2])
def test_target_logit_minus_inf(split):
    z = torch.tensor([[1.0, float("-inf"), 2.0, float("-inf"), 0.5] * 8] * 2)
    stats, bad = run_token_stats(z, torch.tensor([1, 2]), block_v=16, split=split)
    assert bad == -1
    assert stats.logprob[0].item() == -math.inf and stats.margin[0].item() == -math.inf
    assert stats.rank.tolist() == [24, 0] and stats.argmax.tolist() == [2, 2]
    assert_close_to_reference(stats, z, torch.tensor([1, 2]))


@pytest.mark.parametrize("custom", [7, 0])
def test_custom_ignore_index(custom):
    logits, targets = make_case("randn", 17, 41, torch.float32)
    targets = torch.where(targets == IGNORE, custom, targets)
    stats, _ = run_token_stats(logits, targets, ignore_index=custom)
    assert_close_to_reference(stats, logits, targets, ignore_index=custom)


# ------------------------------------------------------------------------------------------------
# bad rows


@pytest.mark.parametrize("split", [None, 3])
@pytest.mark.parametrize("vocab,where", [(300, "first"), (300, "target"), (300, "middle"), (300, "last"),
                                         (41, "last")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_bad_row_is_the_first_scored_one(value, where, vocab, split):
    g = torch.Generator().manual_seed(vocab)
    z = torch.randn(6, vocab, generator=g)
    targets = torch.tensor([0, IGNORE, 2, 3, 4, 0])
    col = {"first": 0, "target": 2, "middle": vocab // 2, "last": vocab - 1}[where]
    z[1] = float("nan")  # masked: never read
    z[2, col] = value
    z[4, 0] = value  # a later bad row
    _, bad = run_token_stats(z, targets, block_v=64, split=split)
    assert bad == 2


@pytest.mark.parametrize("split", [None, 2])
def test_row_of_all_minus_inf_is_bad(split):
    z = torch.randn(3, 200)
    z[1] = float("-inf")
    _, bad = run_token_stats(z, torch.tensor([0, 199, 0]), block_v=64, split=split)
    assert bad == 1
    _, bad = run_token_stats(z, torch.tensor([0, IGNORE, 0]), block_v=64, split=split)
    assert bad == -1


@pytest.mark.parametrize("split", [None, 3])
@pytest.mark.parametrize("bad_value", [300, -1, 10**12], ids=["V", "negative", "huge"])
def test_target_outside_the_vocabulary_raises(bad_value, split):
    """The kernels find a target outside [0, V) themselves (no torch check, no extra sync): the
    first one raises IndexError, before any bad row, and its row is never read."""
    z = torch.randn(6, 300)
    targets = torch.tensor([0, IGNORE, 5, 7, 9, 11])
    z[1, 0] = float("nan")  # a bad row before the bad targets: the targets win
    targets[1] = 4
    targets[3] = bad_value
    targets[5] = 300
    with pytest.raises(IndexError, match=rf"targets: expected values in \[0, 300\) or ignore_index={IGNORE}, "
                                         rf"got {bad_value} at flat position 3"):
        run_token_stats(z, targets, block_v=64, split=split)
    targets[3] = IGNORE  # now the first problem is the target 300 of row 5
    with pytest.raises(IndexError, match=r"got 300 at flat position 5"):
        run_token_stats(z, targets, block_v=64, split=split)
    targets[5] = 299
    _, bad = run_token_stats(z, targets, block_v=64, split=split)
    assert bad == 1


def test_fused_target_outside_the_vocabulary_raises():
    hidden, weight, b, targets = fused_inputs(6, 16, 64, torch.float32, True, seed=5, ignore_frac=0.0)
    hidden[0, 0] = float("nan")  # a bad row; the bad target still wins
    targets[4] = 64
    with pytest.raises(IndexError, match=r"targets: expected values in \[0, 64\).* got 64 at flat position 4"):
        run_fused(hidden, weight, targets, b, block_n=16, block_v=16, block_d=16, split=2)
    targets[4] = -7
    with pytest.raises(IndexError, match=r"got -7 at flat position 4"):
        run_fused(hidden, weight, targets, b, block_n=16, block_v=16, block_d=16)


def test_nan_in_masked_rows_only():
    z = torch.randn(3, 300).to(torch.float16)
    z[1] = float("nan")
    z[2, 5] = float("inf")
    targets = torch.tensor([3, IGNORE, IGNORE])
    stats, bad = run_token_stats(z, targets)
    assert bad == -1
    assert_close_to_reference(stats, z, targets)


# ------------------------------------------------------------------------------------------------
# determinism and argument checks


@pytest.mark.parametrize("block_v,split", [(None, None), (32, 4)])
def test_deterministic(block_v, split):
    logits, targets = make_case("randn", 5, 300, torch.float32)
    a, _ = run_token_stats(logits, targets, block_v=block_v, split=split)
    b, _ = run_token_stats(logits, targets, block_v=block_v, split=split)
    assert_bitwise_equal(a, b)


def test_argument_errors():
    x = torch.randn(3, 8, device=DEVICE)
    t = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"logits: expected shape \(N, V\)"):
        TS.token_stats_triton(x.reshape(3, 2, 4), t, IGNORE)
    with pytest.raises(ValueError, match="stride 1 along the vocabulary"):
        TS.token_stats_triton(torch.randn(8, 3, device=DEVICE).T, t, IGNORE)
    with pytest.raises(ValueError, match="targets: expected a contiguous int64 tensor of shape"):
        TS.token_stats_triton(x, t.int(), IGNORE)
    with pytest.raises(ValueError, match="block_v: expected a power of two"):
        TS.token_stats_triton(x, t, IGNORE, block_v=48)
    with pytest.raises(ValueError, match="split: expected a positive integer"):
        TS.token_stats_triton(x, t, IGNORE, split=0)


# ------------------------------------------------------------------------------------------------
# fused lm_head: token_stats_from_hidden_triton

FUSED_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
if ON_GPU:
    FUSED_DTYPES["bf16"] = torch.bfloat16


def fused_inputs(n, d, vocab, dtype, bias, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed * 1000 + n * 7 + d * 3 + vocab)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    weight = (3.0 * torch.randn(vocab, d, generator=g) / math.sqrt(d)).to(dtype)
    b = torch.randn(vocab, generator=g).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    keep = torch.rand(n, generator=g) >= ignore_frac
    keep[0] = True
    return hidden, weight, b, torch.where(keep, targets, IGNORE)


def fused_logits(hidden, weight, bias):
    """The fp32 logits the kernel stands for (16-bit products are exact in fp32)."""
    z = hidden.float() @ weight.float().T
    return z if bias is None else z + bias.float()


def assert_fused_matches(stats, hidden, weight, bias, targets, ignore_index=IGNORE, rel=2e-5):
    """Against the float64 reference of the fp32 logits: the matmul's summation order differs,
    so the tolerance scales with the logits; argmax/rank exact except at near-ties."""
    logits = fused_logits(hidden.cpu(), weight.cpu(), None if bias is None else bias.cpu())
    ref64, ref32 = references(logits, targets, ignore_index)
    mask = targets != ignore_index
    finite_logits = logits[mask][torch.isfinite(logits[mask])]
    scale = 1.0 + (finite_logits.abs().max().item() if finite_logits.numel() else 0.0)
    for name in FLOAT_FIELDS:
        got, r, t = getattr(stats, name), getattr(ref64, name)[mask], getattr(ref32, name)[mask]
        assert torch.isnan(got[~mask]).all(), name
        got = got[mask].double()
        finite = torch.isfinite(r)
        assert torch.equal(got[~finite], r[~finite]), f"{name}: infinities differ"
        err = (got[finite] - r[finite]).abs()
        err_torch = (t[finite].double() - r[finite]).abs().nan_to_num(nan=0.0)
        tol = rel * (scale**2 if name == "var_logp" else scale)
        assert bool((err <= err_torch + tol).all()), f"{name}: max error {err.max().item():.3g} (tol {tol:.3g})"
    check_int_fields_up_to_ties(stats, logits, targets, ignore_index, gap=rel * scale)


def check_int_fields_up_to_ties(stats, logits, targets, ignore_index, gap):
    """argmax and rank of the fused kernel against ``logits`` (any device) up to near-ties.

    The kernel's logits differ from ``logits`` by the matmul's rounding (< ``gap``), so a logit
    within ``gap`` of ``z_y`` may fall on either side: the rank must lie between the count of
    logits clearly above ``z_y`` and that count plus the ambiguous ones, and the argmax must
    point at a logit within ``gap`` of the maximum. Exact wherever there is no near-tie.
    """
    mask = (targets != ignore_index).reshape(-1).to(logits.device)
    z = logits.double().reshape(-1, logits.shape[-1])[mask]
    y = targets.reshape(-1).to(logits.device)[mask]
    rank = stats.rank.reshape(-1).to(logits.device)
    argmax = stats.argmax.reshape(-1).to(logits.device)
    assert bool((rank[~mask] == -1).all()) and bool((argmax[~mask] == -1).all())
    rank, argmax = rank[mask], argmax[mask]
    zy = z.gather(1, y[:, None])
    other = torch.ones_like(z, dtype=torch.bool).scatter(1, y[:, None], False)
    clearly_above = ((z > zy + gap) & other).sum(1)
    ambiguous = (((z - zy).abs() <= gap) & other).sum(1)
    assert bool(((rank >= clearly_above) & (rank <= clearly_above + ambiguous)).all()), "rank"
    assert bool((z.gather(1, argmax[:, None]).squeeze(1) >= z.amax(1) - gap).all()), "argmax"


FUSED_GRID = [
    pytest.param(n, d, v, dt, bias, id=f"N{n}-d{d}-V{v}-{dt}-{'bias' if bias else 'nobias'}")
    for n, d, v, dt, bias in itertools.product((1, 5, 33), (16, 40), (50, 300), FUSED_DTYPES, (False, True))
]


@pytest.mark.parametrize("n,d,vocab,dtype_name,bias", FUSED_GRID)
def test_fused_matches_reference(n, d, vocab, dtype_name, bias):
    hidden, weight, b, targets = fused_inputs(n, d, vocab, FUSED_DTYPES[dtype_name], bias)
    # small tiles where the vocabulary is larger: several tiles, k-chunks and splits
    blocks = dict(block_n=16, block_v=32, block_d=16) if vocab == 300 else {}
    stats, bad = run_fused(hidden, weight, targets, b, **blocks)
    assert bad == -1
    assert_fused_matches(stats, hidden, weight, b, targets)


@pytest.mark.parametrize("split", [1, 3, 64])
def test_fused_split_and_determinism(split):
    hidden, weight, b, targets = fused_inputs(20, 40, 300, torch.float32, True, seed=1)
    kw = dict(block_n=16, block_v=32, block_d=16, split=split)
    a, _ = run_fused(hidden, weight, targets, b, **kw)
    assert_fused_matches(a, hidden, weight, b, targets)
    again, _ = run_fused(hidden, weight, targets, b, **kw)
    assert_bitwise_equal(a, again)


@pytest.mark.parametrize("blocks", [dict(block_n=16, block_v=32, block_d=16, split=3),
                                    dict(block_n=32, block_v=16, block_d=16, split=2)], ids=["zy_dot", "zy_rowwise"])
@pytest.mark.parametrize("dtype_name", list(FUSED_DTYPES))
def test_fused_exact_ties(dtype_name, blocks):
    """Small-integer operands: every logit is exact whatever the summation order, and ties are
    everywhere (duplicated weight rows too): argmax (first index), rank (strictly greater) and
    margin must match the reference exactly."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randint(-2, 3, (21, 16), generator=g).to(FUSED_DTYPES[dtype_name])
    weight = torch.randint(-2, 3, (90, 16), generator=g).to(FUSED_DTYPES[dtype_name])
    weight[60] = weight[7]  # duplicated unembedding rows
    weight[33] = weight[7]
    bias = torch.randint(-1, 2, (90,), generator=g).to(FUSED_DTYPES[dtype_name])
    targets = torch.randint(0, 90, (21,), generator=g)
    targets[:4] = torch.tensor([7, 33, 60, IGNORE])
    stats, bad = run_fused(hidden, weight, targets, bias, **blocks)
    assert bad == -1
    ref = token_stats_reference(fused_logits(hidden, weight, bias), targets, dtype=torch.float64)
    mask = targets != IGNORE
    for name in ("argmax", "rank"):
        assert torch.equal(getattr(stats, name), getattr(ref, name)), name
    assert torch.equal(stats.margin[mask].double(), ref.margin[mask])
    assert_fused_matches(stats, hidden, weight, bias, targets)


def test_fused_masked_vocabulary_in_the_bias():
    """-inf bias entries (a masked vocabulary), a target on one of them, a custom ignore_index."""
    hidden, weight, b, targets = fused_inputs(9, 16, 100, torch.float32, True, seed=2)
    b[::3] = float("-inf")
    targets = torch.where(targets == IGNORE, 1, targets)
    targets[2] = 0  # bias[0] = -inf: logprob = -inf
    stats, bad = run_fused(hidden, weight, targets, b, ignore_index=1, block_n=16, block_v=16, block_d=16)
    assert bad == -1
    assert stats.logprob[2].item() == -math.inf
    assert_fused_matches(stats, hidden, weight, b, targets, ignore_index=1)


@pytest.mark.parametrize("what", ["hidden_nan", "hidden_inf", "weight_nan", "bias_inf", "masked_only"])
def test_fused_bad_rows(what):
    hidden, weight, b, targets = fused_inputs(6, 16, 64, torch.float32, True, seed=3, ignore_frac=0.0)
    targets[1] = IGNORE
    hidden[1, 3] = float("nan")  # masked row: never a bad row
    if what == "hidden_nan":
        hidden[3, 0] = float("nan")
    elif what == "hidden_inf":
        hidden[4, 5] = float("inf")
    elif what == "weight_nan":
        weight[17, 2] = float("nan")  # every row's logit 17 is NaN
    elif what == "bias_inf":
        b[40] = float("inf")
    _, bad = run_fused(hidden, weight, targets, b, block_n=16, block_v=16, block_d=16, split=2)
    assert bad == {"hidden_nan": 3, "hidden_inf": 4, "weight_nan": 0, "bias_inf": 0, "masked_only": -1}[what]


def test_fused_argument_errors():
    h = torch.randn(3, 16, device=DEVICE)
    w = torch.randn(10, 16, device=DEVICE)
    t = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"expected shapes \(N, d\) and \(V, d\)"):
        FL.token_stats_from_hidden_triton(h, w[:, :8].contiguous(), t, None, IGNORE)
    with pytest.raises(ValueError, match="contiguous"):
        FL.token_stats_from_hidden_triton(torch.randn(16, 3, device=DEVICE).T, w, t, None, IGNORE)
    with pytest.raises(ValueError, match=r"bias: expected a contiguous tensor of shape \(10,\)"):
        FL.token_stats_from_hidden_triton(h, w, t, torch.zeros(9, device=DEVICE), IGNORE)
    with pytest.raises(ValueError, match="block_n: expected a power of two >= 16"):
        FL.token_stats_from_hidden_triton(h, w, t, None, IGNORE, block_n=8)
    empty, bad = run_fused(torch.randn(0, 16), torch.randn(10, 16), torch.zeros(0, dtype=torch.long))
    assert bad == -1 and empty.logprob.shape == (0,)


# ------------------------------------------------------------------------------------------------
# temperatures: statistics of softmax(z / tau) from the same pass

TEMPERATURE_SETS = [(0.5, 2.0), (0.7,), (0.25, 1.0, 4.0)]


def run_tempered(logits, targets, temperatures, ignore_index=IGNORE, **kw):
    """`token_stats_triton` with temperatures: (TokenStats with ``tempered``, bad_row), on CPU."""
    vocab = logits.shape[-1]
    rows = to_device(logits)
    if rows.dim() != 2:
        rows = rows.reshape(-1, vocab)
    flat = targets.reshape(-1).to(torch.int64).contiguous().to(DEVICE)
    *outs, bad = TS.token_stats_triton(rows, flat, ignore_index, temperatures, **kw)
    return _with_tempered(outs, targets, ignore_index, temperatures), bad


def run_fused_tempered(hidden, weight, targets, temperatures, bias=None, ignore_index=IGNORE, **kw):
    dev = lambda x: None if x is None else x.to(DEVICE).contiguous()  # noqa: E731
    flat = targets.reshape(-1).to(torch.int64).contiguous().to(DEVICE)
    *outs, bad = FL.token_stats_from_hidden_triton(
        dev(hidden), dev(weight), flat, dev(bias), ignore_index, temperatures, **kw
    )
    return _with_tempered(outs, targets, ignore_index, temperatures), bad


def _with_tempered(outs, targets, ignore_index, temperatures) -> TokenStats:
    assert len(outs) == 9 + 3, f"expected 9 base and 3 tempered outputs, got {len(outs)}"
    t = len(temperatures)
    for out in outs[9:]:
        assert out.dtype == torch.float32 and out.shape == (targets.numel(), t) and out.is_contiguous()
    tempered = TemperedStats(tuple(temperatures), *(o.reshape(*targets.shape, t).cpu() for o in outs[9:]))
    return _as_stats(outs[:9], targets, ignore_index)._replace(tempered=tempered)


def tempered_errors(got: TemperedStats, ref64: TemperedStats, ref32: TemperedStats, targets, ignore_index=IGNORE,
                    atol=ATOL, rtol=RTOL) -> list[str]:
    """The tolerance rule of `conftest.reference_errors`, per tempered field and temperature column:
    max error <= torch's own fp32 error + ``atol[j] + rtol * scale`` (``atol`` scalar or per column);
    NaN exactly at masked positions; infinities at the same places with the same sign."""
    problems = []
    mask = targets != ignore_index
    for name in TEMPERED_FIELDS:
        g, r64, r32 = getattr(got, name), getattr(ref64, name), getattr(ref32, name)
        if tuple(g.shape) != tuple(r64.shape):
            return [f"{name}: shape {tuple(g.shape)}, expected {tuple(r64.shape)}"]
        if not bool(torch.isnan(g[~mask]).all()):
            problems.append(f"{name}: masked positions are not all NaN")
        for j, tau in enumerate(ref64.temperatures):
            b, r, t = g[mask][:, j].double(), r64[mask][:, j], r32[mask][:, j].double()
            finite = torch.isfinite(r)
            if not torch.equal(b[~finite], r[~finite]):
                problems.append(f"{name}[tau={tau}]: non-finite reference values differ: got {b[~finite].tolist()[:4]}"
                                f", reference {r[~finite].tolist()[:4]}")
            b, r, t = b[finite], r[finite], t[finite]
            if not bool(torch.isfinite(b).all()):
                problems.append(f"{name}[tau={tau}]: non-finite where the reference is finite")
                continue
            if not r.numel():
                continue
            err = (b - r).abs().max().item()
            err_torch = (t - r).abs().nan_to_num(nan=float("inf")).max().item()
            a = atol[j] if isinstance(atol, (list, tuple)) else atol
            bound = err_torch + a + rtol * r.abs().max().item()
            if not err <= bound:
                i = int((b - r).abs().argmax())
                problems.append(f"{name}[tau={tau}]: max error {err:.3g} > bound {bound:.3g} (torch fp32 error "
                                f"{err_torch:.3g}); at scored #{i}: got {b[i].item()!r}, reference {r[i].item()!r}")
    if not bool((got.entropy[mask] >= 0).all()) or not bool((got.max_logprob[mask] <= 0).all()):
        problems.append("entropy_t must be >= 0 and max_logprob_t <= 0")
    return problems


def assert_tempered_close(stats, logits, targets, temperatures, ignore_index=IGNORE):
    ref64 = token_stats_reference(logits, targets, ignore_index, dtype=torch.float64, temperatures=temperatures)
    ref32 = token_stats_reference(logits.float(), targets, ignore_index, dtype=torch.float32,
                                  temperatures=temperatures)
    problems = tempered_errors(stats.tempered, ref64.tempered, ref32.tempered, targets, ignore_index)
    assert not problems, "\n".join(problems)


def mixed_rows(vocab: int, dtype: torch.dtype):
    """One batch of the hard rows: -inf logits (a row with only the target finite, a -inf target),
    peaked rows (target ahead by 40), rows near +1e4 and -1e4, a constant row, a masked row."""
    parts = [make_case(case, rows, vocab, dtype, ignore_frac=0.0)
             for case, rows in (("neginf", 3), ("peaked", 2), ("huge", 2), ("equal", 1))]
    logits = torch.cat([z for z, _ in parts])
    targets = torch.cat([t for _, t in parts])
    targets[4] = IGNORE
    return logits, targets


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS, ids=lambda t: "tau" + "-".join(map(str, t)))
def test_tempered_matches_reference(temperatures, dtype_name):
    """Two tiles per row (the max moves), one program per row."""
    logits, targets = mixed_rows(100, DTYPES[dtype_name])
    stats, bad = run_tempered(logits, targets, temperatures, block_v=64)
    assert bad == -1
    assert_tempered_close(stats, logits, targets, temperatures)
    assert stats.tempered.logprob[2].isneginf().all()  # the -inf target
    # row 1: only the target is finite, so -inf logits must add exactly 0 at every temperature
    for name in TEMPERED_FIELDS:
        assert getattr(stats.tempered, name)[1].tolist() == [0.0] * len(temperatures), name


# ------------------------------------------------------------------------------------------------
# the other loop variant: per-thread maxima and shifts merged at the end (slot_shift=True)

SLOT_GRID = [
    pytest.param(case, dt, vocab, block_v, split, id=f"{case}-{dt}-V{vocab}-b{block_v}-s{split}")
    for case, dt, (vocab, block_v, split) in itertools.product(
        CASES, DTYPES, [(41, None, None), (1000, 64, None), (1000, 64, 3), (120, 16, 5)]
    )
]


@pytest.mark.parametrize("case,dtype_name,vocab,block_v,split", SLOT_GRID)
def test_slot_shift_matches_reference(case, dtype_name, vocab, block_v, split):
    logits, targets = make_case(case, 3, vocab, DTYPES[dtype_name])
    stats, bad = run_token_stats(logits, targets, block_v=block_v, split=split, slot_shift=True)
    assert bad == -1
    assert_close_to_reference(stats, logits, targets)


@pytest.mark.parametrize("block_v,split", [(None, None), (16, None), (16, 4)])
def test_slot_shift_ties_and_bad_rows(block_v, split):
    """The first index of the max across slots, tiles and splits; NaN / +inf / -inf rows."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(4, 200, generator=g)
    z[:, [5, 40, 190]] = 10.0  # the same max in different slots, tiles and splits
    z[2, 3] = 9.0
    targets = torch.tensor([40, 190, 3, 5])
    stats, bad = run_token_stats(z, targets, block_v=block_v, split=split, slot_shift=True)
    assert bad == -1
    assert stats.argmax.tolist() == [5, 5, 5, 5]
    assert stats.rank.tolist() == [0, 0, 3, 0]
    for value, row in ((float("nan"), 1), (float("inf"), 1), (float("-inf"), None)):
        w = z.clone()
        if row is None:
            w[2] = value
            row = 2
        else:
            w[row, 77] = value
        _, bad = run_token_stats(w, targets, block_v=block_v, split=split, slot_shift=True)
        assert bad == row, value


@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS, ids=lambda t: "tau" + "-".join(map(str, t)))
@pytest.mark.parametrize("split", [None, 3])
def test_slot_shift_tempered_matches_reference(temperatures, split):
    logits, targets = mixed_rows(100, torch.float32)
    stats, bad = run_tempered(logits, targets, temperatures, block_v=32, split=split, slot_shift=True)
    assert bad == -1
    assert_tempered_close(stats, logits, targets, temperatures)


@pytest.mark.parametrize("dtype_name,temperatures", [("fp32", (0.25, 1.0, 4.0)), ("fp16", (0.7,))])
def test_tempered_split_merges_the_partitions(dtype_name, temperatures):
    """The vocabulary split over three programs per row: the merge kernel moves each partition's
    tempered sums to the row's final shift; the base fields are those of the call without temperatures."""
    logits, targets = mixed_rows(90, DTYPES[dtype_name])
    stats, bad = run_tempered(logits, targets, temperatures, block_v=16, split=3)  # 3 partitions of 2 tiles
    assert bad == -1
    assert_tempered_close(stats, logits, targets, temperatures)
    base, _ = run_token_stats(logits, targets, block_v=16, split=3)
    assert_bitwise_equal(stats, base)


def test_eight_temperatures_and_a_peaked_target():
    """T = 8 (the largest T_PAD) and T = 5 (three padded columns); tau -> small makes p_tau one-hot."""
    z = 3.0 * torch.randn(4, 100, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 7, IGNORE, 99])
    z[0, 0] = z[0].max() + 40.0
    z[1, ::4] = float("-inf")
    for temperatures in [(0.05, 0.1, 0.3, 0.5, 1.0, 2.0, 8.0, 100.0), (0.3, 0.9, 1.1, 3.0, 30.0)]:
        stats, bad = run_tempered(z, targets, temperatures, block_v=64)
        assert bad == -1
        assert_tempered_close(stats, z, targets, temperatures)
    # at tau = 0.05 the peaked row's distribution is one-hot on the target: entropy 0, logprob 0
    assert stats.tempered.logprob.shape == (4, 5)
    one_hot, _ = run_tempered(z[:1], targets[:1], (0.05,))
    assert one_hot.tempered.entropy[0, 0].item() == 0.0 and one_hot.tempered.logprob[0, 0].item() == 0.0


def test_tempered_at_tau_one_are_the_base_fields():
    """tau = 1: logprob_t, entropy_t, max_logprob_t equal logprob, entropy, max_logprob (to fp32 rounding)."""
    logits, targets = make_case("randn", 6, 100, torch.float32)
    stats, _ = run_tempered(logits, targets, (1.0,), block_v=64)
    mask = targets != IGNORE
    for name in TEMPERED_FIELDS:
        got, base = getattr(stats.tempered, name)[..., 0][mask], getattr(stats, name)[mask]
        torch.testing.assert_close(got, base, rtol=1e-5, atol=2e-6, msg=name)


def test_no_temperatures_is_the_old_tuple():
    """Without temperatures both entry points return exactly the 9 fields and the bad row."""
    logits, targets = make_case("neginf", 4, 60, torch.float32)
    rows, flat = logits.to(DEVICE), targets.to(DEVICE)
    out = TS.token_stats_triton(rows, flat, IGNORE)
    out_empty = TS.token_stats_triton(rows, flat, IGNORE, ())
    assert len(out) == 10 and isinstance(out[-1], int) and len(out_empty) == 10
    assert_bitwise_equal(_as_stats(out[:-1], targets, IGNORE), _as_stats(out_empty[:-1], targets, IGNORE))
    with_temps = TS.token_stats_triton(rows, flat, IGNORE, (0.5,))
    assert len(with_temps) == 13 and with_temps[-1] == out[-1] == -1
    assert_bitwise_equal(_as_stats(with_temps[:9], targets, IGNORE), _as_stats(out[:-1], targets, IGNORE))
    hidden, weight, b, t = fused_inputs(5, 16, 50, torch.float32, True)
    dev = lambda x: x.to(DEVICE)  # noqa: E731
    fused = FL.token_stats_from_hidden_triton(dev(hidden), dev(weight), dev(t), dev(b), IGNORE)
    assert len(fused) == 10 and isinstance(fused[-1], int)
    empty = TS.token_stats_triton(rows[:0], flat[:0], IGNORE, (0.5, 2.0))
    assert len(empty) == 13 and empty[9].shape == (0, 2) and empty[-1] == -1


@pytest.mark.parametrize("dtype_name", list(FUSED_DTYPES))
@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS, ids=lambda t: "tau" + "-".join(map(str, t)))
def test_fused_tempered_matches_reference(temperatures, dtype_name):
    """The fused lm_head kernel: several vocabulary tiles and splits, -inf bias entries (a target
    on one), a peaked row, masked rows; tolerance scaled by the logits and by beta, as the
    logits' own rounding (the matmul's summation order) is multiplied by 1 / tau."""
    dtype = FUSED_DTYPES[dtype_name]
    hidden, weight, b, targets = fused_inputs(20, 16, 100, dtype, True, seed=4)
    b = b.float()
    b[::7] = float("-inf")
    targets[2] = 0  # bias[0] = -inf: logprob_t = -inf
    b[targets[1]] += 40.0  # row 1 is peaked on its target
    b = b.to(dtype)
    for split in (1, 3):
        stats, bad = run_fused_tempered(hidden, weight, targets, temperatures, b, block_n=16, block_v=32,
                                        block_d=16, split=split)
        assert bad == -1
        logits = fused_logits(hidden, weight, b)
        mask = targets != IGNORE
        finite_logits = logits[mask][torch.isfinite(logits[mask])]
        scale = 1.0 + finite_logits.abs().max().item()
        ref64, ref32 = (token_stats_reference(logits, targets, IGNORE, dtype=dt, temperatures=temperatures).tempered
                        for dt in (torch.float64, torch.float32))
        atol = [2e-5 * scale * max(1.0, 1.0 / tau) for tau in temperatures]
        problems = tempered_errors(stats.tempered, ref64, ref32, targets, atol=atol, rtol=0.0)
        assert not problems, f"split={split}:\n" + "\n".join(problems)
        assert stats.tempered.logprob[2].isneginf().all()
        if split == 3 and dtype == torch.float32:
            base, _ = run_fused(hidden, weight, targets, b, block_n=16, block_v=32, block_d=16, split=split)
            assert_bitwise_equal(stats, base)


@pytest.mark.parametrize("bad,error", [((0.0,), ValueError), ((-1.0, 2.0), ValueError), ((math.inf,), ValueError),
                                       ((math.nan,), ValueError), ((1e-40,), ValueError), ((0.5,) * 9, ValueError),
                                       (("0.5",), TypeError), (0.5, TypeError)])
def test_temperature_errors(bad, error):
    x = torch.randn(3, 8, device=DEVICE)
    t = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(error, match="temperatures: expected"):
        TS.token_stats_triton(x, t, IGNORE, bad)
    with pytest.raises(error, match="temperatures: expected"):
        FL.token_stats_from_hidden_triton(torch.randn(3, 16, device=DEVICE), torch.randn(10, 16, device=DEVICE), t,
                                          None, IGNORE, bad)


# ------------------------------------------------------------------------------------------------
# GPU: real sizes through the public API (marked `gpu`; skipped without CUDA)


def _gpu_logits(rows, vocab, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    z = 3.0 * torch.randn(rows, vocab, generator=g, device="cuda")
    t = torch.randint(0, vocab, (rows,), generator=g, device="cuda")
    t[torch.rand(rows, generator=g, device="cuda") < 0.2] = IGNORE
    special = min(rows, 4)
    t[:special] = torch.tensor([1, 2, 3, vocab - 1], device="cuda")[:special]
    z[0, t[0]] = z[0].max() + 40.0  # peaked
    if rows > 3:
        z[1, ::7] = float("-inf")  # masked vocabulary
        z[2] = 1.25  # all equal
        z[3] += 1e4  # huge
    return z.to(dtype), t


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype_name", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("vocab", [32000, 50257, 128256])
def test_gpu_token_stats_real_sizes(vocab, dtype_name):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    x, t = _gpu_logits(4096, vocab, dtype, seed=vocab)
    stats = mia_fast.token_stats(x, t, backend="triton")
    ref64 = token_stats_reference(x, t, IGNORE, dtype=torch.float64)
    ref32 = token_stats_reference(x.float(), t, IGNORE, dtype=torch.float32)
    problems = reference_errors(*(TokenStats(*(f.cpu() for f in s)) for s in (stats, ref64, ref32)), t.cpu())
    assert not problems, "\n".join(problems)
    again = mia_fast.token_stats(x, t)  # auto picks triton on CUDA
    assert_bitwise_equal(TokenStats(*(f.cpu() for f in stats)), TokenStats(*(f.cpu() for f in again)))


@gpu
@needs_gpu
@pytest.mark.parametrize("rows", [1, 7])
def test_gpu_split_path_real_vocabulary(rows):
    x, t = _gpu_logits(rows, 128256, torch.bfloat16, seed=rows)
    t[0] = 5
    a = mia_fast.token_stats(x, t, backend="triton")
    b = mia_fast.token_stats(x, t, backend="triton")
    cpu = lambda s: TokenStats(*(f.cpu() for f in s))  # noqa: E731
    assert_bitwise_equal(cpu(a), cpu(b))
    ref64 = token_stats_reference(x, t, IGNORE, dtype=torch.float64)
    ref32 = token_stats_reference(x.float(), t, IGNORE, dtype=torch.float32)
    problems = reference_errors(cpu(a), cpu(ref64), cpu(ref32), t.cpu())
    assert not problems, "\n".join(problems)


@gpu
@needs_gpu
def test_gpu_bad_row_raises():
    x, t = _gpu_logits(64, 50257, torch.bfloat16, seed=1)
    t[:] = 0
    x[40, 7] = float("nan")
    x[33, 50000] = float("inf")
    with pytest.raises(ValueError, match=r"logits: row 33 "):
        mia_fast.token_stats(x, t, backend="triton")


@gpu
@needs_gpu
def test_gpu_bad_target_raises_before_bad_rows():
    """Through the public API on the GPU: the kernels find the bad target (no torch check)."""
    x, t = _gpu_logits(64, 50257, torch.bfloat16, seed=2)
    t[:] = 0
    x[3, 7] = float("nan")
    t[40] = 50257
    with pytest.raises(IndexError, match=r"targets: expected values in \[0, 50257\).* got 50257 at flat position 40"):
        mia_fast.token_stats(x, t, backend="triton")
    h = torch.randn(64, 64, device="cuda")
    w = torch.randn(1000, 64, device="cuda")
    t2 = torch.zeros(64, dtype=torch.long, device="cuda")
    t2[9] = -3
    with pytest.raises(IndexError, match=r"got -3 at flat position 9"):
        mia_fast.token_stats_from_hidden(h, w, t2, backend="triton")


@gpu
@needs_gpu
def test_gpu_fused_target_ties_a_duplicated_row():
    """z_y comes from the same tl.dot as the tiles: a target whose weight row is duplicated ties
    exactly with its twin (margin <= 0; where the pair is clearly ahead of every other logit,
    rank 0 and argmax = the first of the two)."""
    n, d, vocab = 512, 576, 49152
    g = torch.Generator(device="cuda").manual_seed(11)
    hidden = 8.0 * torch.randn(n, d, generator=g, device="cuda").to(torch.bfloat16)  # sharp rows
    weight = (3.0 * torch.randn(vocab, d, generator=g, device="cuda") / math.sqrt(d)).to(torch.bfloat16)
    z = hidden.double() @ weight.double().T
    t = z.argmax(1)  # each target is its row's top-1 ...
    twins = torch.randperm(vocab, generator=g, device="cuda")[:n]
    keep = ~torch.isin(twins, t)
    t, twins, hidden = t[keep], twins[keep], hidden[keep]
    weight[twins] = weight[t]  # ... and its weight row sits at another index too
    z = hidden.double() @ weight.double().T
    stats = mia_fast.token_stats_from_hidden(hidden, weight, t, backend="triton")
    assert bool((stats.margin <= 0).all()), "a target tied with its twin must have margin <= 0"
    others = z.scatter(1, torch.stack([t, twins], 1), float("-inf"))
    clear = (z.gather(1, t[:, None]).squeeze(1) - others.amax(1)) > 1e-3 * z.abs().amax()
    assert clear.sum() > 0.5 * clear.numel()
    assert bool((stats.rank[clear] == 0).all())
    assert torch.equal(stats.argmax[clear], torch.minimum(t, twins)[clear])


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype_name,d,bias", [("bf16", 576, False), ("bf16", 2048, True), ("fp32", 576, True),
                                               ("fp32", 2048, False)])
def test_gpu_fused_real_sizes(dtype_name, d, bias):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    n, vocab = 2048, 49152
    g = torch.Generator(device="cuda").manual_seed(d)
    hidden = torch.randn(n, d, generator=g, device="cuda").to(dtype)
    weight = (3.0 * torch.randn(vocab, d, generator=g, device="cuda") / math.sqrt(d)).to(dtype)
    b = torch.randn(vocab, generator=g, device="cuda").to(dtype) if bias else None
    t = torch.randint(0, vocab, (n,), generator=g, device="cuda")
    t[torch.rand(n, generator=g, device="cuda") < 0.2] = IGNORE
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    stats = mia_fast.token_stats_from_hidden(hidden, weight, t, bias=b, backend="triton")
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < n * vocab * 4 / 20, f"peak extra memory {extra} bytes: the logits must not be materialised"
    again = mia_fast.token_stats_from_hidden(hidden, weight, t, bias=b, backend="triton")
    cpu = lambda s: TokenStats(*(f.cpu() for f in s))  # noqa: E731
    assert_bitwise_equal(cpu(stats), cpu(again))
    # reference: the exact (float64) logits of the same operands, on the GPU
    logits = hidden.double() @ weight.double().T
    if b is not None:
        logits += b.double()
    ref64 = token_stats_reference(logits, t, IGNORE, dtype=torch.float64)
    mask = (t != IGNORE).cpu()
    scale = 1.0 + logits.abs().max().item()
    rel = 1e-5 if dtype == torch.float32 else 2e-5
    for name in FLOAT_FIELDS:
        err = (getattr(stats, name).double() - getattr(ref64, name)).cpu()[mask].abs().max().item()
        tol = rel * (scale**2 if name == "var_logp" else scale)
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"
    check_int_fields_up_to_ties(TokenStats(*(f.to(logits.device) for f in stats)), logits, t, IGNORE, gap=rel * scale)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
@pytest.mark.parametrize("split", [None, 16])
def test_gpu_tempered_real_sizes(dtype_name, split):
    """Tempered fields at a real vocabulary, one program per row and split over 16 partitions."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    temperatures = (0.25, 0.5, 2.0)
    x, t = _gpu_logits(512, 50257, dtype, seed=3)
    *outs, bad = TS.token_stats_triton(x, t, IGNORE, temperatures, split=split)
    assert bad == -1
    cpu = lambda s: TemperedStats(s.temperatures, *(f.cpu() for f in s[1:]))  # noqa: E731
    got = TemperedStats(temperatures, *(o.cpu() for o in outs[9:]))
    ref64 = cpu(token_stats_reference(x, t, IGNORE, dtype=torch.float64, temperatures=temperatures).tempered)
    ref32 = cpu(token_stats_reference(x.float(), t, IGNORE, dtype=torch.float32, temperatures=temperatures).tempered)
    problems = tempered_errors(got, ref64, ref32, t.cpu())
    assert not problems, "\n".join(problems)
    base = TS.token_stats_triton(x, t, IGNORE, split=split)
    for a, b in zip(outs[:9], base[:9]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# every finite input (issue "inputs that cannot produce silent wrong numbers"): logits of any size
# (1e9, +-3e38, finfo.min masking, -inf mixed in) and huge hidden states, at interpreter sizes

from extreme_inputs import LARGE_KINDS, LARGE_TEMPS, huge_hidden_problem, large_logits, rounded  # noqa: E402

LARGE_LAYOUTS = {
    "one-tile": {},
    "tiles": dict(block_v=16),  # the running max moves across 1e38 gaps between tiles
    "split": dict(block_v=16, split=4),  # ... and between partitions (the merge kernel)
    "slot-shift": dict(block_v=16, slot_shift=True),
    "slot-shift-split": dict(block_v=16, split=3, slot_shift=True),
}


def _large_problems(stats, logits, targets, temperatures=()):
    """The tolerance rule against the float64 reference rounded to float32 outputs; the float32
    torch computation (torch's own error in the rule) must itself match it."""
    ref64 = rounded(token_stats_reference(logits, targets, IGNORE, dtype=torch.float64, temperatures=temperatures))
    ref32 = token_stats_reference(logits.float(), targets, IGNORE, dtype=torch.float32, temperatures=temperatures)
    problems = reference_errors(stats, ref64, ref32, targets) + reference_errors(ref32, ref64, ref64, targets)
    if temperatures:
        problems += tempered_errors(stats.tempered, ref64.tempered, ref32.tempered, targets)
    return problems


@pytest.mark.parametrize("layout", list(LARGE_LAYOUTS))
@pytest.mark.parametrize("kind", LARGE_KINDS)
def test_large_logits_match_reference(kind, layout):
    problems = []
    for dt in DTYPES:
        logits, targets = large_logits(kind, 7, 150, DTYPES[dt])
        stats, bad = run_token_stats(logits, targets, **LARGE_LAYOUTS[layout])
        assert bad == -1
        problems += [f"{dt}: {p}" for p in _large_problems(stats, logits, targets)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layout", ["one-tile", "split", "slot-shift"])
@pytest.mark.parametrize("kind", ["pm3e38", "finfo_min", "1e9_ties"])
def test_large_logits_tempered(kind, layout):
    logits, targets = large_logits(kind, 7, 150)
    stats, bad = run_tempered(logits, targets, LARGE_TEMPS, **LARGE_LAYOUTS[layout])
    assert bad == -1
    problems = _large_problems(stats, logits, targets, LARGE_TEMPS)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("temperatures", [(), LARGE_TEMPS], ids=["base", "tempered"])
@pytest.mark.parametrize("blocks", [{}, dict(block_n=16, block_v=16, block_d=16, split=3)], ids=["default", "split"])
def test_fused_huge_hidden_states(blocks, temperatures):
    """Integer hidden states times 2**0 .. 2**117: the fp32 logits are exact in any summation
    order, so the kernel must match the float64 reference itself (ties at 1.7e38 included)."""
    hidden, weight, targets = huge_hidden_problem(16, 16, 120)
    logits = hidden @ weight.T
    if temperatures:
        stats, bad = run_fused_tempered(hidden, weight, targets, temperatures, **blocks)
    else:
        stats, bad = run_fused(hidden, weight, targets, **blocks)
    assert bad == -1
    problems = _large_problems(stats, logits, targets, temperatures)
    assert not problems, "\n".join(problems)
    assert stats.entropy[3].item() == pytest.approx(math.log(2), rel=1e-6)
