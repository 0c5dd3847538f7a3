// bf16 x bf16 -> fp32 matrix product on Intel AMX tiles, for the fused lm_head path: the logits
// tile C = A W^T of bf16 hidden states A and a bf16 unembedding slice W, accumulated and returned
// in fp32, without converting either operand to fp32 first.
//
// Why: torch has no CPU GEMM from bf16 operands to an fp32 output, so the fused head either
// widened every unembedding slice to fp32 (and oneDNN rounded it back to bf16 inside the GEMM) or
// took a bf16 output, which rounds each logit to 8 significant bits (up to 0.04 in log p in
// benchmarks/results/cpu_bench_fused_linear_bf16_amx.md). Here each product a_k w_k of two bf16 values is exact in fp32 and the
// tiles sum them in fp32 (TDPBF16PS), as the fp32 GEMM does on the same operands, up to the
// order of the additions.
#pragma once

#include <cstdint>

#include "token_stats.h"

namespace mia_fast {

// True when the CPU has AMX-TILE and AMX-BF16, the OS saves the tile state (XCR0 bits 17-18) and
// granted this process the tile data (Linux arch_prctl ARCH_REQ_XCOMP_PERM; asked once).
// MIA_FAST_AMX=0 turns the kernel off.
bool amx_bf16_available();

// C[r * ldc + c] = sum_k A[r * lda + k] * W[c * ldw + k] for r < rows, c < cols, in fp32.
// A and W hold bf16 bit patterns; K must be a positive multiple of 32 (throws
// std::invalid_argument otherwise, and std::runtime_error when amx_bf16_available() is false).
// W is packed into the tiles' pair-interleaved layout on the fly, in blocks of columns (about
// 512 KiB packed) that stay in L2 while the rows stream past them; the threads split the rows of
// each block. num_threads <= 0 means 1. The fused step below runs the same blocks.
void amx_bf16_matmul_nt(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t rows, int64_t cols,
                        int64_t K, float* C, int64_t ldc, int num_threads);

// The fused lm_head step: for every column c of W (cols x K, the whole unembedding or a slice of
// it starting at vocabulary index col0), the logit z[r][c] = A[r] . W[c] (+ bias[c]) of every
// row r is computed on the tiles in fp32 and folded into states[r] (fold_columns) while still in
// cache: the (rows x cols) logits never reach memory. W is taken in blocks of columns that fit
// in L2 (about 512 KiB packed); the threads split the rows of each block. Same requirements as
// amx_bf16_matmul_nt; bias is null or cols fp32 values; targets, target_logits and states are
// those of fold_columns (rows of them).
void amx_bf16_fold_columns(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, const float* bias,
                           int64_t rows, int64_t cols, int64_t K, int64_t col0, const int64_t* targets,
                           const float* target_logits, int64_t ignore_index, RowState* states, int num_threads,
                           InverseTemperatures temperatures = {});

}  // namespace mia_fast
