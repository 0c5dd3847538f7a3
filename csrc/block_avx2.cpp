// AVX2 + FMA + F16C block routine (8 fp32 lanes). Compiled with those target options for this
// unit only; chosen at run time when the CPU has them (token_stats.cpp).
#include "block_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// Register-pressure-aware scheduling before allocation: the exp loop needs every ymm register.
#pragma GCC optimize("schedule-insns", "sched-pressure")
#endif

namespace mia_fast {
namespace {

#include "block_impl.h"

struct Avx2 {
  static constexpr int64_t W = 8;
  static constexpr int U = 1;  // 16 ymm registers: one set of accumulators, the constants and the exp
  using F = __m256;
  using C = __m256i;  // int32 lane counters: a block has at most kBlockSize entries
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load(const f16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F load(const bf16_t* p) {  // bf16 is the high half of an fp32: widen and shift
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  // 2^t for t in [-124, 64]: n = round(t), f = t - n in [-1/2, 1/2], 2^f (exp2_reduced), then n is
  // added to the exponent field.
  static F exp2(F t) {
    const F n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const F p = exp2_reduced<Avx2>(_mm256_sub_ps(t, n));
    const __m256i scale = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), scale));
  }
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  using FlushToZero = MxcsrFlushToZero;
  static float hmax(F a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static double hsum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static unsigned equal_mask(F a, F b) { return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ))); }
  static C zero_count() { return _mm256_setzero_si256(); }
  static C count_gt(C c, F v, F zy) {  // a true compare is all ones = -1
    return _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(v, zy, _CMP_GT_OQ)));
  }
  static int64_t hcount(C c) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), c);
    int64_t total = 0;
    for (int k = 0; k < 8; ++k) total += lanes[k];
    return total;
  }
};

}  // namespace

const BlockKernels* block_kernels_avx2() { return make_block_kernels<Avx2>("avx2"); }

}  // namespace mia_fast

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64

namespace mia_fast {
const BlockKernels* block_kernels_avx2() { return nullptr; }
}  // namespace mia_fast

#endif
