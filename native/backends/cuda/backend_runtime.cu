// moe-kernels CUDA backend, host side: device probing and capabilities, errors, the tensor stream,
// stream-ordered scratch, counted copies, the pinned staging pool and the call in progress
// (backend_runtime.h). Nothing here synchronises the whole device.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "backend_runtime.h"

namespace moe {
namespace cuda {

#if defined(MOE_CUDA_EMU)
std::mutex& emu_mutex() {
  static std::mutex* m = new std::mutex();  // leaked: executor threads may hold it at exit
  return *m;
}
#endif

Status from_cuda(cudaError_t e, const char* what) {
  std::string m = std::string(kName) + ": " + what + " failed: " + cudaGetErrorName(e) + ": " + moe_error_string(e);
  cudaGetLastError();  // a non-sticky error must not be reported again by the next call
  if (e == cudaErrorMemoryAllocation) return Status::oom(m);
  if (e == cudaErrorInvalidValue) return Status::invalid(m);
  return Status::internal(m);
}

namespace {

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

struct Probe {
  Capabilities caps;
  int device = -1;
};

Probe probe() {
  Probe p;
  Capabilities& c = p.caps;
  c.family = "cuda";
  c.name = kName;
  c.compiled = true;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice)
      c.reason = std::string("no usable NVIDIA driver or device (") + cudaGetErrorName(e) +
                 ": libcuda.so.1 not found, too old, or no GPU)";
    else
      c.reason = std::string("the CUDA runtime could not start: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
    return p;
  }
  if (n < 1) {
    c.reason = "no CUDA device found";
    return p;
  }
  int dev = 0;
  const char* s = std::getenv("MOE_CUDA_DEVICE");
  const bool local_rank = s && std::strcmp(s, "local-rank") == 0;
  if (local_rank) {
    // one GPU per rank of an MPI job on this node: the rank's index among the node's ranks, as the
    // launcher tells it (Open MPI, MPICH/Intel MPI, Slurm)
    const char* names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    const char* lr = nullptr;
    for (const char* nm : names)
      if ((lr = std::getenv(nm)) != nullptr) break;
    if (!lr) {
      c.reason = "MOE_CUDA_DEVICE=local-rank, but no launcher set OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or SLURM_LOCALID (run under mpirun)";
      return p;
    }
    s = lr;
  }
  if (s) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (!*s || *end || v < 0 || v >= n) {
      c.reason = local_rank ? std::string("MOE_CUDA_DEVICE=local-rank: local rank '") + s + "' is not a device ordinal in [0, " +
                                  std::to_string(n) + ") (more ranks on this node than GPUs?)"
                            : std::string("MOE_CUDA_DEVICE='") + s + "' is not a device ordinal in [0, " + std::to_string(n) + ")";
      return p;
    }
    dev = int(v);
  }
  if ((e = cudaSetDevice(dev)) != cudaSuccess) {
    cudaGetLastError();
    c.reason = std::string("cudaSetDevice(") + std::to_string(dev) + ") failed: " + cudaGetErrorName(e);
    return p;
  }
  p.device = dev;
  auto attr = [&](cudaDeviceAttr a) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, a, dev) != cudaSuccess) cudaGetLastError(), v = 0;
    return v;
  };
  const int cc_major = attr(cudaDevAttrComputeCapabilityMajor), cc_minor = attr(cudaDevAttrComputeCapabilityMinor);
  const int sms = attr(cudaDevAttrMultiProcessorCount);
  std::string name;
  double total_memory = 0, peak_gbps = 0, peak_tc = 0, peak_fma = 0;
#if defined(MOE_CUDA_EMU)
  c.emulated = true;
  name = "CUDA emulator (native/emu) with sm_" + std::to_string(cc_major * 10 + cc_minor) + " semantics";
  c.available = true;
  c.reason = "the CUDA kernels run on the CPU emulator (a test build)";
#else
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
    name = prop.name;
    total_memory = double(prop.totalGlobalMem);
  } else {
    cudaGetLastError();
  }
  const double mem_khz = attr(cudaDevAttrMemoryClockRate), bus_bits = attr(cudaDevAttrGlobalMemoryBusWidth);
  peak_gbps = 2.0 * mem_khz * 1e3 * (bus_bits / 8) / 1e9;  // double data rate
  const double sm_ghz = attr(cudaDevAttrClockRate) / 1e6;
  const ArchPeak pk = arch_peak(cc_major, cc_minor);
  peak_tc = pk.tc_flops_per_clk_sm * double(sms) * sm_ghz / 1e3;
  peak_fma = pk.fma_flops_per_clk_sm * double(sms) * sm_ghz / 1e3;
  if (cc_major < 8) {
    c.reason = "device " + std::to_string(dev) + " (" + name + ") has compute capability " + std::to_string(cc_major) +
               "." + std::to_string(cc_minor) + "; the kernels of this build need 8.0 or newer";
  } else {
    c.available = true;
    c.reason = "device " + std::to_string(dev) + ": " + name;
    // The stream-ordered allocator keeps freed memory for reuse instead of returning it at every
    // synchronisation: per-call scratch then costs no driver call in steady state.
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
      uint64_t keep = UINT64_MAX;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    }
    cudaGetLastError();
  }
#endif
  c.device = {{"ordinal", InfoValue::number(dev)},
              {"name", InfoValue::text(name)},
              {"computeCapability", InfoValue::text(std::to_string(cc_major) + "." + std::to_string(cc_minor))},
              {"smCount", InfoValue::number(sms)},
              {"totalMemory", InfoValue::number(total_memory)},
              {"peakGBps", InfoValue::number(peak_gbps)},
              {"peakTensorTflops", InfoValue::number(peak_tc)},
              {"peakFmaTflops", InfoValue::number(peak_fma)}};
  return p;
}

const Probe& probed() {
  static const Probe p = probe();  // thread-safe static initialisation
  return p;
}

}  // namespace

const Capabilities& capabilities() { return probed().caps; }

Status ready() {
  const Probe& p = probed();
  if (!p.caps.available) return Status::unsupported(std::string("backend '") + kName + "' is not available: " + p.caps.reason);
  MOE_CUDA_TRY(cudaSetDevice(p.device), "cudaSetDevice");  // the current device is per host thread
  return Status::ok();
}

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

// ---- scratch -------------------------------------------------------------------------------------
Scratch::~Scratch() {
  if (base_) cudaFreeAsync(base_, s_);
}

Status Scratch::allocate() {
  const size_t n = carve_.total();
  if (n == 0) return Status::ok();
  cudaError_t e = cudaMallocAsync(&base_, n, s_);
  if (e != cudaSuccess) {
    base_ = nullptr;
    return from_cuda(e, ("allocating " + std::to_string(n) + " bytes of device scratch").c_str());
  }
  return Status::ok();
}

// ---- copies --------------------------------------------------------------------------------------
namespace {
struct CopyCount {
  std::atomic<uint64_t> calls{0}, bytes{0};
};
CopyCount g_to_device, g_to_host;
}  // namespace

Status copy_async(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
  if (n == 0) return Status::ok();
  const bool up = kind == cudaMemcpyHostToDevice, down = kind == cudaMemcpyDeviceToHost;
  MOE_CUDA_TRY(cudaMemcpyAsync(dst, src, n, kind, s),
               up ? "copying to the device" : down ? "copying from the device" : "copying on the device");
  if (up || down) {
    CopyCount& c = up ? g_to_device : g_to_host;
    c.calls.fetch_add(1, std::memory_order_relaxed);
    c.bytes.fetch_add(n, std::memory_order_relaxed);
  }
  return Status::ok();
}

TransferStats transfer_stats() {
  TransferStats t;
  t.to_device_calls = g_to_device.calls.load(std::memory_order_relaxed);
  t.to_device_bytes = g_to_device.bytes.load(std::memory_order_relaxed);
  t.to_host_calls = g_to_host.calls.load(std::memory_order_relaxed);
  t.to_host_bytes = g_to_host.bytes.load(std::memory_order_relaxed);
  return t;
}

// ---- pinned staging ------------------------------------------------------------------------------
// Free blocks by size; a request takes the smallest block that fits, else allocates one rounded up
// to a power of two (at least 64 KiB). Blocks go back to the pool when their call completes; the
// pool keeps at most kKeepBytes of free blocks.
namespace {
constexpr size_t kMinBlock = size_t(64) << 10;
constexpr size_t kKeepBytes = size_t(256) << 20;
std::mutex g_pin_mu;
std::multimap<size_t, void*>* g_pin_free = new std::multimap<size_t, void*>();  // leaked: see emu_mutex
size_t g_pin_free_bytes = 0;
}  // namespace

Status pinned_acquire(size_t bytes, PinnedBlock* out) {
  *out = PinnedBlock();
  if (bytes == 0) return Status::ok();
  {
    std::lock_guard<std::mutex> lk(g_pin_mu);
    auto it = g_pin_free->lower_bound(bytes);
    if (it != g_pin_free->end()) {
      out->data = it->second;
      out->bytes = it->first;
      g_pin_free_bytes -= it->first;
      g_pin_free->erase(it);
      return Status::ok();
    }
  }
  size_t n = kMinBlock;
  while (n < bytes) n *= 2;
  void* p = nullptr;
  MOE_CUDA_TRY(cudaHostAlloc(&p, n, cudaHostAllocDefault), ("allocating " + std::to_string(n) + " bytes of pinned staging memory").c_str());
  out->data = p;
  out->bytes = n;
  return Status::ok();
}

void pinned_release(const PinnedBlock& b) {
  if (!b.data) return;
  {
    std::lock_guard<std::mutex> lk(g_pin_mu);
    if (g_pin_free_bytes + b.bytes <= kKeepBytes) {
      g_pin_free->emplace(b.bytes, b.data);
      g_pin_free_bytes += b.bytes;
      return;
    }
  }
  cudaFreeHost(b.data);
}

// ---- the call in progress ------------------------------------------------------------------------
namespace {
thread_local Call* t_call = nullptr;
}

Call* current_call() { return t_call; }
void set_current_call(Call* c) { t_call = c; }

void Call::use(cudaStream_t s) {
  for (cudaStream_t x : streams_)
    if (x == s) return;
  streams_.push_back(s);
}

void Call::complete(bool ok) {
  if (ok)
    for (auto& f : after_) f();
  after_.clear();
  for (const PinnedBlock& b : pinned_) pinned_release(b);
  pinned_.clear();
}

Call::~Call() { complete(false); }

Status CallScope::finish(Status st) {
  if (call_ != &own_) return st;  // the executor completes its call
  for (cudaStream_t s : own_.streams()) {
    const cudaError_t e = cudaStreamSynchronize(s);
    if (e != cudaSuccess && st.is_ok()) st = from_cuda(e, "running the kernels");
  }
  own_.complete(st.is_ok());
  return st;
}

namespace {
// n bytes of pinned staging kept by the current call, whose work on s it is.
Status staging(size_t n, cudaStream_t s, Call** call, PinnedBlock* b) {
  *call = current_call();
  if (!*call) return Status::internal("staging outside a call");
  MOE_RETURN_IF_ERROR(pinned_acquire(n, b));
  (*call)->keep(*b);
  (*call)->use(s);
  return Status::ok();
}
}  // namespace

Status upload_staged(void* dst, const void* src, size_t n, cudaStream_t s) {
  if (n == 0) return Status::ok();
  Call* call = nullptr;
  PinnedBlock b;
  MOE_RETURN_IF_ERROR(staging(n, s, &call, &b));
  std::memcpy(b.data, src, n);
  return copy_async(dst, b.data, n, cudaMemcpyHostToDevice, s);
}

Status download_staged(void* dst, const void* src, size_t n, cudaStream_t s) {
  if (n == 0) return Status::ok();
  Call* call = nullptr;
  PinnedBlock b;
  MOE_RETURN_IF_ERROR(staging(n, s, &call, &b));
  MOE_RETURN_IF_ERROR(copy_async(b.data, src, n, cudaMemcpyDeviceToHost, s));
  void* pinned = b.data;
  call->after([dst, pinned, n] { std::memcpy(dst, pinned, n); });
  return Status::ok();
}

std::vector<float> host_f32(const TensorView& t) {
  std::vector<float> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = load_as_f32(t.data, t.dtype, i);
  return v;
}

}  // namespace cuda
}  // namespace moe
