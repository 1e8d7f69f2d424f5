// moe-kernels native addon: module entry. Registers the handles (handles.h), the op bindings and the
// error class hook, describes the backends of the registry, and ties each environment's teardown to
// its jobs (jobs.h). Knows nothing of the math and names no backend.
#include <napi.h>

#include "args.h"
#include "handles.h"
#include "jobs.h"
#include "moe/backend.h"

namespace moe_addon {

void InitMoeBindings(Napi::Env env, Napi::Object exports);      // bind_moe.cc
void InitDecoderBindings(Napi::Env env, Napi::Object exports);  // bind_decoder.cc
void InitDeviceBindings(Napi::Env env, Napi::Object exports);   // bind_device.cc
void InitBenchBindings(Napi::Env env, Napi::Object exports);    // bind_bench.cc
void InitFileBindings(Napi::Env env, Napi::Object exports);     // bind_file.cc
void InitQuantBindings(Napi::Env env, Napi::Object exports);    // bind_quant.cc
void InitDistBindings(Napi::Env env, Napi::Object exports);     // bind_dist.cc

namespace {

// set_error_class(MoeError): native errors with a status code are thrown as this class,
// constructed as new MoeError(message, code).
Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction())
    throw_type_error(info.Env(), "set_error_class expects a constructor, got " +
                                     (info.Length() ? describe(info[0]) : std::string("nothing")));
  addon_data(info.Env()).error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

void set_info(Napi::Env env, Napi::Object o, const moe::Info& info) {
  for (const auto& [key, v] : info) {
    switch (v.kind) {
      case moe::InfoValue::Kind::kBool: o.Set(key, Napi::Boolean::New(env, v.b)); break;
      case moe::InfoValue::Kind::kNumber: o.Set(key, Napi::Number::New(env, v.n)); break;
      case moe::InfoValue::Kind::kString: o.Set(key, Napi::String::New(env, v.s)); break;
    }
  }
}

// backend_info() -> {cpu: {...}, cuda: {...}}: each backend of the build under its family, with its
// name, whether it is compiled and available and why, and what it reports of itself and its device.
Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  for (moe::Backend* b : moe::all_backends()) {
    const moe::Capabilities& c = b->capabilities();
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", Napi::String::New(env, c.name));
    o.Set("compiled", Napi::Boolean::New(env, c.compiled));
    o.Set("available", Napi::Boolean::New(env, c.available));
    o.Set("emulated", Napi::Boolean::New(env, c.emulated));
    o.Set("reason", Napi::String::New(env, c.reason));
    set_info(env, o, c.info);
    if (!c.device.empty()) {
      Napi::Object d = Napi::Object::New(env);
      set_info(env, d, c.device);
      o.Set("device", d);
    }
    r.Set(c.family, o);
  }
  return r;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  track_environment(env);
  exports.Set("set_error_class", Napi::Function::New(env, SetErrorClass, "set_error_class"));
  exports.Set("backend_info", Napi::Function::New(env, BackendInfo, "backend_info"));
  InitHandles(env, exports);
  InitMoeBindings(env, exports);
  InitDecoderBindings(env, exports);
  InitDeviceBindings(env, exports);
  InitBenchBindings(env, exports);
  InitFileBindings(env, exports);
  InitQuantBindings(env, exports);
  InitDistBindings(env, exports);
  return exports;
}

}  // namespace moe_addon

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return moe_addon::Init(env, exports); }
NODE_API_MODULE(moe_kernels, InitModule)
