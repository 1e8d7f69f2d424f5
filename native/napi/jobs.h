// N-API glue: one call of an op as a job, run synchronously or as a Promise on its backend's executor.
//
// The baton pattern: everything a job needs is turned into plain C++ data on the JS thread (tensor
// views, params); the compute step runs on the backend's executor and never touches a JS value. A
// job holds the native memory and objects it uses (host_memory.h says which host memory that is),
// keeps its result object referenced, and writes back the outputs it could not write in place when
// it settles. An environment's teardown (a worker exiting) waits for its jobs; the last one stops
// the backends' threads, so no thread runs the addon's code after it is unloaded.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "args.h"
#include "host_memory.h"
#include "moe/backend.h"

namespace moe_addon {

// An output that must be copied into a JS typed array when the job settles (an async call's output
// whose memory the package does not own).
struct WriteBack {
  Napi::ObjectReference typed_array;
  std::shared_ptr<HostBlock> block;
  size_t bytes = 0;
  std::string name;
};

struct Job {
  explicit Job(bool is_async) : async(is_async) {}
  const bool async;
  moe::Backend* backend = nullptr;             // whose executor runs it (default: the CPU's)
  std::vector<Napi::ObjectReference> keep;     // JS objects referenced until the job settles
  std::vector<std::shared_ptr<const void>> hold;  // native memory and objects it uses
  std::vector<WriteBack> write_backs;
  Napi::ObjectReference result;                // what the call returns, built before compute
  std::function<moe::Status()> compute;        // runs off the JS thread (async)
  std::function<Napi::Value(Napi::Env)> finish;  // optional: builds the result after compute
  moe::Status status;
};

// async: returns a Promise settled with the result; otherwise runs now and returns it.
Napi::Value run_job(Napi::Env env, std::unique_ptr<Job> job);

// A job that builds a backend object (packed weights): make(std::unique_ptr<T>*) -> Status runs as
// the compute step, then wrap(env, std::shared_ptr<T>) turns the object into its JS handle.
template <class T, class Make, class Wrap>
Napi::Value run_make_job(Napi::Env env, std::unique_ptr<Job> job, Make make, Wrap wrap) {
  auto made = std::make_shared<std::unique_ptr<T>>();
  job->compute = [made, make]() { return make(made.get()); };
  job->finish = [made, wrap](Napi::Env e) -> Napi::Value { return wrap(e, std::shared_ptr<T>(std::move(*made))); };
  return run_job(env, std::move(job));
}

// ---- where an op's tensors live --------------------------------------------------------------------
// The host, or the memory of a device backend (the backend of the op's first tensor).
struct Place {
  moe::Backend* device = nullptr;
  bool on_device() const { return device != nullptr; }
};
// The place of a tensor argument: a device tensor's backend, else the host.
Place place_of(const Napi::Value& v);
// RangeError unless the last dim of a quantised tensor holds whole blocks.
void check_quant_dims(Napi::Env env, const std::string& name, const moe::TensorView& t);
// True when v is an object whose `buffer` is a DeviceBuffer.
bool is_device_tensor(const Napi::Value& v);

// A tensor argument of the op, in `place` (TypeError naming it when it is elsewhere): a host tensor
// {type, data, dims} read in place or copied per host_memory.h, or a device tensor {type, dims,
// buffer, byteOffset}. ndim < 0: any rank up to 4. dir kOut: an output the caller passed (`out`).
moe::TensorView tensor_arg(Job& job, const Napi::Value& v, const char* name, unsigned allowed, int ndim,
                           const Place& place, moe::Dir dir = moe::Dir::kIn);
// A host tensor, whatever the op's place (e.g. token ids for a device embedding).
moe::TensorView host_tensor(Job& job, const Napi::Value& v, const char* name, unsigned allowed, int ndim,
                            moe::Dir dir = moe::Dir::kIn);
// A device tensor (its backend in *backend when given).
moe::TensorView device_tensor(Job& job, const Napi::Value& v, const char* name, unsigned allowed, int ndim,
                              moe::Backend** backend = nullptr);
// A fresh zeroed output of type t with the dims of `shape`, in `place`: the JS tensor object.
Napi::Object new_output(Napi::Env env, Job& job, moe::DType t, const moe::TensorView& shape, const Place& place,
                        moe::TensorView* view);
// The result tensor of an op: the caller's `out` when given (its dims must be those of `shape`, its
// type `type` when that is given, or one of `allowed`), else a fresh one of `type` or `dflt`.
Napi::Object output_arg(Job& job, const Napi::Value& out_v, const Napi::Value& type_v, moe::DType dflt, unsigned allowed,
                        const moe::TensorView& shape, const Place& place, moe::TensorView* view);

// ---- which backend runs it ----------------------------------------------------------------------
// options.backend ('cpu' when absent): a backend of this build that can run here, else
// ERR_BACKEND_UNAVAILABLE saying why.
moe::Backend* backend_option(const Options& o);
// The backend of a packed object must be where the op's tensors are (TypeError naming `what`).
void check_place(Napi::Env env, const char* what, const moe::Backend* backend, const Place& place);

// Called once per environment at module load: its teardown waits for its jobs.
void track_environment(Napi::Env env);

}  // namespace moe_addon
