// The per-block inner loop, written once over a SIMD "traits" type and instantiated per
// instruction set (block_scalar.cpp, block_avx2.cpp, block_avx512.cpp).
//
// Contract of a block routine: fold x[0, n) (n <= kBlockSize, none of them the target column)
// into a BlockStats relative to the row's running max (or to the block's own max, when the row has
// none yet or the block's exceeds it by more than a slack); see token_stats.h for the moments.
#pragma once

#include <cstdint>

namespace mia_fast {

constexpr int64_t kBlockSize = 2048;  // 8 KiB of fp32: the block is re-read from L1
constexpr int kMaxTemperatures = 8;
// Ladder levels: inverse temperatures 2^l, l in [-kMaxLevel, kMaxLevel], come from one exponential.
constexpr int kMaxLevel = 2;
constexpr int kOffLadder = 1000;

// How the block routine computes the moments at the inverse temperatures beta_j (token_stats.h).
// A beta that is a power of two 2^l with |l| <= kMaxLevel is on the "ladder": with q = 2^lo,
// u = e^{(z - c)/q} is the one exponential of the element, and e^{2^l (z - c)} = u^{2^{l + lo}}
// follows by squarings (the base term e^{z - c} is one of them). Any other beta costs one more
// exponential per element, in a sweep over the block while it is still in L1.
struct TemperaturePlan {
  int n = 0;                       // number of inverse temperatures (0: none)
  double beta[kMaxTemperatures];   // the inverse temperatures
  int level[kMaxTemperatures];     // log2(beta_j) on the ladder, or kOffLadder
  int lo = 0, hi = 0;              // ladder levels [-lo, hi] computed in the block's main loop
  float beta_max = 1.0f;           // max(1, beta_j): divides the one-pass slack (block_impl.h)
};

struct BlockStats {
  float max;           // block max (-inf when every entry is -inf)
  double shift;        // the moments are relative to this value (within an ulp of running_max or max)
  double s0, s1, s2;   // shifted moments (0 when max is -inf)
  int64_t n_greater;   // #{i : x_i > zy}
  int64_t argmax;      // first i with x_i == max, only when max > running_max, else -1
  int bad;             // a NaN or +inf was seen
  // Tempered moments relative to the same shift: t0_j = sum e^{beta_j (x - shift)},
  // t1_j = sum e^{beta_j (x - shift)} (x - shift); written only when plan->n > 0.
  double t0[kMaxTemperatures], t1[kMaxTemperatures];
};

struct f16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

// Exact scalar conversions (static: internal linkage in every unit, whatever its target options).
static inline float bf16_bits_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;  // bf16 is the high half of an fp32
  float out;
  __builtin_memcpy(&out, &bits, sizeof(out));
  return out;
}

static inline float f16_bits_to_float(uint16_t h16) {
  // IEEE binary16 -> binary32, exact (subnormals, inf and NaN included).
  uint32_t h = h16, sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: renormalise
    int e = -1;
    do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
    bits = sign | static_cast<uint32_t>(112 - e) << 23 | ((man & 0x3ffu) << 13);
  }
  float out;
  __builtin_memcpy(&out, &bits, sizeof(out));
  return out;
}

// plan may be null (no temperatures).
using BlockFn = void (*)(const void* x, int64_t n, float zy, float running_max, const TemperaturePlan* plan,
                         BlockStats* out);

// One routine per logits dtype (indexed by LogitDType).
struct BlockKernels {
  const char* name;
  BlockFn fn[3];
};

const BlockKernels* block_kernels_scalar();
const BlockKernels* block_kernels_avx2();    // null when not compiled for x86-64
const BlockKernels* block_kernels_avx512();  // null when not compiled for x86-64

}  // namespace mia_fast
