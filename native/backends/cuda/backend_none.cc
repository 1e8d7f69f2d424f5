// moe-kernels: the CUDA backend of a build without one (binding.gyp, or CMake without nvcc). Same
// functions as native/backends/cuda/backend.cu; device_info() says why there is no device, and every op
// returns kUnsupported (the TypeScript layer never routes work here: it checks backendInfo first).
#include "moe/cuda_backend.h"

// The build says why it has no CUDA backend (CMakeLists.txt: MOE_CUDA=OFF, or no working nvcc;
// binding.gyp via scripts/build-native.js: node-gyp was used, and why, and whether nvcc was there).
#ifndef MOE_NO_CUDA_REASON
#define MOE_NO_CUDA_REASON "it was built without the CUDA backend"
#endif

namespace moe {
namespace cuda {

namespace {
constexpr const char* kNoCuda = "this build has no CUDA backend: " MOE_NO_CUDA_REASON;
Status none() { return Status::unsupported(kNoCuda); }
}  // namespace

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    DeviceInfo i;
    i.reason = kNoCuda;
    return i;
  }();
  return info;
}

const char* backend_name() { return "none"; }
TransferStats transfer_stats() { return TransferStats(); }

Status route(const TensorView&, const TensorView&, const RouteParams&, int32_t*, float*, int32_t*, float*, RouterStats*) { return none(); }
Status permute(const int32_t*, int64_t, int, int, int64_t, int32_t*, int32_t*, int32_t*, int32_t*) { return none(); }
Status pack_experts(const ExpertWeightSource&, const TensorView*, std::unique_ptr<PackedExperts>*) { return none(); }
Status grouped_gemm(const TensorView&, const int32_t*, int64_t, const int32_t*, const PackedExperts&, float*) { return none(); }
Status combine(const float*, int64_t, const int32_t*, const float*, int64_t, int, const TensorView&) { return none(); }
Status moe_forward(const MoeLayerWeights&, const TensorView&, const MoeForwardParams&, const MoeForwardOutputs&) { return none(); }
Status dense_ffn(const PackedExperts&, const TensorView&, const TensorView&) { return none(); }
Status alloc_device(size_t, std::shared_ptr<DeviceBuffer>*) { return none(); }
Status upload(void*, const void*, size_t) { return none(); }
Status download(void*, const void*, size_t) { return none(); }
namespace dev {
Status embedding(const TensorView&, const int32_t*, int64_t, const TensorView&) { return none(); }
Status rms_norm(const TensorView&, const TensorView&, float, const TensorView&) { return none(); }
Status pack_linear(const TensorView&, const TensorView*, std::unique_ptr<PackedLinear>*) { return none(); }
Status linear(const TensorView&, const PackedLinear&, const TensorView&) { return none(); }
Status rope(const TensorView&, const int32_t*, bool, double, const TensorView&) { return none(); }
Status create_kv_cache(int64_t, int64_t, int64_t, DType, std::unique_ptr<KvCache>*) { return none(); }
Status attention(const TensorView&, const TensorView&, const TensorView&, KvCache&, const AttentionParams&, const TensorView&) { return none(); }
Status add(const TensorView&, const TensorView&, const TensorView&) { return none(); }
Status sample(const TensorView&, int64_t, int64_t, const SampleParams&, int32_t*) { return none(); }
Status moe_forward(const MoeLayerWeights&, const TensorView&, const MoeForwardParams&, const MoeForwardOutputs&) { return none(); }
Status dense_ffn(const PackedExperts&, const TensorView&, const TensorView&) { return none(); }
}  // namespace dev
Status time_moe_forward(const PackedExperts&, int64_t, int, int, double*) { return none(); }
Status time_dense_ffn(const PackedExperts&, int64_t, int, double*) { return none(); }

}  // namespace cuda
}  // namespace moe
