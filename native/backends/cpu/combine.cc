// CPU combine: out[t] = sum_j w[t,j] * y[row_of[t,j]], accumulated in f32 in fixed j order so the
// result is the same bits on every run. Twin of native/backends/cuda/combine.cu.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

Status combine(const float* y, int64_t R, const int32_t* row_of, const float* topk_weights,
               int64_t T, int k, const TensorView& out, const float* shared, const float* shared_logit) {
  if (out.ndim != 2 || out.dims[0] != T) return Status::invalid("combine: out must be [T,d]");
  const int64_t d = out.dims[1];
  for (int64_t s = 0; s < T * k; ++s)
    if (row_of[s] >= R)
      return Status::invalid("combine: row_of[" + std::to_string(s) + "] = " +
                             std::to_string(row_of[s]) + " is past the " + std::to_string(R) +
                             " rows of y");
  constexpr int64_t kTokensPerTask = 8;
  parallel_for((T + kTokensPerTask - 1) / kTokensPerTask, [&](int64_t task, int) {
    std::vector<float> acc(static_cast<size_t>(d));
    const int64_t t1 = std::min(T, (task + 1) * kTokensPerTask);
    for (int64_t t = task * kTokensPerTask; t < t1; ++t) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int j = 0; j < k; ++j) {
        const int32_t r = row_of[t * k + j];
        if (r < 0) continue;  // dropped by capacity: contributes nothing
        const float w = topk_weights[t * k + j];
        const float* yr = y + int64_t(r) * d;
        for (int64_t i = 0; i < d; ++i) acc[size_t(i)] += w * yr[i];
      }
      if (shared) {  // shared experts: + shared[t], gated by sigmoid(shared_logit[t]) when given
        const float g = shared_logit ? 1.f / (1.f + std::exp(-shared_logit[t])) : 1.f;
        const float* sr = shared + t * d;
        for (int64_t i = 0; i < d; ++i) acc[size_t(i)] += g * sr[i];
      }
      if (out.dtype == DType::kF32) {
        std::copy(acc.begin(), acc.end(), out.as<float>() + t * d);
      } else {
        for (int64_t i = 0; i < d; ++i) store_from_f32(out.data, out.dtype, size_t(t * d + i), acc[size_t(i)]);
      }
    }
  });
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
