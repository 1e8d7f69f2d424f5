// moe-kernels: the CUDA backend's host side, as the addon sees it (no CUDA header in here).
//
// The ops have the names and host-memory signatures of the CPU backend (moe/moe_ops.h): each copies
// its inputs to the device, runs the kernels of native/backends/cuda on a stream, copies the results
// back and waits for that stream only (never the whole device). Weights are uploaded once, by
// pack_experts, into a PackedExperts whose backend() is backend_name(); they stay on the device
// until that object is destroyed (the addon's dispose() or finaliser).
//
// One source (native/backends/cuda/backend.cu), two builds:
//   - nvcc + static cudart: backend "cuda", the kernels on a real GPU;
//   - g++ against native/emu (MOE_CUDA_EMU, test builds only): backend "cuda-emu", the same kernels
//     and the same host code on the CPU emulator of the CUDA execution model.
// A build without either has no CUDA backend: native/backends/cuda/backend_none.cc answers for it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "moe/decoder_ops.h"
#include "moe/moe_ops.h"
#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {
namespace cuda {

struct DeviceInfo {
  bool compiled = false;   // this build has a CUDA backend (real or emulated)
  bool available = false;  // and a device that can run it was found
  bool emulated = false;   // the kernels run on native/emu (test builds)
  std::string reason;      // why it is not available, or what runs
  std::string name;        // device name
  int device = -1;         // ordinal in use (MOE_CUDA_DEVICE, default 0)
  int sm_count = 0, cc_major = 0, cc_minor = 0;
  size_t total_memory = 0;     // bytes
  double peak_gbps = 0;        // DRAM bandwidth from memory clock and bus width (0: unknown)
  double peak_tc_tflops = 0;   // dense f16/bf16 tensor-core peak with f32 accumulation (0: unknown)
  double peak_fma_tflops = 0;  // f32 FMA peak (0: unknown)
};

// Probed once (thread-safe); never fails: a missing driver or device is a reason, not an error.
const DeviceInfo& device_info();
// "cuda", "cuda-emu", or "none".
const char* backend_name();

// Host <-> device copies made by this backend's ops since the process started (inputs, results;
// not the one-time weight uploads of pack_*): what a caller can check to see that work stays on
// the device.
struct TransferStats {
  uint64_t to_device_calls = 0, to_device_bytes = 0, to_host_calls = 0, to_host_bytes = 0;
};
TransferStats transfer_stats();

// ---- the ops (host pointers in and out; see moe/moe_ops.h for the semantics) ------------------------
Status route(const TensorView& x, const TensorView& gate, const RouteParams& p, int32_t* topk_ids,
             float* topk_weights, int32_t* expert_counts, float* logits, RouterStats* stats = nullptr);
Status permute(const int32_t* topk_ids, int64_t T, int k, int E, int64_t capacity,
               int32_t* expert_offsets, int32_t* sorted_rows, int32_t* row_of, int32_t* dropped);
// Uploads the packed experts; `gate` (may be null) [E,d] is uploaded with them as f32, so that
// moe_forward needs no per-call router copy.
Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out);
// x: [T,d] any float dtype (read as the weights' dtype on the device, as the kernels do).
Status grouped_gemm(const TensorView& x, const int32_t* sorted_rows, int64_t num_rows,
                    const int32_t* expert_offsets, const PackedExperts& w, float* y);
Status combine(const float* y, int64_t R, const int32_t* row_of, const float* topk_weights, int64_t T,
               int k, const TensorView& out);
// layer.experts: from pack_experts here; layer.gate is used when pack_experts had none.
Status moe_forward(const MoeLayerWeights& layer, const TensorView& x, const MoeForwardParams& p,
                   const MoeForwardOutputs& outs);
Status dense_ffn(const PackedExperts& w, const TensorView& x, const TensorView& out);

// ---- device-resident tensors ---------------------------------------------------------------------
// A model forward on CUDA keeps its activations on the device: the ops below take TensorViews whose
// `data` are device pointers (into DeviceBuffers) and enqueue their kernels on the backend's one
// tensor stream in call order, without waiting for them. Only `download` and `dev::sample` (which
// return host data) wait for the stream, and a kernel error that was not caught at launch shows
// there. Buffers are allocated and freed stream-ordered on that stream, so dropping a buffer while
// enqueued work still reads it is safe. Host inputs of the ops (token ids, positions) are copied in
// before the op returns; the caller may reuse them at once.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  void* data = nullptr;
  size_t bytes = 0;
};
// `bytes` of zeroed device memory (bytes 0: a valid empty buffer).
Status alloc_device(size_t bytes, std::shared_ptr<DeviceBuffer>* out);
// Host -> device (waits until the copy is done, so `src` may be freed afterwards).
Status upload(void* dst, const void* src, size_t n);
// Device -> host, after all work enqueued before it on the tensor stream; waits.
Status download(void* dst, const void* src, size_t n);

namespace dev {
// moe/decoder_ops.h's ops on device tensors; "host" marks host arrays. Differences from the CPU:
// rope's frequencies are f32 (HF's rounding), attention needs head_dim 32, 64, 128 or 256, and add
// needs one dtype for a, b and out.
Status embedding(const TensorView& table, const int32_t* ids /*host*/, int64_t T, const TensorView& out);
Status rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out);
// w: host [out,in] (bias: null or host [out]); uploaded as is (the CUDA linear reads HF layout), the
// bias as f32. backend() is backend_name().
Status pack_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out);
Status linear(const TensorView& x, const PackedLinear& w, const TensorView& y);
// positions: host, or device when positions_on_device (a model uploads them once per forward: a
// copy from pageable host memory waits for the stream, so one per layer would stall it).
Status rope(const TensorView& x, const int32_t* positions, bool positions_on_device, double theta, const TensorView& out);
Status create_kv_cache(int64_t max_seq, int64_t num_kv_heads, int64_t head_dim, DType dtype,
                       std::unique_ptr<KvCache>* out);
Status attention(const TensorView& q, const TensorView& k, const TensorView& v, KvCache& cache,
                 const AttentionParams& p, const TensorView& out);
Status add(const TensorView& a, const TensorView& b, const TensorView& out);
Status sample(const TensorView& logits, int64_t T, int64_t V, const SampleParams& p, int32_t* ids /*host*/);
// The MoE layer on device x [T,d] -> outs.out [T,d] (device). Of the other outputs only
// expert_counts may be set, as a device int32 [E]; the layer's experts come from pack_experts here.
Status moe_forward(const MoeLayerWeights& layer, const TensorView& x, const MoeForwardParams& p,
                   const MoeForwardOutputs& outs);
// A one-expert FFN (pack_experts here) on device x [T,d] -> out [T,d].
Status dense_ffn(const PackedExperts& w, const TensorView& x, const TensorView& out);
}  // namespace dev

// ---- bench ---------------------------------------------------------------------------------------
// Device time of one call, averaged over `iters` calls between two CUDA events, on device-resident
// inputs (random normal x of the weights' dtype): no copies, no host round trips inside the loop.
// moe: the layer's forward with top_k (renormalised); dense: one expert's FFN on all T rows.
Status time_moe_forward(const PackedExperts& w, int64_t T, int top_k, int iters, double* ms_per_call);
Status time_dense_ffn(const PackedExperts& w, int64_t T, int iters, double* ms_per_call);

}  // namespace cuda
}  // namespace moe
