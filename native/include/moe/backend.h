// moe-kernels: the one seam between the API and the backends.
//
// A Backend owns everything that differs between the CPU and a GPU: its memory (buffers, copies),
// its packed weights, every op (moe/moe_ops.h, moe/decoder_ops.h), an executor that runs its jobs,
// and its capabilities. The N-API glue never names a backend's functions: it asks the object a
// tensor or packed weight belongs to (PackedExperts::backend, Buffer::backend) or the registry below
// for one by name, and calls the op through this interface.
//
//   cpu       native/backends/cpu    host memory; jobs run on the compute pool
//   cuda      native/backends/cuda   device memory; jobs enqueue on CUDA streams and complete by
//                                    event poll; built by nvcc ("cuda"), or by g++ against the CPU
//                                    emulator of native/emu ("cuda-emu", test builds), or absent
//                                    ("none": every call says why)
//
// Adding an op: one Args struct (moe_ops.h / decoder_ops.h), one virtual below, one implementation
// per backend, one binding in native/napi. Adding a backend: a folder under native/backends with a
// Backend subclass, and a line in the registry (native/backends/registry.cc).
#pragma once
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <new>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/decoder_ops.h"
#include "moe/moe_ops.h"
#include "moe/status.h"
#include "moe/tensor.h"

namespace moe {

// Memory of a backend (device memory for CUDA), zeroed at allocation, freed when the last holder
// lets go (stream-ordered on a GPU: after the work enqueued before it).
class Buffer {
 public:
  virtual ~Buffer() = default;
  Backend* backend = nullptr;
  void* data = nullptr;
  size_t bytes = 0;
};

// A value of a backend's description (backendInfo() in JS): a flag, a number or a string.
struct InfoValue {
  enum class Kind { kBool, kNumber, kString } kind = Kind::kBool;
  bool b = false;
  double n = 0;
  std::string s;
  static InfoValue flag(bool v) { InfoValue i; i.kind = Kind::kBool, i.b = v; return i; }
  static InfoValue number(double v) { InfoValue i; i.kind = Kind::kNumber, i.n = v; return i; }
  static InfoValue text(std::string v) { InfoValue i; i.kind = Kind::kString, i.s = std::move(v); return i; }
};
using Info = std::vector<std::pair<std::string, InfoValue>>;

struct Capabilities {
  std::string family;  // "cpu" or "cuda": the key of the backend in backendInfo()
  std::string name;    // "cpu", "cuda", "cuda-emu", or "none" (a family this build lacks)
  bool compiled = false;    // the build has it
  bool available = false;   // and it can run here
  bool emulated = false;    // its kernels run on the CPU emulator (test builds)
  std::string reason;       // what runs, or why it cannot
  bool host_memory = false;  // its tensors are host memory (no staging, no Buffers)
  Info info;    // what the backend reports of itself (CPU: kernel, threads, ISA flags)
  Info device;  // the device in use, when there is one (name, memory, peaks)
};

// How a backend runs jobs. `run` does the work (on a CPU: computes; on a GPU: enqueues it on
// streams); the executor calls `done` with its status once the work's effects are visible to the
// host, outputs in host memory included. Jobs start in submission order.
class Executor {
 public:
  virtual ~Executor() = default;
  // Runs `run` off the calling thread; `done` is called once, on any thread, never before `run`.
  virtual void submit(std::function<Status()> run, std::function<void(Status)> done) = 0;
  // Runs `run` and waits for its effects; in order with submitted jobs where the backend needs it.
  virtual Status run_sync(const std::function<Status()>& run) = 0;
  // Waits until every submitted job's `done` has returned.
  virtual void drain() = 0;
  // Drains, then stops the executor's threads (the library is being unloaded). A later submit
  // starts them again.
  virtual void shutdown() = 0;
};

// Runs a job's work on an executor's thread: nothing may escape there, so an allocation failure or any
// other exception becomes a status.
inline Status run_guarded(const std::function<Status()>& run) {
  try {
    return run();
  } catch (const std::bad_alloc&) {
    return Status::oom("out of memory while running the op");
  } catch (const std::exception& e) {
    return Status::internal(std::string("unexpected exception: ") + e.what());
  } catch (...) {
    return Status::internal("unexpected exception");
  }
}

// Host <-> device copies a backend's ops made since the process started (inputs, results; not the
// one-time weight uploads of packing): what a caller checks to see that work stays on the device.
struct TransferStats {
  uint64_t to_device_calls = 0, to_device_bytes = 0, to_host_calls = 0, to_host_bytes = 0;
};

// A collective transport bound to one backend's queue: it enqueues its transfers there (a CUDA
// stream for NCCL), in order with the backend's ops, and the executor completes them like any op.
// Implemented in native/parallel (NCCL); the backends know only this interface.
class DeviceComm {
 public:
  virtual ~DeviceComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // To peer p, send_bytes[p] bytes from send + send_offsets[p]; from p, recv_bytes[p] bytes into
  // recv + recv_offsets[p]; enqueued on `queue` (a cudaStream_t), both buffers the backend's memory.
  virtual Status all_to_all_v(const void* send, const int64_t* send_bytes, const int64_t* send_offsets, void* recv,
                              const int64_t* recv_bytes, const int64_t* recv_offsets, void* queue) = 0;
  // Called from any thread when a transfer will never complete (a peer died): ends the transfers in
  // flight with an error, so that the queue they block drains; the communicator is unusable after.
  virtual void abort() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const Capabilities& capabilities() const = 0;
  const char* name() const { return capabilities().name.c_str(); }
  bool available() const { return capabilities().available; }
  virtual Executor& executor() = 0;

  // ---- memory (device backends) ----
  virtual Status alloc(size_t bytes, std::shared_ptr<Buffer>* out);  // zeroed
  virtual Status copy(const CopyArgs& a);

  // ---- packed weights (the sources are host memory and may be freed afterwards) ----
  // gate: optional [E,d] (any float type) kept with the experts for moe_forward.
  virtual Status pack_experts(const ExpertWeightSource& src, const TensorView* gate,
                              std::unique_ptr<PackedExperts>* out) = 0;
  // w: [out,in] any float or quantised type; bias: optional [out] any float type (kept as f32).
  // exact_f32: precision 'exact', as ExpertWeightSource::exact_f32 (16-bit weights against f32
  // activations; a backend that cannot keep them says so with Status::unsupported).
  virtual Status pack_linear(const TensorView& w, const TensorView* bias, bool exact_f32,
                             std::unique_ptr<PackedLinear>* out) = 0;
  virtual Status create_kv_cache(const KvCacheShape& shape, std::unique_ptr<KvCache>* out) = 0;
  virtual Status create_kv_pool(const KvPoolShape& shape, std::unique_ptr<KvPool>* out) = 0;

  // ---- MoE ops (moe/moe_ops.h) ----
  virtual Status route(const RouteArgs& a) = 0;
  virtual Status permute(const PermuteArgs& a) = 0;
  virtual Status grouped_gemm(const GroupedGemmArgs& a) = 0;
  virtual Status combine(const CombineArgs& a) = 0;
  virtual Status moe_forward(const MoeForwardArgs& a) = 0;
  virtual Status dense_ffn(const DenseFfnArgs& a) = 0;
  virtual Status merge_experts(const MergeExpertsArgs& a);
  virtual Status quantize(const QuantizeArgs& a);
  virtual Status dequantize(const QuantizeArgs& a);
  // rows to and from the other ranks of a.comm's group (expert parallelism on device memory)
  virtual Status all_to_all(const AllToAllArgs& a);

  // ---- decoder ops (moe/decoder_ops.h) ----
  virtual Status embedding(const EmbeddingArgs& a) = 0;
  virtual Status rms_norm(const RmsNormArgs& a) = 0;
  virtual Status linear(const LinearArgs& a) = 0;
  virtual Status rope(const RopeArgs& a) = 0;
  virtual Status attention(const AttentionArgs& a) = 0;
  virtual Status paged_attention(const PagedAttentionArgs& a) = 0;
  virtual Status add(const AddArgs& a) = 0;
  virtual Status sample(const SampleArgs& a) = 0;
  virtual Status cast(const CastArgs& a) = 0;

  // ---- measurements for the bench ----
  // Host machine peaks, measured with the instruction set the backend's kernels use.
  virtual Status measure_read_bandwidth(size_t bytes, int reps, double* gbs);
  virtual Status measure_fma_peak(double seconds, double* gflops);
  // Time of one call (ms, averaged over iters) on inputs already in the backend's memory: the MoE
  // forward (experts packed with their gate) and a one-expert dense FFN.
  virtual Status time_moe_forward(const PackedExperts& w, int64_t T, int top_k, int iters, double* ms);
  virtual Status time_dense_ffn(const PackedExperts& w, int64_t T, int iters, double* ms);

  virtual TransferStats transfer_stats() const { return {}; }

 protected:
  // The status of a call this backend does not implement.
  Status unsupported(const char* what) const;
};

// ---- what a backend does not implement ----
inline Status Backend::unsupported(const char* what) const {
  return Status::unsupported(std::string(what) + " is not implemented by the '" + name() + "' backend");
}
inline Status Backend::alloc(size_t, std::shared_ptr<Buffer>*) { return unsupported("device memory"); }
inline Status Backend::copy(const CopyArgs&) { return unsupported("copy"); }
inline Status Backend::merge_experts(const MergeExpertsArgs&) { return unsupported("merge_experts"); }
inline Status Backend::quantize(const QuantizeArgs&) { return unsupported("quantize"); }
inline Status Backend::dequantize(const QuantizeArgs&) { return unsupported("dequantize"); }
inline Status Backend::all_to_all(const AllToAllArgs&) { return unsupported("all_to_all (a device collective)"); }
inline Status Backend::measure_read_bandwidth(size_t, int, double*) { return unsupported("measure_read_bandwidth"); }
inline Status Backend::measure_fma_peak(double, double*) { return unsupported("measure_fma_peak"); }
inline Status Backend::time_moe_forward(const PackedExperts&, int64_t, int, int, double*) {
  return unsupported("time_moe_forward");
}
inline Status Backend::time_dense_ffn(const PackedExperts&, int64_t, int, double*) { return unsupported("time_dense_ffn"); }

// ---- the registry (native/backends/registry.cc) ----
// Every backend of this build, CPU first (a "none" CUDA backend when the build has none).
const std::vector<Backend*>& all_backends();
Backend& cpu_backend();
// By name ("cpu", "cuda", "cuda-emu"); null when this build has no such backend.
Backend* find_backend(const std::string& name);
// Drains and stops every backend's executor: the library is about to be unloaded.
void shutdown_backends();

}  // namespace moe
