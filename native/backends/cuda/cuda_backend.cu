// moe-kernels CUDA backend: moe::Backend over the device ops of device_ops.h.
//
// Every op is implemented once, on device tensors. A call whose tensors (some or all) are host memory
// goes through one generic adapter, staged(): it lists the op's tensors with Args::visit, uploads the
// host inputs through pinned staging, gives the host outputs zeroed device memory, runs the device op,
// and downloads those outputs when the call completes. So a host-tensor call costs one copy per host
// tensor each way, and there is no second set of host-memory ops to keep in step.
//
// Streams: calls with device tensors run on the one tensor stream, in call order. Calls with host
// tensors only run on the layer's own stream when the op has packed experts (so that calls on
// different layers overlap on the device), else on the tensor stream.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device_ops.h"

namespace moe {
namespace cuda {

Executor& executor();  // backend_executor.cu

namespace {

// The rows of an expert-parallel exchange handed to the transport, on the op's stream: per rank, the
// byte count and offset of its run (rows are contiguous, in rank order).
Status all_to_all_rows(const AllToAllArgs& a, cudaStream_t s) {
  if (!a.comm) return Status::invalid("all_to_all: no communicator");
  const size_t n = size_t(a.comm->size());
  if (a.send_rows.size() != n || a.recv_rows.size() != n)
    return Status::invalid("all_to_all: one row count per rank (" + std::to_string(n) + ") is needed");
  auto row_bytes = [](const TensorView& t) {
    int64_t b = int64_t(dtype_size(t.dtype));
    for (int i = 1; i < t.ndim; ++i) b *= t.dims[i];
    return b;
  };
  const int64_t sb = row_bytes(a.send), rb = row_bytes(a.recv);
  if (sb != rb) return Status::invalid("all_to_all: send and recv rows differ in size");
  std::vector<int64_t> sc(n), so(n), rc(n), ro(n);
  int64_t s_at = 0, r_at = 0;
  for (size_t p = 0; p < n; ++p) {
    so[p] = s_at, sc[p] = a.send_rows[p] * sb, s_at += sc[p];
    ro[p] = r_at, rc[p] = a.recv_rows[p] * rb, r_at += rc[p];
  }
  if (s_at > int64_t(a.send.bytes()) || r_at > int64_t(a.recv.bytes()))
    return Status::invalid("all_to_all: the row counts exceed the tensors");
  return a.comm->all_to_all_v(a.send.data, sc.data(), so.data(), a.recv.data, rc.data(), ro.data(), static_cast<void*>(s));
}

// precision 'exact' with 16-bit weights: the CUDA kernels read the activations in the weights' type
// (tensor cores), so they cannot keep f32 activations.
Status exact_unsupported() {
  return Status::unsupported("precision 'exact' (f32 activations against f16/bf16 weights) is a CPU option: the CUDA kernels read the activations in the weights' 16-bit type");
}

template <class Args, class Fn>
Status staged(const Args& in, cudaStream_t s, Fn&& fn) {
  Args a = in;
  struct Slot {
    TensorView* view;
    Dir dir;
    size_t off;
    void* host;
    size_t bytes;
  };
  std::vector<Slot> slots;
  Carve carve;
  a.visit([&](TensorView& t, Dir dir) {
    if (!t.present() || t.device) return;
    const size_t n = t.bytes();
    slots.push_back(Slot{&t, dir, carve.add(n), t.data, n});
  });
  Call& call = *current_call();
  call.use(s);
  if (slots.empty()) return fn(a, s);
  Scratch dev(s);
  const size_t base = dev.add(carve.total());
  MOE_RETURN_IF_ERROR(dev.allocate());
  PinnedBlock pin;
  MOE_RETURN_IF_ERROR(pinned_acquire(carve.total(), &pin));
  call.keep(pin);
  unsigned char* d = dev.at<unsigned char>(base);
  unsigned char* h = static_cast<unsigned char*>(pin.data);
  for (Slot& sl : slots) {
    sl.view->data = d + sl.off;
    sl.view->device = true;
    if (sl.bytes == 0) continue;
    if (sl.dir == Dir::kIn) {
      std::memcpy(h + sl.off, sl.host, sl.bytes);
      MOE_RETURN_IF_ERROR(copy_async(d + sl.off, h + sl.off, sl.bytes, cudaMemcpyHostToDevice, s));
    } else {  // an op need not write every element (e.g. nothing at T = 0): zeros, never garbage
      MOE_CUDA_TRY(cudaMemsetAsync(d + sl.off, 0, sl.bytes, s), "zeroing an output");
    }
  }
  MOE_RETURN_IF_ERROR(fn(a, s));
  for (const Slot& sl : slots) {
    if (sl.dir != Dir::kOut || sl.bytes == 0) continue;
    MOE_RETURN_IF_ERROR(copy_async(h + sl.off, d + sl.off, sl.bytes, cudaMemcpyDeviceToHost, s));
    unsigned char* src = h + sl.off;
    void* dst = sl.host;
    const size_t n = sl.bytes;
    call.after([dst, src, n] { std::memcpy(dst, src, n); });
  }
  return Status::ok();
}

template <class Args>
bool all_host(Args a) {
  bool host = true;
  a.visit([&](TensorView& t, Dir) { host = host && (!t.present() || !t.device); });
  return host;
}

class CudaBackend final : public Backend {
 public:
  const Capabilities& capabilities() const override { return cuda::capabilities(); }
  Executor& executor() override { return cuda::executor(); }

  Status alloc(size_t bytes, std::shared_ptr<Buffer>* out) override {
    MOE_RETURN_IF_ERROR(cuda::alloc(bytes, out));
    (*out)->backend = this;
    return Status::ok();
  }
  Status copy(const CopyArgs& a) override {
    MOE_RETURN_IF_ERROR(ready());
    if (a.src.bytes() != a.dst.bytes()) return Status::invalid("copy: src and dst differ in size");
    const size_t n = a.src.bytes();
    CallScope scope;
    cudaStream_t s = nullptr;
    Status st = tensor_stream(&s);
    if (st.is_ok()) {
      MOE_EMU_SERIAL;
      scope.call().use(s);
      if (a.src.device && a.dst.device)
        st = n ? launched(cudaMemcpyAsync(a.dst.data, a.src.data, n, cudaMemcpyDeviceToDevice, s), "copying on the device")
               : Status::ok();
      else if (a.dst.device)
        st = upload_staged(a.dst.data, a.src.data, n, s);
      else if (a.src.device)
        st = download_staged(a.dst.data, a.src.data, n, s);
      else if (n)
        std::memmove(a.dst.data, a.src.data, n);
    }
    return scope.finish(st);
  }

  Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out) override {
    if (src.exact_f32 && dtype_size(src.dtype) == 2) return exact_unsupported();
    MOE_RETURN_IF_ERROR(cuda::pack_experts(src, gate, out));
    (*out)->backend = this;
    (*out)->batch_invariant = src.batch_invariant;  // read by the grouped GEMMs (DeviceExperts::layer)
    return Status::ok();
  }
  Status pack_linear(const TensorView& w, const TensorView* bias, bool exact_f32,
                     std::unique_ptr<PackedLinear>* out) override {
    if (exact_f32 && is_float(w.dtype) && dtype_size(w.dtype) == 2) return exact_unsupported();
    MOE_RETURN_IF_ERROR(cuda::pack_linear(w, bias, out));
    (*out)->backend = this;
    return Status::ok();
  }
  Status create_kv_pool(const KvPoolShape& shape, std::unique_ptr<KvPool>* out) override {
    MOE_RETURN_IF_ERROR(cuda::create_kv_pool(shape, out));
    (*out)->backend = this;
    return Status::ok();
  }
  Status create_kv_cache(const KvCacheShape& shape, std::unique_ptr<KvCache>* out) override {
    MOE_RETURN_IF_ERROR(cuda::create_kv_cache(shape, out));
    (*out)->backend = this;
    return Status::ok();
  }

  Status route(const RouteArgs& a) override { return run(a, nullptr, cuda::route); }
  Status permute(const PermuteArgs& a) override { return run(a, nullptr, cuda::permute); }
  Status grouped_gemm(const GroupedGemmArgs& a) override {
    MOE_RETURN_IF_ERROR(mine("grouped_gemm: the experts", a.experts));
    return run(a, a.experts, cuda::grouped_gemm);
  }
  Status combine(const CombineArgs& a) override { return run(a, nullptr, cuda::combine); }
  Status moe_forward(const MoeForwardArgs& a) override {
    MOE_RETURN_IF_ERROR(mine("moe_forward: the experts", a.experts));
    if (a.shared) MOE_RETURN_IF_ERROR(mine("moe_forward: the shared experts", a.shared));
    return run(a, a.experts, cuda::moe_forward);
  }
  Status dense_ffn(const DenseFfnArgs& a) override {
    MOE_RETURN_IF_ERROR(mine("dense_ffn: the weights", a.weights));
    return run(a, a.weights, cuda::dense_ffn);
  }

  Status embedding(const EmbeddingArgs& a) override { return run(a, nullptr, cuda::embedding); }
  Status rms_norm(const RmsNormArgs& a) override { return run(a, nullptr, cuda::rms_norm); }
  Status linear(const LinearArgs& a) override {
    MOE_RETURN_IF_ERROR(mine("linear: the weights", a.w));
    return run(a, nullptr, cuda::linear);
  }
  Status rope(const RopeArgs& a) override { return run(a, nullptr, cuda::rope); }
  Status attention(const AttentionArgs& a) override {
    MOE_RETURN_IF_ERROR(mine("attention: the KV cache", a.cache));
    return run(a, nullptr, cuda::attention);
  }
  Status paged_attention(const PagedAttentionArgs& a) override {
    MOE_RETURN_IF_ERROR(mine("paged_attention: the KV pool", a.pool));
    return run(a, nullptr, cuda::paged_attention);
  }
  Status add(const AddArgs& a) override { return run(a, nullptr, cuda::add); }
  Status sample(const SampleArgs& a) override { return run(a, nullptr, cuda::sample); }
  Status cast(const CastArgs& a) override { return run(a, nullptr, cuda::cast); }
  Status all_to_all(const AllToAllArgs& a) override { return run(a, nullptr, all_to_all_rows); }

  Status time_moe_forward(const PackedExperts& w, int64_t T, int top_k, int iters, double* ms) override {
    MOE_RETURN_IF_ERROR(mine("time_moe_forward: the experts", &w));
    return cuda::time_moe_forward(w, T, top_k, iters, ms);
  }
  Status time_dense_ffn(const PackedExperts& w, int64_t T, int iters, double* ms) override {
    MOE_RETURN_IF_ERROR(mine("time_dense_ffn: the weights", &w));
    return cuda::time_dense_ffn(w, T, iters, ms);
  }

  TransferStats transfer_stats() const override { return cuda::transfer_stats(); }

 private:
  // The op on its stream, host tensors staged; completed by the executor (or here, outside one).
  template <class Args, class Fn>
  Status run(const Args& a, const PackedExperts* layer, Fn fn) {
    MOE_RETURN_IF_ERROR(ready());
    CallScope scope;
    cudaStream_t s = nullptr;
    Status st = Status::ok();
    if (layer && all_host(a))
      s = device_experts(*layer).stream;
    else
      st = tensor_stream(&s);
    if (st.is_ok()) st = staged(a, s, fn);
    return scope.finish(st);
  }

  // A packed object of another backend is never cast to this one's types.
  template <class T>
  Status mine(const char* what, const T* obj) {
    if (!obj) return Status::invalid(std::string(what) + " are missing");
    if (obj->backend != this)
      return Status::invalid(std::string(what) + " belong to the '" + (obj->backend ? obj->backend->name() : "?") +
                             "' backend; this op runs on '" + kName + "': pack them with backend '" + kName + "'");
    return Status::ok();
  }
};

}  // namespace

Backend& instance() {
  static CudaBackend* b = new CudaBackend();  // leaked: executor threads may still run at exit
  return *b;
}

}  // namespace cuda
}  // namespace moe
