// N-API glue for the bench's machine peaks (moe/peak.h). Synchronous on purpose: the bench calls
// them once, before any layer runs, and wants the whole machine to itself while they do.
//
//   measure_read_bandwidth(bytes, reps) -> GB/s, best of reps streaming passes on every thread
//   measure_fma_peak(seconds)           -> GFLOP/s of f32 multiply-adds on every thread
//   cuda_time_moe_forward(experts, T, topK, iters) -> ms per forward, CUDA events, device-resident x
//   cuda_time_dense_ffn(experts, T, iters)         -> ms per dense FFN, the same way
#include <napi.h>

#include <string>

#include "args.h"
#include "experts_handle.h"
#include "moe/cuda_backend.h"
#include "moe/peak.h"

namespace moe_addon {

namespace {

Napi::Value MeasureReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "measure_read_bandwidth");
  // 1 MiB .. 1 TiB: the lower end keeps the per-thread ranges meaningful, the upper is a sanity cap.
  const int64_t bytes = to_int(info[0], "bytes", int64_t(1) << 20, int64_t(1) << 40);
  const int64_t reps = to_int(info[1], "reps", 1, 1000);
  double gbs = 0.0;
  throw_if_error(env, moe::measure_read_bandwidth(size_t(bytes), int(reps), &gbs));
  return Napi::Number::New(env, gbs);
}

Napi::Value MeasureFmaPeak(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "measure_fma_peak");
  if (!info[0].IsNumber()) throw_type_error(env, "seconds must be a number, got " + describe(info[0]));
  const double seconds = info[0].As<Napi::Number>().DoubleValue();
  if (!(seconds > 0.0 && seconds <= 600.0))
    throw_range_error(env, "seconds must be in (0, 600], got " + describe(info[0]));
  double gflops = 0.0;
  throw_if_error(env, moe::measure_fma_peak(seconds, &gflops));
  return Napi::Number::New(env, gflops);
}

Napi::Value CudaTimeMoeForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "cuda_time_moe_forward");
  auto w = ExpertsWrap::Get(info[0], "experts");
  const int64_t T = to_int(info[1], "T", 1, int64_t(1) << 24);
  const int64_t k = to_int(info[2], "topK", 1, w->num_experts);
  const int64_t iters = to_int(info[3], "iters", 1, 100000);
  double ms = 0.0;
  throw_if_error(env, moe::cuda::time_moe_forward(*w, T, int(k), int(iters), &ms));
  return Napi::Number::New(env, ms);
}

Napi::Value CudaTimeDenseFfn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "cuda_time_dense_ffn");
  auto w = ExpertsWrap::Get(info[0], "weights");
  const int64_t T = to_int(info[1], "T", 1, int64_t(1) << 24);
  const int64_t iters = to_int(info[2], "iters", 1, 100000);
  double ms = 0.0;
  throw_if_error(env, moe::cuda::time_dense_ffn(*w, T, int(iters), &ms));
  return Napi::Number::New(env, ms);
}

}  // namespace

void InitBenchOps(Napi::Env env, Napi::Object exports) {
  exports.Set("measure_read_bandwidth", Napi::Function::New(env, MeasureReadBandwidth, "measure_read_bandwidth"));
  exports.Set("measure_fma_peak", Napi::Function::New(env, MeasureFmaPeak, "measure_fma_peak"));
  exports.Set("cuda_time_moe_forward", Napi::Function::New(env, CudaTimeMoeForward, "cuda_time_moe_forward"));
  exports.Set("cuda_time_dense_ffn", Napi::Function::New(env, CudaTimeDenseFfn, "cuda_time_dense_ffn"));
}

}  // namespace moe_addon
