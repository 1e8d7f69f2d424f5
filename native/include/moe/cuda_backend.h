// moe-kernels: the CUDA backend's host side, as the addon sees it (no CUDA header in here).
//
// The ops have the names and host-memory signatures of the CPU backend (moe/ops.h): each copies
// its inputs to the device, runs the kernels of native/src/cuda on a stream, copies the results
// back and waits for that stream only (never the whole device). Weights are uploaded once, by
// pack_experts, into a PackedExperts whose backend() is backend_name(); they stay on the device
// until that object is destroyed (the addon's dispose() or finaliser).
//
// One source (native/src/cuda/backend.cu), two builds:
//   - nvcc + static cudart: backend "cuda", the kernels on a real GPU;
//   - g++ against native/emu (MOE_CUDA_EMU, test builds only): backend "cuda-emu", the same kernels
//     and the same host code on the CPU emulator of the CUDA execution model.
// A build without either has no CUDA backend: native/src/cuda/backend_none.cc answers for it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "moe/ops.h"
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

// ---- the ops (host pointers in and out; see moe/ops.h for the semantics) ------------------------
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

// ---- bench ---------------------------------------------------------------------------------------
// Device time of one call, averaged over `iters` calls between two CUDA events, on device-resident
// inputs (random normal x of the weights' dtype): no copies, no host round trips inside the loop.
// moe: the layer's forward with top_k (renormalised); dense: one expert's FFN on all T rows.
Status time_moe_forward(const PackedExperts& w, int64_t T, int top_k, int iters, double* ms_per_call);
Status time_dense_ffn(const PackedExperts& w, int64_t T, int iters, double* ms_per_call);

}  // namespace cuda
}  // namespace moe
