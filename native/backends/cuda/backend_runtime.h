// moe-kernels CUDA backend, host side: what its files share (device probing, errors, streams, scratch,
// counted copies, pinned staging, and the call in progress that the executor completes). Private to
// native/backends/cuda. Built by nvcc (backend "cuda") and, in test builds, by g++ against native/emu
// (backend "cuda-emu"), where the runtime API functions are the emulator's.
//
// Standard and moe/ headers first: under the emulator, cuda_compat.cuh defines CUDA's keyword macros
// (__noinline__, ...), which libstdc++'s <memory> spells as attributes of its own.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moe/backend.h"

#include "cuda_compat.cuh"
#include "launchers.h"

namespace moe {
namespace cuda {

#if defined(MOE_CUDA_EMU)
constexpr const char* kName = "cuda-emu";
// The emulator runs a launch on the calling thread; one op at a time keeps its per-thread state
// simple and costs nothing that matters in tests.
std::mutex& emu_mutex();
#define MOE_EMU_SERIAL std::lock_guard<std::mutex> moe_emu_lock_(::moe::cuda::emu_mutex())
#else
constexpr const char* kName = "cuda";
#define MOE_EMU_SERIAL
#endif
constexpr size_t kAlign = 256;

inline size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A CUDA error as a Status naming the step (OOM -> ERR_OUT_OF_MEMORY); clears a non-sticky error.
Status from_cuda(cudaError_t e, const char* what);
inline Status launched(cudaError_t e, const char* what) { return e == cudaSuccess ? Status::ok() : from_cuda(e, what); }
#define MOE_CUDA_TRY(expr, what)                                          \
  do {                                                                    \
    const cudaError_t moe_err_ = (expr);                                  \
    if (moe_err_ != cudaSuccess) return ::moe::cuda::from_cuda(moe_err_, what); \
  } while (0)

inline DevDType dev_dtype(DType t) {
  return t == DType::kF16 ? DevDType::kF16 : t == DType::kBF16 ? DevDType::kBF16 : DevDType::kF32;
}

// The backend's capabilities, probed once (thread-safe); a missing driver or device is a reason.
const Capabilities& capabilities();
// OK when a device can run the kernels; sets it current on the calling thread.
Status ready();
// The one stream of the device-tensor ops: created on first use, kept for the process.
Status tensor_stream(cudaStream_t* out);

// Offsets of 256-byte aligned pieces laid out one after another, in the order they are added: the
// one layout rule of every scratch buffer of the backend.
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
// on its stream (after the work enqueued before) when it goes out of scope.
class Scratch {
 public:
  explicit Scratch(cudaStream_t s) : s_(s) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch();
  size_t add(size_t bytes) { return carve_.add(bytes); }
  Status allocate();
  template <class T> T* at(size_t off) const { return reinterpret_cast<T*>(static_cast<unsigned char*>(base_) + off); }

 private:
  cudaStream_t s_;
  void* base_ = nullptr;
  Carve carve_;
};

// Host <-> device copies go through here and are counted (transfer_stats); device <-> device ones
// are not. `host` must be pinned memory for the copy to be asynchronous.
Status copy_async(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s);
TransferStats transfer_stats();

// Pinned host memory for staging host tensors, pooled (page-locked allocations are slow).
struct PinnedBlock {
  void* data = nullptr;
  size_t bytes = 0;
};
Status pinned_acquire(size_t bytes, PinnedBlock* out);
void pinned_release(const PinnedBlock& b);

// The call in progress on this thread: the streams its work was enqueued on, the host work to run
// once they reach this point (copies from pinned staging into the caller's memory), and what must
// live until then. The executor (backend_executor.cu) completes it by event poll; outside an
// executor, CallScope completes a call of its own before the op returns.
class Call {
 public:
  void use(cudaStream_t s);
  void after(std::function<void()> f) { after_.push_back(std::move(f)); }
  void keep(PinnedBlock b) { pinned_.push_back(b); }
  const std::vector<cudaStream_t>& streams() const { return streams_; }
  // Runs the host work (when ok) and releases the resources.
  void complete(bool ok);
  ~Call();

 private:
  std::vector<cudaStream_t> streams_;
  std::vector<std::function<void()>> after_;
  std::vector<PinnedBlock> pinned_;
};
Call* current_call();
void set_current_call(Call* c);

// Inside an op: the executor's call, or a temporary one that finish() completes by waiting for its
// streams (ops called without an executor, e.g. from C++ tests).
class CallScope {
 public:
  CallScope() : call_(current_call()) {
    if (!call_) set_current_call(call_ = &own_);
  }
  ~CallScope() {
    if (call_ == &own_) set_current_call(nullptr);
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
  Call& call() { return *call_; }
  Status finish(Status st);

 private:
  Call* call_;
  Call own_;
};

// Host memory to the device and back through pinned staging, asynchronously on s, inside a
// CallScope: the upload copies `src` before returning; the download lands in `dst` when the call
// completes. Both are counted copies.
Status upload_staged(void* dst, const void* src, size_t n, cudaStream_t s);
Status download_staged(void* dst, const void* src, size_t n, cudaStream_t s);

// A float tensor in host memory widened to f32 (the small gates uploaded at pack time).
std::vector<float> host_f32(const TensorView& t);

}  // namespace cuda
}  // namespace moe
