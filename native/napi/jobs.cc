// N-API glue: jobs, their tensors and their executors (jobs.h).
#include "jobs.h"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>

#include "handles.h"

namespace moe_addon {

// ---- environments ----------------------------------------------------------------------------------
namespace {

// The async jobs of one environment that have not settled yet.
struct EnvJobs {
  std::mutex mu;
  std::condition_variable cv;
  int inflight = 0;
  void begin() {
    std::lock_guard<std::mutex> lk(mu);
    ++inflight;
  }
  void end() {
    std::lock_guard<std::mutex> lk(mu);
    if (--inflight == 0) cv.notify_all();
  }
  void wait_idle() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return inflight == 0; });
  }
};

std::atomic<int> g_environments{0};

struct EnvState {
  std::shared_ptr<EnvJobs> jobs = std::make_shared<EnvJobs>();
};

void on_env_teardown(void* arg) {
  std::unique_ptr<EnvState> state(static_cast<EnvState*>(arg));
  // The executors finish this environment's jobs without its event loop (their settle calls are
  // dropped), reading memory the jobs hold; then, if no environment is left, no thread may run the
  // addon's code any more: the library may be unloaded next.
  state->jobs->wait_idle();
  if (g_environments.fetch_sub(1) == 1) moe::shutdown_backends();
}

// The environment's job counter (set by track_environment).
std::shared_ptr<EnvJobs> env_jobs(Napi::Env env) { return std::static_pointer_cast<EnvJobs>(addon_data(env).jobs); }

}  // namespace

void track_environment(Napi::Env env) {
  auto* state = new EnvState();
  addon_data(env).jobs = state->jobs;
  g_environments.fetch_add(1);
  napi_add_env_cleanup_hook(env, on_env_teardown, state);
}

// ---- running a job ---------------------------------------------------------------------------------
namespace {

struct AsyncJob {
  std::unique_ptr<Job> job;
  Napi::Promise::Deferred deferred;
};

Napi::Value finish_value(Napi::Env env, Job& job) {
  if (job.finish) return job.finish(env);
  if (!job.result.IsEmpty()) return job.result.Value();
  return env.Undefined();
}

// Copies the outputs the job could not write in place; an error when a typed array lost its memory.
moe::Status write_back(Napi::Env env, Job& job) {
  for (WriteBack& w : job.write_backs) {
    napi_typedarray_type type;
    size_t length = 0, offset = 0;
    void* data = nullptr;
    napi_value ab = nullptr;
    const napi_status st = napi_get_typedarray_info(env, w.typed_array.Value(), &type, &length, &data, &ab, &offset);
    bool detached = false;
    if (st == napi_ok && ab) napi_is_detached_arraybuffer(env, ab, &detached);
    size_t elem = type == napi_float32_array || type == napi_int32_array ? 4 : 2;
    if (st != napi_ok || detached || !data || length * elem < w.bytes)
      return moe::Status(moe::StatusCode::kInvalidArgument,
                         w.name + ".data's ArrayBuffer was detached or shrunk while the call ran: the result was not written");
    std::memcpy(data, w.block->data, w.bytes);
  }
  return moe::Status::ok();
}

void settle_job(Napi::Env env, std::unique_ptr<AsyncJob>& owned) {
  Napi::HandleScope scope(env);
  Job& job = *owned->job;
  if (job.status.is_ok()) job.status = write_back(env, job);
  if (!job.status.is_ok()) {
    Napi::Error e = job.write_backs.empty() || job.status.code() != moe::StatusCode::kInvalidArgument
                        ? make_status_error(env, job.status)
                        : make_moe_error(env, "ERR_DETACHED", job.status.message());
    owned->deferred.Reject(e.Value());
    return;
  }
  try {
    owned->deferred.Resolve(finish_value(env, job));
  } catch (const Napi::Error& e) {
    owned->deferred.Reject(e.Value());
  }
}

void settle(Napi::Env env, Napi::Function, void*, AsyncJob* aj) {
  std::unique_ptr<AsyncJob> owned(aj);
  if (env == nullptr) {  // the environment is going away: nothing to settle; its references die with it
    owned.release();
    return;
  }
  try {
    settle_job(env, owned);
  } catch (const Napi::Error&) {
    // A worker being terminated: its environment runs no more JavaScript, so the promise cannot be
    // settled (resolving, then rejecting, both throw) and goes away with the environment. An
    // exception out of this callback would be std::terminate, an abort of the whole process.
  }
}

using SettleFn = Napi::TypedThreadSafeFunction<void, AsyncJob, settle>;

}  // namespace

Napi::Value run_job(Napi::Env env, std::unique_ptr<Job> job) {
  moe::Backend* backend = job->backend ? job->backend : &moe::cpu_backend();
  if (!job->async) {
    job->status = backend->executor().run_sync(job->compute);
    throw_if_error(env, job->status);
    return finish_value(env, *job);
  }
  auto deferred = Napi::Promise::Deferred::New(env);
  Napi::Promise promise = deferred.Promise();
  SettleFn tsfn = SettleFn::New(env, "moe-kernels job", 0, 1);
  std::shared_ptr<EnvJobs> tracker = env_jobs(env);
  if (tracker) tracker->begin();
  auto* aj = new AsyncJob{std::move(job), deferred};
  std::function<moe::Status()> compute = aj->job->compute;
  backend->executor().submit(std::move(compute), [aj, tsfn, tracker](moe::Status st) mutable {
    aj->job->status = std::move(st);
    tsfn.BlockingCall(aj);
    tsfn.Release();
    if (tracker) tracker->end();
  });
  return promise;
}

// ---- tensors ----------------------------------------------------------------------------------------
namespace {

BufferHandle* buffer_handle_of(const Napi::Value& v) {
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray()) return nullptr;
  return BufferHandle::Peek(v.As<Napi::Object>().Get("buffer"));
}

napi_typedarray_type typed_array_type(moe::DType t) {
  if (moe::is_quant(t)) return napi_uint8_array;  // raw blocks
  return t == moe::DType::kF32 ? napi_float32_array : t == moe::DType::kI32 ? napi_int32_array : napi_uint16_array;
}
const char* typed_array_name(moe::DType t) {
  if (moe::is_quant(t)) return "Uint8Array";
  return t == moe::DType::kF32 ? "Float32Array" : t == moe::DType::kI32 ? "Int32Array" : "Uint16Array";
}

std::string place_name(const Place& p) { return p.on_device() ? std::string("'") + p.device->name() + "' device memory" : "the host"; }

}  // namespace

bool is_device_tensor(const Napi::Value& v) { return buffer_handle_of(v) != nullptr; }

void check_quant_dims(Napi::Env env, const std::string& name, const moe::TensorView& t) {
  const int64_t qk = moe::quant_block_elems(t.dtype);
  if (t.ndim < 1 || t.dims[t.ndim - 1] % qk != 0)
    throw_range_error(env, name + ".dims " + dims_string(t) + ": a " + moe::dtype_name(t.dtype) + " row must hold whole blocks of " +
                               std::to_string(qk) + " values");
}

Place place_of(const Napi::Value& v) {
  Place p;
  BufferHandle* h = buffer_handle_of(v);
  if (h && h->obj) p.device = h->obj->backend;
  return p;
}

moe::TensorView host_tensor(Job& job, const Napi::Value& v, const char* name, unsigned allowed, int ndim, moe::Dir dir) {
  Napi::Env env = v.Env();
  const std::string n(name);
  moe::TensorView t = to_tensor_shape(v, name, allowed, ndim);
  Napi::Value data = v.As<Napi::Object>().Get("data");
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != typed_array_type(t.dtype))
    throw_type_error(env, n + ".data must be a " + typed_array_name(t.dtype) + " for type '" + moe::dtype_name(t.dtype) +
                              "', got " + describe(data));
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* ptr = nullptr;
  napi_value ab = nullptr;
  if (napi_get_typedarray_info(env, data, &type, &length, &ptr, &ab, &offset) != napi_ok)
    throw_type_error(env, n + ".data cannot be read: " + describe(data));
  bool detached = false;
  napi_is_detached_arraybuffer(env, ab, &detached);
  if (detached) throw_type_error(env, n + ".data's ArrayBuffer is detached (it was transferred): its memory is gone");
  if (moe::is_quant(t.dtype)) {  // raw blocks of the logical dims
    check_quant_dims(env, n, t);
    if (double(length) != double(t.bytes()))
      throw_range_error(env, n + ".data has " + std::to_string(length) + " bytes but " + moe::dtype_name(t.dtype) + " dims " +
                                 dims_string(t) + " need " + std::to_string(t.bytes()));
  } else if (double(length) != double(t.numel())) {
    throw_range_error(env, n + ".data has " + std::to_string(length) + " elements but dims " + dims_string(t) + " need " +
                               std::to_string(t.numel()));
  }
  const size_t bytes = t.bytes();
  if (std::shared_ptr<HostBlock> block = block_of(env, ab)) {  // the package's memory: held, used in place
    job.hold.push_back(block);
    t.data = ptr;
    return t;
  }
  if (!job.async) {  // no JS runs while a sync call does: in place
    t.data = ptr;
    return t;
  }
  // Memory the package does not own, in an async call: a copy the job holds (written back when an output).
  std::shared_ptr<HostBlock> copy;
  throw_if_error(env, alloc_host_block(bytes, &copy));
  if (dir == moe::Dir::kIn) {
    if (bytes) std::memcpy(copy->data, ptr, bytes);
  } else {
    job.write_backs.push_back(WriteBack{Napi::Persistent(data.As<Napi::Object>()), copy, bytes, n});
  }
  job.hold.push_back(copy);
  t.data = copy->data;
  return t;
}

moe::TensorView device_tensor(Job& job, const Napi::Value& v, const char* name, unsigned allowed, int ndim,
                              moe::Backend** backend) {
  Napi::Env env = v.Env();
  const std::string n(name);
  BufferHandle* h = buffer_handle_of(v);
  if (!h) throw_type_error(env, n + " must be a device tensor (DeviceTensor), got " + describe(v));
  if (!h->obj) throw_moe_error(env, "ERR_DISPOSED", n + "'s device memory was disposed and cannot be used again");
  const moe::Buffer& b = *h->obj;
  moe::TensorView t = to_tensor_shape(v, name, allowed, ndim);
  Napi::Value ov = v.As<Napi::Object>().Get("byteOffset");
  const int64_t off = ov.IsUndefined() ? 0 : to_int(ov, (n + ".byteOffset").c_str(), 0, int64_t(b.bytes));
  if (moe::is_quant(t.dtype)) check_quant_dims(env, n, t);
  const size_t es = moe::is_quant(t.dtype) ? 1 : moe::dtype_size(t.dtype);
  if (off % int64_t(es) != 0)
    throw_range_error(env, n + ".byteOffset must be a multiple of " + std::to_string(es) + ", got " + std::to_string(off));
  if (size_t(off) + t.bytes() > b.bytes)
    throw_range_error(env, n + " (dims " + dims_string(t) + " at byte " + std::to_string(off) + ") runs past its " +
                               std::to_string(b.bytes) + "-byte device buffer");
  t.data = static_cast<unsigned char*>(b.data) + off;
  t.device = true;
  job.hold.push_back(h->obj);
  if (backend) *backend = b.backend;
  return t;
}

moe::TensorView tensor_arg(Job& job, const Napi::Value& v, const char* name, unsigned allowed, int ndim, const Place& place,
                           moe::Dir dir) {
  Napi::Env env = v.Env();
  const bool dev = is_device_tensor(v);
  if (dev != place.on_device())
    throw_type_error(env, std::string(name) +
                              (place.on_device()
                                   ? " must be a device tensor like the op's first tensor, got " +
                                         (v.IsObject() && v.As<Napi::Object>().Has("data") ? std::string("a host tensor") : describe(v)) +
                                         " (move it with DeviceTensor.from())"
                                   : " is a device tensor but the op's first tensor is on the host: pass tensors of one place "
                                     "(toHost() or DeviceTensor.from())"));
  if (!dev) return host_tensor(job, v, name, allowed, ndim, dir);
  moe::Backend* b = nullptr;
  moe::TensorView t = device_tensor(job, v, name, allowed, ndim, &b);
  if (b != place.device)
    throw_type_error(env, std::string(name) + " lives in '" + (b ? b->name() : "?") + "' memory, the op's first tensor in " +
                              place_name(place));
  return t;
}

Napi::Object new_output(Napi::Env env, Job& job, moe::DType t, const moe::TensorView& shape, const Place& place,
                        moe::TensorView* view) {
  *view = shape;
  view->dtype = t;
  view->device = place.on_device();
  const double numel = double(view->numel());
  if (numel > double(kMaxTypedArrayElements))
    throw_moe_error(env, "ERR_OUT_OF_MEMORY", "an output of dims " + dims_string(*view) + " (" + std::to_string(int64_t(numel)) +
                                                  " elements) is larger than the largest typed array (" +
                                                  std::to_string(kMaxTypedArrayElements) + " elements)");
  Napi::Array dims = Napi::Array::New(env, size_t(shape.ndim));
  for (int i = 0; i < shape.ndim; ++i) dims.Set(uint32_t(i), Napi::Number::New(env, double(shape.dims[i])));
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Napi::String::New(env, moe::dtype_name(t)));
  o.Set("dims", dims);
  if (place.on_device()) {
    std::shared_ptr<moe::Buffer> buf;
    throw_if_error(env, place.device->alloc(view->bytes(), &buf));
    view->data = buf->data;
    job.hold.push_back(buf);
    o.Set("buffer", BufferHandle::NewInstance(env, std::shared_ptr<moe::Buffer>(std::move(buf))));
    o.Set("byteOffset", Napi::Number::New(env, 0));
    return o;
  }
  std::shared_ptr<HostBlock> block;
  const size_t n = size_t(view->numel());
  Napi::ArrayBuffer ab = new_host_buffer(env, view->bytes(), &block);
  Napi::Value data;
  if (t == moe::DType::kF32) data = Napi::Float32Array::New(env, n, ab, 0);
  else if (t == moe::DType::kI32) data = Napi::Int32Array::New(env, n, ab, 0);
  else if (moe::is_quant(t)) data = Napi::Uint8Array::New(env, view->bytes(), ab, 0);
  else data = Napi::Uint16Array::New(env, n, ab, 0);
  view->data = block ? block->data : nullptr;
  if (block) job.hold.push_back(block);
  o.Set("data", data);
  return o;
}

Napi::Object output_arg(Job& job, const Napi::Value& out_v, const Napi::Value& type_v, moe::DType dflt, unsigned allowed,
                        const moe::TensorView& shape, const Place& place, moe::TensorView* view) {
  Napi::Env env = out_v.Env();
  const bool typed = given(type_v);
  const moe::DType t = typed ? to_dtype(type_v, "outType", allowed) : dflt;
  if (!given(out_v)) return new_output(env, job, t, shape, place, view);
  if (is_device_tensor(out_v) != place.on_device())
    throw_type_error(env, std::string("out must be ") +
                              (place.on_device() ? "a device tensor, like the op's inputs" : "a host tensor, like the op's inputs") +
                              ", got " + (place.on_device() ? "a host tensor" : "a device tensor"));
  *view = tensor_arg(job, out_v, "out", allowed, shape.ndim, place, moe::Dir::kOut);
  for (int i = 0; i < shape.ndim; ++i)
    if (view->dims[i] != shape.dims[i])
      throw_range_error(env, "out.dims must be " + dims_string(shape) + ", got " + dims_string(*view));
  if (typed && view->dtype != t)
    throw_type_error(env, std::string("out.type '") + moe::dtype_name(view->dtype) + "' differs from outType '" +
                              moe::dtype_name(t) + "'");
  job.keep.push_back(Napi::Persistent(out_v.As<Napi::Object>()));
  return out_v.As<Napi::Object>();
}

// ---- backends ------------------------------------------------------------------------------------------
moe::Backend* backend_option(const Options& o) {
  const Napi::Value v = o.get("backend");
  if (!given(v)) return &moe::cpu_backend();
  Napi::Env env = v.Env();
  std::string names;
  for (moe::Backend* b : moe::all_backends())
    if (b->capabilities().compiled) names += (names.empty() ? "'" : ", '") + std::string(b->name()) + "'";
  if (!v.IsString()) throw_type_error(env, "options.backend must be one of " + names + ", got " + describe(v));
  const std::string name = v.As<Napi::String>();
  moe::Backend* b = moe::find_backend(name);
  if (!b) {
    std::string why;
    for (moe::Backend* x : moe::all_backends())
      if (!x->capabilities().compiled) why = x->capabilities().reason;
    throw_moe_error(env, "ERR_BACKEND_UNAVAILABLE",
                    "backend '" + name + "' is not in this build (it has " + names + ")" + (why.empty() ? "" : ": " + why));
  }
  if (!b->available())
    throw_moe_error(env, "ERR_BACKEND_UNAVAILABLE", "backend '" + name + "' is not available: " + b->capabilities().reason);
  return b;
}

void check_place(Napi::Env env, const char* what, const moe::Backend* backend, const Place& place) {
  const bool host_backend = backend && backend->capabilities().host_memory;
  if (place.on_device() ? backend == place.device : host_backend) return;
  throw_type_error(env, std::string(what) + " lives on '" + (backend ? backend->name() : "?") + "' but the op's tensors are " +
                            (place.on_device() ? "device tensors of '" + std::string(place.device->name()) + "'" : "host tensors") +
                            ": " + (host_backend ? "pass host tensors" : "pass device tensors (DeviceTensor) of its backend"));
}

}  // namespace moe_addon
