// moe-kernels CUDA backend: device time of one call for the bench, averaged over `iters` calls between
// two CUDA events, on device-resident inputs (random normal x of the weights' dtype): no copies, no
// host round trips inside the loop. Runs on the layer's own stream and waits for it (a bench call, not
// an op: nothing else may be running on the device while it measures).
#include <cmath>
#include <string>
#include <vector>

#include "device_ops.h"

namespace moe {
namespace cuda {

namespace {

class Event {
 public:
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  Status create() {
    MOE_CUDA_TRY(cudaEventCreate(&e_), "cudaEventCreate");
    return Status::ok();
  }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

Status sync(cudaStream_t s) {
  MOE_CUDA_TRY(cudaStreamSynchronize(s), "running the kernels");
  return Status::ok();
}

// Fills a device buffer with n values of dtype t drawn from N(0,1) on the host (fixed seed).
Status upload_randn(void* dst, int64_t n, DType t, cudaStream_t s) {
  std::vector<float> h32(static_cast<size_t>(n));
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&] {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  };
  for (auto& v : h32) {
    const double u1 = next() + 1e-300, u2 = next();
    v = float(std::sqrt(-2 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  if (t == DType::kF32) {
    MOE_CUDA_TRY(cudaMemcpyAsync(dst, h32.data(), size_t(n) * 4, cudaMemcpyHostToDevice, s), "uploading x");
    return sync(s);
  }
  std::vector<uint16_t> h16(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) h16[size_t(i)] = t == DType::kF16 ? f32_to_f16(h32[size_t(i)]) : f32_to_bf16(h32[size_t(i)]);
  MOE_CUDA_TRY(cudaMemcpyAsync(dst, h16.data(), size_t(n) * 2, cudaMemcpyHostToDevice, s), "uploading x");
  return sync(s);
}

template <class Fn>
Status time_loop(cudaStream_t s, int iters, double* ms_per_call, Fn&& call) {
  if (iters < 1) return Status::invalid("iters must be at least 1");
  MOE_RETURN_IF_ERROR(call());  // warm-up (first-launch costs, lazy module loading)
  MOE_RETURN_IF_ERROR(sync(s));
  Event a, b;
  MOE_RETURN_IF_ERROR(a.create());
  MOE_RETURN_IF_ERROR(b.create());
  MOE_CUDA_TRY(cudaEventRecord(a.get(), s), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) MOE_RETURN_IF_ERROR(call());
  MOE_CUDA_TRY(cudaEventRecord(b.get(), s), "cudaEventRecord");
  MOE_CUDA_TRY(cudaEventSynchronize(b.get()), "running the timed kernels");
  float ms = 0;
  MOE_CUDA_TRY(cudaEventElapsedTime(&ms, a.get(), b.get()), "cudaEventElapsedTime");
  *ms_per_call = double(ms) / iters;
  return Status::ok();
}

}  // namespace

Status time_moe_forward(const PackedExperts& pw, int64_t T, int top_k, int iters, double* ms_per_call) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const DeviceExperts& w = device_experts(pw);
  if (!w.gate) return Status::invalid("time_moe_forward needs experts packed with their router gate");
  if (T < 1 || top_k < 1 || top_k > w.num_experts) return Status::invalid("time_moe_forward: bad T or top_k");
  const MoeDeviceLayer L = w.layer();
  const size_t fwd = moe_forward_workspace_bytes(L, T, top_k);
  if (fwd == 0) return Status::invalid("time_moe_forward: shape not supported");
  const DType xt = is_quant(w.dtype) ? DType::kBF16 : w.dtype;  // quantised experts: bf16 activations
  const size_t xb = size_t(T) * w.d * dtype_size(xt);
  cudaStream_t s = w.stream;
  Status st;
  {
    Scratch sc(s);
    const size_t o_ws = sc.add(fwd), o_x = sc.add(xb), o_out = sc.add(xb);
    MOE_RETURN_IF_ERROR(sc.allocate());
    unsigned char* x = sc.at<unsigned char>(o_x);
    MOE_RETURN_IF_ERROR(upload_randn(x, T * w.d, xt, s));
    const DevDType dt = dev_dtype(xt);
    st = time_loop(s, iters, ms_per_call, [&]() {
      return launched(launch_moe_forward(L, x, dt, T, top_k, true, sc.at<void>(o_out), dt, nullptr, nullptr,
                                         sc.at<void>(o_ws), fwd, s),
                      "MoE forward");
    });
  }
  const Status done = sync(s);  // the scratch is freed stream-ordered: wait before returning
  return st.is_ok() ? done : st;
}

Status time_dense_ffn(const PackedExperts& pw, int64_t T, int iters, double* ms_per_call) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const DeviceExperts& w = device_experts(pw);
  if (w.num_experts != 1 || T < 1 || T > (int64_t(1) << 30)) return Status::invalid("time_dense_ffn: one expert and T >= 1");
  if (is_quant(w.dtype)) return Status::unsupported(std::string("time_dense_ffn of quantised weights on ") + kName);
  const DevDType dt = dev_dtype(w.dtype);
  const size_t gws = grouped_gemm_workspace_bytes(T, T, w.d, w.f, dt);
  if (gws == 0) return Status::invalid("time_dense_ffn: shape not supported");
  const size_t xb = size_t(T) * w.d * dtype_size(w.dtype);
  cudaStream_t s = w.stream;
  Status st;
  {
    Scratch sc(s);
    const size_t o_x = sc.add(xb), o_off = sc.add(2 * sizeof(int32_t)), o_y = sc.add(size_t(T) * w.d * 4), o_ws = sc.add(gws);
    MOE_RETURN_IF_ERROR(sc.allocate());
    int32_t* off = sc.at<int32_t>(o_off);
    MOE_RETURN_IF_ERROR(launched(launch_row_span(off, T, s), "dense FFN offsets"));
    MOE_RETURN_IF_ERROR(upload_randn(sc.at<void>(o_x), T * w.d, w.dtype, s));
    st = time_loop(s, iters, ms_per_call, [&]() {
      return launched(launch_grouped_gemm(sc.at<void>(o_x), dt, T, nullptr, off, T, w.packed, 1, w.d, w.f, dt,
                                          sc.at<float>(o_y), sc.at<void>(o_ws), gws, s),
                      "dense FFN");
    });
  }
  const Status done = sync(s);
  return st.is_ok() ? done : st;
}

}  // namespace cuda
}  // namespace moe
