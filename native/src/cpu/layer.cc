// CPU whole-layer ops: the MoE forward (route -> permute -> grouped GEMM -> combine) with scratch
// that grows with T*k*(d+f) and never with the weights, and the dense SwiGLU FFN baseline.
#include <algorithm>
#include <vector>

#include "moe/ops.h"
#include "moe/threadpool.h"

namespace moe {

void widen_to_f32(const TensorView& x, float* dst) {
  const int64_t n = x.numel();
  if (x.dtype == DType::kF32) {
    std::copy(x.as<const float>(), x.as<const float>() + n, dst);
    return;
  }
  constexpr int64_t kChunk = 1 << 16;
  parallel_for((n + kChunk - 1) / kChunk, [&](int64_t task, int) {
    const int64_t i1 = std::min(n, (task + 1) * kChunk);
    const uint16_t* s = x.as<const uint16_t>();
    if (x.dtype == DType::kBF16)
      for (int64_t i = task * kChunk; i < i1; ++i) dst[i] = bf16_to_f32(s[i]);
    else
      for (int64_t i = task * kChunk; i < i1; ++i) dst[i] = f16_to_f32(s[i]);
  });
}

namespace {
// x as f32: the caller's buffer when it already is, else a widened copy in `scratch`.
const float* as_f32(const TensorView& x, std::vector<float>& scratch) {
  if (x.dtype == DType::kF32) return x.as<const float>();
  scratch.resize(size_t(x.numel()));
  widen_to_f32(x, scratch.data());
  return scratch.data();
}
}  // namespace

int64_t moe_capacity(const MoeForwardParams& p, int64_t T, int E) {
  return forward_capacity(p.capacity, p.capacity_factor, p.eval_capacity_factor, p.decode, T, p.route.top_k, E);
}

Status moe_forward(const MoeLayerWeights& layer, const TensorView& x, const MoeForwardParams& p,
                   const MoeForwardOutputs& outs) {
  if (!layer.experts) return Status::invalid("moe_forward: layer has no experts");
  const PackedExperts& w = *layer.experts;
  const int E = w.num_experts, k = p.route.top_k;
  if (x.ndim != 2 || x.dims[1] != w.d) return Status::invalid("moe_forward: x must be [T,d]");
  const int64_t T = x.dims[0], d = w.d;
  if (outs.out.ndim != 2 || outs.out.dims[0] != T || outs.out.dims[1] != d)
    return Status::invalid("moe_forward: out must be [T,d]");
  if (T == 0) {
    if (outs.expert_counts) std::fill(outs.expert_counts, outs.expert_counts + E, 0);
    if (outs.dropped) std::fill(outs.dropped, outs.dropped + E, 0);
    if (outs.stats) *outs.stats = RouterStats{};
    return Status::ok();
  }

  std::vector<float> x_scratch;
  const float* x32 = as_f32(x, x_scratch);

  std::vector<int32_t> ids_s, counts_s;
  std::vector<float> wts_s;
  int32_t* ids = outs.topk_ids;
  float* wts = outs.topk_weights;
  if (!ids) { ids_s.resize(size_t(T * k)); ids = ids_s.data(); }
  if (!wts) { wts_s.resize(size_t(T * k)); wts = wts_s.data(); }
  TensorView xv = make_view(const_cast<float*>(x32), DType::kF32, {T, d});
  if (layer.gate.ndim != 2 || layer.gate.dims[0] != E || layer.gate.dims[1] != d)
    return Status::invalid("moe_forward: gate must be [E,d]");
  MOE_RETURN_IF_ERROR(route(xv, layer.gate, p.route, ids, wts, outs.expert_counts, outs.logits, outs.stats));

  std::vector<int32_t> offsets(size_t(E) + 1), sorted_rows(size_t(T * k)), row_of(size_t(T * k));
  MOE_RETURN_IF_ERROR(permute(ids, T, k, E, moe_capacity(p, T, E), offsets.data(), sorted_rows.data(),
                              row_of.data(), outs.dropped));
  const int64_t R = offsets[size_t(E)];
  std::vector<float> y(size_t(R * d));
  MOE_RETURN_IF_ERROR(grouped_gemm(x32, T, sorted_rows.data(), offsets.data(), w, y.data()));
  return combine(y.data(), R, row_of.data(), wts, T, k, outs.out);
}

Status dense_ffn(const PackedExperts& w, const TensorView& x, const TensorView& out) {
  if (w.num_experts != 1) return Status::invalid("dense_ffn: weights must hold one expert");
  if (x.ndim != 2 || x.dims[1] != w.d) return Status::invalid("dense_ffn: x must be [T,d]");
  const int64_t T = x.dims[0], d = w.d;
  if (out.ndim != 2 || out.dims[0] != T || out.dims[1] != d)
    return Status::invalid("dense_ffn: out must be [T,d]");
  if (T == 0) return Status::ok();
  std::vector<float> x_scratch;
  const float* x32 = as_f32(x, x_scratch);
  const int32_t offsets[2] = {0, int32_t(T)};
  if (out.dtype == DType::kF32) return grouped_gemm(x32, T, nullptr, offsets, w, out.as<float>());
  std::vector<float> y(size_t(T * d));
  MOE_RETURN_IF_ERROR(grouped_gemm(x32, T, nullptr, offsets, w, y.data()));
  for (int64_t i = 0; i < T * d; ++i) store_from_f32(out.data, out.dtype, size_t(i), y[size_t(i)]);
  return Status::ok();
}

}  // namespace moe
