// Portable block routine (no SIMD): the baseline every machine can run.
#include "block_kernel.h"

namespace mia_fast {
namespace {

#include "block_impl.h"

// Scalar lanes hold doubles: with one lane per accumulator, fp32 partial sums would collect the
// rounding of hundreds of terms; in double they collect none that matters.
struct Scalar {
  static constexpr int64_t W = 1;
  static constexpr int U = 2;
  using F = double;
  using C = int64_t;
  static F set1(float a) { return a; }
  template <class In>
  static F load(const In* p) { return to_float(*p); }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F fmadd(F a, F b, F c) { return a * b + c; }
  static F max(F a, F b) { return a > b ? a : b; }  // b when either is NaN, as maxps
  static F exp2(F t) { return __builtin_exp2(t); }
  static float hmax(F a) { return static_cast<float>(a); }  // a max of floats is a float
  static double hsum(F a) { return a; }
  static void prefetch(const void*) {}
  struct FlushToZero {  // double lanes: the ladder's squares stay normal (>= 2^-496)
    explicit FlushToZero(bool) {}
  };
  static unsigned equal_mask(F a, F b) { return a == b; }
  static C zero_count() { return 0; }
  static C count_gt(C c, F v, F zy) { return c + (v > zy); }
  static int64_t hcount(C c) { return c; }
};

}  // namespace

const BlockKernels* block_kernels_scalar() { return make_block_kernels<Scalar>("scalar"); }

}  // namespace mia_fast
