// AVX-512F block routine (16 fp32 lanes). Compiled with that target option for this unit only;
// chosen at run time when the CPU and OS support it (token_stats.cpp).
#include "block_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
// Register-pressure-aware scheduling before allocation: the exp loop needs every ymm register.
#pragma GCC optimize("schedule-insns", "sched-pressure")
// GCC 12's own _mm512_reduce_* helpers trip -Wmaybe-uninitialized on _mm512_undefined_*.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mia_fast {
namespace {

#include "block_impl.h"

struct Avx512 {
  static constexpr int64_t W = 16;
  // One accumulator set, as with AVX2. Measured on a 2-core AMD EPYC (Zen 4, 512-bit operations
  // on 256-bit units): U = 1 takes 0.61-0.75 of U = 4's time on one thread and 0.72-0.82 on two
  // (fp32 and bf16, V = 32000 and 256000; benchmarks/results/cpu_ab_avx512_accumulators.md).
  static constexpr int U = 1;
  using F = __m512;
  using C = __m512i;  // int32 lane counters
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load(const f16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load(const bf16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  // 2^t for t in [-124, 64]: n = round(t), f = t - n in [-1/2, 1/2], 2^f (exp2_reduced), then n is
  // added to the exponent field.
  static F exp2(F t) {
    const F n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const F p = exp2_reduced<Avx512>(_mm512_sub_ps(t, n));
    const __m512i scale = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), scale));
  }
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  using FlushToZero = MxcsrFlushToZero;
  static float hmax(F a) { return _mm512_reduce_max_ps(a); }
  static double hsum(F a) { return _mm512_reduce_add_ps(a); }
  static unsigned equal_mask(F a, F b) { return static_cast<unsigned>(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)); }
  static C zero_count() { return _mm512_setzero_si512(); }
  static C count_gt(C c, F v, F zy) {
    return _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(v, zy, _CMP_GT_OQ), c, _mm512_set1_epi32(1));
  }
  static int64_t hcount(C c) { return _mm512_reduce_add_epi32(c); }
};

}  // namespace

const BlockKernels* block_kernels_avx512() { return make_block_kernels<Avx512>("avx512"); }

}  // namespace mia_fast

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

#else  // not x86-64

namespace mia_fast {
const BlockKernels* block_kernels_avx512() { return nullptr; }
}  // namespace mia_fast

#endif
