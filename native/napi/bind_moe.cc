// N-API glue for the ops: argument checks, outputs allocated on the JS thread, compute on the
// pool. Each binding takes a trailing `async` flag: true returns a Promise.
#include <napi.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "args.h"
#include "device_tensors.h"
#include "experts_handle.h"
#include "jobs.h"
#include "moe/cuda_backend.h"
#include "moe/moe_ops.h"

namespace moe_addon {

namespace {

constexpr int64_t kMaxInt32 = 2147483647;

bool is_cuda(const moe::PackedExperts& w) { return std::string(w.backend()) != "cpu"; }

// Reads expert weights given as one [E,r,c] tensor or an array of E [r,c] tensors.
void read_expert_matrix(const Napi::Value& v, const char* name, int64_t* E, int64_t* rows,
                        int64_t* cols, moe::DType* dtype, std::vector<const void*>* ptrs,
                        KeepAlive* keep) {
  Napi::Env env = v.Env();
  ptrs->clear();
  if (v.IsArray()) {
    Napi::Array a = v.As<Napi::Array>();
    if (a.Length() == 0) throw_range_error(env, std::string(name) + " must hold at least one expert, got []");
    for (uint32_t e = 0; e < a.Length(); ++e) {
      std::string n = std::string(name) + "[" + std::to_string(e) + "]";
      moe::TensorView t = to_tensor(a.Get(e), n.c_str(), kAnyFloat, 2, keep);
      if (e == 0) {
        *rows = t.dims[0], *cols = t.dims[1], *dtype = t.dtype;
      } else {
        if (t.dims[0] != *rows || t.dims[1] != *cols)
          throw_range_error(env, n + ".dims " + dims_string(t) + " differ from " + name + "[0].dims [" +
                                     std::to_string(*rows) + "," + std::to_string(*cols) + "]");
        if (t.dtype != *dtype)
          throw_type_error(env, n + ".type '" + moe::dtype_name(t.dtype) + "' differs from " + name +
                                    "[0].type '" + moe::dtype_name(*dtype) + "'");
      }
      ptrs->push_back(t.data);
    }
    *E = a.Length();
    return;
  }
  moe::TensorView t = to_tensor(v, name, kAnyFloat, 3, keep);
  *E = t.dims[0], *rows = t.dims[1], *cols = t.dims[2], *dtype = t.dtype;
  const size_t mat = size_t(t.dims[1] * t.dims[2]) * moe::dtype_size(t.dtype);
  for (int64_t e = 0; e < *E; ++e) ptrs->push_back(static_cast<const uint8_t*>(t.data) + e * mat);
}

// Routing variants, the optional trailing object of route and moe_forward (lib/moe/stages.ts and
// lib/moe/layers.ts build it): {noiseGate, noiseSeed, randomRouting, randomSeed, wantStats} and, for
// moe_forward only, {capacityFactor, evalCapacityFactor, decode (-1 auto, 0, 1), wantLogits,
// sharedExperts (Experts packed as one expert), sharedGate ([1,d])}.
struct Variants {
  moe::RouteParams route;  // top_k / normalize are set by the caller
  bool want_stats = false, want_logits = false;
  double capacity_factor = 0, eval_capacity_factor = 0;
  int decode = -1;
  std::shared_ptr<const moe::PackedExperts> shared;  // shared experts, or null
  moe::TensorView shared_gate;                        // [1,d], or empty
  Napi::Value counts_out;                             // countsOut (device x only), or empty
};

double to_factor(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw_type_error(v.Env(), std::string(name) + " must be a number, got " + describe(v));
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x) || x < 0)
    throw_range_error(v.Env(), std::string(name) + " must be a finite number >= 0, got " + describe(v));
  return x;
}

Variants read_variants(const Napi::CallbackInfo& info, size_t i, int64_t E, int64_t d, int top_k, bool forward,
                       KeepAlive* keep) {
  Variants r;
  if (i >= info.Length() || info[i].IsUndefined()) return r;
  Napi::Env env = info.Env();
  if (!info[i].IsObject() || info[i].IsArray())
    throw_type_error(env, "variants must be an object, got " + describe(info[i]));
  Napi::Object o = info[i].As<Napi::Object>();
  static const char* kRouteKeys[] = {"noiseGate", "noiseSeed", "randomRouting", "randomSeed", "wantStats"};
  static const char* kForwardKeys[] = {"capacityFactor", "evalCapacityFactor", "decode", "wantLogits",
                                       "sharedExperts", "sharedGate", "countsOut"};
  Napi::Array names = o.GetPropertyNames();
  for (uint32_t n = 0; n < names.Length(); ++n) {
    const std::string key = names.Get(n).ToString().Utf8Value();
    bool known = false;
    for (const char* k : kRouteKeys) known = known || key == k;
    if (forward)
      for (const char* k : kForwardKeys) known = known || key == k;
    if (!known) throw_type_error(env, "variants." + key + " is not a known option");
  }
  constexpr int64_t kMaxSeed = 9007199254740991;  // 2^53 - 1: every integer a JS number holds
  auto get = [&](const char* k) { return o.Get(k); };
  if (!get("noiseGate").IsUndefined()) {
    r.route.noise_gate = to_tensor(get("noiseGate"), "noiseGate", kAnyFloat, 2, keep);
    if (r.route.noise_gate.dims[0] != E || r.route.noise_gate.dims[1] != d)
      throw_range_error(env, "noiseGate.dims " + dims_string(r.route.noise_gate) + " must be [" + std::to_string(E) +
                                 "," + std::to_string(d) + "] like the gate");
    if (!get("noiseSeed").IsUndefined())
      r.route.noise_seed = uint64_t(to_int(get("noiseSeed"), "noiseSeed", 0, kMaxSeed));
  } else if (!get("noiseSeed").IsUndefined()) {
    throw_type_error(env, "noiseSeed is given without noiseGate");
  }
  if (!get("randomRouting").IsUndefined()) r.route.random_routing = to_bool(get("randomRouting"), "randomRouting");
  if (!get("randomSeed").IsUndefined())
    r.route.random_seed = uint64_t(to_int(get("randomSeed"), "randomSeed", 0, kMaxSeed));
  if (r.route.random_routing && top_k != 2)
    throw_range_error(env, "random routing (GShard) needs topK = 2, got " + std::to_string(top_k));
  if (!get("wantStats").IsUndefined()) r.want_stats = to_bool(get("wantStats"), "wantStats");
  if (forward) {
    if (!get("wantLogits").IsUndefined()) r.want_logits = to_bool(get("wantLogits"), "wantLogits");
    if (!get("capacityFactor").IsUndefined()) r.capacity_factor = to_factor(get("capacityFactor"), "capacityFactor");
    if (!get("evalCapacityFactor").IsUndefined())
      r.eval_capacity_factor = to_factor(get("evalCapacityFactor"), "evalCapacityFactor");
    if (!get("decode").IsUndefined()) r.decode = int(to_int(get("decode"), "decode", -1, 1));
    if (!get("sharedExperts").IsUndefined()) {
      r.shared = ExpertsWrap::Get(get("sharedExperts"), "sharedExperts");
      if (r.shared->num_experts != 1)
        throw_range_error(env, "sharedExperts must be packed as one expert, got " + std::to_string(r.shared->num_experts));
      check_same(env, "sharedExperts d", r.shared->d, "the experts' d", d);
    }
    if (!get("sharedGate").IsUndefined()) {
      if (!r.shared) throw_type_error(env, "sharedGate is given without sharedExperts");
      r.shared_gate = to_tensor(get("sharedGate"), "sharedGate", kAnyFloat, 2, keep);
      if (r.shared_gate.dims[0] != 1 || r.shared_gate.dims[1] != d)
        throw_range_error(env, "sharedGate.dims " + dims_string(r.shared_gate) + " must be [1," + std::to_string(d) + "]");
    }
    if (!get("countsOut").IsUndefined()) r.counts_out = get("countsOut");  // checked by moe_forward, which knows x's place
  }
  return r;
}

// When stats are asked for (non-null), the job's result gets `stats: {auxLoss, zLoss}` once the
// compute step has filled them in.
void return_stats(Job* job, std::shared_ptr<moe::RouterStats> stats) {
  if (!stats) return;
  job->finish = [job, stats](Napi::Env env) -> Napi::Value {
    Napi::Object res = job->result.Value();
    Napi::Object o = Napi::Object::New(env);
    o.Set("auxLoss", Napi::Number::New(env, stats->aux_loss));
    o.Set("zLoss", Napi::Number::New(env, stats->z_loss));
    res.Set("stats", o);
    return res;
  };
}

// Expert weights w1, w3, w2 (arguments 0-2) into src, with their shapes and types checked against
// each other.
void read_expert_source(const Napi::CallbackInfo& info, moe::ExpertWeightSource* src, KeepAlive* keep) {
  Napi::Env env = info.Env();
  int64_t E1, f1, d1, E3, f3, d3, E2, d2, f2;
  moe::DType t1, t3, t2;
  read_expert_matrix(info[0], "w1", &E1, &f1, &d1, &t1, &src->w1, keep);
  read_expert_matrix(info[1], "w3", &E3, &f3, &d3, &t3, &src->w3, keep);
  read_expert_matrix(info[2], "w2", &E2, &d2, &f2, &t2, &src->w2, keep);
  check_same(env, "w3 expert count", E3, "w1 expert count", E1);
  check_same(env, "w2 expert count", E2, "w1 expert count", E1);
  check_same(env, "w3 rows (f)", f3, "w1 rows (f)", f1);
  check_same(env, "w3 columns (d)", d3, "w1 columns (d)", d1);
  check_same(env, "w2 rows (d)", d2, "w1 columns (d)", d1);
  check_same(env, "w2 columns (f)", f2, "w1 rows (f)", f1);
  if (t3 != t1 || t2 != t1)
    throw_type_error(env, std::string("w1, w3 and w2 must share one type, got '") + moe::dtype_name(t1) +
                              "', '" + moe::dtype_name(t3) + "', '" + moe::dtype_name(t2) + "'");
  if (d1 < 1 || f1 < 1)
    throw_range_error(env, "expert weights must have d >= 1 and f >= 1, got d=" + std::to_string(d1) +
                               ", f=" + std::to_string(f1));
  if (E1 > 65536) throw_range_error(env, "at most 65536 experts, got " + std::to_string(E1));
  src->num_experts = int(E1);
  src->d = d1;
  src->f = f1;
  src->dtype = t1;
}

// pack_experts(w1, w3, w2, async, backend?, gate?) -> Experts
Napi::Value PackExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "pack_experts");
  auto job = std::make_unique<Job>();
  auto src = std::make_shared<moe::ExpertWeightSource>();
  read_expert_source(info, src.get(), &job->keep);
  const int64_t E1 = src->num_experts, d1 = src->d;
  const bool cuda = on_cuda(info, 4);
  // The router gate travels with weights packed for CUDA, so that a forward copies no weights.
  auto gate = std::make_shared<moe::TensorView>();
  const bool has_gate = info.Length() > 5 && !info[5].IsUndefined() && !info[5].IsNull();
  if (has_gate) {
    *gate = to_tensor(info[5], "gate", kAnyFloat, 2, &job->keep);
    if (gate->dims[0] != E1 || gate->dims[1] != d1)
      throw_range_error(env, "gate.dims " + dims_string(*gate) + " must be [" + std::to_string(E1) + "," +
                                 std::to_string(d1) + "] (experts, hidden size)");
  }
  return run_make_job<moe::PackedExperts>(
      env, async_flag(info, 3), std::move(job),
      [src, cuda, gate, has_gate](std::unique_ptr<moe::PackedExperts>* out) {
        return cuda ? moe::cuda::pack_experts(*src, has_gate ? gate.get() : nullptr, out) : moe::pack_experts(*src, out);
      },
      ExpertsWrap::NewInstance);
}

// route(x, gate, topK, normalize, wantLogits, async, variants?, backend?)
//   -> {topkIds, topkWeights, expertCounts, logits?, stats?}
Napi::Value Route(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 5, "route");
  auto job = std::make_unique<Job>();
  moe::TensorView x = to_tensor(info[0], "x", kAnyFloat, 2, &job->keep);
  moe::TensorView gate = to_tensor(info[1], "gate", kAnyFloat, 2, &job->keep);
  check_same(env, "gate.dims[1]", gate.dims[1], "x.dims[1]", x.dims[1]);
  const int64_t T = x.dims[0], E = gate.dims[0];
  if (E < 1) throw_range_error(env, "gate must have at least one expert row, got dims " + dims_string(gate));
  const int top_k = int(to_int(info[2], "topK", 1, E));
  const Variants v = read_variants(info, 6, E, x.dims[1], top_k, false, &job->keep);
  moe::RouteParams p = v.route;
  p.top_k = top_k;
  p.normalize = to_bool(info[3], "normalize");
  const bool want_logits = to_bool(info[4], "wantLogits");
  moe::TensorView ids, wts, counts, logits;
  Napi::Object r = Napi::Object::New(env);
  r.Set("topkIds", new_tensor(env, moe::DType::kI32, {T, p.top_k}, &ids));
  r.Set("topkWeights", new_tensor(env, moe::DType::kF32, {T, p.top_k}, &wts));
  r.Set("expertCounts", new_tensor(env, moe::DType::kI32, {E}, &counts));
  if (want_logits) r.Set("logits", new_tensor(env, moe::DType::kF32, {T, E}, &logits));
  job->result = Napi::Persistent(r);
  auto stats = v.want_stats ? std::make_shared<moe::RouterStats>() : nullptr;
  const bool cuda = on_cuda(info, 7);
  job->compute = [=]() {
    return (cuda ? moe::cuda::route : moe::route)(x, gate, p, ids.as<int32_t>(), wts.as<float>(), counts.as<int32_t>(),
                                                  want_logits ? logits.as<float>() : nullptr, stats.get());
  };
  return_stats(job.get(), stats);
  return run_job(env, async_flag(info, 5), std::move(job));
}

// permute(topkIds, numExperts, capacity, async, backend?) -> {expertOffsets, sortedRows, rowOf, dropped}
Napi::Value Permute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "permute");
  auto job = std::make_unique<Job>();
  moe::TensorView ids = to_tensor(info[0], "topkIds", kI32, 2, &job->keep);
  const int64_t E = to_int(info[1], "numExperts", 1, 65536);
  const int64_t capacity = to_int(info[2], "capacity", -1, kMaxInt32);
  const int64_t T = ids.dims[0], k = ids.dims[1];
  if (k < 1) throw_range_error(env, "topkIds.dims[1] (k) must be at least 1, got " + std::to_string(k));
  if (T * k > kMaxInt32) throw_range_error(env, "topkIds has too many slots: " + std::to_string(T * k));
  const int32_t* idp = ids.as<const int32_t>();
  for (int64_t s = 0; s < T * k; ++s)
    if ((idp[s] < 0 && idp[s] != moe::kNoExpert) || idp[s] >= E)
      throw_range_error(env, "topkIds.data[" + std::to_string(s) + "] must be an expert index in [0, " +
                                 std::to_string(E) + ") or -1 (no expert), got " + std::to_string(idp[s]));
  moe::TensorView off, rows, row_of, dropped;
  Napi::Object r = Napi::Object::New(env);
  r.Set("expertOffsets", new_tensor(env, moe::DType::kI32, {E + 1}, &off));
  r.Set("sortedRows", new_tensor(env, moe::DType::kI32, {T * k}, &rows));
  r.Set("rowOf", new_tensor(env, moe::DType::kI32, {T, k}, &row_of));
  r.Set("dropped", new_tensor(env, moe::DType::kI32, {E}, &dropped));
  job->result = Napi::Persistent(r);
  const bool cuda = on_cuda(info, 4);
  job->compute = [=]() {
    return (cuda ? moe::cuda::permute : moe::permute)(ids.as<const int32_t>(), T, int(k), int(E), capacity,
                                                      off.as<int32_t>(), rows.as<int32_t>(), row_of.as<int32_t>(),
                                                      dropped.as<int32_t>());
  };
  return run_job(env, async_flag(info, 3), std::move(job));
}

// grouped_gemm(x, sortedRows, expertOffsets, experts, async) -> y f32 [R,d]
Napi::Value GroupedGemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "grouped_gemm");
  auto job = std::make_unique<Job>();
  moe::TensorView x = to_tensor(info[0], "x", kAnyFloat, 2, &job->keep);
  moe::TensorView rows = to_tensor(info[1], "sortedRows", kI32, 1, &job->keep);
  moe::TensorView off = to_tensor(info[2], "expertOffsets", kI32, 1, &job->keep);
  auto w = ExpertsWrap::Get(info[3], "experts");
  const int64_t T = x.dims[0], E = w->num_experts;
  check_same(env, "x.dims[1]", x.dims[1], "the experts' d", w->d);
  check_same(env, "expertOffsets.dims[0]", off.dims[0], "numExperts + 1", E + 1);
  const int32_t* o = off.as<const int32_t>();
  if (o[0] != 0) throw_range_error(env, "expertOffsets.data[0] must be 0, got " + std::to_string(o[0]));
  for (int64_t e = 0; e < E; ++e)
    if (o[e + 1] < o[e])
      throw_range_error(env, "expertOffsets must be non-decreasing, got data[" + std::to_string(e + 1) +
                                 "] = " + std::to_string(o[e + 1]) + " < " + std::to_string(o[e]));
  const int64_t R = o[E];
  if (R > rows.dims[0])
    throw_range_error(env, "expertOffsets.data[E] (" + std::to_string(R) + ") exceeds sortedRows length " +
                               std::to_string(rows.dims[0]));
  const int32_t* rp = rows.as<const int32_t>();
  for (int64_t r = 0; r < R; ++r)
    if (rp[r] < 0 || rp[r] >= T)
      throw_range_error(env, "sortedRows.data[" + std::to_string(r) + "] must be a token index in [0, " +
                                 std::to_string(T) + "), got " + std::to_string(rp[r]));
  moe::TensorView y;
  job->result = Napi::Persistent(new_tensor(env, moe::DType::kF32, {R, w->d}, &y));
  job->compute = [=]() {
    if (is_cuda(*w)) return moe::cuda::grouped_gemm(x, rows.as<const int32_t>(), rows.dims[0], off.as<const int32_t>(), *w, y.as<float>());
    std::vector<float> scratch;
    const float* x32 = x.as<const float>();
    if (x.dtype != moe::DType::kF32) {
      scratch.resize(size_t(x.numel()));
      moe::widen_to_f32(x, scratch.data());
      x32 = scratch.data();
    }
    return moe::grouped_gemm(x32, T, rows.as<const int32_t>(), off.as<const int32_t>(), *w, y.as<float>());
  };
  return run_job(env, async_flag(info, 4), std::move(job));
}

// combine(y, rowOf, topkWeights, outType, async, backend?) -> out [T,d]
Napi::Value Combine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "combine");
  auto job = std::make_unique<Job>();
  moe::TensorView y = to_tensor(info[0], "y", kF32, 2, &job->keep);
  moe::TensorView row_of = to_tensor(info[1], "rowOf", kI32, 2, &job->keep);
  moe::TensorView wts = to_tensor(info[2], "topkWeights", kF32, 2, &job->keep);
  moe::DType out_t = to_dtype(info[3], "outType", kAnyFloat);
  const int64_t T = row_of.dims[0], k = row_of.dims[1], R = y.dims[0], d = y.dims[1];
  check_same(env, "topkWeights.dims[0]", wts.dims[0], "rowOf.dims[0]", T);
  check_same(env, "topkWeights.dims[1]", wts.dims[1], "rowOf.dims[1]", k);
  const int32_t* rp = row_of.as<const int32_t>();
  for (int64_t s = 0; s < T * k; ++s)
    if (rp[s] < -1 || rp[s] >= R)
      throw_range_error(env, "rowOf.data[" + std::to_string(s) + "] must be -1 or a row of y in [0, " +
                                 std::to_string(R) + "), got " + std::to_string(rp[s]));
  moe::TensorView out;
  job->result = Napi::Persistent(new_tensor(env, out_t, {T, d}, &out));
  const bool cuda = on_cuda(info, 5);
  job->compute = [=]() {
    if (cuda) return moe::cuda::combine(y.as<const float>(), R, row_of.as<const int32_t>(), wts.as<const float>(), T, int(k), out);
    return moe::combine(y.as<const float>(), R, row_of.as<const int32_t>(), wts.as<const float>(), T, int(k), out);
  };
  return run_job(env, async_flag(info, 4), std::move(job));
}

// moe_forward(x, gate, experts, topK, normalize, capacity, wantRouting, async, variants?)
//   -> {out, topkIds?, topkWeights?, expertCounts?, dropped?, logits?, stats?}
// (wantRouting also returns `dropped` [E], the slots each expert dropped for its capacity)
Napi::Value MoeForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 7, "moe_forward");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);  // device x: out and expertCounts are device tensors
  moe::TensorView x = tensor_arg(info[0], "x", kAnyFloat, 2, job.get(), dev);
  moe::TensorView gate = to_tensor(info[1], "gate", kAnyFloat, 2, &job->keep);
  auto w = ExpertsWrap::Get(info[2], "experts");
  if (dev) check_place(env, "the experts", w->backend(), dev);  // host tensors: copied in and out on CUDA
  const int64_t T = x.dims[0], E = w->num_experts;
  check_same(env, "x.dims[1]", x.dims[1], "the experts' d", w->d);
  check_same(env, "gate.dims[0]", gate.dims[0], "the number of experts", E);
  check_same(env, "gate.dims[1]", gate.dims[1], "the experts' d", w->d);
  moe::MoeForwardParams p;
  const int top_k = int(to_int(info[3], "topK", 1, E));
  const Variants v = read_variants(info, 8, E, w->d, top_k, true, &job->keep);
  p.route = v.route;
  p.capacity_factor = v.capacity_factor;
  p.eval_capacity_factor = v.eval_capacity_factor;
  p.decode = v.decode;
  p.route.top_k = top_k;
  p.route.normalize = to_bool(info[4], "normalize");
  p.capacity = to_int(info[5], "capacity", -1, kMaxInt32);
  const bool want_routing = to_bool(info[6], "wantRouting");
  if (v.shared && std::string(v.shared->backend()) != w->backend())
    throw_type_error(env, std::string("sharedExperts were packed for '") + v.shared->backend() + "', the experts for '" +
                              w->backend() + "'");
  if (v.shared && v.shared->dtype != w->dtype)
    throw_type_error(env, std::string("sharedExperts.type '") + moe::dtype_name(v.shared->dtype) +
                              "' differs from the experts' '" + moe::dtype_name(w->dtype) + "'");
  if (T * p.route.top_k > kMaxInt32) throw_range_error(env, "too many tokens: " + std::to_string(T));
  moe::MoeForwardOutputs outs;
  moe::TensorView ids, wts, counts, dropped, logits;
  Napi::Object r = Napi::Object::New(env);
  if (dev) {
    if (v.want_logits || v.want_stats)
      throw_moe_error(env, "ERR_UNSUPPORTED", "router logits and losses are not returned for device tensors: run on host tensors");
    moe::TensorView shape;
    shape.ndim = 2, shape.dims[0] = T, shape.dims[1] = w->d;
    r.Set("out", new_device_tensor(env, x.dtype, shape, &job->hold, &outs.out));
    if (want_routing) {
      // variants.countsOut: the caller's device int32 [E] (e.g. a row of one [layers, E] tensor)
      shape.ndim = 1, shape.dims[0] = E;
      if (v.counts_out.IsEmpty()) {
        r.Set("expertCounts", new_device_tensor(env, moe::DType::kI32, shape, &job->hold, &counts));
      } else {
        counts = to_device_tensor(v.counts_out, "countsOut", kI32, 1, &job->hold);
        check_same(env, "countsOut.dims[0]", counts.dims[0], "the number of experts", E);
        r.Set("expertCounts", v.counts_out);
      }
      outs.expert_counts = counts.as<int32_t>();
    }
  } else {
  if (!v.counts_out.IsEmpty())
    throw_type_error(env, "countsOut is for device tensors: x is a host tensor");
  r.Set("out", new_tensor(env, x.dtype, {T, w->d}, &outs.out));
  if (want_routing) {
    r.Set("topkIds", new_tensor(env, moe::DType::kI32, {T, p.route.top_k}, &ids));
    r.Set("topkWeights", new_tensor(env, moe::DType::kF32, {T, p.route.top_k}, &wts));
    r.Set("expertCounts", new_tensor(env, moe::DType::kI32, {E}, &counts));
    r.Set("dropped", new_tensor(env, moe::DType::kI32, {E}, &dropped));
    outs.topk_ids = ids.as<int32_t>();
    outs.topk_weights = wts.as<float>();
    outs.expert_counts = counts.as<int32_t>();
    outs.dropped = dropped.as<int32_t>();
  }
  if (v.want_logits) {
    r.Set("logits", new_tensor(env, moe::DType::kF32, {T, E}, &logits));
    outs.logits = logits.as<float>();
  }
  }
  auto stats = v.want_stats ? std::make_shared<moe::RouterStats>() : nullptr;
  job->result = Napi::Persistent(r);
  job->compute = [=]() {
    moe::MoeLayerWeights layer;
    layer.gate = gate;
    layer.experts = w.get();
    layer.shared = v.shared.get();
    layer.shared_gate = v.shared_gate;
    moe::MoeForwardOutputs o = outs;
    o.stats = stats.get();
    if (dev) return moe::cuda::dev::moe_forward(layer, x, p, o);
    return (is_cuda(*w) ? moe::cuda::moe_forward : moe::moe_forward)(layer, x, p, o);
  };
  return_stats(job.get(), stats);
  return run_job(env, async_flag(info, 7), std::move(job));
}

// dense_ffn(x, experts, async) -> out [T,d]; experts must hold one expert.
Napi::Value DenseFfn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "dense_ffn");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView x = tensor_arg(info[0], "x", kAnyFloat, 2, job.get(), dev);
  auto w = ExpertsWrap::Get(info[1], "weights");
  if (dev) check_place(env, "the FFN", w->backend(), dev);
  check_same(env, "weights expert count", w->num_experts, "1 (a dense FFN)", 1);
  check_same(env, "x.dims[1]", x.dims[1], "the FFN's d", w->d);
  moe::TensorView out, shape = x;
  shape.dims[1] = w->d;
  job->result = Napi::Persistent(dev ? new_device_tensor(env, x.dtype, shape, &job->hold, &out)
                                     : new_tensor(env, x.dtype, {x.dims[0], w->d}, &out));
  job->compute = [=]() {
    if (dev) return moe::cuda::dev::dense_ffn(*w, x, out);
    return (is_cuda(*w) ? moe::cuda::dense_ffn : moe::dense_ffn)(*w, x, out);
  };
  return run_job(env, async_flag(info, 2), std::move(job));
}

// merge_experts(w1, w3, w2, distribution: number[], async) -> {w1, w3, w2} (the weights' type)
Napi::Value MergeExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 5, "merge_experts");
  auto job = std::make_unique<Job>();
  auto src = std::make_shared<moe::ExpertWeightSource>();
  read_expert_source(info, src.get(), &job->keep);
  const int64_t E1 = src->num_experts, f1 = src->f, d1 = src->d;
  const moe::DType t1 = src->dtype;
  if (!info[3].IsArray()) throw_type_error(env, "distribution must be an array of numbers, got " + describe(info[3]));
  Napi::Array a = info[3].As<Napi::Array>();
  check_same(env, "distribution length", a.Length(), "the number of experts", E1);
  auto p = std::make_shared<std::vector<double>>(size_t(E1));
  double sum = 0;
  for (uint32_t e = 0; e < a.Length(); ++e) {
    const Napi::Value v = a.Get(e);
    const double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!std::isfinite(x) || x < 0)
      throw_range_error(env, "distribution[" + std::to_string(e) + "] must be a finite number >= 0, got " + describe(v));
    (*p)[e] = x;
    sum += x;
  }
  if (!(sum > 0)) throw_range_error(env, "distribution must not be all zeros");
  moe::TensorView o1, o3, o2;
  Napi::Object r = Napi::Object::New(env);
  r.Set("w1", new_tensor(env, t1, {f1, d1}, &o1));
  r.Set("w3", new_tensor(env, t1, {f1, d1}, &o3));
  r.Set("w2", new_tensor(env, t1, {d1, f1}, &o2));
  job->result = Napi::Persistent(r);
  job->compute = [=]() { return moe::merge_experts(*src, p->data(), o1.data, o3.data, o2.data); };
  return run_job(env, async_flag(info, 4), std::move(job));
}

}  // namespace

void InitOps(Napi::Env env, Napi::Object exports) {
  exports.Set("pack_experts", Napi::Function::New(env, PackExperts, "pack_experts"));
  exports.Set("route", Napi::Function::New(env, Route, "route"));
  exports.Set("permute", Napi::Function::New(env, Permute, "permute"));
  exports.Set("grouped_gemm", Napi::Function::New(env, GroupedGemm, "grouped_gemm"));
  exports.Set("combine", Napi::Function::New(env, Combine, "combine"));
  exports.Set("moe_forward", Napi::Function::New(env, MoeForward, "moe_forward"));
  exports.Set("dense_ffn", Napi::Function::New(env, DenseFfn, "dense_ffn"));
  exports.Set("merge_experts", Napi::Function::New(env, MergeExperts, "merge_experts"));
}

}  // namespace moe_addon
