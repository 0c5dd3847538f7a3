"""`mia_fast.token_stats` on CPU: every backend against the float64 reference (design.md §3, §8)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mia_fast
from mia_fast.backends import cpp_extension
from mia_fast.reference import token_stats_reference
from mia_fast.stats import FLOAT_FIELDS, INT_FIELDS

from conftest import (
    CASES,
    DTYPES,
    IGNORE,
    assert_matches_reference,
    case_with_reference,
    make_case,
    reference_errors,
    tempered_errors,
)

CPU_BACKENDS = ("cpp", "torch")
TESTS_DIR = Path(__file__).resolve().parent
EXT = cpp_extension()
needs_cpp = pytest.mark.skipif(EXT is None, reason="mia_fast._C is not built")

# Row counts per vocabulary: the float64 reference holds several (N, V) temporaries, so large
# vocabularies use few rows. Every case x dtype x backend runs on V <= 1000 with N in {1, 3, 423}
# and on the large vocabularies with N in {1, 3}; the many-row large-vocabulary shapes (several
# threads over long rows) run on the cpp backend for a subset of case x dtype (the torch backend
# *is* the float32 reference, and the float64 reference dominates the time).
SMALL_SHAPES = [(v, n) for v in (8, 41, 1000) for n in (1, 3, 423)]
LARGE_VOCABS = (32000, 50257, 131072)
MANY_ROWS = {32000: 100, 50257: 64, 131072: 40}
LARGE_SHAPES = [(v, n) for v in LARGE_VOCABS for n in (1, 3)]
MANY_ROW_COMBOS = [("randn", "fp32"), ("randn", "bf16"), ("randn", "fp16"), ("strided", "bf16"),
                   ("3d", "fp16"), ("neginf", "bf16"), ("huge", "fp32"), ("peaked", "bf16"),
                   ("equal", "fp16")]


def _backend_param(backend):
    return pytest.param(backend, marks=needs_cpp) if backend == "cpp" else backend


def _grid():
    combos = [(c, dt, v, n, b) for c, dt, (v, n), b in
              itertools.product(CASES, DTYPES, SMALL_SHAPES + LARGE_SHAPES, CPU_BACKENDS)]
    combos += [(c, dt, v, MANY_ROWS[v], "cpp") for (c, dt), v in itertools.product(MANY_ROW_COMBOS, LARGE_VOCABS)]
    # Backend varies fastest so that both backends share one cached reference.
    return [pytest.param(c, dt, v, n, b, id=f"{c}-{dt}-V{v}-N{n}-{b}", marks=[needs_cpp] if b == "cpp" else [])
            for c, dt, v, n, b in combos]


GRID = _grid()


@pytest.mark.parametrize("case,dtype_name,vocab,rows,backend", GRID)
def test_matches_reference(case, dtype_name, vocab, rows, backend):
    logits, targets, ref64, ref32 = case_with_reference(case, rows, vocab, dtype_name)
    stats = mia_fast.token_stats(logits, targets, ignore_index=IGNORE, backend=backend)
    assert_matches_reference(stats, ref64, ref32, targets)


# Every block after a row's first is folded in one pass relative to the running max, and a block
# whose own max rises above it by more than a slack is redone from its own max (csrc/block_impl.h):
# rises below, near and above the slack, with temperatures that shrink the slack (1/tau = 20).
@needs_cpp
@pytest.mark.parametrize("temps", [(), (0.05, 0.5, 2.0, 0.7)], ids=["base", "tempered"])
@pytest.mark.parametrize("rise", [0.0, 0.05, 0.5, 1.9, 2.1, 6.0, 60.0])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_max_rising_in_later_blocks(dtype_name, rise, temps):
    g = torch.Generator().manual_seed(5)
    vocab, block = 4 * 2048 + 300, 2048
    z = torch.randn(6, vocab, generator=g) * 2
    for r in range(6):
        for k in range(5):  # the max of block k: 8 + k rise, planted at a different column per row
            z[r, k * block + 50 + 37 * r] = 8.0 + k * rise
    targets = torch.tensor([0, 3000, vocab - 1, block + 50 + 37 * 3, 5000, IGNORE])
    logits = z.to(DTYPES[dtype_name])
    ref64 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float64, temperatures=temps)
    ref32 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float32, temperatures=temps)
    stats = mia_fast.token_stats(logits, targets, backend="cpp", temperatures=temps)
    problems = reference_errors(stats, ref64, ref32, targets)
    if temps:
        problems += tempered_errors(stats, ref64, ref32, targets)
    assert not problems, "\n".join(problems)
    assert stats.argmax.tolist()[:5] == ref64.argmax.tolist()[:5]


def test_auto_backend_on_cpu_is_cpp(monkeypatch):
    monkeypatch.delenv("MIA_FAST_BACKEND", raising=False)
    logits, targets, ref64, ref32 = case_with_reference("randn", 3, 41, "fp32")
    stats = mia_fast.token_stats(logits, targets)  # auto
    assert_matches_reference(stats, ref64, ref32, targets)
    if EXT is not None:
        cpp = mia_fast.token_stats(logits, targets, backend="cpp")
        for name in FLOAT_FIELDS + INT_FIELDS:
            torch.testing.assert_close(getattr(stats, name), getattr(cpp, name), rtol=0, atol=0, equal_nan=True)


def test_ignore_index_is_respected():
    """A custom ignore_index; the default -100 is then an out-of-range target."""
    logits, targets, _, _ = case_with_reference("randn", 423, 41, "fp32")
    targets = torch.where(targets == IGNORE, 7, targets)  # 7 = the new ignore_index
    ref64 = token_stats_reference(logits, targets, 7, dtype=torch.float64)
    ref32 = token_stats_reference(logits, targets, 7, dtype=torch.float32)
    for backend in ("cpp", "torch") if EXT is not None else ("torch",):
        stats = mia_fast.token_stats(logits, targets, ignore_index=7, backend=backend)
        assert_matches_reference(stats, ref64, ref32, targets, ignore_index=7)
        with pytest.raises(IndexError, match="got -100"):
            mia_fast.token_stats(logits, torch.where(targets == 7, -100, targets), ignore_index=7, backend=backend)


@pytest.mark.parametrize("target_dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
@pytest.mark.parametrize("backend", [_backend_param(b) for b in CPU_BACKENDS])
def test_narrow_integer_targets(backend, target_dtype):
    logits, targets, ref64, ref32 = case_with_reference("randn", 3, 41, "fp32")
    narrow = torch.where(targets == IGNORE, 0, targets).to(target_dtype)
    if target_dtype != torch.uint8:  # uint8 cannot hold ignore_index=-100
        narrow[1] = IGNORE
    ref64 = token_stats_reference(logits, narrow, IGNORE, dtype=torch.float64)
    ref32 = token_stats_reference(logits, narrow, IGNORE, dtype=torch.float32)
    stats = mia_fast.token_stats(logits, narrow, backend=backend)
    assert_matches_reference(stats, ref64, ref32, narrow)


# ------------------------------------------------------------------------------------------------
# SIMD levels: MIA_FAST_SIMD is read once per process, so other levels run in a subprocess.

_SUBPROCESS_GRID = """
import itertools, json, sys
sys.path.insert(0, {tests_dir!r})
import mia_fast
from mia_fast.backends import cpp_extension
from conftest import CASES, DTYPES, IGNORE, case_with_reference, reference_errors
failures = []
for case, dt, (v, n) in itertools.product(CASES, DTYPES, {shapes!r}):
    logits, targets, ref64, ref32 = case_with_reference(case, n, v, dt)
    stats = mia_fast.token_stats(logits, targets, ignore_index=IGNORE, backend="cpp")
    failures += [f"{{case}}-{{dt}}-V{{v}}-N{{n}}: {{p}}" for p in reference_errors(stats, ref64, ref32, targets)]
print(json.dumps({{"level": cpp_extension().simd_level(), "failures": failures}}))
"""

SUBPROCESS_SHAPES = [(8, 3), (41, 423), (2049, 3), (50257, 3)]  # a reduced grid


def _run_with_simd(level: str, code: str) -> dict:
    env = {**os.environ, "MIA_FAST_SIMD": level}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_cpp
def test_default_simd_level_is_the_best_available():
    available = EXT.simd_levels_available().split(",")
    assert available[-1] == "scalar"
    if os.environ.get("MIA_FAST_SIMD"):
        pytest.skip("MIA_FAST_SIMD is set in this process")
    assert EXT.simd_level() == available[0]


@needs_cpp
@pytest.mark.parametrize("level", ["avx512", "avx2", "scalar"])
def test_simd_level_in_subprocess(level):
    available = EXT.simd_levels_available().split(",")
    if level not in available:
        pytest.skip(f"this CPU/build cannot run {level} (available: {available})")
    if level == EXT.simd_level():
        pytest.skip(f"{level} is this process's level: covered by test_matches_reference")
    code = _SUBPROCESS_GRID.format(tests_dir=str(TESTS_DIR), shapes=SUBPROCESS_SHAPES)
    result = _run_with_simd(level, code)
    assert result["level"] == level
    assert not result["failures"], "\n".join(result["failures"])


_SCALAR_REPRO = """
import json, sys, torch
sys.path.insert(0, {tests_dir!r})
import mia_fast
from conftest import reference_errors
from mia_fast.reference import token_stats_reference
g = torch.Generator().manual_seed(37)
z = torch.randn(1, 2048, generator=g)  # plain fp32 randn logits
t = torch.tensor([0])
stats = mia_fast.token_stats(z, t, backend="cpp")
ref64 = token_stats_reference(z, t, dtype=torch.float64)
ref32 = token_stats_reference(z, t, dtype=torch.float32)
print(json.dumps({{"failures": reference_errors(stats, ref64, ref32, t)}}))
"""


@needs_cpp
def test_scalar_level_var_logp_precision():
    if "scalar" not in EXT.simd_levels_available().split(","):
        pytest.skip("no scalar level")
    result = _run_with_simd("scalar", _SCALAR_REPRO.format(tests_dir=str(TESTS_DIR)))
    assert not result["failures"], "\n".join(result["failures"])


@needs_cpp
def test_unavailable_simd_level_falls_back():
    """A requested level the CPU lacks falls to the best available level below it."""
    available = EXT.simd_levels_available().split(",")
    order = ["avx512", "avx2", "scalar"]
    missing = [lvl for lvl in order if lvl not in available]
    if not missing:
        pytest.skip("every SIMD level is available here")
    want = missing[0]
    expected = next(lvl for lvl in order[order.index(want):] if lvl in available)
    code = "import mia_fast, json; from mia_fast.backends import cpp_extension as c; " \
           "print(json.dumps({'level': c().simd_level()}))"
    assert _run_with_simd(want, code)["level"] == expected


# ------------------------------------------------------------------------------------------------
# known answers

BACKENDS = [_backend_param(b) for b in CPU_BACKENDS]
DTYPE_PARAMS = [pytest.param(d, id=k) for k, d in DTYPES.items()]


def _scored(stats, row=0):
    return {name: getattr(stats, name).reshape(-1)[row].item() for name in FLOAT_FIELDS + INT_FIELDS}


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("vocab", [2, 7, 1000, 5000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_row(backend, vocab, dtype):
    c = 1.5
    logits = torch.full((2, vocab), c, dtype=dtype)
    targets = torch.tensor([vocab - 1, 0])
    stats = mia_fast.token_stats(logits, targets, backend=backend)
    log_v = math.log(vocab)
    # The torch backend computes z - lse and logsumexp(others) - lse in fp32: absolute error ~ulp(lse).
    tol = 1e-6 if backend == "cpp" else 2e-6 * (c + log_v)
    for row in range(2):
        s = _scored(stats, row)
        assert s["entropy"] == pytest.approx(log_v, rel=1e-6, abs=1e-6)
        assert s["var_logp"] == pytest.approx(0.0, abs=1e-6)
        assert s["max_logprob"] == pytest.approx(-log_v, rel=1e-6, abs=tol)
        assert s["logprob"] == pytest.approx(-log_v, rel=1e-6, abs=tol)
        assert s["lse"] == pytest.approx(c + log_v, rel=1e-6)
        assert s["log1m_p"] == pytest.approx(math.log1p(-1 / vocab), rel=1e-5, abs=tol / 10 if backend == "cpp" else tol)
        assert s["margin"] == 0.0
        assert s["rank"] == 0
        assert s["argmax"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_shift_invariance(backend):
    """z + c: same logprob/entropy/var/log1m_p/margin/rank/argmax, lse + c (exact shifts in fp32)."""
    g = torch.Generator().manual_seed(1)
    z = torch.round(torch.randn(5, 3000, generator=g) * 64) / 64  # multiples of 1/64: z + c is exact
    targets = torch.tensor([0, 17, 2999, 1500, IGNORE])
    base = mia_fast.token_stats(z, targets, backend=backend)
    for c in (256.0, -1024.0, 4096.0):
        shifted = mia_fast.token_stats(z + c, targets, backend=backend)
        assert torch.equal(shifted.rank, base.rank) and torch.equal(shifted.argmax, base.argmax)
        torch.testing.assert_close(shifted.margin, base.margin, rtol=0, atol=0, equal_nan=True)
        # cpp works relative to the max (shift-invariant up to fp32 rounding of the moments);
        # torch's fp32 z - lse costs ~ulp(|c|) per term, ~1.4e-3 in the entropy at c = 4096.
        atol = 1e-5 if backend == "cpp" else 1e-5 + 6e-7 * abs(c)
        for name in ("logprob", "entropy", "var_logp", "max_logprob", "log1m_p"):
            torch.testing.assert_close(getattr(shifted, name), getattr(base, name), rtol=1e-6, atol=atol,
                                       equal_nan=True, msg=f"{name} with shift {c}")
        torch.testing.assert_close(shifted.lse, base.lse + c, rtol=1e-6, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("vocab", [2, 41, 5000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_ish_row(backend, vocab):
    """Zeros and one logit of 30 at k: closed forms."""
    k = vocab // 2
    z = torch.zeros(2, vocab)
    z[:, k] = 30.0
    targets = torch.tensor([k, (k + 1) % vocab])
    stats = mia_fast.token_stats(z, targets, backend=backend)
    rest = (vocab - 1) * math.exp(-30.0)  # sum of the other probabilities relative to p_k
    lse = 30.0 + math.log1p(rest)
    hit, miss = _scored(stats, 0), _scored(stats, 1)
    near0 = 2e-7  # fp32 sums relative to a shift within an ulp of the max: absolute ~eps32 near 0
    assert hit["lse"] == pytest.approx(lse, rel=1e-7)
    assert hit["logprob"] == pytest.approx(-math.log1p(rest), abs=near0)
    assert hit["log1m_p"] == pytest.approx(math.log(vocab - 1) - 30.0 - math.log1p(rest), rel=1e-6)
    assert hit["margin"] == 30.0 and hit["rank"] == 0 and hit["argmax"] == k
    assert miss["logprob"] == pytest.approx(-30.0 - math.log1p(rest), rel=1e-6)
    assert miss["margin"] == -30.0 and miss["rank"] == 1 and miss["argmax"] == k
    assert miss["max_logprob"] == pytest.approx(-math.log1p(rest), abs=near0)
    # entropy of (1, e^-30 x (V-1)) / (1 + rest) = log(1 + rest) + 30 rest / (1 + rest)
    entropy = math.log1p(rest) + 30.0 * rest / (1 + rest)
    assert hit["entropy"] == pytest.approx(entropy, abs=near0)
    assert miss["entropy"] == pytest.approx(entropy, abs=near0)
    assert hit["var_logp"] == pytest.approx(900.0 * rest / (1 + rest) ** 2, rel=1e-3, abs=near0)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_vocabulary_of_one(backend, dtype):
    z = torch.tensor([[3.0], [-2.0], [0.5]], dtype=dtype)
    stats = mia_fast.token_stats(z, torch.tensor([0, 0, IGNORE]), backend=backend)
    for row, zv in enumerate((3.0, -2.0)):
        s = _scored(stats, row)
        assert s["logprob"] == 0.0 and s["entropy"] == 0.0 and s["var_logp"] == 0.0
        assert s["max_logprob"] == 0.0 and s["lse"] == zv
        assert s["log1m_p"] == -math.inf and s["margin"] == math.inf
        assert s["rank"] == 0 and s["argmax"] == 0
    assert math.isnan(stats.logprob[2].item()) and stats.rank[2].item() == -1


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_logit_minus_inf(backend):
    z = torch.tensor([[1.0, float("-inf"), 2.0, float("-inf"), 0.5]] * 2)
    stats = mia_fast.token_stats(z, torch.tensor([1, 2]), backend=backend)
    s = _scored(stats, 0)
    assert s["logprob"] == -math.inf and s["margin"] == -math.inf
    assert s["rank"] == 3 and s["argmax"] == 2
    assert s["log1m_p"] == pytest.approx(0.0, abs=1e-7)
    lse = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    assert s["lse"] == pytest.approx(lse, rel=1e-7)
    # masked vocabulary entries do not count in the entropy
    assert _scored(stats, 1)["entropy"] == pytest.approx(_scored(stats, 0)["entropy"], rel=1e-6)
    assert _scored(stats, 1)["logprob"] == pytest.approx(2.0 - lse, rel=1e-6)


@pytest.mark.parametrize("vocab", [1000, 50257])
@pytest.mark.parametrize("backend", BACKENDS)
def test_log1m_p_of_a_peaked_row(backend, vocab):
    """p_y -> 1: log1m_p stays finite and fp32-accurate where log(1 - exp(logprob)) is -inf."""
    g = torch.Generator().manual_seed(vocab)
    z = torch.randn(4, vocab, generator=g)
    targets = torch.tensor([0, 5, vocab // 2, vocab - 1])
    z[torch.arange(4), targets] = z.amax(-1) + 40.0
    stats = mia_fast.token_stats(z, targets, backend=backend)
    ref = token_stats_reference(z, targets, dtype=torch.float64)
    assert torch.isfinite(stats.log1m_p).all()
    assert (stats.log1m_p < -30).all()
    torch.testing.assert_close(stats.log1m_p.double(), ref.log1m_p, rtol=1.5e-6, atol=0)
    naive = torch.log(1 - torch.exp(stats.logprob))
    assert torch.isneginf(naive).all(), "the naive formula was expected to underflow here"
    # phi = logprob - log1m_p is then finite too
    assert torch.isfinite(stats.phi).all()


# ------------------------------------------------------------------------------------------------
# property tests

# MIA_FAST_HYPOTHESIS_EXAMPLES raises the example count for a longer local search.
PROPERTY_SETTINGS = settings(max_examples=int(os.environ.get("MIA_FAST_HYPOTHESIS_EXAMPLES", "60")),
                             deadline=None, database=None,
                             suppress_health_check=[HealthCheck.too_slow])
EPS32 = float(torch.finfo(torch.float32).eps)


@st.composite
def logits_and_targets(draw):
    """Small random rows with ties, -inf, peaks and large offsets; returns (logits, targets)."""
    rows = draw(st.integers(1, 4))
    vocab = draw(st.one_of(st.integers(1, 70), st.sampled_from([2047, 2048, 2049, 4100])))
    dtype = draw(st.sampled_from(list(DTYPES.values())))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 8.0, 30.0]))
    quantum = draw(st.sampled_from([0.0, 1.0, 0.25]))  # rounding makes ties frequent
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(rows, vocab, generator=g) + draw(st.sampled_from([0.0, 100.0, -5000.0]))
    if quantum:
        z = torch.round(z / quantum) * quantum
    specials = draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, vocab - 1),
                                       st.sampled_from([float("-inf"), 0.0, 50.0, -50.0, "max", "max+"])),
                             max_size=8))
    for r, c, v in specials:
        z[r, c] = z[r].max() if v == "max" else z[r].max() + 1.0 if v == "max+" else v
    targets = torch.tensor(draw(st.lists(st.one_of(st.integers(0, vocab - 1), st.just(IGNORE)),
                                         min_size=rows, max_size=rows)))
    for r in range(rows):  # every row needs one finite logit
        if torch.isneginf(z[r]).all():
            z[r, draw(st.integers(0, vocab - 1))] = 0.0
    return z.to(dtype), targets


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(data=logits_and_targets())
def test_properties(backend, data):
    logits, targets = data
    stats = mia_fast.token_stats(logits, targets, backend=backend)
    ref64 = token_stats_reference(logits, targets, dtype=torch.float64)
    ref32 = token_stats_reference(logits, targets, dtype=torch.float32)
    problems = reference_errors(stats, ref64, ref32, targets)
    assert not problems, "\n".join(problems)

    vocab = logits.shape[-1]
    z = logits.double()
    for r in (targets != IGNORE).nonzero().flatten().tolist():
        y = int(targets[r])
        s = _scored(stats, r)
        zr = z[r]
        zmax = zr.max().item()
        # fp32 work on logits of magnitude |lse|: torch's z - lse has absolute error ~ulp(lse); cpp's
        # fma-shifted exponent leaves a residual ~ulp(|max| log2 e) per term (scalar level: 1.4e-5
        # over log V for a uniform bf16 row at -4992, torch: 7e-4).
        tol = 1e-6 + 2 * EPS32 * abs(s["lse"])
        assert -tol <= s["entropy"] <= math.log(vocab) + tol * (1 + math.log(vocab))
        assert s["var_logp"] >= 0.0
        assert s["logprob"] <= s["max_logprob"] + tol
        assert (s["rank"] == 0) == (zr[y].item() == zmax)
        assert s["rank"] == int((zr > zr[y]).sum())
        assert s["argmax"] == int((zr == zmax).nonzero()[0, 0])
        tie = bool((torch.cat([zr[:y], zr[y + 1:]]) == zr[y]).any())
        assert (s["margin"] <= 0) == (s["rank"] > 0 or tie)
        assert s["log1m_p"] <= 0.0
        assert math.exp(s["logprob"]) + math.exp(s["log1m_p"]) == pytest.approx(1.0, abs=10 * tol)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp),
                                     "torch"])
def test_signs_of_log_probabilities_and_entropy(backend):
    """logprob, max_logprob, log1m_p <= 0 and entropy, var_logp >= 0 exactly (two-entry rows, gap 5..80)."""
    rows = []
    for gap in (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 80.0):
        rows += [[0.0, gap], [gap, 0.0]]
    z = torch.tensor(rows)
    stats = mia_fast.token_stats(z, torch.zeros(len(rows), dtype=torch.long), backend=backend)
    assert (stats.logprob <= 0).all() and (stats.max_logprob <= 0).all() and (stats.log1m_p <= 0).all()
    assert (stats.entropy >= 0).all() and (stats.var_logp >= 0).all()


@needs_cpp
def test_var_logp_of_quantized_logits():
    vocab = 2049
    z = -(torch.arange(vocab) % 2).float().unsqueeze(0)  # 0, -1, 0, -1, ...
    z[0, 1] = 6.0  # one peak: E_p[(z - max)^2] ~ 56, Var ~ 7
    targets = torch.tensor([0])
    stats = mia_fast.token_stats(z, targets, backend="cpp")
    ref64 = token_stats_reference(z, targets, dtype=torch.float64)
    ref32 = token_stats_reference(z, targets, dtype=torch.float32)
    assert_matches_reference(stats, ref64, ref32, targets)


# ------------------------------------------------------------------------------------------------
# bad inputs: exact exception types, same for every backend

@pytest.mark.parametrize("backend", BACKENDS)
class TestBadInputs:
    def test_zero_dim_logits(self, backend):
        with pytest.raises(ValueError, match=r"logits: expected at least 1 dimension .* got a 0-d tensor"):
            mia_fast.token_stats(torch.tensor(1.0), torch.tensor(0), backend=backend)

    def test_shape_mismatch(self, backend):
        with pytest.raises(ValueError, match=r"targets: expected shape \(3,\) .* got \(4,\)"):
            mia_fast.token_stats(torch.randn(3, 5), torch.zeros(4, dtype=torch.long), backend=backend)
        with pytest.raises(ValueError, match=r"targets: expected shape \(2, 3\)"):
            mia_fast.token_stats(torch.randn(2, 3, 5), torch.zeros(3, 2, dtype=torch.long), backend=backend)

    @pytest.mark.parametrize("bad,pos", [(7, 1), (5, 2), (-3, 0)])
    def test_target_out_of_range(self, backend, bad, pos):
        targets = torch.tensor([0, 1, 2])
        targets[pos] = bad
        with pytest.raises(IndexError, match=rf"targets: expected values in \[0, 5\).* got {bad} at flat position {pos}"):
            mia_fast.token_stats(torch.randn(3, 5), targets, backend=backend)

    def test_float64_logits(self, backend):
        with pytest.raises(TypeError, match=r"logits: expected dtype float32, float16 or bfloat16, got torch.float64"):
            mia_fast.token_stats(torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 1, 2]), backend=backend)

    def test_float_targets(self, backend):
        with pytest.raises(TypeError, match=r"targets: expected an integer tensor, got dtype torch.float32"):
            mia_fast.token_stats(torch.randn(3, 5), torch.tensor([0.0, 1.0, 2.0]), backend=backend)

    def test_not_a_tensor(self, backend):
        with pytest.raises(TypeError, match=r"logits: expected a torch.Tensor, got list"):
            mia_fast.token_stats([[0.0, 1.0]], torch.tensor([0]), backend=backend)

    @pytest.mark.parametrize("vocab", [5, 41, 5000])
    @pytest.mark.parametrize("where", ["first", "target", "middle", "last"])
    @pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
    def test_nan_or_inf_in_a_scored_row(self, backend, value, where, vocab):
        z = torch.randn(6, vocab)
        targets = torch.tensor([0, 1, 2, 3, 4, 0]) % vocab
        col = {"first": 0, "target": int(targets[2]), "middle": vocab // 2, "last": vocab - 1}[where]
        z[2, col] = value
        z[4, 0] = value  # a later bad row: the first one is named
        with pytest.raises(ValueError, match=r"logits: row 2 \(index \(2,\) of the leading shape \(6,\)\) contains NaN or \+inf"):
            mia_fast.token_stats(z, targets, backend=backend)

    def test_bad_row_index_in_a_3d_input(self, backend):
        z = torch.randn(2, 3, 7)
        z[1, 2, 4] = float("nan")
        with pytest.raises(ValueError, match=r"logits: row 5 \(index \(1, 2\) of the leading shape \(2, 3\)\)"):
            mia_fast.token_stats(z, torch.zeros(2, 3, dtype=torch.long), backend=backend)

    def test_first_bad_row_with_threads(self, backend, monkeypatch):
        monkeypatch.setenv("MIA_FAST_NUM_THREADS", "2")
        z = torch.randn(64, 4096)
        z[40, 7] = float("nan")  # rows are split 0..31 / 32..63 between the two threads
        z[33, 4000] = float("inf")
        z[20, 2048] = float("nan")
        with pytest.raises(ValueError, match=r"logits: row 20 "):
            mia_fast.token_stats(z, torch.zeros(64, dtype=torch.long), backend=backend)

    @pytest.mark.parametrize("dtype", DTYPE_PARAMS)
    def test_nan_in_a_masked_row_is_not_read(self, backend, dtype):
        z = torch.randn(3, 4100)
        z[1] = float("nan")
        z[2, 5] = float("inf")
        z = z.to(dtype)
        targets = torch.tensor([3, IGNORE, IGNORE])
        stats = mia_fast.token_stats(z, targets, backend=backend)
        ref64 = token_stats_reference(z, targets, dtype=torch.float64)
        ref32 = token_stats_reference(z, targets, dtype=torch.float32)
        assert_matches_reference(stats, ref64, ref32, targets)

    @pytest.mark.parametrize("vocab", [1, 7, 5000])
    def test_row_of_all_minus_inf(self, backend, vocab):
        z = torch.randn(3, vocab)
        z[1] = float("-inf")
        with pytest.raises(ValueError, match=r"logits: row 1 .* has every entry -inf"):
            mia_fast.token_stats(z, torch.tensor([0, vocab - 1, 0]), backend=backend)

    def test_empty_vocabulary(self, backend):
        with pytest.raises(ValueError, match=r"logits: expected a non-empty vocabulary dimension, got shape \(3, 0\)"):
            mia_fast.token_stats(torch.randn(3, 0), torch.tensor([0, 0, 0]), backend=backend)

    def test_empty_batch(self, backend):
        stats = mia_fast.token_stats(torch.randn(0, 5), torch.zeros(0, dtype=torch.long), backend=backend)
        assert stats.logprob.shape == (0,) and stats.rank.dtype == torch.int64

    def test_device_mismatch_message(self, backend):
        meta = torch.zeros(3, dtype=torch.long, device="meta")
        with pytest.raises(ValueError, match=r"targets: expected device cpu"):
            mia_fast.token_stats(torch.randn(3, 5), meta, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend: expected one of 'auto', 'cpp', 'triton', 'torch'; got 'foo'"):
        mia_fast.token_stats(torch.randn(3, 5), torch.tensor([0, 1, 2]), backend="foo")


def test_unknown_backend_from_environment(monkeypatch):
    monkeypatch.setenv("MIA_FAST_BACKEND", "foo")
    with pytest.raises(ValueError, match=r"MIA_FAST_BACKEND: expected one of .*got 'foo'"):
        mia_fast.token_stats(torch.randn(3, 5), torch.tensor([0, 1, 2]))


def test_environment_backend_is_used(monkeypatch):
    monkeypatch.setenv("MIA_FAST_BACKEND", "torch")
    logits, targets, ref64, ref32 = case_with_reference("randn", 3, 41, "fp32")
    assert_matches_reference(mia_fast.token_stats(logits, targets), ref64, ref32, targets)
    monkeypatch.setenv("MIA_FAST_BACKEND", "triton")
    with pytest.raises(NotImplementedError, match=r"MIA_FAST_BACKEND='triton' cannot run"):
        mia_fast.token_stats(logits, targets)


def test_triton_on_cpu_lists_every_reason():
    with pytest.raises(NotImplementedError) as info:
        mia_fast.token_stats(torch.randn(3, 5), torch.tensor([0, 1, 2]), backend="triton")
    msg = str(info.value)
    assert "backend='triton' cannot run on cpu torch.float32 tensors" in msg
    assert f"cpp: {'available' if EXT is not None else 'the C++ extension'}" in msg
    assert "triton: triton runs on CUDA tensors, got a cpu tensor" in msg
    assert "torch: available" in msg


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_num_threads_environment(monkeypatch, value):
    monkeypatch.setenv("MIA_FAST_NUM_THREADS", value)
    with pytest.raises(ValueError, match=rf"MIA_FAST_NUM_THREADS: expected a positive integer, got '{value}'"):
        mia_fast.default_num_threads()


# ------------------------------------------------------------------------------------------------
# threads, torch.compile, opcheck

@needs_cpp
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_num_threads_bitwise(monkeypatch, dtype):
    """Any thread count, on torch's OpenMP team or the kernel's own threads, gives the same bits."""
    logits, targets, _, _ = case_with_reference("neginf", 423, 1000, "fp32")
    logits = logits.to(dtype)
    runs = []
    for threads, pool in (("1", ""), ("2", ""), ("3", ""), ("2", "own"), ("3", "own")):
        monkeypatch.setenv("MIA_FAST_NUM_THREADS", threads)
        monkeypatch.setenv("MIA_FAST_THREAD_POOL", pool)
        runs.append(mia_fast.token_stats(logits, targets, backend="cpp"))
    for run in runs[1:]:
        for name in FLOAT_FIELDS + INT_FIELDS:
            torch.testing.assert_close(getattr(runs[0], name), getattr(run, name), rtol=0, atol=0, equal_nan=True)


def _stats_fn(backend):
    def f(x, t):
        s = mia_fast.token_stats(x, t, backend=backend)
        return s.logprob * 2.0, s.lse, s.rank, s.mask, s.phi
    return f


@pytest.fixture
def dynamo_reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor internals (torch.jit.script_method)
@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager", "inductor"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(dynamo_reset, backend, compile_backend):
    logits, targets, _, _ = case_with_reference("3d", 423, 41, "bf16")
    f = _stats_fn(backend)
    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    for got, want in zip(compiled(logits, targets), f(logits, targets)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@needs_cpp
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    # opcheck compares outputs without equal_nan, so no position is masked here.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 50, generator=g)
    targets = torch.randint(0, 50, (3, 4), generator=g)
    torch.library.opcheck(torch.ops.mia_fast.token_stats.default, (logits, targets, IGNORE, backend, []))
    torch.library.opcheck(torch.ops.mia_fast.token_stats.default, (logits, targets, IGNORE, backend, [0.5, 3.0]))


# ------------------------------------------------------------------------------------------------
# 64-bit offsets

@needs_cpp
@pytest.mark.slow
def test_more_than_2_31_elements():
    """rows x V = 16385 x 131072 bf16 (4.3 GB) > 2^31 elements: the last rows are read at 64-bit offsets."""
    rows, vocab = 16385, 131072
    assert rows * vocab > 2**31
    g = torch.Generator().manual_seed(0)
    logits = torch.empty(rows, vocab, dtype=torch.bfloat16)
    block = torch.randn(64, vocab, generator=g).to(torch.bfloat16)
    for start in range(0, rows, 64):
        stop = min(rows, start + 64)
        logits[start:stop] = block[: stop - start]
    tail = 4
    last = (3.0 * torch.randn(tail, vocab, generator=g)).to(torch.bfloat16)
    targets = torch.full((rows,), IGNORE, dtype=torch.long)
    targets[-tail:] = torch.tensor([0, 7, vocab // 2, vocab - 1])
    last[2, vocab // 2] = last[2].float().amax() + 40.0  # peaked
    logits[-tail:] = last
    targets[0] = 3  # one early row, computed too
    stats = mia_fast.token_stats(logits, targets, backend="cpp")
    tail_targets = targets[-tail:]
    ref64 = token_stats_reference(last, tail_targets, dtype=torch.float64)
    ref32 = token_stats_reference(last, tail_targets, dtype=torch.float32)
    tail_stats = type(stats)(*(f[-tail:] for f in stats))
    assert_matches_reference(tail_stats, ref64, ref32, tail_targets)
    assert torch.isnan(stats.logprob[1:-tail]).all()


# ------------------------------------------------------------------------------------------------
# Temperatures: statistics of softmax(z / tau) from the same pass

# (1/tau on the ladder of squarings: 2, 4, 1/2, 1/4), off the ladder, tau = 1, and a mixed set
TEMPERATURE_SETS = {
    "ladder": (0.5, 2.0),
    "ladder-ends": (0.25, 4.0),
    "off-ladder": (0.7, 3.0),
    "one": (1.0,),
    "mixed": (0.25, 0.5, 1.0, 2.0, 4.0, 0.7, 1.3, 3.0),
}
TEMPERED_SHAPES = [(8, 3), (41, 37), (2049, 5), (32000, 2)]  # 2049: two blocks and a tail


def _tempered_case(case, rows, vocab, dtype_name, temps):
    logits, targets = make_case(case, rows, vocab, DTYPES[dtype_name])
    ref64 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float64, temperatures=temps)
    ref32 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float32, temperatures=temps)
    return logits, targets, ref64, ref32


@pytest.mark.parametrize("temps", list(TEMPERATURE_SETS.values()), ids=list(TEMPERATURE_SETS))
@pytest.mark.parametrize("vocab,rows", TEMPERED_SHAPES, ids=[f"V{v}-N{n}" for v, n in TEMPERED_SHAPES])
@pytest.mark.parametrize("case", CASES)
def test_tempered_matches_reference(case, vocab, rows, temps):
    dtype_name = ("fp32", "bf16", "fp16")[(CASES.index(case) + vocab) % 3]  # every dtype, fewer runs
    logits, targets, ref64, ref32 = _tempered_case(case, rows, vocab, dtype_name, temps)
    for backend in ("cpp", "torch") if EXT is not None else ("torch",):
        stats = mia_fast.token_stats(logits, targets, backend=backend, temperatures=temps)
        problems = tempered_errors(stats, ref64, ref32, targets) + reference_errors(stats, ref64, ref32, targets)
        assert not problems, f"{backend} {dtype_name}:\n" + "\n".join(problems)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_tempered_fused_lm_head_path(dtype):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, 16, generator=g).to(dtype)
    weight = (torch.randn(3000, 16, generator=g) / 2).to(dtype)
    targets = torch.randint(0, 3000, (2, 9), generator=g)
    targets[0, 2] = IGNORE
    temps = TEMPERATURE_SETS["mixed"]
    stats = mia_fast.token_stats_from_hidden(hidden, weight, targets, backend="cpp", temperatures=temps)
    logits = hidden.float() @ weight.float().T  # the fused path's fp32 logits
    ref64 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float64, temperatures=temps)
    ref32 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float32, temperatures=temps)
    problems = tempered_errors(stats, ref64, ref32, targets, atol=2e-5)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_one_is_the_base_distribution(backend):
    logits, targets, _, _ = case_with_reference("randn", 423, 1000, "fp32")
    stats = mia_fast.token_stats(logits, targets, backend=backend, temperatures=(1.0, 2.0))
    m = stats.mask
    for name in ("logprob", "entropy", "max_logprob"):
        torch.testing.assert_close(getattr(stats.tempered, name)[..., 0][m], getattr(stats, name)[m], rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_temperatures_gives_no_tempered_record(backend):
    logits, targets, _, _ = case_with_reference("randn", 3, 41, "fp32")
    assert mia_fast.token_stats(logits, targets, backend=backend).tempered is None


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(data=logits_and_targets(), temps=st.lists(st.sampled_from([0.25, 0.5, 0.8, 1.0, 2.0, 2.5, 4.0]),
                                                 min_size=1, max_size=8))
def test_tempered_properties(backend, data, temps):
    """Bounds, and monotonicity in the inverse temperature beta: d/dbeta log max p = max z - E[z] >= 0,
    d/dbeta H = -beta Var[z] <= 0 (so sorted by tau, max_logprob falls and entropy rises)."""
    logits, targets = data
    temps = sorted(set(temps))
    stats = mia_fast.token_stats(logits, targets, backend=backend, temperatures=temps)
    m = stats.mask
    lp, ent, mx = (getattr(stats.tempered, f)[m].double() for f in ("logprob", "entropy", "max_logprob"))
    log_v = math.log(logits.shape[-1])
    z = logits[m].float()
    scale = torch.where(torch.isfinite(z), z.abs(), 0.0).amax(-1, keepdim=True).clamp(min=1).double()
    tol = 1e-5 + 8 * EPS32 * scale / min(temps)  # fp32 rounding of z / tau
    assert bool((ent >= 0).all()) and bool((ent <= log_v + tol).all())
    assert bool((mx <= 0).all()) and bool((lp <= mx + tol).all())
    assert bool((mx[:, 1:] <= mx[:, :-1] + tol).all()), "max_logprob must not rise with the temperature"
    assert bool((ent[:, 1:] >= ent[:, :-1] - tol).all()), "entropy must not fall with the temperature"


@pytest.mark.parametrize("bad,error,match", [
    ((0.0,), ValueError, "finite values > 0"),
    ((-1.0,), ValueError, "finite values > 0"),
    ((float("nan"),), ValueError, "finite values > 0"),
    ((float("inf"),), ValueError, "finite values > 0"),
    (tuple([1.0] * 9), ValueError, "at most 8"),
    (2.0, TypeError, "expected a sequence"),
    (("hot",), TypeError, "expected floats"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_temperatures(backend, bad, error, match):
    logits, targets, _, _ = case_with_reference("randn", 3, 41, "fp32")
    with pytest.raises(error, match=match):
        mia_fast.token_stats(logits, targets, backend=backend, temperatures=bad)


@needs_cpp
def test_tempered_subnormal_range_on_every_simd_level():
    """Off the fastest level: the ladder squares underflow (flush-to-zero) and the scalar level
    keeps doubles; both must still match the reference, including -inf and huge rows."""
    code = """
import json, sys, torch
sys.path.insert(0, {tests_dir!r})
import mia_fast
from conftest import make_case, tempered_errors, DTYPES, IGNORE
from mia_fast.reference import token_stats_reference as ref
temps = (0.25, 0.5, 2.0, 4.0, 0.7)
failures = []
for case in ("randn", "neginf", "huge", "peaked"):
    logits, targets = make_case(case, 9, 2049, DTYPES["fp32"])
    s = mia_fast.token_stats(logits, targets, backend="cpp", temperatures=temps)
    failures += [case + ": " + p for p in tempered_errors(s, ref(logits, targets, IGNORE, torch.float64, temps),
                                                           ref(logits, targets, IGNORE, torch.float32, temps), targets)]
print(json.dumps({{"failures": failures}}))
"""
    for level in EXT.simd_levels_available().split(","):
        result = _run_with_simd(level, code.format(tests_dir=str(TESTS_DIR)))
        assert not result["failures"], level + ":\n" + "\n".join(result["failures"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_tempered_under_torch_compile(dynamo_reset, backend):
    logits, targets, _, _ = case_with_reference("randn", 3, 41, "fp32")

    def f(z, y):
        t = mia_fast.token_stats(z, y, backend=backend, temperatures=(0.5, 2.0)).tempered
        return t.logprob, t.entropy, t.max_logprob

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(logits, targets), f(logits, targets)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# Every finite input (issue "inputs that cannot produce silent wrong numbers"): logits of any
# size give the float64 reference's statistics, and integer targets of any width are read as
# their values. The float64 reference itself is checked on closed forms first. The cases are in
# tests/extreme_inputs.py (shared with the Triton and fused tests).

from extreme_inputs import F32_MAX, LARGE_KINDS, LARGE_TEMPS, LARGE_VOCABS, large_logits, rounded  # noqa: E402

def large_logit_problems(backend: str, kinds=LARGE_KINDS, vocabs=LARGE_VOCABS, dtypes=tuple(DTYPES),
                         temperatures=()) -> list[str]:
    """Every violation of the tolerance rule of `backend` on the large-logit cases. The float32
    torch computation (torch's own error in the rule) must itself match the float64 reference."""
    problems = []
    for kind, vocab, dt in itertools.product(kinds, vocabs, dtypes):
        logits, targets = large_logits(kind, 7, vocab, DTYPES[dt])
        ref64 = rounded(token_stats_reference(logits, targets, IGNORE, dtype=torch.float64,
                                               temperatures=temperatures))
        ref32 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float32, temperatures=temperatures)
        stats = mia_fast.token_stats(logits, targets, backend=backend, temperatures=temperatures)
        label = f"{backend} {kind} V={vocab} {dt}"
        found = reference_errors(stats, ref64, ref32, targets) + reference_errors(ref32, ref64, ref64, targets)
        if temperatures:
            found += tempered_errors(stats, ref64, ref32, targets) + tempered_errors(ref32, ref64, ref64, targets)
        problems += [f"{label}: {p}" for p in found]
    return problems


def _issue_example():
    g = torch.Generator().manual_seed(2024)
    return torch.randn(8, 5000, generator=g) * 1e9, torch.arange(8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_example_logits_times_1e9(backend):
    """The issue's reproduction: entropy <= log V, max_logprob = 0 (the gaps are >= 64 nats)."""
    logits, targets = _issue_example()
    stats = mia_fast.token_stats(logits, targets, backend=backend)
    assert bool((stats.entropy >= 0).all()) and bool((stats.entropy <= math.log(5000)).all()), stats.entropy
    torch.testing.assert_close(stats.entropy, torch.zeros(8), rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.max_logprob, torch.zeros(8), rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.var_logp, torch.zeros(8), rtol=0, atol=1e-6)
    assert torch.equal(stats.argmax, logits.argmax(-1))


@pytest.mark.parametrize("backend", ["reference64", "reference32", *BACKENDS])
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("top,low", [(3e38, -3e38), (F32_MAX, -F32_MAX), (-3e38, -F32_MAX), (1e9, -1e9),
                                     (2.0**40, 2.0**40 - 2.0**17)])
def test_equal_maxima_at_large_logits(backend, k, top, low):
    """Closed forms for k maxima `top` and V - k entries `low` (every gap >= 64 nats): the softmax
    is uniform over the maxima. Checks the float64 reference and the torch float32 computation too:
    lse = top + log k rounds to top, so log p taken as z - lse would give every maximum p = 1."""
    vocab = 3000
    z = torch.full((3, vocab), low, dtype=torch.float32)
    z[:, :k] = top
    z[2] = top  # a row entirely of `top`
    targets = torch.tensor([0, vocab - 1, 7])
    if backend.startswith("reference"):
        dtype = torch.float64 if backend == "reference64" else torch.float32
        stats = rounded(token_stats_reference(z, targets, dtype=dtype))
    else:
        stats = mia_fast.token_stats(z, targets, backend=backend)
    gap = float(torch.tensor(low, dtype=torch.float64) - torch.tensor(top, dtype=torch.float64))
    lk, lv = math.log(k), math.log(vocab)
    f32 = lambda x: float(torch.tensor(x, dtype=torch.float64).float())  # noqa: E731
    hit, miss, flat = _scored(stats, 0), _scored(stats, 1), _scored(stats, 2)
    approx = lambda x: pytest.approx(x, rel=1e-6, abs=1e-6)  # noqa: E731
    for s, n in ((hit, lk), (miss, lk), (flat, lv)):
        assert s["entropy"] == approx(n) and s["max_logprob"] == approx(-n)
        assert s["var_logp"] == approx(0.0) and s["lse"] == approx(f32(top + n))
        assert s["argmax"] == 0
    assert hit["logprob"] == approx(-lk) and flat["logprob"] == approx(-lv)
    assert hit["log1m_p"] == (approx(math.log1p(-1 / k)) if k > 1 else approx(f32(gap + math.log(vocab - 1))))
    assert flat["log1m_p"] == approx(math.log1p(-1 / vocab))
    assert hit["margin"] == (0.0 if k > 1 else approx(f32(-gap))) and hit["rank"] == 0
    assert miss["logprob"] == approx(f32(gap - lk)) and miss["margin"] == approx(f32(gap))
    assert miss["rank"] == k and miss["log1m_p"] == approx(0.0)


@pytest.mark.parametrize("kind", LARGE_KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_match_reference(backend, kind):
    problems = large_logit_problems(backend, kinds=(kind,))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_tempered(backend):
    problems = large_logit_problems(backend, vocabs=(5000,), dtypes=("fp32",), temperatures=LARGE_TEMPS)
    assert not problems, "\n".join(problems)


_SUBPROCESS_LARGE = """
import json, sys
sys.path.insert(0, {tests_dir!r})
from mia_fast.backends import cpp_extension
from extreme_inputs import LARGE_TEMPS
from test_token_stats import large_logit_problems
failures = large_logit_problems("cpp") + large_logit_problems("cpp", vocabs=(5000,), dtypes=("fp32",),
                                                               temperatures=LARGE_TEMPS)
print(json.dumps({{"level": cpp_extension().simd_level(), "failures": failures}}))
"""


@needs_cpp
@pytest.mark.parametrize("level", ["avx512", "avx2", "scalar"])
def test_large_logits_on_every_simd_level(level):
    available = EXT.simd_levels_available().split(",")
    if level not in available:
        pytest.skip(f"this CPU/build cannot run {level} (available: {available})")
    if level == EXT.simd_level():
        pytest.skip(f"{level} is this process's level: covered by test_large_logits_match_reference")
    result = _run_with_simd(level, _SUBPROCESS_LARGE.format(tests_dir=str(TESTS_DIR)))
    assert result["level"] == level
    assert not result["failures"], "\n".join(result["failures"])


# Narrow and unsigned integer targets: widened to int64 before any comparison. (dtype, V): V above
# the dtype's range where the old code compared `targets >= V` in the narrow dtype (int8 with
# V = 5000 wrapped V to -120, int16 with V >= 32768), and unsigned dtypes that cannot hold -100.
NARROW = [(torch.int8, 41), (torch.int8, 5000), (torch.int16, 32768), (torch.int16, 40000),
          (torch.int32, 41), (torch.int32, 70000), (torch.uint8, 41), (torch.uint8, 300), (torch.uint8, 5000)]
NARROW += [(getattr(torch, name), v) for name, v in (("uint16", 70000), ("uint32", 41), ("uint64", 41))
           if hasattr(torch, name)]


@pytest.mark.parametrize("target_dtype,vocab", NARROW, ids=[f"{str(d)[6:]}-V{v}" for d, v in NARROW])
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_targets_of_every_width(backend, target_dtype, vocab):
    g = torch.Generator().manual_seed(vocab)
    rows = 6
    logits = torch.randn(rows, vocab, generator=g)
    top = min(vocab, torch.iinfo(target_dtype).max + 1)
    wide = torch.randint(0, top, (rows,), generator=g)
    wide[0] = top - 1  # the largest target the dtype holds (127 for int8, 32767 for int16)
    if target_dtype == torch.uint8 and vocab > 156:
        wide[2] = 156  # -100 wrapped to uint8: a scored target, never mistaken for ignore_index
    if torch.iinfo(target_dtype).min < 0:
        wide[1] = IGNORE
    narrow = wide.to(target_dtype)
    stats = mia_fast.token_stats(logits, narrow, backend=backend)
    want = mia_fast.token_stats(logits, wide, backend=backend)
    for name in FIELDS_ALL:
        torch.testing.assert_close(getattr(stats, name), getattr(want, name), rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(stats.mask, wide != IGNORE)
    ref64 = token_stats_reference(logits, wide, IGNORE, dtype=torch.float64)
    ref32 = token_stats_reference(logits, wide, IGNORE, dtype=torch.float32)
    assert_matches_reference(stats, ref64, ref32, wide)


FIELDS_ALL = FLOAT_FIELDS + INT_FIELDS + ("mask",)


@pytest.mark.parametrize("ignore_index", [IGNORE, 255, 7])
@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_targets_and_ignore_index(backend, ignore_index):
    """An ignore_index uint8 cannot hold (-100) never matches: every target is scored, the mask
    and the statistics agree; one it holds (255, 7) masks exactly those targets."""
    vocab = 300
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, vocab, generator=g)
    targets = torch.tensor([156, 255, 7, 0, 200], dtype=torch.uint8)
    stats = mia_fast.token_stats(logits, targets, ignore_index=ignore_index, backend=backend)
    wide = targets.long()
    mask = wide != ignore_index
    assert torch.equal(stats.mask, mask)
    assert bool(torch.isfinite(stats.logprob[mask]).all()) and bool(torch.isnan(stats.logprob[~mask]).all())
    ref64 = token_stats_reference(logits, wide, ignore_index, dtype=torch.float64)
    ref32 = token_stats_reference(logits, wide, ignore_index, dtype=torch.float32)
    assert_matches_reference(stats, ref64, ref32, wide, ignore_index=ignore_index)


@pytest.mark.skipif(not hasattr(torch, "uint64"), reason="no torch.uint64")
@pytest.mark.parametrize("backend", BACKENDS)
def test_uint64_targets_beyond_int64(backend):
    """uint64 values >= 2**63 are reported as themselves, never wrapped onto ignore_index (-100)."""
    targets = torch.tensor([0, 2**64 - 100, 1], dtype=torch.uint64)
    with pytest.raises(IndexError, match=rf"got {2**64 - 100} at flat position 1"):
        mia_fast.token_stats(torch.randn(3, 5), targets, backend=backend)


@pytest.mark.parametrize("value", [torch.int64, torch.int8, "numpy", 0, -100, 2**63 - 1, -(2**63)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_integer_kinds(backend, value):
    import numpy as np

    logits = torch.randn(3, 41)
    if value == "numpy":
        value, plain = np.int16(-100), -100
    elif isinstance(value, torch.dtype):
        value, plain = torch.tensor(-100, dtype=value), -100
    else:
        plain = value
    targets = torch.tensor([0, 5, 40])
    if plain in (-100, 0):
        targets[1] = plain
    stats = mia_fast.token_stats(logits, targets, ignore_index=value, backend=backend)
    assert torch.equal(stats.mask, targets != plain)


BAD_IGNORE = [1.5, -100.0, True, False, "-100", None, 2**63, -(2**63) - 1, [-100]]


def _bad_ignore_values():
    import numpy as np

    return BAD_IGNORE + [np.float64(-100.0), np.bool_(True), torch.tensor(-100.0), torch.tensor([-100]),
                         torch.tensor(True)]


@pytest.mark.parametrize("bad", _bad_ignore_values(), ids=lambda b: repr(b)[:24])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_validation(backend, bad):
    logits, targets = torch.randn(3, 41), torch.tensor([0, 1, 2])
    match = r"ignore_index: expected an integer in the int64 range .* got "
    with pytest.raises(ValueError, match=match):
        mia_fast.token_stats(logits, targets, ignore_index=bad, backend=backend)
    with pytest.raises(ValueError, match=match):
        mia_fast.token_stats_from_hidden(torch.randn(3, 8), torch.randn(41, 8), targets, ignore_index=bad,
                                         backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bool, torch.complex64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_integer_targets(backend, dtype):
    targets = torch.tensor([0, 1, 1]).to(dtype)
    with pytest.raises(TypeError, match=rf"targets: expected an integer tensor, got dtype {dtype}"):
        mia_fast.token_stats(torch.randn(3, 5), targets, backend=backend)
