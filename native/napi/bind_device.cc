// N-API bindings of device memory (moe::Buffer) and the copies in and out of it.
//
// A device tensor is a JS object {type, dims, buffer, byteOffset}: `buffer` a DeviceBuffer handle
// (handles.h, owning a backend's Buffer through a shared_ptr, freed by dispose() or its finaliser),
// `byteOffset` where the tensor starts in it (views share one buffer). The TypeScript DeviceTensor class
// (lib/core/device.ts) is such an object. Ops whose first tensor is a device tensor take all their
// tensors in that backend's memory (jobs.h, tensor_arg).
//
//   device_alloc(type, dims, {backend})           -> {type, dims, buffer, byteOffset: 0} (zeroed)
//   device_upload(dst device tensor, src host tensor, {async})     -> dst
//   device_download(src device tensor, {out, async})               -> host tensor
//   transfer_stats()                              -> {toDevice: {calls, bytes}, toHost: {calls, bytes}}
#include <napi.h>

#include <memory>
#include <string>

#include "args.h"
#include "handles.h"
#include "jobs.h"
#include "moe/backend.h"

namespace moe_addon {

namespace {

// options.backend, or the first available backend with device memory.
moe::Backend* device_backend(const Options& o) {
  if (o.has("backend")) {
    moe::Backend* b = backend_option(o);
    if (b->capabilities().host_memory)
      throw_type_error(o.get("backend").Env(), std::string("options.backend must be a backend with device memory, got '") + b->name() + "'");
    return b;
  }
  std::string why;
  for (moe::Backend* b : moe::all_backends()) {
    if (b->capabilities().host_memory) continue;
    if (b->available()) return b;
    why = b->capabilities().reason;
  }
  throw_moe_error(o.get("backend").Env(), "ERR_BACKEND_UNAVAILABLE", "device tensors need a device backend: " + why);
}

Napi::Value DeviceAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "device_alloc");
  Options o(info, 2, "device_alloc", {"backend"});
  Napi::Object spec = Napi::Object::New(env);
  spec.Set("type", info[0]);
  spec.Set("dims", info[1]);
  const moe::TensorView shape = to_tensor_shape(spec, "tensor", kAnyFloat | kI32, -1);
  Place place;
  place.device = device_backend(o);
  Job job(false);
  moe::TensorView view;
  return new_output(env, job, shape.dtype, shape, place, &view);
}

Napi::Value DeviceUpload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "device_upload");
  Options o(info, 2, "device_upload", {});
  auto job = std::make_unique<Job>(o.async());
  moe::CopyArgs a;
  a.dst = device_tensor(*job, info[0], "dst", kAnyFloat | kI32, -1, &job->backend);
  a.src = host_tensor(*job, info[1], "src", 1u << int(a.dst.dtype), -1);
  if (!same_dims(a.dst, a.src))
    throw_range_error(env, "src.dims " + dims_string(a.src) + " must equal the device tensor's " + dims_string(a.dst));
  job->result = Napi::Persistent(info[0].As<Napi::Object>());
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->copy(a); };
  return run_job(env, std::move(job));
}

Napi::Value DeviceDownload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "device_download");
  Options o(info, 1, "device_download", {"out"});
  auto job = std::make_unique<Job>(o.async());
  moe::CopyArgs a;
  a.src = device_tensor(*job, info[0], "src", kAnyFloat | kI32, -1, &job->backend);
  const Place host;
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), env.Undefined(), a.src.dtype, 1u << int(a.src.dtype), a.src, host, &a.dst));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->copy(a); };
  return run_job(env, std::move(job));
}

Napi::Value TransferStatsOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe::TransferStats t;
  for (moe::Backend* b : moe::all_backends()) {
    const moe::TransferStats s = b->transfer_stats();
    t.to_device_calls += s.to_device_calls, t.to_device_bytes += s.to_device_bytes;
    t.to_host_calls += s.to_host_calls, t.to_host_bytes += s.to_host_bytes;
  }
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

void InitDeviceBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("device_alloc", Napi::Function::New(env, DeviceAlloc, "device_alloc"));
  exports.Set("device_upload", Napi::Function::New(env, DeviceUpload, "device_upload"));
  exports.Set("device_download", Napi::Function::New(env, DeviceDownload, "device_download"));
  exports.Set("transfer_stats", Napi::Function::New(env, TransferStatsOf, "transfer_stats"));
}

}  // namespace moe_addon
