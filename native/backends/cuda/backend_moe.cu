// moe-kernels CUDA backend: the MoE ops on device tensors (device_ops.h), each the chain of launchers of
// routing.cu, router.cu, router_stats.cu, permute.cu, grouped_gemm.cu, combine.cu and moe_forward.cu
// that its CPU twin computes, enqueued on one stream with stream-ordered scratch and no host round
// trip. Host code only.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device_ops.h"

namespace moe {
namespace cuda {

// ---- packed experts -----------------------------------------------------------------------------
DeviceExperts::~DeviceExperts() {
  if (!ready().is_ok()) return;
  // cudaFree may wait for the device: it runs when the last holder lets go (dispose, or a job that
  // used the experts finishing), never inside an op.
  if (stream) cudaStreamSynchronize(stream), cudaStreamDestroy(stream);
  if (packed) cudaFree(packed);
  if (gate) cudaFree(gate);
}

MoeDeviceLayer DeviceExperts::layer() const {
  MoeDeviceLayer l;
  l.num_experts = num_experts;
  l.d = d;
  l.f = f;
  l.w_dtype = is_quant(dtype) ? DevDType::kF32 : dev_dtype(dtype);
  if (is_quant(dtype)) {
    l.q13 = dtype, l.q2 = w2_dtype;
    l.expert_bytes = expert_bytes, l.row13 = row13, l.row2 = row2, l.w2_offset = w2_offset;
  }
  l.gate = gate;
  l.packed = packed;
  l.batch_invariant = batch_invariant;
  return l;
}

// Quantised experts: each row repacked into quant_gemm.cu's device layout, W1 and W3 rows interleaved.
static Status pack_quant_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out) {
  const int E = src.num_experts;
  if (!is_quant(src.w2_dtype)) return Status::invalid("pack_experts: W2 must be quantised like W1 and W3");
  const size_t row13 = quant_device_row_bytes(src.dtype, src.d), row2 = quant_device_row_bytes(src.w2_dtype, src.f);
  if (row13 == 0 || row2 == 0)
    return Status::invalid(std::string("pack_experts: ") + dtype_name(src.dtype) + "/" + dtype_name(src.w2_dtype) +
                           " experts need d and f multiples of their blocks, got d=" + std::to_string(src.d) + ", f=" + std::to_string(src.f));
  if (E > 65535) return Status::invalid(std::string("pack_experts: at most 65535 quantised experts on ") + kName);
  if (gate && (gate->ndim != 2 || gate->dims[0] != E || gate->dims[1] != src.d || gate->device))
    return Status::invalid("pack_experts: the gate must be a host [" + std::to_string(E) + "," + std::to_string(src.d) + "] tensor");
  const size_t w2_offset = size_t(2 * src.f) * row13, expert_bytes = w2_offset + size_t(src.d) * row2;
  const size_t bytes = expert_bytes * size_t(E);
  std::vector<unsigned char> host;
  try {
    host.resize(bytes);
  } catch (const std::bad_alloc&) {
    return Status::oom("packing " + std::to_string(bytes) + " bytes of expert weights on the host");
  }
  const size_t src13 = row_bytes(src.dtype, src.d), src2 = row_bytes(src.w2_dtype, src.f);
  for (int e = 0; e < E; ++e) {
    unsigned char* base = host.data() + size_t(e) * expert_bytes;
    for (int64_t j = 0; j < src.f; ++j) {
      quant_repack_row(src.dtype, static_cast<const uint8_t*>(src.w1[size_t(e)]) + size_t(j) * src13, src.d, base + size_t(2 * j) * row13);
      quant_repack_row(src.dtype, static_cast<const uint8_t*>(src.w3[size_t(e)]) + size_t(j) * src13, src.d, base + size_t(2 * j + 1) * row13);
    }
    for (int64_t i = 0; i < src.d; ++i)
      quant_repack_row(src.w2_dtype, static_cast<const uint8_t*>(src.w2[size_t(e)]) + size_t(i) * src2, src.f,
                       base + w2_offset + size_t(i) * row2);
  }
  auto w = std::make_unique<DeviceExperts>();
  w->num_experts = E;
  w->d = src.d;
  w->f = src.f;
  w->dtype = src.dtype;
  w->w2_dtype = src.w2_dtype;
  w->expert_bytes = expert_bytes, w->row13 = row13, w->row2 = row2, w->w2_offset = w2_offset;
  MOE_CUDA_TRY(cudaStreamCreateWithFlags(&w->stream, cudaStreamNonBlocking), "creating the layer's stream");
  MOE_CUDA_TRY(cudaMalloc(&w->packed, bytes), ("allocating " + std::to_string(bytes) + " bytes of expert weights").c_str());
  w->packed_bytes = bytes;
  MOE_CUDA_TRY(cudaMemcpy(w->packed, host.data(), bytes, cudaMemcpyHostToDevice), "uploading the expert weights");
  if (gate) {
    const std::vector<float> g = host_f32(*gate);
    w->gate_bytes = g.size() * 4;
    MOE_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&w->gate), w->gate_bytes), "allocating the router gate");
    MOE_CUDA_TRY(cudaMemcpy(w->gate, g.data(), w->gate_bytes, cudaMemcpyHostToDevice), "uploading the router gate");
    w->has_gate = true;
  }
  *out = std::move(w);
  return Status::ok();
}

Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const int E = src.num_experts;
  if (is_quant(src.dtype)) return pack_quant_experts(src, gate, out);
  const DevDType dt = dev_dtype(src.dtype);
  const size_t bytes = grouped_gemm_packed_bytes(E, src.d, src.f, dt);
  if (bytes == 0)
    return Status::invalid("experts of shape E=" + std::to_string(E) + ", d=" + std::to_string(src.d) + ", f=" +
                           std::to_string(src.f) + " are too large for the " + kName + " grouped GEMM");
  if (gate && (gate->ndim != 2 || gate->dims[0] != E || gate->dims[1] != src.d || gate->device))
    return Status::invalid("pack_experts: the gate must be a host [" + std::to_string(E) + "," + std::to_string(src.d) + "] tensor");
  std::vector<unsigned char> host;
  try {
    host.resize(bytes);
  } catch (const std::bad_alloc&) {
    return Status::oom("packing " + std::to_string(bytes) + " bytes of expert weights on the host");
  }
  MOE_RETURN_IF_ERROR(launched(grouped_gemm_pack(E, src.d, src.f, dt, src.w1.data(), src.w3.data(), src.w2.data(),
                                                 host.data(), bytes),
                               "packing the experts"));
  auto w = std::make_unique<DeviceExperts>();
  w->num_experts = E;
  w->d = src.d;
  w->f = src.f;
  w->dtype = w->w2_dtype = src.dtype;
  MOE_CUDA_TRY(cudaStreamCreateWithFlags(&w->stream, cudaStreamNonBlocking), "creating the layer's stream");
  MOE_CUDA_TRY(cudaMalloc(&w->packed, bytes), ("allocating " + std::to_string(bytes) + " bytes of expert weights").c_str());
  w->packed_bytes = bytes;
  MOE_CUDA_TRY(cudaMemcpy(w->packed, host.data(), bytes, cudaMemcpyHostToDevice), "uploading the expert weights");
  if (gate) {
    const std::vector<float> g = host_f32(*gate);
    w->gate_bytes = g.size() * 4;
    MOE_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&w->gate), w->gate_bytes), "allocating the router gate");
    MOE_CUDA_TRY(cudaMemcpy(w->gate, g.data(), w->gate_bytes, cudaMemcpyHostToDevice), "uploading the router gate");
    w->has_gate = true;
  }
  *out = std::move(w);
  return Status::ok();
}

Status as_f32(const TensorView& t, Scratch& sc, size_t off, cudaStream_t s, const float** out) {
  if (t.dtype == DType::kF32) {
    *out = t.as<const float>();
    return Status::ok();
  }
  float* dst = sc.at<float>(off);
  MOE_RETURN_IF_ERROR(launched(launch_cast(t.data, dev_dtype(t.dtype), dst, DevDType::kF32, t.numel(), s), "widening to f32"));
  *out = dst;
  return Status::ok();
}

namespace {
size_t f32_bytes_if_narrow(const TensorView& t) { return t.present() && t.dtype != DType::kF32 ? size_t(t.numel()) * 4 : 0; }
template <class T> T* opt(const TensorView& t) { return t.present() ? t.as<T>() : nullptr; }
}  // namespace

// ---- route: router logits -> (noisy logits) -> softmax + top-k -> (GShard random routing) -> counts and losses
Status route(const RouteArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  const RouteParams& p = a.params;
  const int64_t T = a.x.dims[0], d = a.x.dims[1];
  const int E = int(a.gate.dims[0]), k = p.top_k;
  if (p.random_routing && k != 2) return Status::invalid("route: random routing needs top_k == 2");
  const bool noisy = p.noise_gate.present();
  if (T == 0) {  // no token: no routing, zero counts and losses
    if (a.expert_counts.present()) MOE_CUDA_TRY(cudaMemsetAsync(a.expert_counts.data, 0, size_t(E) * 4, s), "zeroing the counts");
    if (a.stats.present()) MOE_CUDA_TRY(cudaMemsetAsync(a.stats.data, 0, kRouterStatsLen * 4, s), "zeroing the losses");
    return Status::ok();
  }
  const size_t sws = router_stats_workspace_bytes(T, E);
  if (sws == 0) return Status::invalid("route: shape not supported on " + std::string(kName));
  Scratch sc(s);
  const size_t lb = size_t(T) * E * 4;
  const size_t o_g = sc.add(f32_bytes_if_narrow(a.gate)), o_gn = sc.add(noisy ? f32_bytes_if_narrow(p.noise_gate) : 0),
               o_l = sc.add(a.logits.present() ? 0 : lb), o_nl = sc.add(noisy ? lb : 0), o_noisy = sc.add(noisy ? lb : 0),
               o_ws = sc.add(sws);
  MOE_RETURN_IF_ERROR(sc.allocate());
  const float* g = nullptr;
  MOE_RETURN_IF_ERROR(as_f32(a.gate, sc, o_g, s, &g));
  float* logits = a.logits.present() ? a.logits.as<float>() : sc.at<float>(o_l);
  MOE_RETURN_IF_ERROR(launched(launch_router_logits(a.x.data, dev_dtype(a.x.dtype), g, T, d, E, logits, s), "router logits"));
  const float* ranked = logits;
  if (noisy) {
    const float* gn = nullptr;
    MOE_RETURN_IF_ERROR(as_f32(p.noise_gate, sc, o_gn, s, &gn));
    MOE_RETURN_IF_ERROR(launched(launch_router_logits(a.x.data, dev_dtype(a.x.dtype), gn, T, d, E, sc.at<float>(o_nl), s),
                                 "noise logits"));
    MOE_RETURN_IF_ERROR(launched(launch_noisy_logits(logits, sc.at<float>(o_nl), T, E, p.noise_seed, sc.at<float>(o_noisy), s),
                                 "noisy logits"));
    ranked = sc.at<float>(o_noisy);
  }
  int32_t* ids = a.topk_ids.as<int32_t>();
  float* wts = a.topk_weights.as<float>();
  MOE_RETURN_IF_ERROR(launched(launch_softmax_topk(ranked, T, E, k, p.normalize, ids, wts, s), "softmax + top-k"));
  if (p.random_routing)
    MOE_RETURN_IF_ERROR(launched(launch_random_routing(ids, wts, T, k, p.random_seed, s), "random routing"));
  if (a.expert_counts.present() || a.stats.present())
    MOE_RETURN_IF_ERROR(launched(launch_router_stats(logits, ids, T, E, k, opt<int32_t>(a.expert_counts), opt<float>(a.stats),
                                                     sc.at<void>(o_ws), sws, s),
                                 "router statistics"));
  return Status::ok();
}

// ---- permute (the ids were checked by the caller; a bad id is not reported here) -------------------
Status permute(const PermuteArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  const int64_t T = a.topk_ids.dims[0];
  const int k = int(a.topk_ids.dims[1]), E = a.num_experts;
  const size_t ws = permute_workspace_bytes(T, k, E);
  if (ws == 0)
    return Status::invalid("permute: shape not supported on " + std::string(kName) + ": T=" + std::to_string(T) +
                           ", k=" + std::to_string(k) + ", E=" + std::to_string(E));
  Scratch sc(s);
  const size_t o_ws = sc.add(ws), o_bad = sc.add(4);
  MOE_RETURN_IF_ERROR(sc.allocate());
  return launched(launch_permute(a.topk_ids.as<const int32_t>(), T, k, E, a.capacity, a.expert_offsets.as<int32_t>(),
                                 a.sorted_rows.as<int32_t>(), a.row_of.as<int32_t>(), opt<int32_t>(a.dropped),
                                 sc.at<int32_t>(o_bad), sc.at<void>(o_ws), ws, s),
                  "permute");
}

// ---- grouped GEMM (R = y's rows, the host-known bound the kernels are sized for) --------------------
Status grouped_gemm(const GroupedGemmArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  const DeviceExperts& w = device_experts(*a.experts);
  const int E = w.num_experts;
  const int64_t T = a.x.dims[0], d = w.d, R = a.y.dims[0];
  if (R == 0 || T == 0) return Status::ok();
  if (is_quant(w.dtype)) {
    Scratch sc(s);
    const size_t qws = quant_layer_gemm_workspace_bytes(T, R, d, w.f);
    const size_t o_ws = sc.add(qws);
    MOE_RETURN_IF_ERROR(sc.allocate());
    return launched(launch_quant_layer_gemm(w.layer(), false, a.x.data, dev_dtype(a.x.dtype), T, opt<const int32_t>(a.sorted_rows),
                                            a.expert_offsets.as<const int32_t>(), R, a.y.as<float>(), sc.at<void>(o_ws), qws, s),
                    "quantised grouped GEMM");
  }
  const DevDType wt = dev_dtype(w.dtype);
  const size_t ws = grouped_gemm_workspace_bytes(T, R, d, w.f, wt);
  if (ws == 0) return Status::invalid("grouped_gemm: shape not supported on " + std::string(kName));
  Scratch sc(s);
  const size_t o_ws = sc.add(ws);
  MOE_RETURN_IF_ERROR(sc.allocate());
  return launched(launch_grouped_gemm(a.x.data, dev_dtype(a.x.dtype), T, opt<const int32_t>(a.sorted_rows),
                                      a.expert_offsets.as<const int32_t>(), R, w.packed, E, d, w.f, wt, a.y.as<float>(),
                                      sc.at<void>(o_ws), ws, s, grouped_gemm_fixed_path(w.batch_invariant, d, w.f, wt)),
                  "grouped GEMM");
}

// ---- combine -----------------------------------------------------------------------------------------
Status combine(const CombineArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  const int64_t T = a.row_of.dims[0], d = a.out.dims[1];
  if (T == 0 || d == 0) return Status::ok();
  return launched(launch_combine(a.y.as<const float>(), a.y.dims[0], a.row_of.as<const int32_t>(),
                                 a.topk_weights.as<const float>(), T, int(a.row_of.dims[1]), d, a.out.data,
                                 dev_dtype(a.out.dtype), s, opt<const float>(a.shared), opt<const float>(a.shared_logit)),
                  "combine");
}

// ---- the whole layer ----------------------------------------------------------------------------------
Status moe_forward(const MoeForwardArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  const DeviceExperts& w = device_experts(*a.experts);
  if (!w.gate) return Status::invalid("moe_forward: the experts were packed without their router gate");
  MoeDeviceLayer L = w.layer();
  if (a.shared) {
    const DeviceExperts& sw = device_experts(*a.shared);
    if (sw.num_experts != 1 || sw.d != w.d || sw.dtype != w.dtype || sw.w2_dtype != w.w2_dtype)
      return Status::invalid("moe_forward: the shared experts must be one packed expert of the experts' d and type");
    L.shared_packed = sw.packed, L.shared_f = sw.f, L.shared_gate = sw.gate;
    L.shared_row2 = sw.row2, L.shared_w2_offset = sw.w2_offset;
  }
  const int64_t T = a.x.dims[0];
  if (T == 0) {  // nothing to compute; counts, drops and losses of no token are zero
    const size_t eb = size_t(w.num_experts) * 4;
    if (a.expert_counts.present()) MOE_CUDA_TRY(cudaMemsetAsync(a.expert_counts.data, 0, eb, s), "zeroing the counts");
    if (a.dropped.present()) MOE_CUDA_TRY(cudaMemsetAsync(a.dropped.data, 0, eb, s), "zeroing the drops");
    if (a.stats.present()) MOE_CUDA_TRY(cudaMemsetAsync(a.stats.data, 0, kRouterStatsLen * 4, s), "zeroing the losses");
    return Status::ok();
  }
  const bool noisy = a.params.route.noise_gate.present();
  MoeDeviceRouting R;
  R.params = a.params;
  // The layout reserves the noise logits when noisy: size it with a stand-in pointer (only its being
  // non-null matters there; the real one is set below).
  if (noisy) R.noise_gate = w.gate;
  const size_t fwd = moe_forward_workspace_bytes(L, T, R);
  if (fwd == 0) return Status::invalid("moe_forward: shape not supported on " + std::string(kName));
  Scratch sc(s);
  const size_t o_fwd = sc.add(fwd), o_noise = sc.add(noisy ? f32_bytes_if_narrow(a.params.route.noise_gate) : 0);
  MOE_RETURN_IF_ERROR(sc.allocate());
  if (noisy) MOE_RETURN_IF_ERROR(as_f32(a.params.route.noise_gate, sc, o_noise, s, &R.noise_gate));
  MoeDeviceOutputs O;
  O.topk_ids = opt<int32_t>(a.topk_ids);
  O.topk_weights = opt<float>(a.topk_weights);
  O.expert_counts = opt<int32_t>(a.expert_counts);
  O.dropped = opt<int32_t>(a.dropped);
  O.logits = opt<float>(a.logits);
  O.stats = opt<float>(a.stats);
  return launched(launch_moe_forward(L, a.x.data, dev_dtype(a.x.dtype), T, R, a.out.data, dev_dtype(a.out.dtype), O,
                                     sc.at<void>(o_fwd), fwd, s),
                  "MoE forward");
}

// A dense FFN (one packed expert) on T rows: with an f32 output the grouped GEMM writes it directly
// (offsets made on the device); otherwise y = FFN(x) in f32, then out = 1.0 * y through combine
// (k = 1, identity rows), the same rounding to the output type as the MoE layer's.
Status dense_ffn(const DenseFfnArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  const DeviceExperts& w = device_experts(*a.weights);
  if (w.num_experts != 1) return Status::invalid("dense_ffn needs weights packed as one expert");
  const int64_t T = a.x.dims[0];
  if (T == 0) return Status::ok();
  if (is_quant(w.dtype)) {  // y = FFN(x) in f32 through the layer GEMM, then the output type
    if (T > (int64_t(1) << 30)) return Status::invalid("dense_ffn: shape not supported on " + std::string(kName));
    Scratch sc(s);
    const size_t qws = quant_layer_gemm_workspace_bytes(T, T, w.d, w.f);
    const bool direct = a.out.dtype == DType::kF32;
    const size_t o_off = sc.add(2 * 4), o_y = sc.add(direct ? 0 : size_t(T) * size_t(w.d) * 4), o_ws = sc.add(qws);
    MOE_RETURN_IF_ERROR(sc.allocate());
    int32_t* offsets = sc.at<int32_t>(o_off);
    MOE_RETURN_IF_ERROR(launched(launch_row_span(offsets, T, s), "dense FFN offsets"));
    float* y = direct ? a.out.as<float>() : sc.at<float>(o_y);
    MOE_RETURN_IF_ERROR(launched(launch_quant_layer_gemm(w.layer(), false, a.x.data, dev_dtype(a.x.dtype), T, nullptr, offsets, T, y,
                                                         sc.at<void>(o_ws), qws, s),
                                 "quantised dense FFN"));
    if (direct) return Status::ok();
    return launched(launch_cast(y, DevDType::kF32, a.out.data, dev_dtype(a.out.dtype), T * w.d, s), "dense FFN output");
  }
  const size_t gws = grouped_gemm_workspace_bytes(T, T, w.d, w.f, dev_dtype(w.dtype));
  if (gws == 0 || T > (int64_t(1) << 30)) return Status::invalid("dense_ffn: shape not supported on " + std::string(kName));
  const bool direct = a.out.dtype == DType::kF32;
  Scratch sc(s);
  const size_t o_off = sc.add(size_t(T + 2) * 4), o_y = sc.add(direct ? 0 : size_t(T) * size_t(w.d) * 4),
               o_one = sc.add(direct ? 0 : size_t(T) * 4), o_ws = sc.add(gws);
  MOE_RETURN_IF_ERROR(sc.allocate());
  int32_t* offsets = sc.at<int32_t>(o_off);
  const DevDType wt = dev_dtype(w.dtype), xt = dev_dtype(a.x.dtype);
  if (direct) {
    MOE_RETURN_IF_ERROR(launched(launch_row_span(offsets, T, s), "dense FFN offsets"));
    return launched(launch_grouped_gemm(a.x.data, xt, T, nullptr, offsets, T, w.packed, 1, w.d, w.f, wt, a.out.as<float>(),
                                        sc.at<void>(o_ws), gws, s),
                    "dense FFN");
  }
  std::vector<int32_t> host_i(size_t(T) + 2);  // offsets {0, T}, then rows 0..T-1
  std::vector<float> ones(size_t(T), 1.0f);
  host_i[0] = 0, host_i[1] = int32_t(T);
  for (int64_t t = 0; t < T; ++t) host_i[size_t(t) + 2] = int32_t(t);
  MOE_RETURN_IF_ERROR(upload_staged(offsets, host_i.data(), size_t(T + 2) * 4, s));
  MOE_RETURN_IF_ERROR(upload_staged(sc.at<void>(o_one), ones.data(), size_t(T) * 4, s));
  float* y = sc.at<float>(o_y);
  MOE_RETURN_IF_ERROR(launched(launch_grouped_gemm(a.x.data, xt, T, nullptr, offsets, T, w.packed, 1, w.d, w.f, wt, y,
                                                   sc.at<void>(o_ws), gws, s),
                               "dense FFN"));
  return launched(launch_combine(y, T, offsets + 2, sc.at<const float>(o_one), T, 1, w.d, a.out.data, dev_dtype(a.out.dtype), s),
                  "dense FFN output");
}

}  // namespace cuda
}  // namespace moe
