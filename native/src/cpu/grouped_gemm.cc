// CPU grouped GEMM over experts with fused SwiGLU (portable version).
// GEMM1 gathers the token rows of each expert: h = silu(x W1^T) * (x W3^T); GEMM2: y = h W2^T.
// f32 accumulation; 16-bit weights are widened on the fly.
#include <cmath>
#include <cstring>
#include <vector>

#include "moe/ops.h"
#include "moe/threadpool.h"

namespace moe {

namespace {
struct PortablePacked final : PackedExperts {
  std::vector<uint8_t> w1, w3, w2;  // per expert, HF layout, original dtype
  size_t bytes() const override { return w1.size() + w3.size() + w2.size(); }
};

float dot_row(const void* w, DType t, int64_t off, const float* x, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += load_as_f32(w, t, size_t(off + i)) * x[i];
  return s;
}
}  // namespace

Status pack_experts(const ExpertWeightSource& src, std::unique_ptr<PackedExperts>* out) {
  if (src.num_experts < 1 || src.d < 1 || src.f < 1) return Status::invalid("pack_experts: empty shape");
  auto p = std::make_unique<PortablePacked>();
  p->num_experts = src.num_experts;
  p->d = src.d;
  p->f = src.f;
  p->dtype = src.dtype;
  const size_t mat = size_t(src.d * src.f) * dtype_size(src.dtype);
  try {
    p->w1.resize(mat * src.num_experts);
    p->w3.resize(mat * src.num_experts);
    p->w2.resize(mat * src.num_experts);
  } catch (const std::bad_alloc&) {
    return Status::oom("pack_experts: cannot allocate the packed weights");
  }
  for (int e = 0; e < src.num_experts; ++e) {
    std::memcpy(p->w1.data() + e * mat, src.w1[size_t(e)], mat);
    std::memcpy(p->w3.data() + e * mat, src.w3[size_t(e)], mat);
    std::memcpy(p->w2.data() + e * mat, src.w2[size_t(e)], mat);
  }
  *out = std::move(p);
  return Status::ok();
}

Status grouped_gemm(const float* x, int64_t T, const int32_t* sorted_rows,
                    const int32_t* expert_offsets, const PackedExperts& pw, float* y) {
  const auto& w = static_cast<const PortablePacked&>(pw);
  const int E = w.num_experts;
  const int64_t d = w.d, f = w.f, R = expert_offsets[E];
  parallel_for(R, [&](int64_t r, int) {
    int e = 0;
    while (expert_offsets[e + 1] <= r) ++e;
    const int64_t src = sorted_rows ? sorted_rows[r] : r;
    const float* xr = x + src * d;
    std::vector<float> h(static_cast<size_t>(f));
    const int64_t base = int64_t(e) * d * f;
    for (int64_t j = 0; j < f; ++j) {
      const float a = dot_row(w.w1.data(), w.dtype, base + j * d, xr, d);
      const float b = dot_row(w.w3.data(), w.dtype, base + j * d, xr, d);
      h[size_t(j)] = a / (1.f + std::exp(-a)) * b;
    }
    for (int64_t i = 0; i < d; ++i) y[r * d + i] = dot_row(w.w2.data(), w.dtype, base + i * f, h.data(), f);
  });
  (void)T;
  return Status::ok();
}

}  // namespace moe
