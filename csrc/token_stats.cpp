// Row driver of the token-statistics kernel: SIMD selection, the block/row merges, the final
// statistics and the thread pool. The arithmetic is derived in token_stats.h.
#include "token_stats.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "block_kernel.h"

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

namespace mia_fast {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool cpu_has_avx2() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the AVX-512 state (XCR0).
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

std::vector<const BlockKernels*> available_kernels() {
  std::vector<const BlockKernels*> levels;
  if (cpu_has_avx512() && block_kernels_avx512()) levels.push_back(block_kernels_avx512());
  if (cpu_has_avx2() && block_kernels_avx2()) levels.push_back(block_kernels_avx2());
  levels.push_back(block_kernels_scalar());
  return levels;
}

const BlockKernels* choose_kernels() {
  std::vector<const BlockKernels*> levels = available_kernels();
  const char* forced = std::getenv("MIA_FAST_SIMD");
  if (forced && *forced) {
    for (const BlockKernels* k : levels)
      if (std::strcmp(k->name, forced) == 0) return k;
    // A requested level this CPU cannot run: fall to the best available below it.
    static const char* order[] = {"avx512", "avx2", "scalar"};
    int want = 0;
    while (want < 3 && std::strcmp(order[want], forced) != 0) ++want;
    for (const BlockKernels* k : levels) {
      int have = 0;
      while (have < 3 && std::strcmp(order[have], k->name) != 0) ++have;
      if (have >= want) return k;
    }
  }
  return levels.front();
}

const BlockKernels* kernels() {
  static const BlockKernels* chosen = choose_kernels();
  return chosen;
}

size_t element_size(LogitDType dtype) { return dtype == LogitDType::kFloat32 ? 4 : 2; }

float load_one(const void* row, LogitDType dtype, int64_t col) {
  const uint16_t* half = static_cast<const uint16_t*>(row);
  switch (dtype) {
    case LogitDType::kFloat16:
      return f16_bits_to_float(half[col]);
    case LogitDType::kBFloat16:
      return bf16_bits_to_float(half[col]);
    case LogitDType::kFloat32:
      break;
  }
  return static_cast<const float*>(row)[col];
}

// x rounded to float, IEEE style: beyond the float range (logprob = -6e38 for logits of +-3e38)
// the result is +-inf, the float rounding of the exact value (a plain conversion of an
// out-of-range double is undefined behaviour in C++). 0x1.ffffffp127 is half way between
// FLT_MAX and 2^128, which rounds to even: infinity.
float round_to_float(double x) {
  constexpr double kHalfWay = 0x1.ffffffp127;
  if (x >= kHalfWay) return std::numeric_limits<float>::infinity();
  if (x <= -kHalfWay) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(x);
}

// Rescales moments relative to `from` so that they are relative to `to` >= from (token_stats.h).
void shift_moments(double& s0, double& s1, double& s2, double from, double to) {
  const double d = from - to, a = std::exp(d);
  s2 = a * (s2 + 2.0 * d * s1 + d * d * s0);
  s1 = a * (s1 + d * s0);
  s0 = a * s0;
}

// The same for the tempered moments: factor e^{beta d} in place of e^d.
void shift_tempered(double* t0, double* t1, double from, double to, const TemperaturePlan& plan) {
  const double d = from - to;
  for (int j = 0; j < plan.n; ++j) {
    const double a = std::exp(plan.beta[j] * d);
    t1[j] = a * (t1[j] + d * t0[j]);
    t0[j] = a * t0[j];
  }
}

// Validates the inverse temperatures and sorts them onto the ladder (block_kernel.h).
TemperaturePlan make_plan(const InverseTemperatures& temps) {
  static_assert(kMaxInverseTemperatures == kMaxTemperatures, "one limit");
  if (temps.n < 0 || temps.n > kMaxTemperatures)
    throw std::invalid_argument("temperatures: expected at most " + std::to_string(kMaxTemperatures) +
                                " inverse temperatures, got " + std::to_string(temps.n));
  if (temps.n > 0 && temps.beta == nullptr) throw std::invalid_argument("temperatures: null array");
  TemperaturePlan plan;
  plan.n = temps.n;
  for (int j = 0; j < temps.n; ++j) {
    const double beta = temps.beta[j];
    if (!(beta > 0.0) || !std::isfinite(beta) || !std::isnormal(static_cast<float>(beta)))
      throw std::invalid_argument("temperatures: expected finite inverse temperatures > 0, got " +
                                  std::to_string(beta));
    plan.beta[j] = beta;
    plan.beta_max = std::max(plan.beta_max, static_cast<float>(beta));
    int e = 0;
    const double mantissa = std::frexp(beta, &e);  // beta = mantissa 2^e, mantissa in [1/2, 1)
    const int level = e - 1;
    if (mantissa == 0.5 && level >= -kMaxLevel && level <= kMaxLevel) {
      plan.level[j] = level;
      plan.lo = std::max(plan.lo, -level);
      plan.hi = std::max(plan.hi, level);
    } else {
      plan.level[j] = kOffLadder;
    }
  }
  return plan;
}

// Merges a block state into a row state.
void merge_block(RowState& st, const BlockStats& b, int64_t col_of_block, const TemperaturePlan& plan) {
  st.n_greater += b.n_greater;
  if (b.bad) st.bad = 1;
  if (b.bad || b.s0 == 0.0) return;
  if (b.max > st.m) {
    st.m = b.max;
    st.argmax = col_of_block + b.argmax;
  }
  double s0 = b.s0, s1 = b.s1, s2 = b.s2, t0[kMaxTemperatures], t1[kMaxTemperatures];
  for (int j = 0; j < plan.n; ++j) {
    t0[j] = b.t0[j];
    t1[j] = b.t1[j];
  }
  if (st.s0 == 0.0) {
    st.shift = b.shift;
  } else if (b.shift > st.shift) {
    shift_moments(st.s0, st.s1, st.s2, st.shift, b.shift);
    shift_tempered(st.t0, st.t1, st.shift, b.shift, plan);
    st.shift = b.shift;
  } else if (b.shift < st.shift) {
    shift_moments(s0, s1, s2, b.shift, st.shift);
    shift_tempered(t0, t1, b.shift, st.shift, plan);
  }  // equal shifts (every one-pass block after the row's max settles): no exp, the same sums
  st.s0 += s0;
  st.s1 += s1;
  st.s2 += s2;
  for (int j = 0; j < plan.n; ++j) {
    st.t0[j] += t0[j];
    st.t1[j] += t1[j];
  }
}

// Folds columns [begin, end) of one row (none of them the target) into the row state.
void fold_range(const char* row, LogitDType dtype, int64_t begin, int64_t end, int64_t col0,
                float zy, RowState& st, BlockFn fn, const TemperaturePlan& plan) {
  const size_t es = element_size(dtype);
  for (int64_t c = begin; c < end; c += kBlockSize) {
    const int64_t n = std::min(kBlockSize, end - c);
    BlockStats b;
    fn(row + c * es, n, zy, static_cast<float>(st.m), plan.n ? &plan : nullptr, &b);
    merge_block(st, b, col0 + c, plan);
  }
}

// The tempered statistics of one row (see token_stats.h): M is finalize_row's final shift, zmax
// the row's maximum, `others` whether some v != y is finite. Row r's outputs are o.*_t[r T + j].
void finalize_tempered(const RowState& st, double zy, double M, double zmax, bool others, int64_t r,
                       const TemperaturePlan& plan, const TokenStatsOutputs& o) {
  constexpr double kInfD = std::numeric_limits<double>::infinity();
  for (int j = 0; j < plan.n; ++j) {
    const double beta = plan.beta[j];
    double T0 = 0.0, T1 = 0.0, log_t0 = 0.0;
    if (others) {
      const double d = st.shift - M, a = std::exp(beta * d);
      T0 = a * st.t0[j];
      T1 = a * (st.t1[j] + d * st.t0[j]);
    }
    if (zy == -kInfD) {  // the target's term is 0
      log_t0 = std::log(T0);
    } else if (!others) {
      T0 = 1.0;
      T1 = 0.0;
    } else {
      const double t = zy - M, b = std::exp(beta * t), rest = T0;
      T0 += b;
      T1 += b * t;
      log_t0 = (t == 0.0) ? std::log1p(rest) : std::log(T0);
    }
    log_t0 = std::max(log_t0, beta * (zmax - M));  // lse_j >= beta max z
    const size_t k = static_cast<size_t>(r) * plan.n + j;
    if (o.logprob_t) o.logprob_t[k] = round_to_float(std::min(0.0, beta * (zy - M) - log_t0));
    if (o.entropy_t) o.entropy_t[k] = static_cast<float>(std::max(0.0, log_t0 - beta * T1 / T0));
    if (o.max_logprob_t) o.max_logprob_t[k] = static_cast<float>(std::min(0.0, beta * (zmax - M) - log_t0));
  }
}

// Final statistics of one row from the state over v != y and the target logit.
// Returns false for a row that is not a distribution (NaN/+inf, or every logit -inf).
bool finalize_row(const RowState& st, float zy_f, int64_t y, int64_t r, const TokenStatsOutputs& o,
                  const TemperaturePlan& plan) {
  const double zy = zy_f;
  if (st.bad || std::isnan(zy) || zy == kInf || (st.s0 == 0.0 && zy == -kInf)) return false;
  const bool others = st.s0 > 0.0;  // some v != y has a finite logit
  // Final shift: the larger of the others' shift and z_y (the former at most 2 nats below their max).
  const double M = others ? std::max(st.shift, zy) : zy;
  double S0, S1, S2, log_s0;
  if (zy == -kInf) {  // the target is impossible: its term is 0
    S0 = st.s0; S1 = st.s1; S2 = st.s2;
    log_s0 = std::log(S0);
  } else if (!others) {  // only the target is finite (or V == 1)
    S0 = 1.0; S1 = 0.0; S2 = 0.0;
    log_s0 = 0.0;
  } else {
    S0 = st.s0; S1 = st.s1; S2 = st.s2;
    shift_moments(S0, S1, S2, st.shift, M);
    const double as0 = S0, t = zy - M, b = std::exp(t);
    S0 += b;
    S1 += b * t;
    S2 += b * t * t;
    log_s0 = (t == 0.0) ? std::log1p(as0) : std::log(S0);  // z_y is the shift: S0 = 1 + a s0
  }
  // Each moment is exact to rounding, but the shift may sit off the max: keep the results
  // inside their mathematical ranges (lse >= max, entropy >= 0, log p <= 0).
  const double top = (others ? std::max(st.m, zy) : zy) - M;  // max z - M
  log_s0 = std::max(log_s0, top);
  const double lse = M + log_s0;
  const double mean = S1 / S0;  // E_p[z] - M
  // log p_v = (z_v - M) - log S0, never (z_v - lse): with |M| above ~2^53 log S0 (logits of
  // 1e17 and more) M + log S0 rounds to M in double and would lose log S0 entirely (a row of k
  // equal maxima would get log p = 0 instead of -log k). Differences of logits that overflow
  // fp32 (z_y - M = -6e38) round to -inf on output: the float32 rounding of the exact value.
  if (o.logprob) o.logprob[r] = round_to_float((zy - M) - log_s0);
  if (o.lse) o.lse[r] = round_to_float(lse);
  if (o.entropy) o.entropy[r] = static_cast<float>(std::max(0.0, log_s0 - mean));
  if (o.var_logp) o.var_logp[r] = static_cast<float>(std::max(0.0, S2 / S0 - mean * mean));
  if (o.max_logprob) o.max_logprob[r] = static_cast<float>(top - log_s0);
  if (o.argmax) {
    int64_t am = y;
    if (others && (st.m > zy || (st.m == zy && st.argmax < y))) am = st.argmax;
    o.argmax[r] = am;
  }
  if (o.log1m_p)
    o.log1m_p[r] = others ? round_to_float(std::min(0.0, ((st.shift - M) + std::log(st.s0)) - log_s0)) : -INFINITY;
  if (o.margin) o.margin[r] = others ? round_to_float(zy - st.m) : INFINITY;
  if (o.rank) o.rank[r] = st.n_greater;
  finalize_tempered(st, zy, M, others ? std::max(st.m, zy) : zy, others, r, plan, o);
  return true;
}

void write_masked(int64_t r, const TokenStatsOutputs& o) {
  for (float* f : {o.logprob, o.lse, o.entropy, o.var_logp, o.max_logprob, o.log1m_p, o.margin})
    if (f) f[r] = kNaN;
  if (o.argmax) o.argmax[r] = -1;
  if (o.rank) o.rank[r] = -1;
  const int n = o.temperatures.n;
  for (float* f : {o.logprob_t, o.entropy_t, o.max_logprob_t})
    if (f) std::fill(f + static_cast<size_t>(r) * n, f + static_cast<size_t>(r + 1) * n, kNaN);
}

void init_state(RowState& st) {
  st.m = -kInf;
  st.shift = -kInf;
  st.s0 = st.s1 = st.s2 = 0.0;
  st.argmax = -1;
  st.n_greater = 0;
  st.bad = 0;
  std::fill(st.t0, st.t0 + kMaxTemperatures, 0.0);
  std::fill(st.t1, st.t1 + kMaxTemperatures, 0.0);
}

// GOMP_parallel of an OpenMP runtime already loaded in the process (torch's, on Linux), looked up
// at run time and never linked: running on the team that torch already holds avoids both
// starting threads and sharing the cores with torch's workers, which spin for milliseconds after
// each of its parallel regions. Null without one (a plain C++ caller), on other systems, or when
// MIA_FAST_THREAD_POOL=own asks for the kernel's own threads.
using GompParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
GompParallelFn openmp_parallel() {
#if defined(__unix__) || defined(__APPLE__)
  const char* pool = std::getenv("MIA_FAST_THREAD_POOL");
  if (pool && std::strcmp(pool, "own") == 0) return nullptr;
  return reinterpret_cast<GompParallelFn>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
#else
  return nullptr;
#endif
}

// Runs body(begin, end) over contiguous row ranges on up to num_threads threads. Small jobs run
// on the calling thread (starting a thread costs tens of microseconds). Ranges are handed out
// from a shared counter, about 16 per thread, so that a thread slowed down by others on its core
// takes fewer of them instead of holding up the call. body must not throw.
template <class Body>
void parallel_rows(int64_t n_rows, int64_t work_per_row, int num_threads, const Body& body) {
  constexpr int64_t kMinWorkPerThread = 1 << 16;
  int64_t threads = std::max(1, num_threads);
  threads = std::min<int64_t>(threads, n_rows);
  threads = std::min<int64_t>(threads, std::max<int64_t>(1, n_rows * work_per_row / kMinWorkPerThread));
  if (threads <= 1) {
    body(0, n_rows);
    return;
  }
  struct Job {
    const Body* body;
    int64_t n_rows, chunk;
    std::atomic<int64_t> next{0};
  } job;
  job.body = &body;
  job.n_rows = n_rows;
  job.chunk = std::max(std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_row)),
                       n_rows / (threads * 16));
  void (*const work)(void*) = [](void* p) {
    Job& j = *static_cast<Job*>(p);
    for (int64_t b = j.next.fetch_add(j.chunk); b < j.n_rows; b = j.next.fetch_add(j.chunk))
      (*j.body)(b, std::min(j.n_rows, b + j.chunk));
  };
  if (const GompParallelFn omp = openmp_parallel()) {
    omp(work, &job, static_cast<unsigned>(threads), 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(work, &job);
  work(&job);
  for (std::thread& th : pool) th.join();
}

void atomic_min(std::atomic<int64_t>& target, int64_t value) {
  int64_t cur = target.load();
  while ((cur < 0 || value < cur) && !target.compare_exchange_weak(cur, value)) {
  }
}

void check_targets(const int64_t* targets, int64_t n_rows, int64_t vocab, int64_t ignore_index) {
  for (int64_t r = 0; r < n_rows; ++r) {  // O(N), before any thread starts
    const int64_t y = targets[r];
    if (y != ignore_index && (y < 0 || y >= vocab))
      throw std::out_of_range("target " + std::to_string(y) + " of row " + std::to_string(r) +
                              " is outside [0, " + std::to_string(vocab) + ")");
  }
}

void check_sizes(int64_t n_rows, int64_t n_cols, int64_t row_stride) {
  if (n_rows < 0) throw std::invalid_argument("n_rows must be >= 0, got " + std::to_string(n_rows));
  if (n_cols <= 0) throw std::invalid_argument("the vocabulary must be non-empty, got " + std::to_string(n_cols));
  if (n_rows > 1 && row_stride < n_cols)
    throw std::invalid_argument("row_stride (" + std::to_string(row_stride) +
                                ") must be >= the number of columns (" + std::to_string(n_cols) + ")");
}

}  // namespace

const char* simd_level() { return kernels()->name; }

const char* simd_levels_available() {
  static const std::string names = [] {
    std::string s;
    for (const BlockKernels* k : available_kernels()) s += (s.empty() ? "" : ",") + std::string(k->name);
    return s;
  }();
  return names.c_str();
}

const char* thread_pool() { return openmp_parallel() ? "openmp" : "own"; }

void parallel_for(int64_t n_items, int64_t work_per_item, int num_threads, void (*fn)(void*, int64_t, int64_t),
                  void* ctx) {
  parallel_rows(n_items, work_per_item, num_threads, [&](int64_t b, int64_t e) { fn(ctx, b, e); });
}

void init_row_states(RowState* states, int64_t n_rows) {
  for (int64_t r = 0; r < n_rows; ++r) init_state(states[r]);
}

void fold_columns(const void* chunk, LogitDType dtype, int64_t n_rows, int64_t n_cols,
                  int64_t row_stride, int64_t col0, const int64_t* targets,
                  const float* target_logits, int64_t ignore_index, RowState* states,
                  int num_threads, InverseTemperatures temperatures) {
  check_sizes(n_rows, n_cols, row_stride);
  const TemperaturePlan plan = make_plan(temperatures);
  const BlockFn fn = kernels()->fn[static_cast<int>(dtype)];
  const size_t es = element_size(dtype);
  parallel_rows(n_rows, n_cols, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = targets[r];
      if (y == ignore_index) continue;
      const char* row = static_cast<const char*>(chunk) + static_cast<size_t>(r) * row_stride * es;
      const int64_t local = y - col0;  // the target column inside this chunk, if any
      if (local >= 0 && local < n_cols) {
        fold_range(row, dtype, 0, local, col0, target_logits[r], states[r], fn, plan);
        fold_range(row, dtype, local + 1, n_cols, col0, target_logits[r], states[r], fn, plan);
      } else {
        fold_range(row, dtype, 0, n_cols, col0, target_logits[r], states[r], fn, plan);
      }
    }
  });
}

int64_t finalize_rows(const RowState* states, const int64_t* targets, const float* target_logits,
                      int64_t ignore_index, int64_t n_rows, int64_t vocab,
                      const TokenStatsOutputs& out, int num_threads) {
  check_targets(targets, n_rows, vocab, ignore_index);
  const TemperaturePlan plan = make_plan(out.temperatures);
  std::atomic<int64_t> first_bad{-1};
  parallel_rows(n_rows, 16, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = targets[r];
      if (y == ignore_index) {
        write_masked(r, out);
        continue;
      }
      if (!finalize_row(states[r], target_logits[r], y, r, out, plan)) {
        write_masked(r, out);
        atomic_min(first_bad, r);
      }
    }
  });
  return first_bad.load();
}

int64_t token_stats(const void* logits, LogitDType dtype, int64_t n_rows, int64_t vocab,
                    int64_t row_stride, const int64_t* targets, int64_t ignore_index,
                    const TokenStatsOutputs& out, int num_threads) {
  check_sizes(n_rows, vocab, row_stride);
  check_targets(targets, n_rows, vocab, ignore_index);
  const TemperaturePlan plan = make_plan(out.temperatures);
  const BlockFn fn = kernels()->fn[static_cast<int>(dtype)];
  const size_t es = element_size(dtype);
  std::atomic<int64_t> first_bad{-1};
  parallel_rows(n_rows, vocab, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = targets[r];
      if (y == ignore_index) {
        write_masked(r, out);
        continue;
      }
      const char* row = static_cast<const char*>(logits) + static_cast<size_t>(r) * row_stride * es;
      const float zy = load_one(row, dtype, y);  // the target logit is read first
      RowState st;
      init_state(st);
      fold_range(row, dtype, 0, y, 0, zy, st, fn, plan);
      fold_range(row, dtype, y + 1, vocab, 0, zy, st, fn, plan);
      if (!finalize_row(st, zy, y, r, out, plan)) {
        write_masked(r, out);
        atomic_min(first_bad, r);
      }
    }
  });
  return first_bad.load();
}

}  // namespace mia_fast
