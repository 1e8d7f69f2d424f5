// moe-kernels CPU backend: moe::Backend over the kernels of cpu_ops.h. Tensors are host memory; jobs
// run on the compute pool (threadpool.h) in submission order, the calling thread runs sync calls.
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "cpu_ops.h"
#include "moe/backend.h"
#include "moe/quant.h"
#include "peak.h"
#include "quant_kernels.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

namespace {

class CpuExecutor final : public Executor {
 public:
  void submit(std::function<Status()> run, std::function<void(Status)> done) override {
    ComputePool::instance().submit([run = std::move(run), done = std::move(done)]() { done(run_guarded(run)); });
  }
  Status run_sync(const std::function<Status()>& run) override { return run_guarded(run); }
  void drain() override { ComputePool::instance().wait_idle(); }
  void shutdown() override { ComputePool::instance().shutdown(); }
};

Capabilities describe() {
  Capabilities c;
  c.family = "cpu";
  c.name = "cpu";
  c.compiled = c.available = true;
  c.host_memory = true;
  const CpuFeatures& f = cpu_features();
  c.reason = "the CPU kernels (" + f.kernel + ") on " + std::to_string(ComputePool::instance().num_threads()) + " threads";
  c.info = {{"kernel", InfoValue::text(f.kernel)},
            {"kernelNote", InfoValue::text(f.kernel_note)},
            {"threads", InfoValue::number(ComputePool::instance().num_threads())},
            {"avx2", InfoValue::flag(f.avx2)},
            {"fma", InfoValue::flag(f.fma)},
            {"f16c", InfoValue::flag(f.f16c)},
            {"avx512f", InfoValue::flag(f.avx512f)},
            {"avx512bw", InfoValue::flag(f.avx512bw)},
            {"avx512vl", InfoValue::flag(f.avx512vl)},
            {"avx512dq", InfoValue::flag(f.avx512dq)},
            {"avx512bf16", InfoValue::flag(f.avx512bf16)},
            // the table of the quantised weights (quant_kernels.h), and every table this CPU can run
            {"quantKernel", InfoValue::text(quant_kernels().name)},
            {"quantKernels", InfoValue::text(available_quant_kernels())}};
  return c;
}

const int32_t* i32(const TensorView& t) { return t.present() ? t.as<const int32_t>() : nullptr; }
int32_t* i32_out(const TensorView& t) { return t.present() ? t.as<int32_t>() : nullptr; }
float* f32_out(const TensorView& t) { return t.present() ? t.as<float>() : nullptr; }
const float* f32(const TensorView& t) { return t.present() ? t.as<const float>() : nullptr; }

// A float tensor as f32: its own data, or a widened copy in `scratch`.
const float* as_f32(const TensorView& x, std::vector<float>& scratch) {
  if (x.dtype == DType::kF32) return x.as<const float>();
  scratch.resize(size_t(x.numel()));
  widen_to_f32(x, scratch.data());
  return scratch.data();
}

void write_stats(const TensorView& stats, const RouterStats& s) {
  if (!stats.present()) return;
  stats.as<float>()[0] = s.aux_loss;
  stats.as<float>()[1] = s.z_loss;
}

class CpuBackend final : public Backend {
 public:
  const Capabilities& capabilities() const override {
    static const Capabilities caps = describe();
    return caps;
  }
  Executor& executor() override { return executor_; }

  Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out) override {
    MOE_RETURN_IF_ERROR(cpu::pack_experts(src, gate, out));
    (*out)->backend = this;
    (*out)->batch_invariant = src.batch_invariant;  // the CPU kernels are row-count invariant either way
    return Status::ok();
  }
  Status pack_linear(const TensorView& w, const TensorView* bias, bool exact_f32,
                     std::unique_ptr<PackedLinear>* out) override {
    MOE_RETURN_IF_ERROR(cpu::pack_linear_precision(w, bias, exact_f32, out));
    (*out)->backend = this;
    return Status::ok();
  }
  Status create_kv_cache(const KvCacheShape& s, std::unique_ptr<KvCache>* out) override {
    MOE_RETURN_IF_ERROR(cpu::create_kv_cache(s.max_seq, s.num_kv_heads, s.head_dim, s.dtype, out));
    (*out)->backend = this;
    return Status::ok();
  }

  Status create_kv_pool(const KvPoolShape& s, std::unique_ptr<KvPool>* out) override {
    MOE_RETURN_IF_ERROR(cpu::create_kv_pool(s, out));
    (*out)->backend = this;
    return Status::ok();
  }

  Status route(const RouteArgs& a) override {
    MOE_RETURN_IF_ERROR(host("route", a));
    RouterStats st;
    MOE_RETURN_IF_ERROR(cpu::route(a.x, a.gate, a.params, i32_out(a.topk_ids), f32_out(a.topk_weights),
                                   i32_out(a.expert_counts), f32_out(a.logits), a.stats.present() ? &st : nullptr));
    write_stats(a.stats, st);
    return Status::ok();
  }
  Status permute(const PermuteArgs& a) override {
    MOE_RETURN_IF_ERROR(host("permute", a));
    const TensorView& ids = a.topk_ids;
    return cpu::permute(i32(ids), ids.dims[0], int(ids.dims[1]), a.num_experts, a.capacity, i32_out(a.expert_offsets),
                        i32_out(a.sorted_rows), i32_out(a.row_of), i32_out(a.dropped));
  }
  Status grouped_gemm(const GroupedGemmArgs& a) override {
    MOE_RETURN_IF_ERROR(host("grouped_gemm", a));
    MOE_RETURN_IF_ERROR(mine("grouped_gemm: the experts", a.experts));
    std::vector<float> scratch;
    return cpu::grouped_gemm(as_f32(a.x, scratch), a.x.dims[0], i32(a.sorted_rows), i32(a.expert_offsets), *a.experts,
                             f32_out(a.y));
  }
  Status combine(const CombineArgs& a) override {
    MOE_RETURN_IF_ERROR(host("combine", a));
    return cpu::combine(f32(a.y), a.y.dims[0], i32(a.row_of), f32(a.topk_weights), a.row_of.dims[0], int(a.row_of.dims[1]),
                        a.out, f32(a.shared), f32(a.shared_logit));
  }
  Status moe_forward(const MoeForwardArgs& a) override {
    MOE_RETURN_IF_ERROR(host("moe_forward", a));
    MOE_RETURN_IF_ERROR(mine("moe_forward: the experts", a.experts));
    if (!a.experts->has_gate) return Status::invalid("moe_forward: the experts were packed without their router gate");
    MoeLayerWeights layer;
    layer.experts = a.experts;
    layer.gate = packed_gate(*a.experts);
    if (a.shared) {
      MOE_RETURN_IF_ERROR(mine("moe_forward: the shared experts", a.shared));
      if (a.shared->num_experts != 1 || a.shared->d != a.experts->d)
        return Status::invalid("moe_forward: the shared experts must be one packed expert of the experts' d");
      layer.shared = a.shared;
      layer.shared_gate = packed_gate(*a.shared);
    }
    MoeForwardOutputs o;
    o.out = a.out;
    o.topk_ids = i32_out(a.topk_ids);
    o.topk_weights = f32_out(a.topk_weights);
    o.expert_counts = i32_out(a.expert_counts);
    o.dropped = i32_out(a.dropped);
    o.logits = f32_out(a.logits);
    RouterStats st;
    o.stats = a.stats.present() ? &st : nullptr;
    MOE_RETURN_IF_ERROR(cpu::moe_forward(layer, a.x, a.params, o));
    write_stats(a.stats, st);
    return Status::ok();
  }
  Status dense_ffn(const DenseFfnArgs& a) override {
    MOE_RETURN_IF_ERROR(host("dense_ffn", a));
    MOE_RETURN_IF_ERROR(mine("dense_ffn: the weights", a.weights));
    return cpu::dense_ffn(*a.weights, a.x, a.out);
  }
  Status merge_experts(const MergeExpertsArgs& a) override {
    if (a.p.size() != size_t(a.src.num_experts)) return Status::invalid("merge_experts: one weight per expert");
    return cpu::merge_experts(a.src, a.p.data(), a.out_w1, a.out_w3, a.out_w2);
  }
  Status quantize(const QuantizeArgs& a) override {
    MOE_RETURN_IF_ERROR(host("quantize", a));
    const int64_t cols = a.src.dim(-1), rows = cols ? a.src.numel() / cols : 0;
    return quant::quantize_rows(a.src.data, a.src.dtype, rows, cols, a.dst.dtype, a.dst.data);
  }
  Status dequantize(const QuantizeArgs& a) override {
    MOE_RETURN_IF_ERROR(host("dequantize", a));
    const int64_t cols = a.src.dim(-1), rows = cols ? a.src.numel() / cols : 0;
    return quant::dequantize_rows(a.src.data, a.src.dtype, rows, cols, a.dst.data, a.dst.dtype);
  }

  Status embedding(const EmbeddingArgs& a) override {
    MOE_RETURN_IF_ERROR(host("embedding", a));
    return cpu::embedding(a.table, i32(a.ids), a.ids.dims[0], a.out);
  }
  Status rms_norm(const RmsNormArgs& a) override {
    MOE_RETURN_IF_ERROR(host("rms_norm", a));
    return cpu::rms_norm(a.x, a.weight, a.eps, a.out);
  }
  Status linear(const LinearArgs& a) override {
    MOE_RETURN_IF_ERROR(host("linear", a));
    MOE_RETURN_IF_ERROR(mine("linear: the weights", a.w));
    return cpu::linear(a.x, *a.w, a.y);
  }
  Status rope(const RopeArgs& a) override {
    MOE_RETURN_IF_ERROR(host("rope", a));
    return cpu::rope(a.x, i32(a.positions), a.theta, a.out);
  }
  Status attention(const AttentionArgs& a) override {
    MOE_RETURN_IF_ERROR(host("attention", a));
    MOE_RETURN_IF_ERROR(mine("attention: the KV cache", a.cache));
    return cpu::attention(a.q, a.k, a.v, *a.cache, a.params, a.out);
  }
  Status paged_attention(const PagedAttentionArgs& a) override {
    MOE_RETURN_IF_ERROR(host("paged_attention", a));
    MOE_RETURN_IF_ERROR(mine("paged_attention: the KV pool", a.pool));
    return cpu::paged_attention(a);
  }
  Status add(const AddArgs& a) override {
    MOE_RETURN_IF_ERROR(host("add", a));
    return cpu::add(a.a, a.b, a.out);
  }
  Status sample(const SampleArgs& a) override {
    MOE_RETURN_IF_ERROR(host("sample", a));
    return cpu::sample(a);
  }
  Status cast(const CastArgs& a) override {
    MOE_RETURN_IF_ERROR(host("cast", a));
    if (a.src.numel() != a.dst.numel()) return Status::invalid("cast: src and dst differ in size");
    if (a.src.dtype == a.dst.dtype) {
      if (a.src.bytes() && a.src.data != a.dst.data) std::memmove(a.dst.data, a.src.data, a.src.bytes());
      return Status::ok();
    }
    const int64_t n = a.src.numel();
    constexpr int64_t kChunk = 1 << 16;
    parallel_for((n + kChunk - 1) / kChunk, [&](int64_t task, int) {
      const int64_t i1 = std::min(n, (task + 1) * kChunk);
      for (int64_t i = task * kChunk; i < i1; ++i) store_from_f32(a.dst.data, a.dst.dtype, size_t(i), load_as_f32(a.src.data, a.src.dtype, size_t(i)));
    });
    return Status::ok();
  }
  Status copy(const CopyArgs& a) override {
    MOE_RETURN_IF_ERROR(host("copy", a));
    if (a.src.bytes() != a.dst.bytes()) return Status::invalid("copy: src and dst differ in size");
    if (a.src.bytes()) std::memmove(a.dst.data, a.src.data, a.src.bytes());
    return Status::ok();
  }

  Status measure_read_bandwidth(size_t bytes, int reps, double* gbs) override {
    return moe::measure_read_bandwidth(bytes, reps, gbs);
  }
  Status measure_fma_peak(double seconds, double* gflops) override { return moe::measure_fma_peak(seconds, gflops); }

 private:
  // Every tensor of a CPU op is host memory.
  template <class Args>
  Status host(const char* op, Args a) {
    bool device = false;
    a.visit([&](TensorView& t, Dir) { device = device || (t.present() && t.device); });
    if (device) return Status::invalid(std::string(op) + ": the CPU backend takes host tensors only");
    return Status::ok();
  }
  // A packed object of another backend is never cast to the CPU's type.
  template <class T>
  Status mine(const char* what, const T* obj) {
    if (!obj) return Status::invalid(std::string(what) + " are missing");
    if (obj->backend != this)
      return Status::invalid(std::string(what) + " belong to the '" + (obj->backend ? obj->backend->name() : "?") +
                             "' backend, not the CPU's");
    return Status::ok();
  }

  CpuExecutor executor_;
};

}  // namespace

Backend& instance() {
  static CpuBackend* b = new CpuBackend();  // leaked: pool threads may still run at exit
  return *b;
}

}  // namespace cpu
}  // namespace moe
