// Generic body of a block routine; included by each instruction-set translation unit inside an
// anonymous namespace, after that unit's target options and SIMD traits `S` are set. It uses no
// standard-library templates, so nothing compiled for a wide instruction set can leak into code
// shared with other units (every symbol here has internal linkage).
//
// Traits S provide: W (lanes), F (float vector), C (lane counters), B (bad-value accumulator),
// U (accumulator sets), set1, load(const In*), add, sub, mul, fmadd(a,b,c)=a*b+c (one rounding), max (returns
// its second operand when either is NaN, like x86 maxps), exp2 (valid on [-124, 0], NaN kept),
// hmax, hsum (to double), zero_count, count_gt, hcount, prefetch, and FlushToZero (an RAII
// guard that makes underflowing fp32 results 0 when constructed with true).

#ifndef MIA_FAST_BLOCK_IMPL_ONCE
#define MIA_FAST_BLOCK_IMPL_ONCE

static inline float to_float(float v) { return v; }
static inline float to_float(bf16_t v) { return bf16_bits_to_float(v.bits); }
static inline float to_float(f16_t v) { return f16_bits_to_float(v.bits); }

// -inf in each logits type: the padding of a block's last, partial vector.
template <class In>
static inline In minus_inf();
template <>
inline float minus_inf<float>() { return -__builtin_inff(); }
template <>
inline bf16_t minus_inf<bf16_t>() { return bf16_t{0xff80}; }
template <>
inline f16_t minus_inf<f16_t>() { return f16_t{0xfc00}; }

// x[0, r) (r < W) followed by -inf up to W entries: the last vector of a block, loaded whole.
template <class In, int W>
struct PaddedTail {
  In v[W];
  PaddedTail(const In* x, int64_t r) {
    for (int64_t k = 0; k < W; ++k) v[k] = k < r ? x[k] : minus_inf<In>();
  }
};

// Terms a float lane accumulates before its sum is flushed into a double.
constexpr int64_t kLaneTerms = 32;

// Largest |shift| x max(1, beta_max) for which the exponent is formed by one fma from
// c = fl(shift log2 e) (block_moments, "Large logits"): beyond it the other form is used.
constexpr float kFmaShiftLimit = 4194304.0f;  // 2^22

// Whether the moments relative to `shift` may use the one-fma exponent (see block_moments).
static inline bool fma_shift_ok(float shift, float beta_max) {
  const float a = shift < 0.0f ? -shift : shift;
  return a * beta_max <= kFmaShiftLimit;  // false for a NaN or infinite shift
}

#endif  // MIA_FAST_BLOCK_IMPL_ONCE

// 2^f for f in [-1/2, 1/2] with SIMD traits S: a degree-5 polynomial fitted for relative error
// with p(0) = 1 exactly (minimax error 6.8e-8, below 2.3 ulp after fp32 evaluation), evaluated
// as (1 + c1 f) + f^2 ((c2 + c3 f) + f^2 (c4 + c5 f)): six FMA-class operations, and a short
// dependency chain (f^2, then two FMAs), which matters more here than the operation count.
template <class S>
static inline typename S::F exp2_reduced(typename S::F f) {
  const typename S::F f2 = S::mul(f, f);
  const typename S::F q0 = S::fmadd(S::set1(0.6931465864181519f), f, S::set1(1.0f));
  const typename S::F q1 = S::fmadd(S::set1(0.055510472506284714f), f, S::set1(0.24022166430950165f));
  const typename S::F q2 = S::fmadd(S::set1(0.0013202981790527701f), f, S::set1(0.009674952365458012f));
  return S::fmadd(S::fmadd(q2, f2, q1), f2, q0);
}

#ifdef _MM_FLUSH_ZERO_ON  // x86 units that included the intrinsics
// Flush-to-zero (MXCSR.FTZ) for a scope, when asked: underflowing products become 0 at full
// speed instead of subnormals (the caller's mode is restored).
struct MxcsrFlushToZero {
  unsigned saved = 0;
  bool on;
  explicit MxcsrFlushToZero(bool enable) : on(enable) {
    if (on) {
      saved = _mm_getcsr();
      _mm_setcsr(saved | _MM_FLUSH_ZERO_ON);
    }
  }
  ~MxcsrFlushToZero() {
    if (on) _mm_setcsr(saved);
  }
};
#endif

// One element of the main loop: the base moments and the ladder levels [-LO, HI] (see
// block_stats below for the units). k indexes the levels from -LO; the base level is k = LO.
// BIG: the exponent is (z - m) log2(e)/q (neg_cq holds m), else z log2(e)/q - c/q by one fma.
template <class S, int LO, int HI, bool TRACK, bool BIG>
static inline void ladder_step(typename S::F v, typename S::F l2eq, typename S::F neg_cq, typename S::F lo,
                               typename S::F vzy, typename S::F* b0, typename S::F* b1, typename S::F& b2,
                               typename S::C& cnt, typename S::F& vmax) {
  using F = typename S::F;
  if (TRACK) vmax = S::max(v, vmax);
  const F t = S::max(lo, BIG ? S::mul(S::sub(v, neg_cq), l2eq) : S::fmadd(v, l2eq, neg_cq));
  F e = S::exp2(t);
  for (int k = 0; k < LO + HI + 1; ++k) {
    if (k > 0) e = S::mul(e, e);  // e^{2^(k - LO) (z - c)}: one squaring per level
    b0[k] = S::add(b0[k], e);
    if (k == LO) {
      const F et = S::mul(e, t);
      b1[k] = S::add(b1[k], et);
      b2 = S::fmadd(et, t, b2);
    } else {
      b1[k] = S::fmadd(e, t, b1[k]);
    }
  }
  cnt = S::count_gt(cnt, v, vzy);
}

// Pass 2 over the block (from L1), one exp per element, in base-2 units:
//   t = z log2(e) - c,  c = fl(m log2(e)),  computed by one fma (exact product, one rounding),
// so t = (z - shift) log2(e) with shift = c / log2(e) (within an ulp of m, kept in double),
// e^{z - shift} = 2^t, and the moments sum 2^t t, sum 2^t t^2 are scaled back by 1/log2(e)
// and 1/log2(e)^2 below. Unlike (z - m) log2(e) this keeps the dependency chain short, and
// unlike fl(m log2 e) subtracted after rounding z log2(e) it loses nothing for |z| ~ 1e4.
// t is clamped at -124 so that 2^t stays a normal float (an entry at -inf then adds ~5e-38 to
// s0 >= 1: nothing). max(lo, t) keeps a NaN t, and 2^t t is then NaN whatever exp2 made of
// it, so a NaN s1 is the NaN check. The next block is prefetched while this one is computed,
// overlapping memory and arithmetic.
//
// Ladder (LO, HI > 0 when inverse temperatures 2^l, -LO <= l <= HI, were asked): with q = 2^LO
// the exponent is t/q = z log2(e)/q - c/q, the same fma with both constants divided by q
// (exact: a power of two), u = 2^{t/q} = e^{(z - shift)/q}, and the level l term
// e^{2^l (z - shift)} = u^{2^{l + LO}} by l + LO squarings; the base term is level 0. Squares
// may fall below the normal range: flush-to-zero makes them 0 at full speed (their share of a
// sum whose largest term is ~1 is below 2^-126). Every moment is in units of t/q and is scaled
// back by q / log2(e) (its square for s2).
//
// Large logits (BIG). The one-fma exponent is only as good as c = fl(m log2 e): the shift
// c / log2(e) sits up to ulp(c)/2 base-2 units from m, so the block's largest term is 2^d with
// |d| <= ulp(c)/2 instead of 1, and every exponent moves by d (times 2^l on the ladder, times
// beta in the tempered sweep). While |m| max(1, beta_max) <= 2^22 (kFmaShiftLimit), c < 2^23
// and |d| beta <= 1/2: the exponents stay in exp2's range [-124, 64] and the lanes' sums far
// from overflow. Beyond it d grows with |m| (|m| ~ 4e9 gives |d| ~ 256: 2^d overflows fp32,
// exp2's exponent field wraps, and the moments are garbage, e.g. an entropy of 175 nats for
// V = 5000; |m| > 2.4e38 makes c itself infinite and every moment NaN). Such a block (BIG)
// takes its exponent as t = (z - m) log2(e) / q instead (one more rounding, no cancellation
// problem: the max has t = 0 exactly and the shift is m itself). z - m <= 0 in a two-pass
// block; it overflows to -inf only when the true difference is below -3.4e38, where the term
// e^{z-m} is 0 in any precision: max(lo, -inf) = lo turns it into a 2^-124-sized term, as for
// a -inf logit, and never into 0 * inf. NaN still propagates (max keeps a NaN t). BIG blocks
// are rare (only logits of magnitude > 4e6 / beta_max) and always take the two-pass route.
template <class S, class In, int LO, int HI, bool TRACK, bool BIG>
static float block_moments(const In* x, int64_t n, float m, float zy, BlockStats* out, double* lad0,
                           double* lad1) {
  using F = typename S::F;
  constexpr int64_t W = S::W;
  constexpr int L = LO + HI + 1;
  constexpr int U = L == 1 ? S::U : (S::U > 2 ? 2 : 1);  // accumulator sets: registers are shared with levels
  const float kInf = __builtin_inff();
  const float kLog2e = 1.44269504088896341f;
  const float q = static_cast<float>(1 << LO);
  const float c = BIG ? 0.0f : m * kLog2e;
  const double shift = BIG ? static_cast<double>(m) : static_cast<double>(c) / static_cast<double>(kLog2e);
  // BIG: neg_cq carries m itself (ladder_step subtracts it before scaling).
  const F neg_cq = S::set1(BIG ? m : -c / q), lo = S::set1(-124.0f), vzy = S::set1(zy), l2eq = S::set1(kLog2e / q);
  typename S::FlushToZero ftz(L > 1);
  // Lanes accumulate at most kLaneTerms terms before they are added into double totals:
  // repeated (quantised) logits then cannot pile up fp32 rounding, which the variance
  // S2/S0 - (S1/S0)^2 would magnify.
  constexpr int64_t kFlush = kLaneTerms * U * W;
  double d0[L], d1[L], s2 = 0.0;
  for (int k = 0; k < L; ++k) d0[k] = d1[k] = 0.0;
  int64_t n_greater = 0;
  F a0[U][L], a1[U][L], a2[U], vmax[U];
  typename S::C cnt[U];
  for (int u = 0; u < U; ++u) {
    cnt[u] = S::zero_count();
    vmax[u] = S::set1(-kInf);
  }
  int64_t i = 0;
  while (i < n) {
    for (int u = 0; u < U; ++u) {
      a2[u] = S::set1(0.0f);
      for (int k = 0; k < L; ++k) a0[u][k] = a1[u][k] = S::set1(0.0f);
    }
    const int64_t stop = i + kFlush < n ? i + kFlush : n;
    for (; i + U * W <= stop; i += U * W) {
      S::prefetch(x + n + i);
      for (int u = 0; u < U; ++u)
        ladder_step<S, LO, HI, TRACK, BIG>(S::load(x + i + u * W), l2eq, neg_cq, lo, vzy, a0[u], a1[u], a2[u], cnt[u],
                                      vmax[u]);
    }
    for (; i + W <= stop; i += W)
      ladder_step<S, LO, HI, TRACK, BIG>(S::load(x + i), l2eq, neg_cq, lo, vzy, a0[0], a1[0], a2[0], cnt[0], vmax[0]);
    if (i < n && i + W > n) {  // the last, partial vector, padded with -inf (adds 2^-124-sized terms)
      const PaddedTail<In, W> tail(x + i, n - i);
      ladder_step<S, LO, HI, TRACK, BIG>(S::load(tail.v), l2eq, neg_cq, lo, vzy, a0[0], a1[0], a2[0], cnt[0], vmax[0]);
      i = n;
    }
    for (int u = 0; u < U; ++u) {
      s2 += S::hsum(a2[u]);
      for (int k = 0; k < L; ++k) {
        d0[k] += S::hsum(a0[u][k]);
        d1[k] += S::hsum(a1[u][k]);
      }
    }
  }
  for (int u = 0; u < U; ++u) n_greater += S::hcount(cnt[u]);
  float block_max = m;
  if (TRACK) {
    for (int u = 1; u < U; ++u) vmax[0] = S::max(vmax[u], vmax[0]);
    block_max = S::hmax(vmax[0]);
  }
  const double scale = static_cast<double>(q) / static_cast<double>(kLog2e);
  for (int k = 0; k < L; ++k) d1[k] *= scale;
  s2 *= scale * scale;
  out->bad = d1[LO] != d1[LO] || d0[LO] != d0[LO];
  out->shift = shift;
  out->s0 = d0[LO];
  out->s1 = d1[LO];
  out->s2 = s2;
  out->n_greater = n_greater;
  for (int k = 0; k < L; ++k) {
    lad0[k - LO + kMaxLevel] = d0[k];
    lad1[k - LO + kMaxLevel] = d1[k];
  }
  return block_max;
}

// Tempered moments at one inverse temperature beta off the ladder: a sweep over the block while
// it is in L1, one exp per element. t = z log2(e) - c as in the main loop (same shift), clamped
// at -124 / min(beta, 1) so that e t stays finite for -inf entries, and the exponent beta t
// clamped at -124 (normal floats). t0 = sum 2^{beta t}, t1 = sum 2^{beta t} t / log2(e).
// BIG (large logits, see block_moments): t = (z - m) log2(e), neg_c holds m, the shift is m.
template <class S, bool BIG>
static inline void tempered_step(typename S::F v, typename S::F l2e, typename S::F neg_c, typename S::F vb,
                                 typename S::F lo, typename S::F tlo, typename S::F& a0, typename S::F& a1) {
  const typename S::F t = S::max(tlo, BIG ? S::mul(S::sub(v, neg_c), l2e) : S::fmadd(v, l2e, neg_c));
  const typename S::F e = S::exp2(S::max(lo, S::mul(t, vb)));
  a0 = S::add(a0, e);
  a1 = S::fmadd(e, t, a1);
}

template <class S, class In, bool BIG>
static void block_tempered_sweep(const In* x, int64_t n, float m, float beta, double* t0, double* t1) {
  using F = typename S::F;
  constexpr int64_t W = S::W;
  constexpr int64_t kFlush = kLaneTerms * W;
  const float kLog2e = 1.44269504088896341f;
  const float c = m * kLog2e;
  const F neg_c = S::set1(BIG ? m : -c), l2e = S::set1(kLog2e), vb = S::set1(beta), lo = S::set1(-124.0f),
          tlo = S::set1(beta < 1.0f ? -124.0f / beta : -124.0f);
  double s0 = 0.0, s1 = 0.0;
  int64_t i = 0;
  while (i < n) {
    F a0 = S::set1(0.0f), a1 = S::set1(0.0f);
    const int64_t stop = i + kFlush < n ? i + kFlush : n;
    for (; i + W <= stop; i += W) tempered_step<S, BIG>(S::load(x + i), l2e, neg_c, vb, lo, tlo, a0, a1);
    if (i < n && i + W > n) {  // the last, partial vector, padded with -inf
      const PaddedTail<In, W> tail(x + i, n - i);
      tempered_step<S, BIG>(S::load(tail.v), l2e, neg_c, vb, lo, tlo, a0, a1);
      i = n;
    }
    s0 += S::hsum(a0);
    s1 += S::hsum(a1);
  }
  s1 /= static_cast<double>(kLog2e);
  *t0 = s0;
  *t1 = s1;
}

// The first index of m in x[0, n): a vector scan, then the tail (-1 when absent).
template <class S, class In>
static int64_t first_index_of(const In* x, int64_t n, float m) {
  constexpr int64_t W = S::W;
  const typename S::F vm = S::set1(m);
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const unsigned hits = S::equal_mask(S::load(x + j), vm);
    if (hits) return j + __builtin_ctz(hits);
  }
  for (; j < n; ++j)
    if (to_float(x[j]) == m) return j;
  return -1;
}

// The block routine (contract in block_kernel.h).
//
// Once the row has a finite running max M, a block takes one pass from memory: its moments are
// taken relative to M's shift while its own max is tracked in the same loop. Entries above M
// then give t > 0, which is harmless while the block's max exceeds M by at most kOnePassSlack
// nats divided by the largest inverse temperature: every exponent stays below 2.9, and E[t^2]
// stays as small as with the block's own max as the shift, so the variance's cancellation is no
// worse. A block that exceeds M by more is redone from L1 with its own max as the shift (two
// passes, as the row's first block always is); with rising maxima that is a few blocks per row.
// A running max too large for the one-fma exponent (|M| max(1, beta_max) > 2^22, see "Large
// logits" at block_moments) skips the one-pass route: such rows are rare and only need to be right.
template <class S, class In>
static void block_stats(const void* data, int64_t n, float zy, float running_max, const TemperaturePlan* plan,
                        BlockStats* out) {
  using F = typename S::F;
  constexpr int64_t W = S::W;
  constexpr int U = S::U;
  constexpr float kOnePassSlack = 2.0f;  // nats, divided by the largest inverse temperature
  const In* x = static_cast<const In*>(data);
  const float kInf = __builtin_inff();
  const int n_temps = plan ? plan->n : 0;
  for (int j = 0; j < n_temps; ++j) out->t0[j] = out->t1[j] = 0.0;
  out->s0 = out->s1 = out->s2 = 0.0f;
  out->n_greater = 0;
  out->argmax = -1;
  out->bad = 0;

  using MomentsFn = float (*)(const In*, int64_t, float, float, BlockStats*, double*, double*);
  static constexpr MomentsFn kTwoPass[kMaxLevel + 1][kMaxLevel + 1] = {
      {&block_moments<S, In, 0, 0, false, false>, &block_moments<S, In, 0, 1, false, false>,
       &block_moments<S, In, 0, 2, false, false>},
      {&block_moments<S, In, 1, 0, false, false>, &block_moments<S, In, 1, 1, false, false>,
       &block_moments<S, In, 1, 2, false, false>},
      {&block_moments<S, In, 2, 0, false, false>, &block_moments<S, In, 2, 1, false, false>,
       &block_moments<S, In, 2, 2, false, false>}};
  static constexpr MomentsFn kOnePass[kMaxLevel + 1][kMaxLevel + 1] = {
      {&block_moments<S, In, 0, 0, true, false>, &block_moments<S, In, 0, 1, true, false>,
       &block_moments<S, In, 0, 2, true, false>},
      {&block_moments<S, In, 1, 0, true, false>, &block_moments<S, In, 1, 1, true, false>,
       &block_moments<S, In, 1, 2, true, false>},
      {&block_moments<S, In, 2, 0, true, false>, &block_moments<S, In, 2, 1, true, false>,
       &block_moments<S, In, 2, 2, true, false>}};
  // Large logits (block_moments): two passes, the exponent relative to the block's own max.
  static constexpr MomentsFn kTwoPassBig[kMaxLevel + 1][kMaxLevel + 1] = {
      {&block_moments<S, In, 0, 0, false, true>, &block_moments<S, In, 0, 1, false, true>,
       &block_moments<S, In, 0, 2, false, true>},
      {&block_moments<S, In, 1, 0, false, true>, &block_moments<S, In, 1, 1, false, true>,
       &block_moments<S, In, 1, 2, false, true>},
      {&block_moments<S, In, 2, 0, false, true>, &block_moments<S, In, 2, 1, false, true>,
       &block_moments<S, In, 2, 2, false, true>}};
  double lad0[2 * kMaxLevel + 1], lad1[2 * kMaxLevel + 1];
  const int lo = n_temps ? plan->lo : 0, hi = n_temps ? plan->hi : 0;
  const float beta_max = n_temps ? plan->beta_max : 1.0f;

  float m;
  bool done = false, big = false;
  if (running_max > -kInf && fma_shift_ok(running_max, beta_max)) {  // one pass, relative to the running max
    m = kOnePass[lo][hi](x, n, running_max, zy, out, lad0, lad1);
    if (m == kInf) {
      out->bad = 1;
    } else if (m - running_max > kOnePassSlack / beta_max) {
      out->bad = 0;  // redone below (an overflow may have made NaN of the moments)
    } else {
      done = true;
    }
  } else {
    // Pass 1 over the block (from memory): its maximum. A NaN never sticks in a max (the max of
    // NaN and v is v in one operand order), so NaN is detected by pass 2 instead.
    F vmax[U];
    for (int u = 0; u < U; ++u) vmax[u] = S::set1(-kInf);
    int64_t i = 0;
    for (; i + U * W <= n; i += U * W)
      for (int u = 0; u < U; ++u) vmax[u] = S::max(S::load(x + i + u * W), vmax[u]);
    for (; i + W <= n; i += W) vmax[0] = S::max(S::load(x + i), vmax[0]);
    for (int u = 1; u < U; ++u) vmax[0] = S::max(vmax[u], vmax[0]);
    m = S::hmax(vmax[0]);
    for (int64_t j = i; j < n; ++j) {
      const float v = to_float(x[j]);
      if (v > m) m = v;
    }
    out->bad = m == kInf;
  }
  out->max = m;
  if (out->bad) return;
  if (!done) {
    out->shift = m;
    if (m == -kInf || m != m) {  // every entry -inf or NaN: adds nothing unless one is NaN
      for (int64_t j = 0; j < n; ++j) {
        const float v = to_float(x[j]);
        if (v != v) out->bad = 1;
      }
      return;
    }
    big = !fma_shift_ok(m, beta_max);
    (big ? kTwoPassBig : kTwoPass)[lo][hi](x, n, m, zy, out, lad0, lad1);
    if (out->bad) return;
  }
  if (m > running_max) out->argmax = first_index_of<S, In>(x, n, m);
  const float shift_source = done ? running_max : m;
  for (int j = 0; j < n_temps; ++j) {
    const int level = plan->level[j];
    if (level == kOffLadder) {
      const float beta = static_cast<float>(plan->beta[j]);
      if (big)
        block_tempered_sweep<S, In, true>(x, n, shift_source, beta, &out->t0[j], &out->t1[j]);
      else
        block_tempered_sweep<S, In, false>(x, n, shift_source, beta, &out->t0[j], &out->t1[j]);
    } else {
      out->t0[j] = lad0[level + kMaxLevel];
      out->t1[j] = lad1[level + kMaxLevel];
    }
  }
}
template <class S>
static const BlockKernels* make_block_kernels(const char* name) {
  static const BlockKernels table = {
      name, {&block_stats<S, float>, &block_stats<S, f16_t>, &block_stats<S, bf16_t>}};
  return &table;
}
