// bf16 x bf16 -> fp32 matrix product on AMX tiles (see amx_matmul.h).
//
// The tiles: TDPBF16PS C, A, B adds to each fp32 element C[m][n] (16 x 16) the 32 products
// A[m][k] * B'[k][n] of one 32-deep slice of K, where A holds 16 rows x 32 bf16 (64 bytes a row:
// read straight from the hidden states) and B holds the 32 x 16 slice of W^T with the pairs of K
// interleaved: B row p = (W[n][2p], W[n][2p + 1]) for n = 0..15, i.e. a 32-bit transpose of W.
// Each product of two bf16 values (8-bit significands) is exact in fp32; the sums are fp32.
//
// Blocking: 2 A tiles x 2 B tiles -> 4 C tiles (32 rows x 32 columns) per slice of K
// (block_product). The columns of W are packed a block at a time (a 32-bit transpose, about
// 512 KiB, which stays in L2) and every row block of A streams past them.
#include "amx_matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "token_stats.h"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define MIA_FAST_HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace mia_fast {
namespace {

constexpr int64_t kTileRows = 16;   // rows of an A or C tile
constexpr int64_t kTileCols = 16;   // fp32 columns of a B or C tile
constexpr int64_t kTileK = 32;      // bf16 elements of K in one A tile row (64 bytes)
constexpr int64_t kBlockRows = 2 * kTileRows;
constexpr int64_t kBlockCols = 2 * kTileCols;

#ifdef MIA_FAST_HAVE_AMX

bool detect_amx() {
  const char* env = std::getenv("MIA_FAST_AMX");
  if (env && std::strcmp(env, "0") == 0) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return false;  // OSXSAVE: XGETBV allowed
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d >> 24) & 1) || !((d >> 22) & 1)) return false;  // AMX-TILE, AMX-BF16
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3) != 3) return false;  // the OS saves XTILECFG and XTILEDATA
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// The tile palette: eight tiles of 16 rows x 64 bytes (C: 16 x 16 fp32, A: 16 x 32 bf16, B: 16 x 16
// bf16 pairs); block_product assigns them.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("amx-tile,amx-bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16")
#endif

void load_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTileRows;
    cfg.colsb[t] = 64;
  }
  // GCC's _tile_loadconfig tells the compiler that it reads 8 bytes of cfg only: without this
  // barrier the stores of rows and colsb are dropped and the tiles are configured empty.
  __asm__ volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

void release_tiles() { _tile_release(); }

// C block (32 x 32 fp32, row stride c_stride elements) = A block (32 x K, row stride a_stride)
// times the packed columns b0 (16 of them) and b1 (the next 16), over kblocks slices of 32.
// Tiles: C in 0-3, A in 4-5, B in 6-7: every load feeds two products. Each load is issued right
// before the first product that needs it, so that it overlaps the products of the tiles already
// loaded. (In one-off microbenchmarks, not kept: issuing all four loads first was slower; a 1 x 2
// block double-buffered over K was faster with every operand in L1 but slower here, where B comes
// from L2, since it loads 1.5 tiles per product instead of 1.)
void block_product(const uint16_t* a, int64_t a_stride, const uint32_t* b0, const uint32_t* b1, int64_t kblocks,
                   float* c, int64_t c_stride) {
  constexpr int64_t kB = kTileRows * kTileCols;  // values of one packed B tile
  const uint16_t* a1 = a + kTileRows * a_stride;
  const long a_bytes = static_cast<long>(a_stride * 2);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    _tile_loadd(4, a + kb * kTileK, a_bytes);
    _tile_loadd(6, b0 + kb * kB, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + kb * kB, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + kb * kTileK, a_bytes);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  const long c_bytes = static_cast<long>(c_stride * 4);
  _tile_stored(0, c, c_bytes);
  _tile_stored(1, c + kTileCols, c_bytes);
  _tile_stored(2, c + kTileRows * c_stride, c_bytes);
  _tile_stored(3, c + kTileRows * c_stride + kTileCols, c_bytes);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// One B group: out[q * 16 + n] = the bf16 pair (W[c][2q], W[c][2q + 1]) of column c = first + n,
// for q < pairs (= K / 2), zero for n >= n_valid. 16 read streams, one sequential write stream.
// Packed column blocks are consecutive groups: group g holds pairs * 16 values.
void pack_group(const uint16_t* W, int64_t ldw, int64_t first, int64_t n_valid, int64_t pairs, uint32_t* out) {
  if (n_valid >= kTileCols) {
    const uint16_t* rows[kTileCols];
    for (int64_t n = 0; n < kTileCols; ++n) rows[n] = W + (first + n) * ldw;
    for (int64_t q = 0; q < pairs; ++q, out += kTileCols)
      for (int64_t n = 0; n < kTileCols; ++n) std::memcpy(out + n, rows[n] + 2 * q, sizeof(uint32_t));
    return;
  }
  std::memset(out, 0, static_cast<size_t>(pairs * kTileCols) * sizeof(uint32_t));
  for (int64_t n = 0; n < std::max<int64_t>(0, n_valid); ++n)
    for (int64_t q = 0; q < pairs; ++q)
      std::memcpy(out + q * kTileCols + n, W + (first + n) * ldw + 2 * q, sizeof(uint32_t));
}

// Columns [c0, c0 + n_cols) packed as whole pairs of groups (zeros past n_cols).
int64_t packed_groups(int64_t n_cols) { return (n_cols + kBlockCols - 1) / kBlockCols * 2; }

// The product of a row block (rows [r0, r0 + n_rows), at most 32) with the packed columns
// [0, n_cols) of a column block, into c (row stride ldc; n_rows x n_cols are written). a_pad is a
// 32 x K scratch for a partial row block, c_pad a 32 x 32 one for a partial C block.
void row_block_product(const uint16_t* A, int64_t lda, int64_t r0, int64_t n_rows, int64_t K, const uint32_t* packed,
                       int64_t n_cols, float* c, int64_t ldc, uint16_t* a_pad, float* c_pad) {
  const int64_t kblocks = K / kTileK;
  const uint16_t* a = A + r0 * lda;
  int64_t a_stride = lda;
  if (n_rows < kBlockRows) {  // the last rows, zero-padded to a whole block
    std::memset(a_pad, 0, static_cast<size_t>(kBlockRows * K) * sizeof(uint16_t));
    for (int64_t r = 0; r < n_rows; ++r)
      std::memcpy(a_pad + r * K, a + r * lda, static_cast<size_t>(K) * sizeof(uint16_t));
    a = a_pad;
    a_stride = K;
  }
  for (int64_t j = 0; j < n_cols; j += kBlockCols) {
    const uint32_t* b0 = packed + (j / kTileCols) * (K / 2) * kTileCols;
    const uint32_t* b1 = b0 + (K / 2) * kTileCols;
    const int64_t w = std::min(kBlockCols, n_cols - j);
    if (n_rows == kBlockRows && w == kBlockCols) {
      block_product(a, a_stride, b0, b1, kblocks, c + j, ldc);
      continue;
    }
    block_product(a, a_stride, b0, b1, kblocks, c_pad, kBlockCols);
    for (int64_t r = 0; r < n_rows; ++r)
      std::memcpy(c + r * ldc + j, c_pad + r * kBlockCols, static_cast<size_t>(w) * sizeof(float));
  }
}

// One call of either entry point. The columns of W are taken a block at a time: the threads pack
// it (pack_block), then split its row blocks (product_rows), which either store their logits in
// C (amx_bf16_matmul_nt) or fold them into the row states (amx_bf16_fold_columns): both entry
// points share the blocking, the packing and the padding that the tests check.
struct Job {
  const uint16_t* A;
  int64_t lda;
  const uint16_t* W;
  int64_t ldw, rows, cols, K;
  float* C;  // the product's output (row stride ldc), or null when the logits are folded
  int64_t ldc;
  const float* bias;  // the folded path's: null, or cols values
  int64_t col0;
  const int64_t* targets;
  const float* target_logits;
  int64_t ignore_index;
  RowState* states;
  InverseTemperatures temperatures;
  int64_t block_cols = 0;        // columns of W packed at a time
  std::vector<uint32_t> packed;  // the current column block
  int64_t c0 = 0, n_cols = 0;    // which columns it holds
};

// Packs groups [begin, end) of 16 columns of the current block.
void pack_block(void* p, int64_t begin, int64_t end) {
  Job& j = *static_cast<Job*>(p);
  const int64_t pairs = j.K / 2;
  for (int64_t g = begin; g < end; ++g)
    pack_group(j.W, j.ldw, j.c0 + g * kTileCols, j.n_cols - g * kTileCols, pairs,
               j.packed.data() + g * pairs * kTileCols);
}

// Row blocks [begin, end) of 32 rows: their logits over the current column block, stored or folded.
void product_rows(void* p, int64_t begin, int64_t end) {
  Job& j = *static_cast<Job*>(p);
  // Scratch of this thread, kept between calls (the threads of the pool live on).
  thread_local std::vector<uint16_t> a_pad;
  thread_local std::vector<float> c_pad, c_rows;
  a_pad.resize(static_cast<size_t>(kBlockRows * j.K));
  c_pad.resize(static_cast<size_t>(kBlockRows * kBlockCols));
  if (j.C == nullptr) c_rows.resize(static_cast<size_t>(kBlockRows * j.block_cols));
  load_config();
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t r0 = blk * kBlockRows;
    const int64_t n_rows = std::min(kBlockRows, j.rows - r0);
    if (j.C != nullptr) {
      row_block_product(j.A, j.lda, r0, n_rows, j.K, j.packed.data(), j.n_cols, j.C + r0 * j.ldc + j.c0, j.ldc,
                        a_pad.data(), c_pad.data());
      continue;
    }
    float* c = c_rows.data();
    const int64_t ldc = j.block_cols;
    row_block_product(j.A, j.lda, r0, n_rows, j.K, j.packed.data(), j.n_cols, c, ldc, a_pad.data(), c_pad.data());
    if (j.bias != nullptr)
      for (int64_t r = 0; r < n_rows; ++r)
        for (int64_t k = 0; k < j.n_cols; ++k) c[r * ldc + k] += j.bias[j.c0 + k];
    fold_columns(c, LogitDType::kFloat32, n_rows, j.n_cols, ldc, j.col0 + j.c0, j.targets + r0,
                 j.target_logits + r0, j.ignore_index, j.states + r0, 1, j.temperatures);
  }
  release_tiles();
}

// Runs the job over every column block. Columns per block: about 512 KiB of packed bf16 (it stays
// in L2 while the row blocks stream past it), a whole number of 32-column blocks.
void run(Job& job, int num_threads) {
  job.block_cols = std::max<int64_t>(kBlockCols, (512 * 1024 / (2 * job.K)) / kBlockCols * kBlockCols);
  job.packed.resize(static_cast<size_t>(job.block_cols * job.K / 2));
  const int64_t row_blocks = (job.rows + kBlockRows - 1) / kBlockRows;
  for (job.c0 = 0; job.c0 < job.cols; job.c0 += job.block_cols) {
    job.n_cols = std::min(job.block_cols, job.cols - job.c0);
    parallel_for(packed_groups(job.n_cols), kTileCols * job.K, num_threads, &pack_block, &job);
    parallel_for(row_blocks, kBlockRows * job.n_cols * job.K / 64, num_threads, &product_rows, &job);
  }
}

#endif  // MIA_FAST_HAVE_AMX

}  // namespace

bool amx_bf16_available() {
#ifdef MIA_FAST_HAVE_AMX
  static const bool available = detect_amx();
  return available;
#else
  return false;
#endif
}

namespace {

void check_shapes(int64_t lda, int64_t ldw, int64_t rows, int64_t cols, int64_t K) {
  if (K <= 0 || K % kTileK != 0)
    throw std::invalid_argument("K: expected a positive multiple of 32, got " + std::to_string(K));
  if (rows < 0 || cols < 0) throw std::invalid_argument("rows and cols must be >= 0");
  if ((rows > 1 && lda < K) || (cols > 1 && ldw < K))
    throw std::invalid_argument("a row stride is smaller than its row");
  if (!amx_bf16_available()) throw std::runtime_error("AMX-BF16 is not available on this CPU or OS");
}

}  // namespace

void amx_bf16_matmul_nt(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t rows, int64_t cols,
                        int64_t K, float* C, int64_t ldc, int num_threads) {
  check_shapes(lda, ldw, rows, cols, K);
  if (rows > 1 && ldc < cols) throw std::invalid_argument("ldc: smaller than cols");
#ifdef MIA_FAST_HAVE_AMX
  if (rows == 0 || cols == 0) return;
  Job job{A, lda, W, ldw, rows, cols, K, C, ldc, nullptr, 0, nullptr, nullptr, 0, nullptr, {}};
  run(job, num_threads);
#else
  (void)C, (void)num_threads;
#endif
}

void amx_bf16_fold_columns(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, const float* bias,
                           int64_t rows, int64_t cols, int64_t K, int64_t col0, const int64_t* targets,
                           const float* target_logits, int64_t ignore_index, RowState* states, int num_threads,
                           InverseTemperatures temperatures) {
  check_shapes(lda, ldw, rows, cols, K);
#ifdef MIA_FAST_HAVE_AMX
  if (rows == 0 || cols == 0) return;
  Job job{A, lda, W, ldw, rows, cols, K, nullptr, 0, bias, col0, targets, target_logits, ignore_index, states,
          temperatures};
  run(job, num_threads);
#else
  (void)bias, (void)col0, (void)targets, (void)target_logits, (void)ignore_index, (void)states, (void)num_threads,
      (void)temperatures;
#endif
}

}  // namespace mia_fast
