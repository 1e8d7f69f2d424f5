// moe-kernels CUDA: launchers of the quantised-weight kernels (quant_gemm.cu) and the device layout of
// their rows. Block formats of moe/quant.h; activations and outputs f32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "moe/dtype.h"

#include <cuda_runtime_api.h>  // the types only (include cuda_compat.cuh first in a .cu file)

namespace moe {

// Bytes of one row of n values of format t in the device layout (16-byte aligned rows; 0: invalid).
size_t quant_device_row_bytes(DType t, int64_t n);
// A row of n values, ggml's blocks (src) -> the device layout (dst, quant_device_row_bytes bytes). Host code.
void quant_repack_row(DType t, const void* src, int64_t n, void* dst);

// GEMM1 of the experts with fused SwiGLU: for each group e < num_groups and row r in
// [offsets[e], offsets[e+1]), token src = sorted_rows[r] (or r):
//   h[r, j] = silu(W1_e[j] . x[src]) * (W3_e[j] . x[src]),  j < f
// packed: group e at e * group_bytes; its rows W1_0, W3_0, W1_1, W3_1, ... each row_stride bytes (d values).
// x [T, d] f32 (16-byte aligned rows: d % 32 == 0); h [R, f] f32.
cudaError_t launch_quant_gemm1(const float* x, const int32_t* sorted_rows, const int32_t* offsets, int num_groups,
                               const void* packed, size_t group_bytes, size_t row_stride, DType t, int64_t d, int64_t f,
                               float* h, cudaStream_t stream);

// y[r, i] = W_e[i] . a[r] (+ bias[i]) for the rows r of group e (offsets, or rows [0, rows) of the one
// group when offsets is null), W_e: n rows of k values at e * group_bytes, row_stride apart.
// a [R, k] f32, y [R, n] f32, bias [n] f32 or null.
cudaError_t launch_quant_gemv(const float* a, const int32_t* offsets, int num_groups, int64_t rows, const void* packed,
                              size_t group_bytes, size_t row_stride, DType t, int64_t k, int64_t n, const float* bias,
                              float* y, cudaStream_t stream);

}  // namespace moe
