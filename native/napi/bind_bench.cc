// N-API bindings of the bench's measurements (moe::Backend's measure_* and time_*). Synchronous on
// purpose: the bench calls them once per row and wants the machine to itself while they run.
//
//   measure_read_bandwidth(bytes, reps, {backend}) -> GB/s, best of reps streaming passes on every thread
//   measure_fma_peak(seconds, {backend})           -> GFLOP/s of f32 multiply-adds on every thread
//   time_moe_forward(experts, {T, topK, iters})    -> ms per forward on device-resident inputs
//   time_dense_ffn(weights, {T, iters})            -> ms per dense FFN, the same way
#include <napi.h>

#include "args.h"
#include "handles.h"
#include "jobs.h"
#include "moe/backend.h"

namespace moe_addon {

namespace {

Napi::Value MeasureReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "measure_read_bandwidth");
  Options o(info, 2, "measure_read_bandwidth", {"backend"});
  // 1 MiB .. 1 TiB: the lower end keeps the per-thread ranges meaningful, the upper is a sanity cap.
  const int64_t bytes = to_int(info[0], "bytes", int64_t(1) << 20, int64_t(1) << 40);
  const int64_t reps = to_int(info[1], "reps", 1, 1000);
  double gbs = 0.0;
  throw_if_error(env, backend_option(o)->measure_read_bandwidth(size_t(bytes), int(reps), &gbs));
  return Napi::Number::New(env, gbs);
}

Napi::Value MeasureFmaPeak(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "measure_fma_peak");
  Options o(info, 1, "measure_fma_peak", {"backend"});
  const double seconds = to_number(info[0], "seconds", 0.0, 600.0, true);
  double gflops = 0.0;
  throw_if_error(env, backend_option(o)->measure_fma_peak(seconds, &gflops));
  return Napi::Number::New(env, gflops);
}

Napi::Value TimeMoeForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "time_moe_forward");
  Options o(info, 1, "time_moe_forward", {"T", "topK", "iters"});
  auto w = ExpertsHandle::Get(info[0], "experts")->obj;
  const int64_t T = o.integer("T", 1, 1, int64_t(1) << 24);
  const int64_t k = o.integer("topK", 2, 1, w->num_experts);
  const int64_t iters = o.integer("iters", 10, 1, 100000);
  double ms = 0.0;
  throw_if_error(env, w->backend->time_moe_forward(*w, T, int(k), int(iters), &ms));
  return Napi::Number::New(env, ms);
}

Napi::Value TimeDenseFfn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "time_dense_ffn");
  Options o(info, 1, "time_dense_ffn", {"T", "iters"});
  auto w = ExpertsHandle::Get(info[0], "weights")->obj;
  const int64_t T = o.integer("T", 1, 1, int64_t(1) << 24);
  const int64_t iters = o.integer("iters", 10, 1, 100000);
  double ms = 0.0;
  throw_if_error(env, w->backend->time_dense_ffn(*w, T, int(iters), &ms));
  return Napi::Number::New(env, ms);
}

}  // namespace

void InitBenchBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("measure_read_bandwidth", Napi::Function::New(env, MeasureReadBandwidth, "measure_read_bandwidth"));
  exports.Set("measure_fma_peak", Napi::Function::New(env, MeasureFmaPeak, "measure_fma_peak"));
  exports.Set("time_moe_forward", Napi::Function::New(env, TimeMoeForward, "time_moe_forward"));
  exports.Set("time_dense_ffn", Napi::Function::New(env, TimeDenseFfn, "time_dense_ffn"));
}

}  // namespace moe_addon
