// mia_fast token statistics: a plain C++ API over raw pointers and sizes (no Python, no libtorch).
//
// For every row z (length V) of a logits matrix with target y and p = softmax(z), one pass over
// the vocabulary computes
//   logprob     = z_y - lse                      lse      = log sum_v e^{z_v}
//   entropy     = -sum_v p_v log p_v             var_logp = Var_{v~p}[log p_v]
//   max_logprob = max_v z_v - lse                argmax   = first index of max_v z_v
//   log1m_p     = log sum_{v != y} p_v           margin   = z_y - max_{v != y} z_v
//   rank        = #{v : z_v > z_y}
// Rows whose target equals ignore_index are not read: float outputs NaN, integer outputs -1.
//
// Numerics (derivation)
// ---------------------
// The pass keeps, over the entries v != y seen so far, the running maximum m and moments
// shifted by a value c within an ulp of m, or up to 2 nats below it (one-pass blocks, below):
//   s0 = sum e^{z-c},  s1 = sum e^{z-c} (z-c),  s2 = sum e^{z-c} (z-c)^2.
// Two partial states (c_a, s_a) and (c_b, s_b) over disjoint sets merge exactly: with
// C = max(c_a, c_b), d = c_a - C and a = e^d, every term e^{z-c_a} (z-c_a)^k becomes
// a e^{z-c_a} ((z-c_a) + d)^k relative to C, hence
//   s0' = a s0,   s1' = a (s1 + d s0),   s2' = a (s2 + 2 d s1 + d^2 s0),
// and the same for b; the merged moments are the sums. SIMD lanes, vocabulary blocks, vocabulary
// chunks of the fused lm_head path and threads all use this merge. A block of the row (2048
// entries) takes one exp per element, in base 2: t = z log2(e) - fl(m_b log2(e)) by one fma (so
// c = fl(m_b log2 e) / log2 e, exact in double), e^{z-c} = 2^t, accumulated in fp32 lanes that
// are flushed into double every 256 entries. m_b is the running max of the row so far, and the
// block's own max is tracked in the same loop: one pass from memory. Entries above m_b give
// t > 0, harmless while the block's max exceeds m_b by at most 2 nats (the slack, divided by the
// largest inverse temperature); a block that exceeds it, and the row's first block, find their
// own max first and use it as m_b (a second pass, from L1). Block states are merged into the row
// state in double.
// At the end the target itself joins: with S_k the moments of all v relative to M = max(c, z_y),
//   lse = M + log S0,  E_p[z] - M = S1 / S0,  entropy = log S0 - S1/S0,
//   var_logp = S2/S0 - (S1/S0)^2   (Var[log p] = Var[z]),
//   logprob = (z_y - M) - log S0,  max_logprob = (max z - M) - log S0,
//   log1m_p = (c - M) + log s0 - log S0   (the v != y sum itself: exact when p_y -> 1, where the
//                                          naive log(1 - e^{logprob}) underflows to -inf).
// Since c may sit below the true max, results are clamped to their ranges (lse >= max z,
// entropy >= 0, log1m_p <= 0).
// When z_y is the shift, lse = z_y + log1p(e^{c - z_y} s0) keeps logprob accurate near 0.
//
// Every finite input (large logits)
// ---------------------------------
// Log-probabilities are formed from differences to M, never as z - lse: lse = M + log S0 rounds
// to M once |M| exceeds ~2^53 log S0, which would drop log S0 from every log p. The merges and the
// finish run in double, where differences of fp32 logits (|d| <= 6.8e38) and their squares stay
// finite, and e^d = 0 for d < -745 makes every rescaled moment exactly 0 (0 times a finite
// value). The fp32 block exponent needs a shift close to the block max: beyond |m| ~ 4e6 the
// block routine forms it as (z - m) log2(e) instead of the one-fma form (block_impl.h,
// "Large logits"). Bounded fields stay bounded (0 <= entropy <= log V, -log V <= max_logprob
// <= 0, var_logp of order log^2 V at most, whatever the logits); the unbounded ones (logprob,
// log1m_p, margin) return the float32 rounding of the exact value: -inf when it is below
// -3.4e38, as the torch backend does.
//
// Temperatures
// ------------
// Optionally the same pass also computes, for a few inverse temperatures beta_j = 1 / tau_j,
// the statistics of p_j = softmax(beta_j z):
//   logprob_t   = beta z_y - lse_j,   lse_j = log sum_v e^{beta z_v},
//   entropy_t   = lse_j - beta E_{p_j}[z],   max_logprob_t = beta max_v z_v - lse_j,
// from two more moments per temperature, relative to the same shift c as the base ones:
//   t0 = sum e^{beta (z - c)},   t1 = sum e^{beta (z - c)} (z - c).
// They merge like the base moments with beta in the exponent: with d = c_a - C,
//   t0' = e^{beta d} t0,   t1' = e^{beta d} (t1 + d t0),
// and with the final shift M and T_k the moments over all v (target included),
//   lse_j = beta M + log T0,   entropy_t = log T0 - beta T1 / T0,
//   logprob_t = beta (z_y - M) - log T0,   max_logprob_t = beta (max z - M) - log T0.
// Cost: a beta that is a power of two between 1/4 and 4 shares the element's one exponential
// (successive squarings of e^{(z - c)/q}, block_kernel.h); any other beta costs one more
// exponential per element, while the block is in L1 (no second pass over memory).
#pragma once

#include <cstdint>

namespace mia_fast {

enum class LogitDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kMaxInverseTemperatures = 8;

// The inverse temperatures beta_j > 0 (finite) of the tempered statistics; n = 0: none.
struct InverseTemperatures {
  int n = 0;
  const double* beta = nullptr;
};

// Output arrays of length n_rows (the tempered ones: n_rows x temperatures.n, row-major); a null
// pointer skips that field.
struct TokenStatsOutputs {
  float* logprob = nullptr;
  float* lse = nullptr;
  float* entropy = nullptr;
  float* var_logp = nullptr;
  float* max_logprob = nullptr;
  int64_t* argmax = nullptr;
  float* log1m_p = nullptr;
  float* margin = nullptr;
  int64_t* rank = nullptr;
  InverseTemperatures temperatures;
  float* logprob_t = nullptr;
  float* entropy_t = nullptr;
  float* max_logprob_t = nullptr;
};

// Running statistics of one row over the entries v != y folded so far.
struct RowState {
  double m;           // max z_v (-inf before any finite entry)
  double shift;       // the moments are relative to this value (m, or up to 2 nats below; see above)
  double s0, s1, s2;  // shifted moments (see above)
  int64_t argmax;     // first column index of m (-1 before any finite entry)
  int64_t n_greater;  // #{v != y : z_v > z_y}
  int64_t bad;        // 1 once a NaN or +inf entry was seen
  double t0[kMaxInverseTemperatures], t1[kMaxInverseTemperatures];  // tempered moments (same shift)
};

// Computes every statistic for an (n_rows, vocab) matrix whose row r starts at
// logits + r * row_stride elements (columns contiguous). targets: n_rows int64.
// Returns the first scored row that holds NaN/+inf or only -inf (outputs of the other rows are
// still written), or -1. Throws std::out_of_range for a target outside [0, vocab) that is not
// ignore_index, std::invalid_argument for bad sizes or inverse temperatures. num_threads <= 0
// means 1. out.temperatures selects the tempered statistics.
int64_t token_stats(const void* logits, LogitDType dtype, int64_t n_rows, int64_t vocab,
                    int64_t row_stride, const int64_t* targets, int64_t ignore_index,
                    const TokenStatsOutputs& out, int num_threads);

// Streaming form, for logits produced chunk by chunk (the fused lm_head path):
//   init_row_states(states, n_rows);
//   for each chunk of columns [col0, col0 + n_cols):
//     fold_columns(chunk, dtype, n_rows, n_cols, row_stride, col0, targets, target_logits, ...);
//   finalize_rows(states, targets, target_logits, ...);
// target_logits[r] is z_{y_r} (computed beforehand); column y_r of each chunk is skipped. Every
// fold_columns call and finalize_rows (out.temperatures) take the same inverse temperatures.
void init_row_states(RowState* states, int64_t n_rows);
void fold_columns(const void* chunk, LogitDType dtype, int64_t n_rows, int64_t n_cols,
                  int64_t row_stride, int64_t col0, const int64_t* targets,
                  const float* target_logits, int64_t ignore_index, RowState* states,
                  int num_threads, InverseTemperatures temperatures = {});
int64_t finalize_rows(const RowState* states, const int64_t* targets, const float* target_logits,
                      int64_t ignore_index, int64_t n_rows, int64_t vocab,
                      const TokenStatsOutputs& out, int num_threads);

// The SIMD level chosen at run time: "avx512", "avx2" or "scalar". MIA_FAST_SIMD (same names)
// may lower it; a level the CPU lacks is never chosen.
const char* simd_level();
// Levels this build and CPU can run, best first, comma-separated.
const char* simd_levels_available();
// "openmp" when the kernel runs on the OpenMP team already in the process (torch's), else "own".
const char* thread_pool();

// Runs fn(ctx, begin, end) over contiguous ranges of [0, n_items) on up to num_threads threads of
// the kernels' pool (the one thread_pool() names); work_per_item (in rough element operations)
// decides how many threads a small job is worth. fn must not throw.
void parallel_for(int64_t n_items, int64_t work_per_item, int num_threads, void (*fn)(void*, int64_t, int64_t),
                  void* ctx);

}  // namespace mia_fast
