// moe-kernels: the CUDA backend of a build without one (binding.gyp, or CMake without nvcc): its
// capabilities say why, and every op returns kUnsupported (the addon never routes work to a backend
// that is not available: it checks first).
#include <string>

#include "moe/backend.h"

// The build says why it has no CUDA backend (CMakeLists.txt: MOE_CUDA=OFF, or no working nvcc;
// binding.gyp via scripts/build-native.js: node-gyp was used, and why, and whether nvcc was there).
#ifndef MOE_NO_CUDA_REASON
#define MOE_NO_CUDA_REASON "it was built without the CUDA backend"
#endif

namespace moe {
namespace cuda {

namespace {

class InlineExecutor final : public Executor {
 public:
  void submit(std::function<Status()> run, std::function<void(Status)> done) override { done(run()); }
  Status run_sync(const std::function<Status()>& run) override { return run(); }
  void drain() override {}
  void shutdown() override {}
};

class NoCudaBackend final : public Backend {
 public:
  NoCudaBackend() {
    caps_.family = "cuda";
    caps_.name = "none";
    caps_.reason = "this build has no CUDA backend: " MOE_NO_CUDA_REASON;
  }
  const Capabilities& capabilities() const override { return caps_; }
  Executor& executor() override { return executor_; }
  Status pack_experts(const ExpertWeightSource&, const TensorView*, std::unique_ptr<PackedExperts>*) override { return none(); }
  Status pack_linear(const TensorView&, const TensorView*, bool, std::unique_ptr<PackedLinear>*) override { return none(); }
  Status create_kv_cache(const KvCacheShape&, std::unique_ptr<KvCache>*) override { return none(); }
  Status create_kv_pool(const KvPoolShape&, std::unique_ptr<KvPool>*) override { return none(); }
  Status paged_attention(const PagedAttentionArgs&) override { return none(); }
  Status route(const RouteArgs&) override { return none(); }
  Status permute(const PermuteArgs&) override { return none(); }
  Status grouped_gemm(const GroupedGemmArgs&) override { return none(); }
  Status combine(const CombineArgs&) override { return none(); }
  Status moe_forward(const MoeForwardArgs&) override { return none(); }
  Status dense_ffn(const DenseFfnArgs&) override { return none(); }
  Status embedding(const EmbeddingArgs&) override { return none(); }
  Status rms_norm(const RmsNormArgs&) override { return none(); }
  Status linear(const LinearArgs&) override { return none(); }
  Status rope(const RopeArgs&) override { return none(); }
  Status attention(const AttentionArgs&) override { return none(); }
  Status add(const AddArgs&) override { return none(); }
  Status sample(const SampleArgs&) override { return none(); }
  Status cast(const CastArgs&) override { return none(); }

 private:
  Status none() const { return Status::unsupported(caps_.reason); }
  Capabilities caps_;
  InlineExecutor executor_;
};

}  // namespace

Backend& instance() {
  static NoCudaBackend* b = new NoCudaBackend();
  return *b;
}

}  // namespace cuda
}  // namespace moe
