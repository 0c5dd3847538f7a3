// Generic body of a block routine; included by each instruction-set translation unit inside an
// anonymous namespace, after that unit's target options and SIMD traits `S` are set. It uses no
// standard-library templates, so nothing compiled for a wide instruction set can leak into code
// shared with other units (every symbol here has internal linkage).
//
// Traits S provide: W (lanes), F (float vector), C (lane counters), B (bad-value accumulator),
// U (accumulator sets), set1, load(const In*), add, mul, fmadd(a,b,c)=a*b+c (one rounding), max (returns
// its second operand when either is NaN, like x86 maxps), exp2 (valid on [-124, 0], NaN kept),
// hmax, hsum (to double), zero_count, count_gt, hcount, prefetch.

#ifndef MIA_FAST_BLOCK_IMPL_ONCE
#define MIA_FAST_BLOCK_IMPL_ONCE

static inline float to_float(float v) { return v; }
static inline float to_float(bf16_t v) { return bf16_bits_to_float(v.bits); }
static inline float to_float(f16_t v) { return f16_bits_to_float(v.bits); }

#endif  // MIA_FAST_BLOCK_IMPL_ONCE

template <class S, class In>
static void block_stats(const void* data, int64_t n, float zy, float running_max, BlockStats* out) {
  using F = typename S::F;
  constexpr int64_t W = S::W;
  constexpr int U = S::U;  // independent accumulators per quantity: hide FMA/exp latency
  const In* x = static_cast<const In*>(data);
  const float kInf = __builtin_inff();
  const float kLn2 = 0.693147180559945309f;

  // Pass 1 over the block (from memory): its maximum. A NaN never sticks in a max (the max of
  // NaN and v is v in one operand order), so NaN is detected by pass 2 instead.
  F vmax[U];
  for (int u = 0; u < U; ++u) vmax[u] = S::set1(-kInf);
  int64_t i = 0;
  for (; i + U * W <= n; i += U * W)
    for (int u = 0; u < U; ++u) vmax[u] = S::max(S::load(x + i + u * W), vmax[u]);
  for (; i + W <= n; i += W) vmax[0] = S::max(S::load(x + i), vmax[0]);
  for (int u = 1; u < U; ++u) vmax[0] = S::max(vmax[u], vmax[0]);
  float m = S::hmax(vmax[0]);
  for (int64_t j = i; j < n; ++j) {
    const float v = to_float(x[j]);
    if (v > m) m = v;
  }
  out->max = m;
  out->shift = m;
  out->bad = m == kInf;
  out->s0 = out->s1 = out->s2 = 0.0f;
  out->n_greater = 0;
  out->argmax = -1;
  if (out->bad) return;
  if (m == -kInf || m != m) {  // every entry -inf or NaN: adds nothing unless one is NaN
    for (int64_t j = 0; j < n; ++j) {
      const float v = to_float(x[j]);
      if (v != v) out->bad = 1;
    }
    return;
  }

  if (m > running_max) {
    for (int64_t j = 0; j < n; ++j) {
      if (to_float(x[j]) == m) { out->argmax = j; break; }
    }
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
  const float kLog2e = 1.44269504088896341f;
  const float c = m * kLog2e;
  const double shift = static_cast<double>(c) / static_cast<double>(kLog2e);
  const F neg_c = S::set1(-c), lo = S::set1(-124.0f), vzy = S::set1(zy), l2e = S::set1(kLog2e);
  // Lanes accumulate at most kFlush / (U W) terms (16 with AVX2) before they are added into
  // double totals: repeated (quantised) logits then cannot pile up fp32 rounding, which the
  // variance S2/S0 - (S1/S0)^2 would magnify.
  constexpr int64_t kFlush = 256;
  double s0 = 0.0, s1 = 0.0, s2 = 0.0;
  int64_t n_greater = 0;
  F a0[U], a1[U], a2[U];
  typename S::C cnt[U];
  for (int u = 0; u < U; ++u) cnt[u] = S::zero_count();
  i = 0;
  while (i + W <= n) {
    for (int u = 0; u < U; ++u) a0[u] = a1[u] = a2[u] = S::set1(0.0f);
    const int64_t stop = i + kFlush < n ? i + kFlush : n;
    for (; i + U * W <= stop; i += U * W) {
      S::prefetch(x + n + i);
      for (int u = 0; u < U; ++u) {
        const F v = S::load(x + i + u * W);
        const F t = S::max(lo, S::fmadd(v, l2e, neg_c));
        const F e = S::exp2(t);
        const F et = S::mul(e, t);
        a0[u] = S::add(a0[u], e);
        a1[u] = S::add(a1[u], et);
        a2[u] = S::fmadd(et, t, a2[u]);
        cnt[u] = S::count_gt(cnt[u], v, vzy);
      }
    }
    for (; i + W <= stop; i += W) {
      const F v = S::load(x + i);
      const F t = S::max(lo, S::fmadd(v, l2e, neg_c));
      const F e = S::exp2(t);
      const F et = S::mul(e, t);
      a0[0] = S::add(a0[0], e);
      a1[0] = S::add(a1[0], et);
      a2[0] = S::fmadd(et, t, a2[0]);
      cnt[0] = S::count_gt(cnt[0], v, vzy);
    }
    for (int u = 0; u < U; ++u) {
      s0 += S::hsum(a0[u]);
      s1 += S::hsum(a1[u]);
      s2 += S::hsum(a2[u]);
    }
  }
  for (int u = 0; u < U; ++u) n_greater += S::hcount(cnt[u]);
  const double kInvLog2e = 1.0 / static_cast<double>(kLog2e);
  s1 *= kInvLog2e;
  s2 *= kInvLog2e * kInvLog2e;
  for (; i < n; ++i) {  // tail (< W entries), natural units, exact zero for -inf entries
    const float v = to_float(x[i]);
    n_greater += v > zy;
    if (v == -kInf) continue;
    const double d = static_cast<double>(v) - shift, e = __builtin_exp(d);
    s0 += e;
    s1 += e * d;
    s2 += e * d * d;
  }
  out->bad = s1 != s1 || s0 != s0;
  out->shift = shift;
  out->s0 = s0;
  out->s1 = s1;
  out->s2 = s2;
  out->n_greater = n_greater;
}

template <class S>
static const BlockKernels* make_block_kernels(const char* name) {
  static const BlockKernels table = {
      name, {&block_stats<S, float>, &block_stats<S, f16_t>, &block_stats<S, bf16_t>}};
  return &table;
}
