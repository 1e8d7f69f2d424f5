// moe-kernels CUDA: the backend's host side (moe/cuda_backend.h). Host code only: device memory,
// streams, copies, and calls to the launchers of routing.cu, permute.cu, grouped_gemm.cu,
// combine.cu, router.cu and moe_forward.cu.
//
// Built twice from this one file: by nvcc with static cudart (backend "cuda"), and by g++ against
// native/emu with -DMOE_CUDA_EMU (backend "cuda-emu", test builds), where the runtime API functions
// used below are the emulator's.
//
// Rules: every op runs on a stream of its own (a layer's forward on the layer's stream), waits for
// that stream only, and frees its scratch stream-ordered (cudaFreeAsync), so nothing here
// synchronises the whole device. Errors come back as a Status naming the step and the CUDA error;
// nothing throws or exits.
// Standard and moe/ headers first: under the emulator, cuda_compat.cuh defines CUDA's keyword
// macros (__noinline__, ...), which libstdc++'s <memory> spells as attributes of its own.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "moe/cuda_backend.h"

#include "cuda_compat.cuh"
#include "launchers.h"
#include "decoder_launchers.h"

namespace moe {
namespace cuda {

namespace {

#if defined(MOE_CUDA_EMU)
constexpr const char* kName = "cuda-emu";
#else
constexpr const char* kName = "cuda";
#endif
constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

Status from_cuda(cudaError_t e, const char* what) {
  std::string m = std::string(kName) + ": " + what + " failed: " + cudaGetErrorName(e) + ": " + moe_error_string(e);
  cudaGetLastError();  // a non-sticky error must not be reported again by the next call
  if (e == cudaErrorMemoryAllocation) return Status::oom(m);
  if (e == cudaErrorInvalidValue) return Status::invalid(m);
  return Status::internal(m);
}

#define MOE_CUDA_TRY(expr, what)                            \
  do {                                                      \
    const cudaError_t moe_err_ = (expr);                    \
    if (moe_err_ != cudaSuccess) return from_cuda(moe_err_, what); \
  } while (0)

#if defined(MOE_CUDA_EMU)
// The emulator runs a launch on the calling thread; one op at a time keeps its per-thread state
// simple and costs nothing that matters in tests.
std::mutex g_emu_mu;
#define MOE_EMU_SERIAL std::lock_guard<std::mutex> moe_emu_lock_(g_emu_mu)
#else
#define MOE_EMU_SERIAL
#endif

DevDType dev_dtype(DType t) {
  return t == DType::kF16 ? DevDType::kF16 : t == DType::kBF16 ? DevDType::kBF16 : DevDType::kF32;
}

// Peak numbers for the bench, from the datasheets of each architecture (dense, no sparsity).
struct ArchPeak {
  int tc_flops_per_clk_sm;   // f16/bf16 mma with f32 accumulation
  int fma_flops_per_clk_sm;  // f32 FMA (2 flops per lane)
};
ArchPeak arch_peak(int major, int minor) {
  if (major == 8 && minor == 0) return {2048, 128};  // A100: 64 FP32 lanes/SM
  if (major == 8) return {1024, 256};                // A10/A40/L40 class (GeForce: half the TC rate)
  if (major == 9) return {4096, 256};                // H100/H200 (wgmma rate; mma.sync reaches less)
  if (major >= 10) return {4096, 256};               // newer: at least Hopper's rate
  return {0, 0};
}

DeviceInfo probe() {
  DeviceInfo i;
  i.compiled = true;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice)
      i.reason = std::string("no usable NVIDIA driver or device (") + cudaGetErrorName(e) +
                 ": libcuda.so.1 not found, too old, or no GPU)";
    else
      i.reason = std::string("the CUDA runtime could not start: ") + cudaGetErrorName(e) + ": " +
                 cudaGetErrorString(e);
    return i;
  }
  if (n < 1) {
    i.reason = "no CUDA device found";
    return i;
  }
  int dev = 0;
  if (const char* s = std::getenv("MOE_CUDA_DEVICE")) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (!*s || *end || v < 0 || v >= n) {
      i.reason = std::string("MOE_CUDA_DEVICE='") + s + "' is not a device ordinal in [0, " + std::to_string(n) + ")";
      return i;
    }
    dev = int(v);
  }
  i.device = dev;
  if ((e = cudaSetDevice(dev)) != cudaSuccess) {
    cudaGetLastError();
    i.reason = std::string("cudaSetDevice(") + std::to_string(dev) + ") failed: " + cudaGetErrorName(e);
    return i;
  }
  auto attr = [&](cudaDeviceAttr a) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, a, dev) != cudaSuccess) cudaGetLastError(), v = 0;
    return v;
  };
  i.cc_major = attr(cudaDevAttrComputeCapabilityMajor);
  i.cc_minor = attr(cudaDevAttrComputeCapabilityMinor);
  i.sm_count = attr(cudaDevAttrMultiProcessorCount);
#if defined(MOE_CUDA_EMU)
  i.emulated = true;
  i.name = "CUDA emulator (native/emu) with sm_" + std::to_string(i.cc_major * 10 + i.cc_minor) + " semantics";
  i.available = true;
  i.reason = "the CUDA kernels run on the CPU emulator (a test build)";
#else
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
    i.name = prop.name;
    i.total_memory = prop.totalGlobalMem;
  } else {
    cudaGetLastError();
  }
  const double mem_khz = attr(cudaDevAttrMemoryClockRate), bus_bits = attr(cudaDevAttrGlobalMemoryBusWidth);
  i.peak_gbps = 2.0 * mem_khz * 1e3 * (bus_bits / 8) / 1e9;  // double data rate
  const double sm_ghz = attr(cudaDevAttrClockRate) / 1e6;
  const ArchPeak pk = arch_peak(i.cc_major, i.cc_minor);
  i.peak_tc_tflops = pk.tc_flops_per_clk_sm * double(i.sm_count) * sm_ghz / 1e3;
  i.peak_fma_tflops = pk.fma_flops_per_clk_sm * double(i.sm_count) * sm_ghz / 1e3;
  if (i.cc_major < 8) {
    i.reason = "device " + std::to_string(dev) + " (" + i.name + ") has compute capability " +
               std::to_string(i.cc_major) + "." + std::to_string(i.cc_minor) +
               "; the kernels of this build need 8.0 or newer";
    return i;
  }
  i.available = true;
  i.reason = "device " + std::to_string(dev) + ": " + i.name;
#endif
  return i;
}

Status ready() {
  const DeviceInfo& i = device_info();
  if (!i.available) return Status::unsupported(std::string("backend '") + kName + "' is not available: " + i.reason);
  MOE_CUDA_TRY(cudaSetDevice(i.device), "cudaSetDevice");  // the current device is per host thread
  return Status::ok();
}

// A non-blocking stream owned by one op call.
class Stream {
 public:
  Stream() = default;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (s_) cudaStreamDestroy(s_);
  }
  Status create() {
    MOE_CUDA_TRY(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreate");
    return Status::ok();
  }
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

// Offsets of 256-byte aligned pieces laid out one after another from `start`, in the order they are
// added: the one layout rule of every buffer below (per-call scratch and layer workspaces).
class Carve {
 public:
  explicit Carve(size_t start = 0) : total_(align_up(start)) {}
  size_t add(size_t bytes) {
    const size_t at = total_;
    total_ += align_up(bytes);
    return at;
  }
  size_t total() const { return total_; }

 private:
  size_t total_;
};

// One stream-ordered device allocation carved into pieces: add() the pieces, then allocate(); freed
// on its stream when it goes out of scope.
class Scratch {
 public:
  explicit Scratch(cudaStream_t s) : s_(s) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (base_) cudaFreeAsync(base_, s_);
  }
  size_t add(size_t bytes) { return carve_.add(bytes); }
  Status allocate() {
    const size_t n = carve_.total();
    if (n == 0) return Status::ok();
    cudaError_t e = cudaMallocAsync(&base_, n, s_);
    if (e != cudaSuccess) {
      base_ = nullptr;
      return from_cuda(e, ("allocating " + std::to_string(n) + " bytes of device scratch").c_str());
    }
    return Status::ok();
  }
  template <class T> T* at(size_t off) const { return reinterpret_cast<T*>(static_cast<unsigned char*>(base_) + off); }

 private:
  cudaStream_t s_;
  void* base_ = nullptr;
  Carve carve_;
};

// Every host <-> device copy an op makes (inputs, results, per-call gates) goes through copy_async
// and is counted (transfer_stats); the one-time weight uploads of pack_* are not.
struct CopyCount {
  std::atomic<uint64_t> calls{0}, bytes{0};
};
CopyCount g_to_device, g_to_host;

Status copy_async(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
  if (n == 0) return Status::ok();
  const bool up = kind == cudaMemcpyHostToDevice;
  MOE_CUDA_TRY(cudaMemcpyAsync(dst, src, n, kind, s), up ? "copying to the device" : "copying from the device");
  CopyCount& c = up ? g_to_device : g_to_host;
  c.calls.fetch_add(1, std::memory_order_relaxed);
  c.bytes.fetch_add(n, std::memory_order_relaxed);
  return Status::ok();
}
Status h2d(void* dst, const void* src, size_t n, cudaStream_t s) { return copy_async(dst, src, n, cudaMemcpyHostToDevice, s); }
Status d2h(void* dst, const void* src, size_t n, cudaStream_t s) { return copy_async(dst, src, n, cudaMemcpyDeviceToHost, s); }
Status sync(cudaStream_t s) {
  MOE_CUDA_TRY(cudaStreamSynchronize(s), "running the kernels");
  return Status::ok();
}
Status launched(cudaError_t e, const char* what) {
  if (e != cudaSuccess) return from_cuda(e, what);
  return Status::ok();
}

size_t tensor_bytes(const TensorView& t) { return size_t(t.numel()) * dtype_size(t.dtype); }

// A float tensor as f32 on the host (a copy only when it is not f32 already).
const float* as_f32(const TensorView& t, std::vector<float>* tmp) {
  if (t.dtype == DType::kF32) return t.as<const float>();
  tmp->resize(size_t(t.numel()));
  widen_to_f32(t, tmp->data());
  return tmp->data();
}

// Experts on the device: packed W13/W2 (grouped_gemm_pack's layout), the router gate as f32 when it
// was given, and the layer's stream with a workspace that grows to the largest call.
class DeviceExperts final : public PackedExperts {
 public:
  ~DeviceExperts() override {
    if (ready().is_ok()) {
      if (stream) cudaStreamSynchronize(stream);
      if (workspace) cudaFreeAsync(workspace, stream);
      if (stream) cudaStreamSynchronize(stream), cudaStreamDestroy(stream);
      // cudaFree of the weights may wait for the device: it runs at dispose, never inside an op.
      if (packed) cudaFree(packed);
      if (gate) cudaFree(gate);
    }
  }
  size_t bytes() const override { return packed_bytes + gate_bytes; }
  const char* backend() const override { return kName; }

  MoeDeviceLayer layer() const {
    MoeDeviceLayer l;
    l.num_experts = num_experts;
    l.d = d;
    l.f = f;
    l.w_dtype = dev_dtype(dtype);
    l.gate = gate;
    l.packed = packed;
    return l;
  }
  // Grows the workspace to at least n bytes (stream-ordered). Call with `mu` held.
  Status reserve(size_t n) const {
    if (n <= workspace_bytes) return Status::ok();
    if (workspace) cudaFreeAsync(workspace, stream), workspace = nullptr, workspace_bytes = 0;
    MOE_CUDA_TRY(cudaMallocAsync(&workspace, n, stream), ("allocating a " + std::to_string(n) + "-byte layer workspace").c_str());
    workspace_bytes = n;
    return Status::ok();
  }

  void* packed = nullptr;
  size_t packed_bytes = 0;
  float* gate = nullptr;
  size_t gate_bytes = 0;
  cudaStream_t stream = nullptr;
  // Per-call state of const experts: one call at a time on the layer's stream and workspace.
  mutable std::mutex mu;
  mutable void* workspace = nullptr;
  mutable size_t workspace_bytes = 0;
};

// The routing of MoeForwardParams as the device launcher takes it (noise gate pointer set by the caller).
MoeDeviceRouting device_routing(const MoeForwardParams& p) {
  MoeDeviceRouting R;
  R.top_k = p.route.top_k;
  R.normalize = p.route.normalize;
  R.capacity = p.capacity;
  R.capacity_factor = p.capacity_factor;
  R.eval_capacity_factor = p.eval_capacity_factor;
  R.decode = p.decode;
  R.noise_seed = p.route.noise_seed;
  R.random_routing = p.route.random_routing;
  R.random_seed = p.route.random_seed;
  return R;
}

Status device_experts(const PackedExperts& w, const DeviceExperts** out) {
  if (std::strcmp(w.backend(), kName) != 0)
    return Status::invalid(std::string("the experts were packed by the '") + w.backend() +
                           "' backend; this op runs on '" + kName + "': pack them with backend '" + kName + "'");
  *out = static_cast<const DeviceExperts*>(&w);
  return Status::ok();
}

}  // namespace

const DeviceInfo& device_info() {
  static const DeviceInfo info = probe();  // thread-safe static initialisation
  return info;
}

const char* backend_name() { return kName; }

TransferStats transfer_stats() {
  TransferStats t;
  t.to_device_calls = g_to_device.calls.load(std::memory_order_relaxed);
  t.to_device_bytes = g_to_device.bytes.load(std::memory_order_relaxed);
  t.to_host_calls = g_to_host.calls.load(std::memory_order_relaxed);
  t.to_host_bytes = g_to_host.bytes.load(std::memory_order_relaxed);
  return t;
}

// ---- route ----------------------------------------------------------------------------------------
// Router logits -> (noisy logits) -> softmax + top-k -> (GShard random routing) -> counts and
// losses (router_stats.cu), all on the device: the kernels launch_moe_forward chains, one by one.
Status route(const TensorView& x, const TensorView& gate, const RouteParams& p, int32_t* topk_ids,
             float* topk_weights, int32_t* expert_counts, float* logits, RouterStats* stats) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const int64_t T = x.dims[0], d = x.dims[1];
  const int E = int(gate.dims[0]), k = p.top_k;
  if (p.random_routing && k != 2) return Status::invalid("route: random routing needs top_k == 2");
  const bool noisy = p.noise_gate.data != nullptr;
  if (T == 0) {
    if (expert_counts) std::memset(expert_counts, 0, sizeof(int32_t) * size_t(E));
    if (stats) *stats = RouterStats();
    return Status::ok();
  }
  std::vector<float> gate32, noise32;
  const float* g = as_f32(gate, &gate32);
  const float* gn = noisy ? as_f32(p.noise_gate, &noise32) : nullptr;
  const size_t sws = router_stats_workspace_bytes(T, E);
  if (sws == 0) return Status::invalid("route: shape not supported on " + std::string(kName));
  Stream st;
  MOE_RETURN_IF_ERROR(st.create());
  Scratch s(st.get());
  const size_t gb = size_t(E) * d * 4, lb = size_t(T) * E * 4, kb = size_t(T) * k * 4;
  const size_t o_x = s.add(tensor_bytes(x)), o_g = s.add(gb), o_gn = s.add(noisy ? gb : 0), o_l = s.add(lb),
               o_nl = s.add(noisy ? lb : 0), o_noisy = s.add(noisy ? lb : 0), o_i = s.add(kb), o_w = s.add(kb),
               o_c = s.add(size_t(E) * 4), o_st = s.add(2 * 4), o_ws = s.add(sws);
  MOE_RETURN_IF_ERROR(s.allocate());
  cudaStream_t q = st.get();
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_x), x.data, tensor_bytes(x), q));
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_g), g, gb, q));
  MOE_RETURN_IF_ERROR(launched(launch_router_logits(s.at<void>(o_x), dev_dtype(x.dtype), s.at<float>(o_g), T, d, E,
                                                    s.at<float>(o_l), q),
                               "router logits"));
  const float* ranked = s.at<float>(o_l);
  if (noisy) {
    MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_gn), gn, gb, q));
    MOE_RETURN_IF_ERROR(launched(launch_router_logits(s.at<void>(o_x), dev_dtype(x.dtype), s.at<float>(o_gn), T, d,
                                                      E, s.at<float>(o_nl), q),
                                 "noise logits"));
    MOE_RETURN_IF_ERROR(launched(launch_noisy_logits(s.at<float>(o_l), s.at<float>(o_nl), T, E, p.noise_seed,
                                                     s.at<float>(o_noisy), q),
                                 "noisy logits"));
    ranked = s.at<float>(o_noisy);
  }
  MOE_RETURN_IF_ERROR(launched(launch_softmax_topk(ranked, T, E, k, p.normalize, s.at<int32_t>(o_i), s.at<float>(o_w), q),
                               "softmax + top-k"));
  if (p.random_routing)
    MOE_RETURN_IF_ERROR(launched(launch_random_routing(s.at<int32_t>(o_i), s.at<float>(o_w), T, k, p.random_seed, q),
                                 "random routing"));
  if (expert_counts || stats)
    MOE_RETURN_IF_ERROR(launched(launch_router_stats(s.at<float>(o_l), s.at<int32_t>(o_i), T, E, k,
                                                     expert_counts ? s.at<int32_t>(o_c) : nullptr,
                                                     stats ? s.at<float>(o_st) : nullptr, s.at<void>(o_ws), sws, q),
                                 "router statistics"));
  float st2[2] = {0, 0};
  MOE_RETURN_IF_ERROR(d2h(topk_ids, s.at<int32_t>(o_i), kb, q));
  MOE_RETURN_IF_ERROR(d2h(topk_weights, s.at<float>(o_w), kb, q));
  if (logits) MOE_RETURN_IF_ERROR(d2h(logits, s.at<float>(o_l), lb, q));
  if (expert_counts) MOE_RETURN_IF_ERROR(d2h(expert_counts, s.at<int32_t>(o_c), size_t(E) * 4, q));
  if (stats) MOE_RETURN_IF_ERROR(d2h(st2, s.at<float>(o_st), sizeof st2, q));
  MOE_RETURN_IF_ERROR(sync(q));
  if (stats) stats->aux_loss = st2[0], stats->z_loss = st2[1];
  return Status::ok();
}

// ---- permute --------------------------------------------------------------------------------------
Status permute(const int32_t* topk_ids, int64_t T, int k, int E, int64_t capacity, int32_t* expert_offsets,
               int32_t* sorted_rows, int32_t* row_of, int32_t* dropped) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const size_t slots = size_t(T) * k;
  const size_t ws = permute_workspace_bytes(T, k, E);
  if (ws == 0)
    return Status::invalid("permute: shape not supported on " + std::string(kName) + ": T=" + std::to_string(T) +
                           ", k=" + std::to_string(k) + ", E=" + std::to_string(E));
  Stream st;
  MOE_RETURN_IF_ERROR(st.create());
  Scratch s(st.get());
  const size_t o_ids = s.add(slots * 4), o_off = s.add((size_t(E) + 1) * 4), o_rows = s.add(slots * 4),
               o_row_of = s.add(slots * 4), o_drop = s.add(size_t(E) * 4), o_bad = s.add(4), o_ws = s.add(ws);
  MOE_RETURN_IF_ERROR(s.allocate());
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_ids), topk_ids, slots * 4, st.get()));
  MOE_RETURN_IF_ERROR(launched(launch_permute(s.at<int32_t>(o_ids), T, k, E, capacity, s.at<int32_t>(o_off),
                                              s.at<int32_t>(o_rows), s.at<int32_t>(o_row_of), s.at<int32_t>(o_drop),
                                              s.at<int32_t>(o_bad), s.at<void>(o_ws), ws, st.get()),
                               "permute"));
  int32_t bad = -1;
  MOE_RETURN_IF_ERROR(d2h(expert_offsets, s.at<int32_t>(o_off), (size_t(E) + 1) * 4, st.get()));
  MOE_RETURN_IF_ERROR(d2h(sorted_rows, s.at<int32_t>(o_rows), slots * 4, st.get()));
  MOE_RETURN_IF_ERROR(d2h(row_of, s.at<int32_t>(o_row_of), slots * 4, st.get()));
  if (dropped) MOE_RETURN_IF_ERROR(d2h(dropped, s.at<int32_t>(o_drop), size_t(E) * 4, st.get()));
  if (slots) MOE_RETURN_IF_ERROR(d2h(&bad, s.at<int32_t>(o_bad), 4, st.get()));
  MOE_RETURN_IF_ERROR(sync(st.get()));
  if (slots && bad >= 0)
    return Status::invalid("topk_ids[" + std::to_string(bad) + "] = " + std::to_string(topk_ids[bad]) +
                           " is not an expert index in [0, " + std::to_string(E) + ")");
  return Status::ok();
}

// ---- experts ---------------------------------------------------------------------------------------
Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const int E = src.num_experts;
  const DevDType dt = dev_dtype(src.dtype);
  const size_t bytes = grouped_gemm_packed_bytes(E, src.d, src.f, dt);
  if (bytes == 0)
    return Status::invalid("experts of shape E=" + std::to_string(E) + ", d=" + std::to_string(src.d) + ", f=" +
                           std::to_string(src.f) + " are too large for the " + kName + " grouped GEMM");
  if (gate && (gate->ndim != 2 || gate->dims[0] != E || gate->dims[1] != src.d))
    return Status::invalid("gate must be [" + std::to_string(E) + "," + std::to_string(src.d) + "]");
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
  w->dtype = src.dtype;
  MOE_CUDA_TRY(cudaStreamCreateWithFlags(&w->stream, cudaStreamNonBlocking), "creating the layer's stream");
  MOE_CUDA_TRY(cudaMalloc(&w->packed, bytes), ("allocating " + std::to_string(bytes) + " bytes of expert weights").c_str());
  w->packed_bytes = bytes;
  MOE_CUDA_TRY(cudaMemcpy(w->packed, host.data(), bytes, cudaMemcpyHostToDevice), "uploading the expert weights");
  if (gate) {
    std::vector<float> g32;
    const float* g = as_f32(*gate, &g32);
    w->gate_bytes = size_t(E) * src.d * 4;
    MOE_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&w->gate), w->gate_bytes), "allocating the router gate");
    MOE_CUDA_TRY(cudaMemcpy(w->gate, g, w->gate_bytes, cudaMemcpyHostToDevice), "uploading the router gate");
  }
  *out = std::move(w);
  return Status::ok();
}

// ---- grouped GEMM ----------------------------------------------------------------------------------
Status grouped_gemm(const TensorView& x, const int32_t* sorted_rows, int64_t num_rows, const int32_t* expert_offsets,
                    const PackedExperts& pw, float* y) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const DeviceExperts* w = nullptr;
  MOE_RETURN_IF_ERROR(device_experts(pw, &w));
  const int E = w->num_experts;
  const int64_t T = x.dims[0], d = w->d, R = expert_offsets[E];
  if (R > num_rows) return Status::invalid("expert_offsets[E] exceeds the sorted rows");
  if (R == 0 || T == 0) return Status::ok();
  const DevDType wt = dev_dtype(w->dtype);
  const size_t ws = grouped_gemm_workspace_bytes(T, R, d, w->f, wt);
  if (ws == 0) return Status::invalid("grouped_gemm: shape not supported on " + std::string(kName));
  Stream st;
  MOE_RETURN_IF_ERROR(st.create());
  Scratch s(st.get());
  const size_t o_x = s.add(tensor_bytes(x)), o_rows = s.add(size_t(R) * 4), o_off = s.add((size_t(E) + 1) * 4),
               o_y = s.add(size_t(R) * d * 4), o_ws = s.add(ws);
  MOE_RETURN_IF_ERROR(s.allocate());
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_x), x.data, tensor_bytes(x), st.get()));
  if (sorted_rows) MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_rows), sorted_rows, size_t(R) * 4, st.get()));
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_off), expert_offsets, (size_t(E) + 1) * 4, st.get()));
  MOE_RETURN_IF_ERROR(launched(launch_grouped_gemm(s.at<void>(o_x), dev_dtype(x.dtype), T,
                                                   sorted_rows ? s.at<int32_t>(o_rows) : nullptr, s.at<int32_t>(o_off), R,
                                                   w->packed, E, d, w->f, wt, s.at<float>(o_y), s.at<void>(o_ws), ws,
                                                   st.get()),
                               "grouped GEMM"));
  MOE_RETURN_IF_ERROR(d2h(y, s.at<float>(o_y), size_t(R) * d * 4, st.get()));
  return sync(st.get());
}

// ---- combine ---------------------------------------------------------------------------------------
Status combine(const float* y, int64_t R, const int32_t* row_of, const float* topk_weights, int64_t T, int k,
               const TensorView& out) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const int64_t d = out.dims[1];
  if (T == 0 || d == 0) return Status::ok();
  Stream st;
  MOE_RETURN_IF_ERROR(st.create());
  Scratch s(st.get());
  const size_t o_y = s.add(size_t(R) * d * 4), o_r = s.add(size_t(T) * k * 4), o_w = s.add(size_t(T) * k * 4),
               o_out = s.add(tensor_bytes(out));
  MOE_RETURN_IF_ERROR(s.allocate());
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_y), y, size_t(R) * d * 4, st.get()));
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_r), row_of, size_t(T) * k * 4, st.get()));
  MOE_RETURN_IF_ERROR(h2d(s.at<void>(o_w), topk_weights, size_t(T) * k * 4, st.get()));
  MOE_RETURN_IF_ERROR(launched(launch_combine(s.at<float>(o_y), R, s.at<int32_t>(o_r), s.at<float>(o_w), T, k, d,
                                              s.at<void>(o_out), dev_dtype(out.dtype), st.get()),
                               "combine"));
  MOE_RETURN_IF_ERROR(d2h(out.data, s.at<void>(o_out), tensor_bytes(out), st.get()));
  return sync(st.get());
}

// ---- whole layers ----------------------------------------------------------------------------------
namespace {

// What both MoE forwards (host tensors on the layer's stream, device tensors on the tensor stream)
// set up the same way: the experts' device layer with the shared experts, the routing, the
// forward's workspace size, and the per-call f32 gates a layer packed without (router gate, noise
// gate, shared gate), copied into pieces carved after the caller's.
struct ForwardSetup {
  const DeviceExperts* w = nullptr;
  MoeDeviceLayer L;
  MoeDeviceRouting R;
  size_t fwd = 0;  // moe_forward_workspace_bytes
  const MoeLayerWeights* lw = nullptr;
  const MoeForwardParams* p = nullptr;
  size_t o_gate = 0, o_noise = 0, o_sg = 0;
  bool gate_copy = false, noise_copy = false, shared_gate_copy = false;
  std::vector<float> g32, n32, sg32;  // pageable sources: live until the caller's copies are staged

  Status plan(const MoeLayerWeights& layer, const MoeForwardParams& params, int64_t T) {
    lw = &layer, p = &params;
    MOE_RETURN_IF_ERROR(device_experts(*layer.experts, &w));
    const DeviceExperts* sw = nullptr;  // shared experts: one packed expert, its gate packed with it
    if (layer.shared) {
      MOE_RETURN_IF_ERROR(device_experts(*layer.shared, &sw));
      if (sw->num_experts != 1 || sw->d != w->d || sw->dtype != w->dtype)
        return Status::invalid("moe_forward: the shared experts must be one packed expert of the experts' d and type");
    }
    R = device_routing(params);
    L = w->layer();
    if (sw) L.shared_packed = sw->packed, L.shared_f = sw->f, L.shared_gate = sw->gate;
    gate_copy = !L.gate;
    noise_copy = params.route.noise_gate.data != nullptr;
    shared_gate_copy = sw && !sw->gate && layer.shared_gate.data;
    // The layout reserves the noise logits when noise_gate is set: size it with a stand-in pointer
    // (only its being non-null matters here; the real one is set by copy_gates).
    MoeDeviceRouting sizing = R;
    if (noise_copy) sizing.noise_gate = static_cast<const float*>(w->packed);
    if (T == 0) return Status::ok();  // nothing to size: callers return before launching
    fwd = moe_forward_workspace_bytes(L, T, sizing);
    if (fwd == 0) return Status::invalid("moe_forward: shape not supported on " + std::string(kName));
    return Status::ok();
  }
  size_t gate_bytes() const { return size_t(w->num_experts) * size_t(w->d) * 4; }
  void carve_gates(Carve* c) {
    o_gate = c->add(gate_copy ? gate_bytes() : 0);
    o_noise = c->add(noise_copy ? gate_bytes() : 0);
    o_sg = c->add(shared_gate_copy ? size_t(w->d) * 4 : 0);
  }
  // Enqueues the gate copies into base + the carved offsets and points L and R at them.
  Status copy_gates(unsigned char* base, cudaStream_t s) {
    if (gate_copy) {
      MOE_RETURN_IF_ERROR(h2d(base + o_gate, as_f32(lw->gate, &g32), gate_bytes(), s));
      L.gate = reinterpret_cast<const float*>(base + o_gate);
    }
    if (noise_copy) {
      MOE_RETURN_IF_ERROR(h2d(base + o_noise, as_f32(p->route.noise_gate, &n32), gate_bytes(), s));
      R.noise_gate = reinterpret_cast<const float*>(base + o_noise);
    }
    if (shared_gate_copy) {
      MOE_RETURN_IF_ERROR(h2d(base + o_sg, as_f32(lw->shared_gate, &sg32), size_t(w->d) * 4, s));
      L.shared_gate = reinterpret_cast<const float*>(base + o_sg);
    }
    return Status::ok();
  }
};

}  // namespace

Status moe_forward(const MoeLayerWeights& lw, const TensorView& x, const MoeForwardParams& p,
                   const MoeForwardOutputs& outs) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  ForwardSetup f;
  const int64_t T = x.dims[0];
  MOE_RETURN_IF_ERROR(f.plan(lw, p, T));
  const DeviceExperts* w = f.w;
  const int E = w->num_experts, k = p.route.top_k;
  if (T == 0) {
    if (outs.expert_counts) std::memset(outs.expert_counts, 0, sizeof(int32_t) * size_t(E));
    if (outs.dropped) std::memset(outs.dropped, 0, sizeof(int32_t) * size_t(E));
    if (outs.stats) *outs.stats = RouterStats();
    return Status::ok();
  }
  const int64_t slots = T * k;
  std::lock_guard<std::mutex> lock(w->mu);
  const size_t kb = size_t(slots) * 4, lb = size_t(T) * E * 4;
  Carve c(f.fwd);  // the forward's own workspace first, then this call's copies
  const size_t o_x = c.add(tensor_bytes(x)), o_out = c.add(tensor_bytes(outs.out)), o_ids = c.add(kb), o_w = c.add(kb),
               o_c = c.add(size_t(E) * 4), o_drop = c.add(size_t(E) * 4), o_l = c.add(outs.logits ? lb : 0), o_st = c.add(8);
  f.carve_gates(&c);
  MOE_RETURN_IF_ERROR(w->reserve(c.total()));
  unsigned char* ws = static_cast<unsigned char*>(w->workspace);
  cudaStream_t s = w->stream;
  MOE_RETURN_IF_ERROR(f.copy_gates(ws, s));
  const MoeDeviceLayer& L = f.L;
  const MoeDeviceRouting& R = f.R;
  const size_t fwd = f.fwd;
  MoeDeviceOutputs O;
  O.topk_ids = outs.topk_ids ? reinterpret_cast<int32_t*>(ws + o_ids) : nullptr;
  O.topk_weights = outs.topk_weights ? reinterpret_cast<float*>(ws + o_w) : nullptr;
  O.expert_counts = outs.expert_counts ? reinterpret_cast<int32_t*>(ws + o_c) : nullptr;
  O.dropped = outs.dropped ? reinterpret_cast<int32_t*>(ws + o_drop) : nullptr;
  O.logits = outs.logits ? reinterpret_cast<float*>(ws + o_l) : nullptr;
  O.stats = outs.stats ? reinterpret_cast<float*>(ws + o_st) : nullptr;
  MOE_RETURN_IF_ERROR(h2d(ws + o_x, x.data, tensor_bytes(x), s));
  MOE_RETURN_IF_ERROR(launched(launch_moe_forward(L, ws + o_x, dev_dtype(x.dtype), T, R, ws + o_out,
                                                  dev_dtype(outs.out.dtype), O, ws, fwd, s),
                               "MoE forward"));
  float st2[2] = {0, 0};
  MOE_RETURN_IF_ERROR(d2h(outs.out.data, ws + o_out, tensor_bytes(outs.out), s));
  if (O.topk_ids) MOE_RETURN_IF_ERROR(d2h(outs.topk_ids, O.topk_ids, kb, s));
  if (O.topk_weights) MOE_RETURN_IF_ERROR(d2h(outs.topk_weights, O.topk_weights, kb, s));
  if (O.expert_counts) MOE_RETURN_IF_ERROR(d2h(outs.expert_counts, O.expert_counts, size_t(E) * 4, s));
  if (O.dropped) MOE_RETURN_IF_ERROR(d2h(outs.dropped, O.dropped, size_t(E) * 4, s));
  if (O.logits) MOE_RETURN_IF_ERROR(d2h(outs.logits, O.logits, lb, s));
  if (O.stats) MOE_RETURN_IF_ERROR(d2h(st2, O.stats, sizeof st2, s));
  MOE_RETURN_IF_ERROR(sync(s));
  if (outs.stats) outs.stats->aux_loss = st2[0], outs.stats->z_loss = st2[1];
  return Status::ok();
}

namespace {

// A dense FFN (one packed expert) on T device rows: y = FFN(x) in f32 by the grouped GEMM, then
// out = 1.0 * y through combine (k = 1, identity rows), the same rounding to the output type as the
// MoE layer's. Its pieces of a workspace, carved after `c`'s:
struct DenseFfnPlan {
  size_t o_off = 0, o_y = 0, o_one = 0, o_ws = 0, gws = 0;
};
Status plan_dense_ffn(const DeviceExperts& w, int64_t T, Carve* c, DenseFfnPlan* p) {
  p->gws = grouped_gemm_workspace_bytes(T, T, w.d, w.f, dev_dtype(w.dtype));
  if (p->gws == 0 || T > (int64_t(1) << 30)) return Status::invalid("dense_ffn: shape not supported on " + std::string(kName));
  p->o_off = c->add(size_t(T + 2) * 4);
  p->o_y = c->add(size_t(T) * size_t(w.d) * 4);
  p->o_one = c->add(size_t(T) * 4);
  p->o_ws = c->add(p->gws);
  return Status::ok();
}
// Enqueues it on s; ws: the workspace base of the plan's offsets.
Status enqueue_dense_ffn(const DeviceExperts& w, const void* x, DType x_dtype, int64_t T, void* out, DType out_dtype,
                         unsigned char* ws, const DenseFfnPlan& p, cudaStream_t s) {
  if (out_dtype == DType::kF32) {
    // combine with k = 1 and weight 1.0 would copy y unchanged: the GEMM writes out directly, and
    // the offsets are made on the device (no host copy, which would wait for the stream)
    int32_t* offsets = reinterpret_cast<int32_t*>(ws + p.o_off);
    MOE_RETURN_IF_ERROR(launched(launch_row_span(offsets, T, s), "dense FFN offsets"));
    return launched(launch_grouped_gemm(x, dev_dtype(x_dtype), T, nullptr, offsets, T, w.packed, 1, w.d, w.f, dev_dtype(w.dtype),
                                        static_cast<float*>(out), ws + p.o_ws, p.gws, s),
                    "dense FFN");
  }
  std::vector<int32_t> host_i(size_t(T) + 2);  // offsets {0, T}, then rows 0..T-1
  std::vector<float> ones(size_t(T), 1.0f);
  host_i[0] = 0, host_i[1] = int32_t(T);
  for (int64_t t = 0; t < T; ++t) host_i[size_t(t) + 2] = int32_t(t);
  // pageable sources: cudaMemcpyAsync has staged them when it returns
  MOE_RETURN_IF_ERROR(h2d(ws + p.o_off, host_i.data(), size_t(T + 2) * 4, s));
  MOE_RETURN_IF_ERROR(h2d(ws + p.o_one, ones.data(), size_t(T) * 4, s));
  const int32_t* offsets = reinterpret_cast<const int32_t*>(ws + p.o_off);
  float* y = reinterpret_cast<float*>(ws + p.o_y);
  MOE_RETURN_IF_ERROR(launched(launch_grouped_gemm(x, dev_dtype(x_dtype), T, nullptr, offsets, T, w.packed, 1, w.d, w.f,
                                                   dev_dtype(w.dtype), y, ws + p.o_ws, p.gws, s),
                               "dense FFN"));
  return launched(launch_combine(y, T, offsets + 2, reinterpret_cast<const float*>(ws + p.o_one), T, 1, w.d, out,
                                 dev_dtype(out_dtype), s),
                  "dense FFN output");
}

}  // namespace

Status dense_ffn(const PackedExperts& pw, const TensorView& x, const TensorView& out) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const DeviceExperts* w = nullptr;
  MOE_RETURN_IF_ERROR(device_experts(pw, &w));
  if (w->num_experts != 1) return Status::invalid("dense_ffn needs weights packed as one expert");
  const int64_t T = x.dims[0];
  if (T == 0) return Status::ok();
  std::lock_guard<std::mutex> lock(w->mu);
  cudaStream_t s = w->stream;
  Carve c;
  const size_t o_x = c.add(tensor_bytes(x)), o_out = c.add(tensor_bytes(out));
  DenseFfnPlan plan;
  MOE_RETURN_IF_ERROR(plan_dense_ffn(*w, T, &c, &plan));
  MOE_RETURN_IF_ERROR(w->reserve(c.total()));
  unsigned char* ws = static_cast<unsigned char*>(w->workspace);
  MOE_RETURN_IF_ERROR(h2d(ws + o_x, x.data, tensor_bytes(x), s));
  MOE_RETURN_IF_ERROR(enqueue_dense_ffn(*w, ws + o_x, x.dtype, T, ws + o_out, out.dtype, ws, plan, s));
  MOE_RETURN_IF_ERROR(d2h(out.data, ws + o_out, tensor_bytes(out), s));
  return sync(s);
}

// ---- device-resident tensors ------------------------------------------------------------------------
namespace {

// The one stream of the device-tensor ops: created on first use, kept for the process.
Status tensor_stream(cudaStream_t* out) {
  MOE_RETURN_IF_ERROR(ready());
  static cudaStream_t stream = nullptr;
  static cudaError_t err = cudaSuccess;
  static std::once_flag once;
  std::call_once(once, [] { err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); });
  if (err != cudaSuccess) return from_cuda(err, "creating the tensor stream");
  *out = stream;
  return Status::ok();
}

class DeviceBufferImpl final : public DeviceBuffer {
 public:
  ~DeviceBufferImpl() override {
    cudaStream_t s = nullptr;
    if (data && tensor_stream(&s).is_ok()) cudaFreeAsync(data, s);  // after the work enqueued on it
  }
};

class DeviceLinear final : public PackedLinear {
 public:
  ~DeviceLinear() override {
    if (ready().is_ok()) {  // cudaFree waits for the device: runs at dispose, never in an op
      if (w) cudaFree(w);
      if (bias) cudaFree(bias);
    }
  }
  size_t bytes() const override { return w_bytes + (bias ? size_t(out_features) * 4 : 0); }
  const char* backend() const override { return kName; }
  void* w = nullptr;
  size_t w_bytes = 0;
  float* bias = nullptr;  // [out] f32 or null
};

class DeviceKvCache final : public KvCache {
 public:
  ~DeviceKvCache() override {
    if (ready().is_ok()) {
      if (k) cudaFree(k);
      if (v) cudaFree(v);
    }
  }
  size_t bytes() const override { return 2 * half_bytes; }
  const char* backend() const override { return kName; }
  void* k = nullptr;  // [max_seq, kv_heads, head_dim] (attention.cu's layout)
  void* v = nullptr;
  size_t half_bytes = 0;
};

int64_t rows_of(const TensorView& t) { return t.ndim == 0 ? 0 : t.numel() / t.dims[t.ndim - 1]; }
int64_t last_dim(const TensorView& t) { return t.ndim == 0 ? 0 : t.dims[t.ndim - 1]; }

bool overlaps(const TensorView& a, const TensorView& b) {
  const auto* pa = static_cast<const unsigned char*>(a.data);
  const auto* pb = static_cast<const unsigned char*>(b.data);
  return pa < pb + tensor_bytes(b) && pb < pa + tensor_bytes(a);
}

// A copy of `t` in `scratch` (enqueued), when `t` overlaps `out`: for ops whose kernels read their
// input while other blocks write the output.
Status unalias(const TensorView& t, const TensorView& out, Scratch& scratch, size_t off, TensorView* view, cudaStream_t s) {
  *view = t;
  if (!overlaps(t, out)) return Status::ok();
  view->data = scratch.at<void>(off);
  MOE_CUDA_TRY(cudaMemcpyAsync(view->data, t.data, tensor_bytes(t), cudaMemcpyDeviceToDevice, s), "copying an aliased input");
  return Status::ok();
}

Status same_dtype(const char* op, const TensorView& a, const char* an, const TensorView& b, const char* bn) {
  if (a.dtype == b.dtype) return Status::ok();
  return Status::unsupported(std::string(op) + " on " + kName + " needs " + an + " and " + bn + " of one type, got " +
                             dtype_name(a.dtype) + " and " + dtype_name(b.dtype));
}

}  // namespace

Status alloc_device(size_t bytes, std::shared_ptr<DeviceBuffer>* out) {
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  auto b = std::make_shared<DeviceBufferImpl>();
  if (bytes > 0) {
    cudaError_t e = cudaMallocAsync(&b->data, bytes, s);
    if (e != cudaSuccess) {
      b->data = nullptr;
      return from_cuda(e, ("allocating a " + std::to_string(bytes) + "-byte device tensor").c_str());
    }
    MOE_CUDA_TRY(cudaMemsetAsync(b->data, 0, bytes, s), "zeroing a device tensor");
  }
  b->bytes = bytes;
  *out = std::move(b);
  return Status::ok();
}

namespace {
// A copy on the tensor stream, after the work enqueued before it, waited for.
Status copy_and_wait(void* dst, const void* src, size_t n, bool to_device) {
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  MOE_RETURN_IF_ERROR(to_device ? h2d(dst, src, n, s) : d2h(dst, src, n, s));
  return sync(s);
}
}  // namespace

Status upload(void* dst, const void* src, size_t n) { return copy_and_wait(dst, src, n, true); }
Status download(void* dst, const void* src, size_t n) { return copy_and_wait(dst, src, n, false); }

namespace dev {

Status embedding(const TensorView& table, const int32_t* ids, int64_t T, const TensorView& out) {
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  Scratch sc(s);
  const size_t o_ids = sc.add(size_t(T) * 4);
  MOE_RETURN_IF_ERROR(sc.allocate());
  MOE_RETURN_IF_ERROR(h2d(sc.at<void>(o_ids), ids, size_t(T) * 4, s));
  return launched(launch_embedding(table.data, dev_dtype(table.dtype), table.dims[0], table.dims[1], sc.at<int32_t>(o_ids), T,
                                   out.data, dev_dtype(out.dtype), nullptr, s),
                  "embedding");
}

Status rms_norm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) {
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  // one row per block, read before it is written: out may alias x
  return launched(launch_rms_norm(x.data, dev_dtype(x.dtype), weight.data, dev_dtype(weight.dtype), rows_of(x), last_dim(x),
                                  eps, out.data, dev_dtype(out.dtype), s),
                  "rms_norm");
}

Status pack_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out) {
  MOE_RETURN_IF_ERROR(ready());
  if (w.ndim != 2 || !is_float(w.dtype)) return Status::invalid("pack_linear: w must be a 2-d float tensor");
  if (bias && (bias->ndim != 1 || bias->dims[0] != w.dims[0] || !is_float(bias->dtype)))
    return Status::invalid("pack_linear: bias must be a float [out] tensor");
  MOE_EMU_SERIAL;
  auto l = std::make_unique<DeviceLinear>();
  if (bias) {
    std::vector<float> b32;
    l->has_bias = true;
    MOE_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&l->bias), size_t(w.dims[0]) * 4), "allocating a linear bias");
    MOE_CUDA_TRY(cudaMemcpy(l->bias, as_f32(*bias, &b32), size_t(w.dims[0]) * 4, cudaMemcpyHostToDevice), "uploading a linear bias");
  }
  l->out_features = w.dims[0];
  l->in_features = w.dims[1];
  l->dtype = w.dtype;
  l->w_bytes = tensor_bytes(w);
  MOE_CUDA_TRY(cudaMalloc(&l->w, l->w_bytes), ("allocating " + std::to_string(l->w_bytes) + " bytes of linear weights").c_str());
  MOE_CUDA_TRY(cudaMemcpy(l->w, w.data, l->w_bytes, cudaMemcpyHostToDevice), "uploading linear weights");
  *out = std::move(l);
  return Status::ok();
}

Status linear(const TensorView& x, const PackedLinear& pw, const TensorView& y) {
  if (std::strcmp(pw.backend(), kName) != 0)
    return Status::invalid(std::string("the Linear was packed by the '") + pw.backend() + "' backend; device tensors need '" + kName + "'");
  const auto& w = static_cast<const DeviceLinear&>(pw);
  if (y.dtype != DType::kF32 && y.dtype != w.dtype)
    return Status::unsupported(std::string("linear on ") + kName + " writes float32 or the weights' type (" + dtype_name(w.dtype) +
                               "), got out type " + dtype_name(y.dtype));
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  const int64_t T = rows_of(x);
  const bool convert = x.dtype != w.dtype;
  const size_t wsb = convert ? linear_workspace_bytes(T, w.in_features, dev_dtype(w.dtype)) : 0;
  // with a bias and a 16-bit y: x W^T in f32 first, then + bias rounded once (as the CPU's epilogue)
  const bool via_f32 = w.bias && y.dtype != DType::kF32;
  Scratch sc(s);
  const size_t o_ws = sc.add(wsb), o_x = sc.add(overlaps(x, y) ? tensor_bytes(x) : 0),
               o_y32 = sc.add(via_f32 ? size_t(T) * size_t(w.out_features) * 4 : 0);
  MOE_RETURN_IF_ERROR(sc.allocate());
  TensorView xin;
  MOE_RETURN_IF_ERROR(unalias(x, y, sc, o_x, &xin, s));
  void* y_gemm = via_f32 ? sc.at<void>(o_y32) : y.data;
  const DevDType yt = via_f32 ? DevDType::kF32 : dev_dtype(y.dtype);
  MOE_RETURN_IF_ERROR(launched(launch_linear(xin.data, dev_dtype(x.dtype), T, w.in_features, w.w, dev_dtype(w.dtype), w.out_features,
                                             y_gemm, yt, wsb ? sc.at<void>(o_ws) : nullptr, wsb, s),
                               "linear"));
  if (!w.bias) return Status::ok();
  return launched(launch_bias_add(static_cast<const float*>(y_gemm), w.bias, T, w.out_features, y.data, dev_dtype(y.dtype), s),
                  "linear bias");
}

Status rope(const TensorView& x, const int32_t* positions, bool positions_on_device, double theta, const TensorView& out) {
  MOE_RETURN_IF_ERROR(same_dtype("rope", x, "x", out, "out"));
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  const int64_t T = x.dims[0];
  Scratch sc(s);
  const size_t o_pos = sc.add(positions_on_device ? 0 : size_t(T) * 4);
  MOE_RETURN_IF_ERROR(sc.allocate());
  if (!positions_on_device) {
    MOE_RETURN_IF_ERROR(h2d(sc.at<void>(o_pos), positions, size_t(T) * 4, s));
    positions = sc.at<const int32_t>(o_pos);
  }
  if (out.data != x.data) {  // the kernel rotates in place: rotate a copy
    if (overlaps(x, out)) return Status::invalid("rope: out overlaps x without being x");
    MOE_CUDA_TRY(cudaMemcpyAsync(out.data, x.data, tensor_bytes(x), cudaMemcpyDeviceToDevice, s), "copying x to out");
  }
  return launched(launch_rope(out.data, nullptr, dev_dtype(x.dtype), T, int(x.dims[1]), 0, int(x.dims[2]), positions, float(theta), s),
                  "rope");
}

Status create_kv_cache(int64_t max_seq, int64_t num_kv_heads, int64_t head_dim, DType dtype, std::unique_ptr<KvCache>* out) {
  MOE_RETURN_IF_ERROR(ready());
  if (max_seq < 1 || num_kv_heads < 1 || head_dim < 1 || !is_float(dtype))
    return Status::invalid("create_kv_cache: invalid shape or type");
  if (head_dim != 32 && head_dim != 64 && head_dim != 128 && head_dim != 256)
    return Status::unsupported(std::string("the attention on ") + kName + " needs a head dim of 32, 64, 128 or 256, got " +
                               std::to_string(head_dim));
  auto c = std::make_unique<DeviceKvCache>();
  c->max_seq = max_seq;
  c->num_kv_heads = num_kv_heads;
  c->head_dim = head_dim;
  c->dtype = dtype;
  c->half_bytes = size_t(max_seq) * size_t(num_kv_heads) * size_t(head_dim) * dtype_size(dtype);
  const std::string what = "allocating a " + std::to_string(2 * c->half_bytes) + "-byte KV cache";
  MOE_CUDA_TRY(cudaMalloc(&c->k, c->half_bytes), what.c_str());
  MOE_CUDA_TRY(cudaMalloc(&c->v, c->half_bytes), what.c_str());
  *out = std::move(c);
  return Status::ok();
}

Status attention(const TensorView& q, const TensorView& k, const TensorView& v, KvCache& cache, const AttentionParams& p,
                 const TensorView& out) {
  if (std::strcmp(cache.backend(), kName) != 0)
    return Status::invalid(std::string("the KvCache lives on '") + cache.backend() + "'; device tensors need one of '" + kName + "'");
  MOE_RETURN_IF_ERROR(same_dtype("attention", k, "k", v, "v"));
  auto& c = static_cast<DeviceKvCache&>(cache);
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  const int64_t T = q.dims[0];
  const int hq = int(q.dims[1]), hkv = int(c.num_kv_heads), hd = int(c.head_dim);
  const size_t wsb = attention_workspace_bytes(T, hq, hd, c.max_seq);
  Scratch sc(s);
  const size_t o_ws = sc.add(wsb), o_q = sc.add(overlaps(q, out) ? tensor_bytes(q) : 0);
  MOE_RETURN_IF_ERROR(sc.allocate());
  TensorView qin;
  MOE_RETURN_IF_ERROR(unalias(q, out, sc, o_q, &qin, s));
  const DevDType cdt = dev_dtype(c.dtype);
  MOE_RETURN_IF_ERROR(launched(launch_kv_append(k.data, v.data, dev_dtype(k.dtype), T, hkv, hd, p.start_pos, c.k, c.v, cdt, c.max_seq, s),
                               "appending to the KV cache"));
  return launched(launch_attention(qin.data, dev_dtype(q.dtype), T, p.start_pos, hq, hkv, hd, p.sliding_window, c.k, c.v, cdt,
                                   c.max_seq, out.data, dev_dtype(out.dtype), sc.at<void>(o_ws), wsb, s),
                  "attention");
}

Status add(const TensorView& a, const TensorView& b, const TensorView& out) {
  MOE_RETURN_IF_ERROR(same_dtype("add", a, "a", b, "b"));
  MOE_RETURN_IF_ERROR(same_dtype("add", a, "a", out, "out"));
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  return launched(launch_residual_add(a.data, b.data, out.data, dev_dtype(a.dtype), a.numel(), s), "add");
}

Status sample(const TensorView& logits, int64_t T, int64_t V, const SampleParams& p, int32_t* ids) {
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  Scratch sc(s);
  const size_t o_ids = sc.add(size_t(T) * 4);
  MOE_RETURN_IF_ERROR(sc.allocate());
  const float* l = static_cast<const float*>(logits.data);
  MOE_RETURN_IF_ERROR(launched(launch_sample_top_p(l, T, V, p.temperature, p.top_p, p.seed, p.step, sc.at<int32_t>(o_ids), s),
                               "sampling"));
  MOE_RETURN_IF_ERROR(d2h(ids, sc.at<void>(o_ids), size_t(T) * 4, s));
  return sync(s);
}

Status moe_forward(const MoeLayerWeights& lw, const TensorView& x, const MoeForwardParams& p, const MoeForwardOutputs& outs) {
  if (outs.topk_ids || outs.topk_weights || outs.dropped || outs.logits || outs.stats)
    return Status::unsupported("moe_forward on device tensors returns the output and the expert counts only");
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  const int64_t T = x.dims[0];
  ForwardSetup f;
  MOE_RETURN_IF_ERROR(f.plan(lw, p, T));
  if (T == 0) return Status::ok();
  // a per-call workspace on the tensor stream: the layer's own workspace serves its stream only
  Carve c(f.fwd);
  f.carve_gates(&c);
  Scratch sc(s);
  const size_t base = sc.add(c.total());
  MOE_RETURN_IF_ERROR(sc.allocate());
  unsigned char* ws = sc.at<unsigned char>(base);
  MOE_RETURN_IF_ERROR(f.copy_gates(ws, s));
  MoeDeviceOutputs O;
  O.expert_counts = outs.expert_counts;
  return launched(launch_moe_forward(f.L, x.data, dev_dtype(x.dtype), T, f.R, outs.out.data, dev_dtype(outs.out.dtype), O, ws,
                                     f.fwd, s),
                  "MoE forward");
}

Status dense_ffn(const PackedExperts& pw, const TensorView& x, const TensorView& out) {
  const DeviceExperts* w = nullptr;
  MOE_RETURN_IF_ERROR(device_experts(pw, &w));
  if (w->num_experts != 1) return Status::invalid("dense_ffn needs weights packed as one expert");
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  const int64_t T = x.dims[0];
  if (T == 0) return Status::ok();
  Carve c;
  DenseFfnPlan plan;
  MOE_RETURN_IF_ERROR(plan_dense_ffn(*w, T, &c, &plan));
  Scratch sc(s);
  const size_t base = sc.add(c.total());
  MOE_RETURN_IF_ERROR(sc.allocate());
  return enqueue_dense_ffn(*w, x.data, x.dtype, T, out.data, out.dtype, sc.at<unsigned char>(base), plan, s);
}

}  // namespace dev

// ---- bench -----------------------------------------------------------------------------------------
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

// Fills a device buffer with n values of dtype t drawn from N(0,1) on the host (fixed seed).
Status upload_randn(void* dst, int64_t n, DType t, cudaStream_t s) {
  std::vector<uint16_t> h16;
  std::vector<float> h32(static_cast<size_t>(n));
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (auto& v : h32) {
    auto next = [&] {
      state += 0x9E3779B97F4A7C15ull;
      uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
    };
    const double u1 = next() + 1e-300, u2 = next();
    v = float(std::sqrt(-2 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  if (t == DType::kF32) {
    MOE_RETURN_IF_ERROR(h2d(dst, h32.data(), size_t(n) * 4, s));
    return sync(s);
  }
  h16.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) h16[size_t(i)] = t == DType::kF16 ? f32_to_f16(h32[size_t(i)]) : f32_to_bf16(h32[size_t(i)]);
  MOE_RETURN_IF_ERROR(h2d(dst, h16.data(), size_t(n) * 2, s));
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
  const DeviceExperts* w = nullptr;
  MOE_RETURN_IF_ERROR(device_experts(pw, &w));
  if (!w->gate) return Status::invalid("time_moe_forward needs experts packed with their router gate");
  if (T < 1 || top_k < 1 || top_k > w->num_experts) return Status::invalid("time_moe_forward: bad T or top_k");
  std::lock_guard<std::mutex> lock(w->mu);
  const MoeDeviceLayer L = w->layer();
  const size_t fwd = moe_forward_workspace_bytes(L, T, top_k);
  if (fwd == 0) return Status::invalid("time_moe_forward: shape not supported");
  const size_t xb = size_t(T) * w->d * dtype_size(w->dtype);
  Carve c(fwd);
  const size_t o_x = c.add(xb), o_out = c.add(xb);
  MOE_RETURN_IF_ERROR(w->reserve(c.total()));
  unsigned char* ws = static_cast<unsigned char*>(w->workspace);
  MOE_RETURN_IF_ERROR(upload_randn(ws + o_x, T * w->d, w->dtype, w->stream));
  const DevDType dt = dev_dtype(w->dtype);
  return time_loop(w->stream, iters, ms_per_call, [&]() {
    return launched(launch_moe_forward(L, ws + o_x, dt, T, top_k, true, ws + o_out, dt, nullptr, nullptr, ws, fwd,
                                       w->stream),
                    "MoE forward");
  });
}

Status time_dense_ffn(const PackedExperts& pw, int64_t T, int iters, double* ms_per_call) {
  MOE_RETURN_IF_ERROR(ready());
  MOE_EMU_SERIAL;
  const DeviceExperts* w = nullptr;
  MOE_RETURN_IF_ERROR(device_experts(pw, &w));
  if (w->num_experts != 1 || T < 1 || T > (int64_t(1) << 30)) return Status::invalid("time_dense_ffn: one expert and T >= 1");
  std::lock_guard<std::mutex> lock(w->mu);
  const DevDType dt = dev_dtype(w->dtype);
  const size_t gws = grouped_gemm_workspace_bytes(T, T, w->d, w->f, dt);
  if (gws == 0) return Status::invalid("time_dense_ffn: shape not supported");
  const size_t xb = size_t(T) * w->d * dtype_size(w->dtype);
  Carve c;
  const size_t o_x = c.add(xb), o_off = c.add(2 * sizeof(int32_t)), o_y = c.add(size_t(T) * w->d * 4), o_ws = c.add(gws);
  MOE_RETURN_IF_ERROR(w->reserve(c.total()));
  unsigned char* ws = static_cast<unsigned char*>(w->workspace);
  const int32_t off[2] = {0, int32_t(T)};
  MOE_RETURN_IF_ERROR(h2d(ws + o_off, off, sizeof off, w->stream));
  MOE_RETURN_IF_ERROR(upload_randn(ws + o_x, T * w->d, w->dtype, w->stream));  // also waits for `off`
  return time_loop(w->stream, iters, ms_per_call, [&]() {
    return launched(launch_grouped_gemm(ws + o_x, dt, T, nullptr, reinterpret_cast<const int32_t*>(ws + o_off), T,
                                        w->packed, 1, w->d, w->f, dt, reinterpret_cast<float*>(ws + o_y), ws + o_ws, gws,
                                        w->stream),
                    "dense FFN");
  });
}

}  // namespace cuda
}  // namespace moe
