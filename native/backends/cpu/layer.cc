// CPU whole-layer ops: the MoE forward (route -> permute -> grouped GEMM -> combine, plus the shared
// experts when the layer has them) with scratch that grows with T*k*(d+f) and never with the
// weights, the dense SwiGLU FFN baseline, and merge_experts (a dense FFN averaged from the experts).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

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
  if (!layer.shared) return combine(y.data(), R, row_of.data(), wts, T, k, outs.out);

  // Shared experts: the packed dense FFN on every token (identity rows), and the gate's logit
  // x . g per token (f32 sums in index order), added to the routed sum by combine.
  std::vector<float> ys(size_t(T * d)), logit;
  const int32_t all_rows[2] = {0, int32_t(T)};
  MOE_RETURN_IF_ERROR(grouped_gemm(x32, T, nullptr, all_rows, *layer.shared, ys.data()));
  if (layer.shared_gate.present()) {
    logit.resize(size_t(T));
    std::vector<float> g(static_cast<size_t>(d));
    widen_to_f32(layer.shared_gate, g.data());
    for (int64_t t = 0; t < T; ++t) {  // T*d multiply-adds: less than a pool wake-up costs
      float s = 0.f;
      for (int64_t i = 0; i < d; ++i) s += x32[t * d + i] * g[size_t(i)];
      logit[size_t(t)] = s;
    }
  }
  return combine(y.data(), R, row_of.data(), wts, T, k, outs.out, ys.data(), logit.empty() ? nullptr : logit.data());
}

Status merge_experts(const ExpertWeightSource& src, const double* p, void* out_w1, void* out_w3, void* out_w2) {
  const int E = src.num_experts;
  if (E < 1 || src.d < 1 || src.f < 1) return Status::invalid("merge_experts: need E, d, f >= 1");
  if (int(src.w1.size()) != E || int(src.w3.size()) != E || int(src.w2.size()) != E)
    return Status::invalid("merge_experts: one pointer per expert for w1, w3 and w2");
  double sum = 0;
  for (int e = 0; e < E; ++e) {
    if (!(p[e] >= 0) || !std::isfinite(p[e]))
      return Status::invalid("merge_experts: weight " + std::to_string(e) + " must be finite and >= 0");
    sum += p[e];
  }
  if (!(sum > 0)) return Status::invalid("merge_experts: the weights sum to 0");
  std::vector<float> pf(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) pf[size_t(e)] = float(p[e] / sum);
  const size_t n = size_t(src.d * src.f);
  const std::vector<const void*>* mats[3] = {&src.w1, &src.w3, &src.w2};
  void* outs[3] = {out_w1, out_w3, out_w2};
  constexpr size_t kChunk = 1 << 14;
  const int64_t chunks = int64_t((n + kChunk - 1) / kChunk);
  parallel_for(3 * chunks, [&](int64_t task, int) {
    const int m = int(task / chunks);
    const size_t i0 = size_t(task % chunks) * kChunk, i1 = std::min(n, i0 + kChunk);
    float acc[kChunk];
    std::fill(acc, acc + (i1 - i0), 0.f);
    for (int e = 0; e < E; ++e) {
      const float pe = pf[size_t(e)];
      if (pe == 0.f) continue;
      const void* wsrc = (*mats[m])[size_t(e)];
      for (size_t i = i0; i < i1; ++i) acc[i - i0] += pe * load_as_f32(wsrc, src.dtype, i);
    }
    for (size_t i = i0; i < i1; ++i) store_from_f32(outs[m], src.dtype, i, acc[i - i0]);
  });
  return Status::ok();
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

}  // namespace cpu
}  // namespace moe
