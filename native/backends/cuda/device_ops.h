// moe-kernels CUDA backend: its packed objects and its ops on device tensors. Every function below
// takes views of device memory only (CudaBackend stages host tensors before calling them, the one
// adapter of cuda_backend.cu) and enqueues its kernels on `s` without waiting; the caller's call
// (backend_runtime.h) waits for s. Private to native/backends/cuda.
#pragma once
#include <memory>

#include "backend_runtime.h"
#include "decoder_launchers.h"
#include "quant_launchers.h"

namespace moe {
namespace cuda {

// Experts on the device: packed W13/W2 (grouped_gemm_pack's layout), the router gate as f32 when one
// was packed with them, and the layer's own stream, on which calls with host tensors run so that
// layers overlap.
class DeviceExperts final : public PackedExperts {
 public:
  ~DeviceExperts() override;
  size_t bytes() const override { return packed_bytes + gate_bytes; }
  MoeDeviceLayer layer() const;
  void* packed = nullptr;
  size_t packed_bytes = 0;
  float* gate = nullptr;  // [num_experts, d] f32, or null
  size_t gate_bytes = 0;
  cudaStream_t stream = nullptr;
  // quantised experts (dtype a block format): quant_gemm.cu's device layout, see MoeDeviceLayer
  size_t expert_bytes = 0, row13 = 0, row2 = 0, w2_offset = 0;
};

class DeviceLinear final : public PackedLinear {
 public:
  ~DeviceLinear() override;
  size_t bytes() const override { return w_bytes + (bias ? size_t(out_features) * 4 : 0); }
  void* w = nullptr;  // [out, in] as given (the CUDA linear reads HF layout); quantised: quant_gemm.cu's rows
  size_t w_bytes = 0;
  size_t row = 0;     // quantised: bytes per row in the device layout
  float* bias = nullptr;  // [out] f32 or null
};

class DeviceKvCache final : public KvCache {
 public:
  ~DeviceKvCache() override;
  size_t bytes() const override { return 2 * half_bytes; }
  void* k = nullptr;  // [max_seq, kv_heads, head_dim] (attention.cu's layout)
  void* v = nullptr;
  size_t half_bytes = 0;
};

class DeviceKvPool final : public KvPool {
 public:
  ~DeviceKvPool() override;
  size_t bytes() const override { return 2 * half_bytes; }
  void* k = nullptr;  // [num_blocks * block_size, kv_heads, head_dim] (attention.cu's paged layout)
  void* v = nullptr;
  size_t half_bytes = 0;
};

class DeviceBuffer final : public Buffer {
 public:
  ~DeviceBuffer() override;
};

// ---- packing (host sources; synchronous uploads, once per layer) ---------------------------------
Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out);
Status pack_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out);
Status create_kv_cache(const KvCacheShape& shape, std::unique_ptr<KvCache>* out);
Status create_kv_pool(const KvPoolShape& shape, std::unique_ptr<KvPool>* out);
Status alloc(size_t bytes, std::shared_ptr<Buffer>* out);

// ---- ops on device tensors (backend_moe.cu, backend_decoder.cu) -----------------------------------
Status route(const RouteArgs& a, cudaStream_t s);
Status permute(const PermuteArgs& a, cudaStream_t s);
Status grouped_gemm(const GroupedGemmArgs& a, cudaStream_t s);
Status combine(const CombineArgs& a, cudaStream_t s);
Status moe_forward(const MoeForwardArgs& a, cudaStream_t s);
Status dense_ffn(const DenseFfnArgs& a, cudaStream_t s);
Status embedding(const EmbeddingArgs& a, cudaStream_t s);
Status rms_norm(const RmsNormArgs& a, cudaStream_t s);
Status linear(const LinearArgs& a, cudaStream_t s);
Status rope(const RopeArgs& a, cudaStream_t s);
Status attention(const AttentionArgs& a, cudaStream_t s);
Status paged_attention(const PagedAttentionArgs& a, cudaStream_t s);
Status add(const AddArgs& a, cudaStream_t s);
Status sample(const SampleArgs& a, cudaStream_t s);
Status cast(const CastArgs& a, cudaStream_t s);

// ---- bench (backend_bench.cu) ----------------------------------------------------------------------
Status time_moe_forward(const PackedExperts& w, int64_t T, int top_k, int iters, double* ms_per_call);
Status time_dense_ffn(const PackedExperts& w, int64_t T, int iters, double* ms_per_call);

// The device experts of a PackedExperts made here (the caller checked its backend).
inline const DeviceExperts& device_experts(const PackedExperts& w) { return static_cast<const DeviceExperts&>(w); }

// A float view converted to f32 in `sc` at `off` when it is not f32 already (enqueued on s).
Status as_f32(const TensorView& t, Scratch& sc, size_t off, cudaStream_t s, const float** out);

}  // namespace cuda
}  // namespace moe
