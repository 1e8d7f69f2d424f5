// moe-kernels native addon: module entry. Registers the op bindings (MoE and model ops), the
// Experts, Linear and KvCache classes and the error class hook; knows nothing of the math.
#include <napi.h>

#include "args.h"
#include "experts_handle.h"
#include "moe/cpu_features.h"
#include "moe/cuda_backend.h"
#include "moe/threadpool.h"

namespace moe_addon {

void InitOps(Napi::Env env, Napi::Object exports);
void InitBenchOps(Napi::Env env, Napi::Object exports);
void InitModelOps(Napi::Env env, Napi::Object exports);
void InitDevice(Napi::Env env, Napi::Object exports);

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

Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const moe::CpuFeatures& f = moe::cpu_features();
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("kernel", Napi::String::New(env, f.kernel));
  cpu.Set("threads", Napi::Number::New(env, moe::ComputePool::instance().num_threads()));
  cpu.Set("avx2", Napi::Boolean::New(env, f.avx2));
  cpu.Set("fma", Napi::Boolean::New(env, f.fma));
  cpu.Set("f16c", Napi::Boolean::New(env, f.f16c));
  cpu.Set("avx512f", Napi::Boolean::New(env, f.avx512f));
  cpu.Set("avx512bf16", Napi::Boolean::New(env, f.avx512bf16));
  const moe::cuda::DeviceInfo& d = moe::cuda::device_info();
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("name", Napi::String::New(env, moe::cuda::backend_name()));
  cuda.Set("compiled", Napi::Boolean::New(env, d.compiled));
  cuda.Set("available", Napi::Boolean::New(env, d.available));
  cuda.Set("emulated", Napi::Boolean::New(env, d.emulated));
  cuda.Set("reason", Napi::String::New(env, d.reason));
  if (d.device >= 0) {
    Napi::Object dev = Napi::Object::New(env);
    dev.Set("ordinal", Napi::Number::New(env, d.device));
    dev.Set("name", Napi::String::New(env, d.name));
    dev.Set("computeCapability", Napi::String::New(env, std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)));
    dev.Set("smCount", Napi::Number::New(env, d.sm_count));
    dev.Set("totalMemory", Napi::Number::New(env, double(d.total_memory)));
    dev.Set("peakGBps", Napi::Number::New(env, d.peak_gbps));
    dev.Set("peakTensorTflops", Napi::Number::New(env, d.peak_tc_tflops));
    dev.Set("peakFmaTflops", Napi::Number::New(env, d.peak_fma_tflops));
    cuda.Set("device", dev);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpu", cpu);
  o.Set("cuda", cuda);
  return o;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("set_error_class", Napi::Function::New(env, SetErrorClass, "set_error_class"));
  exports.Set("backend_info", Napi::Function::New(env, BackendInfo, "backend_info"));
  ExpertsWrap::Init(env, exports);
  InitOps(env, exports);
  InitBenchOps(env, exports);
  InitModelOps(env, exports);
  InitDevice(env, exports);
  return exports;
}

}  // namespace moe_addon

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return moe_addon::Init(env, exports); }
NODE_API_MODULE(moe_kernels, InitModule)
