// N-API glue for the bench's machine peaks (moe/peak.h). Synchronous on purpose: the bench calls
// them once, before any layer runs, and wants the whole machine to itself while they do.
//
//   measure_read_bandwidth(bytes, reps) -> GB/s, best of reps streaming passes on every thread
//   measure_fma_peak(seconds)           -> GFLOP/s of f32 multiply-adds on every thread
#include <napi.h>

#include <string>

#include "args.h"
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

}  // namespace

void InitBenchOps(Napi::Env env, Napi::Object exports) {
  exports.Set("measure_read_bandwidth", Napi::Function::New(env, MeasureReadBandwidth, "measure_read_bandwidth"));
  exports.Set("measure_fma_peak", Napi::Function::New(env, MeasureFmaPeak, "measure_fma_peak"));
}

}  // namespace moe_addon
