// N-API glue for device-resident tensors: see device.h.
#include "device_tensors.h"

#include <cmath>
#include <string>

#include "jobs.h"
#include "moe/cuda_backend.h"

namespace moe_addon {

namespace {

class DeviceBufferWrap : public Napi::ObjectWrap<DeviceBufferWrap> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(env, "DeviceBuffer", {InstanceMethod("dispose", &DeviceBufferWrap::Dispose),
                                                           InstanceMethod("info", &DeviceBufferWrap::Info)});
    addon_data(env).device_buffer_ctor = Napi::Persistent(cls);
    exports.Set("DeviceBuffer", cls);
  }

  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<moe::cuda::DeviceBuffer> b) {
    pending_ = &b;
    Napi::Object o;
    try {
      o = addon_data(env).device_buffer_ctor.New({});
    } catch (...) {
      pending_ = nullptr;
      throw;
    }
    pending_ = nullptr;
    return o;
  }

  explicit DeviceBufferWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceBufferWrap>(info) {
    if (!pending_) throw_type_error(info.Env(), "DeviceBuffer cannot be constructed directly: use DeviceTensor.zeros() or DeviceTensor.from()");
    buf = std::move(*pending_);
    // device memory, not host memory: reported so that garbage device tensors get collected
    external_ = int64_t(buf->bytes);
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), external_);
  }

  std::shared_ptr<moe::cuda::DeviceBuffer> buf;

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (buf) {
      buf.reset();  // jobs that use it hold their own reference
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -external_);
      external_ = 0;
    }
    return info.Env().Undefined();
  }
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("disposed", Napi::Boolean::New(env, !buf));
    o.Set("bytes", Napi::Number::New(env, buf ? double(buf->bytes) : 0.0));
    return o;
  }

  int64_t external_ = 0;
  static inline thread_local std::shared_ptr<moe::cuda::DeviceBuffer>* pending_ = nullptr;
};

DeviceBufferWrap* buffer_of(const Napi::Value& v) {
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray()) return nullptr;
  Napi::Value b = v.As<Napi::Object>().Get("buffer");
  if (!b.IsObject() || !b.As<Napi::Object>().InstanceOf(addon_data(v.Env()).device_buffer_ctor.Value())) return nullptr;
  return DeviceBufferWrap::Unwrap(b.As<Napi::Object>());
}

Napi::Object device_object(Napi::Env env, Napi::Object buffer, moe::DType t, const moe::TensorView& shape) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Napi::String::New(env, moe::dtype_name(t)));
  Napi::Array dims = Napi::Array::New(env, shape.ndim);
  for (int i = 0; i < shape.ndim; ++i) dims.Set(uint32_t(i), Napi::Number::New(env, double(shape.dims[i])));
  o.Set("dims", dims);
  o.Set("buffer", buffer);
  o.Set("byteOffset", Napi::Number::New(env, 0));
  return o;
}

Napi::Value DeviceAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "device_alloc");
  Napi::Object spec = Napi::Object::New(env);
  spec.Set("type", info[0]);
  spec.Set("dims", info[1]);
  moe::TensorView shape = to_tensor_shape(spec, "tensor", kAnyFloat | kI32, -1);
  Holds hold;
  moe::TensorView view;
  return new_device_tensor(env, shape.dtype, shape, &hold, &view);
}

bool same_shape(const moe::TensorView& a, const moe::TensorView& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.dims[i] != b.dims[i]) return false;
  return true;
}

// device_upload(dst, src, async): dst a device tensor, src a host tensor of its type and dims.
Napi::Value DeviceUpload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "device_upload");
  auto job = std::make_unique<Job>();
  moe::TensorView dst = to_device_tensor(info[0], "dst", kAnyFloat | kI32, -1, &job->hold);
  moe::TensorView src = to_tensor(info[1], "src", 1u << int(dst.dtype), -1, &job->keep);
  if (!same_shape(dst, src)) throw_range_error(env, "src.dims " + dims_string(src) + " must equal the device tensor's " + dims_string(dst));
  job->result = Napi::Persistent(info[0].As<Napi::Object>());
  const size_t n = size_t(src.numel()) * moe::dtype_size(src.dtype);
  job->compute = [dst, src, n]() { return moe::cuda::upload(dst.data, src.data, n); };
  return run_job(env, async_flag(info, 2), std::move(job));
}

// device_download(src, dst | null, async) -> the host tensor.
Napi::Value DeviceDownload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "device_download");
  auto job = std::make_unique<Job>();
  moe::TensorView src = to_device_tensor(info[0], "src", kAnyFloat | kI32, -1, &job->hold);
  moe::TensorView dst;
  if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull()) {
    dst = to_tensor(info[1], "out", 1u << int(src.dtype), -1, &job->keep);
    if (!same_shape(dst, src)) throw_range_error(env, "out.dims " + dims_string(dst) + " must equal the device tensor's " + dims_string(src));
    job->result = Napi::Persistent(info[1].As<Napi::Object>());
  } else {
    job->result = Napi::Persistent(new_tensor(env, src.dtype, src, &dst));
  }
  const size_t n = size_t(src.numel()) * moe::dtype_size(src.dtype);
  job->compute = [dst, src, n]() { return moe::cuda::download(dst.data, src.data, n); };
  return run_job(env, async_flag(info, 2), std::move(job));
}

// cuda_transfer_stats() -> {toDevice: {calls, bytes}, toHost: {calls, bytes}}
Napi::Value TransferStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const moe::cuda::TransferStats t = moe::cuda::transfer_stats();
  auto pair = [&](uint64_t calls, uint64_t bytes) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("calls", Napi::Number::New(env, double(calls)));
    o.Set("bytes", Napi::Number::New(env, double(bytes)));
    return o;
  };
  Napi::Object r = Napi::Object::New(env);
  r.Set("toDevice", pair(t.to_device_calls, t.to_device_bytes));
  r.Set("toHost", pair(t.to_host_calls, t.to_host_bytes));
  return r;
}

}  // namespace

// The backend an op without packed weights runs on: argument i is undefined / 'cpu' or this build's
// CUDA backend name ('cuda', or 'cuda-emu' in test builds), which must be available.
bool on_cuda(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return false;
  Napi::Env env = info.Env();
  const std::string cuda = moe::cuda::backend_name();
  if (!info[i].IsString())
    throw_type_error(env, "backend must be 'cpu' or '" + cuda + "', got " + describe(info[i]));
  const std::string b = info[i].As<Napi::String>();
  if (b == "cpu") return false;
  if (b != cuda || cuda == "none")
    throw_moe_error(env, "ERR_BACKEND_UNAVAILABLE",
                    "backend '" + b + "' is not in this build: " +
                        (cuda == "none" ? moe::cuda::device_info().reason : "its CUDA backend is '" + cuda + "'"));
  if (!moe::cuda::device_info().available)
    throw_moe_error(env, "ERR_BACKEND_UNAVAILABLE",
                    "backend '" + b + "' is not available: " + moe::cuda::device_info().reason);
  return true;
}

// An op's tensors live in one place: all on the host (the CPU backend), or all device tensors (the
// CUDA backend); `device` is the place of the op's first tensor.
moe::TensorView tensor_arg(const Napi::Value& v, const char* name, unsigned allowed, int ndim, Job* job, bool device) {
  Napi::Env env = v.Env();
  if (is_device_tensor(v) != device)
    throw_type_error(env, std::string(name) + (device ? " must be a device tensor like the op's first tensor, got " +
                                                            (v.IsObject() && v.As<Napi::Object>().Has("data") ? std::string("a host tensor") : describe(v)) +
                                                            " (move it with DeviceTensor.from())"
                                                      : " is a device tensor but the op's first tensor is on the host: pass "
                                                        "tensors of one place (toHost() or DeviceTensor.from())"));
  return device ? to_device_tensor(v, name, allowed, ndim, &job->hold) : to_tensor(v, name, allowed, ndim, &job->keep);
}

// A packed object's backend must match the place of the op's tensors.
void check_place(Napi::Env env, const char* what, const char* backend, bool device) {
  const bool dev_obj = std::string(backend) != "cpu";
  if (dev_obj == device) return;
  throw_type_error(env, std::string(what) + " lives on '" + backend + "' but the op's tensors are " +
                            (device ? "device tensors" : "host tensors") + ": " +
                            (dev_obj ? "pass device tensors (DeviceTensor)" : "create it with the device backend"));
}

bool is_device_tensor(const Napi::Value& v) { return buffer_of(v) != nullptr; }

moe::TensorView to_device_tensor(const Napi::Value& v, const char* name, unsigned allowed, int ndim, Holds* hold) {
  Napi::Env env = v.Env();
  const std::string n(name);
  DeviceBufferWrap* b = buffer_of(v);
  if (!b) throw_type_error(env, n + " must be a device tensor (DeviceTensor), got " + describe(v));
  if (!b->buf) throw_moe_error(env, "ERR_DISPOSED", n + "'s device memory was disposed and cannot be used again");
  moe::TensorView t = to_tensor_shape(v, name, allowed, ndim);
  Napi::Value ov = v.As<Napi::Object>().Get("byteOffset");
  const int64_t off = ov.IsUndefined() ? 0 : to_int(ov, (n + ".byteOffset").c_str(), 0, int64_t(b->buf->bytes));
  const size_t es = moe::dtype_size(t.dtype);
  if (off % int64_t(es) != 0)
    throw_range_error(env, n + ".byteOffset must be a multiple of " + std::to_string(es) + ", got " + std::to_string(off));
  const size_t need = size_t(off) + size_t(t.numel()) * es;
  if (need > b->buf->bytes)
    throw_range_error(env, n + " (dims " + dims_string(t) + " at byte " + std::to_string(off) + ") runs past its " +
                               std::to_string(b->buf->bytes) + "-byte device buffer");
  t.data = static_cast<unsigned char*>(b->buf->data) + off;
  hold->push_back(b->buf);
  return t;
}

Napi::Object new_device_tensor(Napi::Env env, moe::DType t, const moe::TensorView& shape, Holds* hold, moe::TensorView* view) {
  *view = shape;
  view->dtype = t;
  std::shared_ptr<moe::cuda::DeviceBuffer> buf;
  throw_if_error(env, moe::cuda::alloc_device(size_t(view->numel()) * moe::dtype_size(t), &buf));
  view->data = buf->data;
  hold->push_back(buf);
  return device_object(env, DeviceBufferWrap::NewInstance(env, buf), t, shape);
}

void InitDevice(Napi::Env env, Napi::Object exports) {
  DeviceBufferWrap::Init(env, exports);
  exports.Set("device_alloc", Napi::Function::New(env, DeviceAlloc, "device_alloc"));
  exports.Set("device_upload", Napi::Function::New(env, DeviceUpload, "device_upload"));
  exports.Set("device_download", Napi::Function::New(env, DeviceDownload, "device_download"));
  exports.Set("cuda_transfer_stats", Napi::Function::New(env, TransferStats, "cuda_transfer_stats"));
}

}  // namespace moe_addon
