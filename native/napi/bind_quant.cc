// N-API bindings of the weight formats (moe/quant.h), weight transforms run by the CPU backend:
//
//   quantize(x, {type, async})      x [..., cols] f32/f16/bf16  -> {type, data: Uint8Array, dims}
//   dequantize(x, {outType, async}) x [..., cols] q8_0/q4_0/q4_k/q5_k/q6_k -> [..., cols] (f32 default)
#include <napi.h>

#include <memory>
#include <string>

#include "args.h"
#include "jobs.h"
#include "moe/backend.h"

namespace moe_addon {

namespace {

Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "quantize");
  Options o(info, 1, "quantize", {"type"});
  auto job = std::make_unique<Job>(o.async());
  job->backend = &moe::cpu_backend();
  auto a = std::make_shared<moe::QuantizeArgs>();
  a->src = host_tensor(*job, info[0], "x", kAnyFloat, -1);
  if (a->src.ndim < 1) throw_range_error(env, "x must have at least one dim, got " + dims_string(a->src));
  const moe::DType t = to_dtype(o.get("type"), "options.type", kQ8_0 | kQ4_0 | kQ4_K);
  moe::TensorView shape = a->src;
  shape.dtype = t;
  check_quant_dims(env, "x", shape);
  job->result = Napi::Persistent(new_output(env, *job, t, shape, Place{}, &a->dst));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->quantize(*a); };
  return run_job(env, std::move(job));
}

Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "dequantize");
  Options o(info, 1, "dequantize", {"outType"});
  auto job = std::make_unique<Job>(o.async());
  job->backend = &moe::cpu_backend();
  auto a = std::make_shared<moe::QuantizeArgs>();
  a->src = host_tensor(*job, info[0], "x", kAnyQuant, -1);
  const moe::DType t = o.has("outType") ? to_dtype(o.get("outType"), "options.outType", kAnyFloat) : moe::DType::kF32;
  job->result = Napi::Persistent(new_output(env, *job, t, a->src, Place{}, &a->dst));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->dequantize(*a); };
  return run_job(env, std::move(job));
}

}  // namespace

void InitQuantBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("quantize", Napi::Function::New(env, Quantize, "quantize"));
  exports.Set("dequantize", Napi::Function::New(env, Dequantize, "dequantize"));
}

}  // namespace moe_addon
