// N-API bindings of the MoE ops (moe/moe_ops.h): argument checks, outputs allocated on the JS thread,
// the op called through the backend that owns the packed weights or the tensors. Each takes its
// tensors, then one options object (`async: true` returns a Promise):
//
//   pack_experts({w1, w3, w2, gate?}, {backend, exactF32, batchInvariant, async})       -> Experts
//   route(x, gate, {topK, normalize, wantLogits, wantStats, noiseGate, noiseSeed, randomRouting,
//                   randomSeed, backend, async})   -> {topkIds, topkWeights, expertCounts, logits?, stats?}
//   permute(topkIds, {numExperts, capacity, backend, async}) -> {expertOffsets, sortedRows, rowOf, dropped}
//   grouped_gemm(x, sortedRows, expertOffsets, experts, {async})              -> y f32 [R,d]
//   combine(y, rowOf, topkWeights, {outType, backend, async})                 -> out [T,d]
//   moe_forward(x, experts, {topK, normalize, capacity, capacityFactor, evalCapacityFactor, decode,
//                            noiseGate, noiseSeed, randomRouting, randomSeed, wantRouting, wantStats,
//                            wantLogits, sharedExperts, countsOut, async})
//       -> {out, topkIds?, topkWeights?, expertCounts?, dropped?, logits?, stats?}
//   dense_ffn(x, weights, {async})                                            -> out [T,d]
//   merge_experts({w1, w3, w2}, distribution, {async})                        -> {w1, w3, w2}
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "args.h"
#include "handles.h"
#include "jobs.h"
#include "moe/backend.h"

namespace moe_addon {

namespace {

constexpr int64_t kMaxInt32 = 2147483647;

// Reads expert weights given as one [E,r,c] tensor or an array of E [r,c] tensors (host memory).
void read_expert_matrix(Job& job, const Napi::Value& v, const char* name, int64_t* E, int64_t* rows, int64_t* cols,
                        moe::DType* dtype, std::vector<const void*>* ptrs) {
  Napi::Env env = v.Env();
  ptrs->clear();
  if (v.IsArray()) {
    Napi::Array a = v.As<Napi::Array>();
    if (a.Length() == 0) throw_range_error(env, std::string(name) + " must hold at least one expert, got []");
    for (uint32_t e = 0; e < a.Length(); ++e) {
      std::string n = std::string(name) + "[" + std::to_string(e) + "]";
      moe::TensorView t = host_tensor(job, a.Get(e), n.c_str(), kAnyWeight, 2);
      if (e == 0) {
        *rows = t.dims[0], *cols = t.dims[1], *dtype = t.dtype;
      } else {
        if (t.dims[0] != *rows || t.dims[1] != *cols)
          throw_range_error(env, n + ".dims " + dims_string(t) + " differ from " + name + "[0].dims [" + std::to_string(*rows) +
                                     "," + std::to_string(*cols) + "]");
        if (t.dtype != *dtype)
          throw_type_error(env, n + ".type '" + moe::dtype_name(t.dtype) + "' differs from " + name + "[0].type '" +
                                    moe::dtype_name(*dtype) + "'");
      }
      ptrs->push_back(t.data);
    }
    *E = a.Length();
    return;
  }
  moe::TensorView t = host_tensor(job, v, name, kAnyWeight, 3);
  *E = t.dims[0], *rows = t.dims[1], *cols = t.dims[2], *dtype = t.dtype;
  const size_t mat = size_t(t.dims[1]) * moe::row_bytes(t.dtype, t.dims[2]);
  for (int64_t e = 0; e < *E; ++e) ptrs->push_back(static_cast<const uint8_t*>(t.data) + e * mat);
}

// Expert weights {w1, w3, w2} with their shapes and types checked against each other.
moe::ExpertWeightSource read_expert_source(Job& job, const Napi::Value& weights) {
  Napi::Env env = weights.Env();
  if (!weights.IsObject() || weights.IsArray()) throw_type_error(env, "weights must be an object {w1, w3, w2}, got " + describe(weights));
  Napi::Object w = weights.As<Napi::Object>();
  moe::ExpertWeightSource src;
  int64_t E1, f1, d1, E3, f3, d3, E2, d2, f2;
  moe::DType t1, t3, t2;
  read_expert_matrix(job, w.Get("w1"), "w1", &E1, &f1, &d1, &t1, &src.w1);
  read_expert_matrix(job, w.Get("w3"), "w3", &E3, &f3, &d3, &t3, &src.w3);
  read_expert_matrix(job, w.Get("w2"), "w2", &E2, &d2, &f2, &t2, &src.w2);
  check_same(env, "w3 expert count", E3, "w1 expert count", E1);
  check_same(env, "w2 expert count", E2, "w1 expert count", E1);
  check_same(env, "w3 rows (f)", f3, "w1 rows (f)", f1);
  check_same(env, "w3 columns (d)", d3, "w1 columns (d)", d1);
  check_same(env, "w2 rows (d)", d2, "w1 columns (d)", d1);
  check_same(env, "w2 columns (f)", f2, "w1 rows (f)", f1);
  // One type for all three, except that quantised experts may quantise W2 differently (Q4_K_M).
  if (t3 != t1 || (t2 != t1 && !(moe::is_quant(t1) && moe::is_quant(t2))))
    throw_type_error(env, std::string("w1, w3 and w2 must share one type (or all be quantised, w1 and w3 alike), got '") +
                              moe::dtype_name(t1) + "', '" + moe::dtype_name(t3) + "', '" + moe::dtype_name(t2) + "'");
  if (d1 < 1 || f1 < 1)
    throw_range_error(env, "expert weights must have d >= 1 and f >= 1, got d=" + std::to_string(d1) + ", f=" + std::to_string(f1));
  if (E1 > 65536) throw_range_error(env, "at most 65536 experts, got " + std::to_string(E1));
  src.num_experts = int(E1);
  src.d = d1;
  src.f = f1;
  src.dtype = t1;
  src.w2_dtype = t2;
  return src;
}

// The routing options shared by route and moe_forward (moe::RouteParams, declared once in C++).
moe::RouteParams read_route(Job& job, const Options& o, const Place& place, int64_t E, int64_t d) {
  Napi::Env env = o.get("topK").Env();
  moe::RouteParams p;
  if (!o.has("topK")) throw_type_error(env, "options.topK is required");
  p.top_k = int(o.integer("topK", 2, 1, E));
  p.normalize = o.flag("normalize", true);
  if (o.has("noiseGate")) {
    // in the op's place, or a host tensor beside device tensors (staged by the device backend)
    const Napi::Value ng = o.get("noiseGate");
    p.noise_gate = place.on_device() && !is_device_tensor(ng) ? host_tensor(job, ng, "noiseGate", kAnyFloat, 2)
                                                              : tensor_arg(job, ng, "noiseGate", kAnyFloat, 2, place);
    if (p.noise_gate.dims[0] != E || p.noise_gate.dims[1] != d)
      throw_range_error(env, "noiseGate.dims " + dims_string(p.noise_gate) + " must be [" + std::to_string(E) + "," +
                                 std::to_string(d) + "] like the gate");
    p.noise_seed = uint64_t(o.integer("noiseSeed", 0, 0, kMaxSafeInteger));
  } else if (o.has("noiseSeed")) {
    throw_type_error(env, "options.noiseSeed is given without noiseGate");
  }
  p.random_routing = o.flag("randomRouting", false);
  p.random_seed = uint64_t(o.integer("randomSeed", 0, 0, kMaxSafeInteger));
  if (p.random_routing && p.top_k != 2)
    throw_range_error(env, "random routing (GShard) needs topK = 2, got " + std::to_string(p.top_k));
  return p;
}

// {auxLoss, zLoss} from a [2] f32 stats tensor, set on the job's result once it is computed.
void return_stats(Job* job, const moe::TensorView& stats) {
  if (!stats.present()) return;
  job->finish = [job, stats](Napi::Env env) -> Napi::Value {
    Napi::Object res = job->result.Value();
    Napi::Object o = Napi::Object::New(env);
    o.Set("auxLoss", Napi::Number::New(env, stats.as<const float>()[0]));
    o.Set("zLoss", Napi::Number::New(env, stats.as<const float>()[1]));
    res.Set("stats", o);
    return res;
  };
}

// The packed experts of argument v, held by the job; their backend runs it.
std::shared_ptr<moe::PackedExperts> experts_arg(Job& job, const Napi::Value& v, const char* name) {
  std::shared_ptr<moe::PackedExperts> w = ExpertsHandle::Get(v, name)->obj;
  job.hold.push_back(w);
  job.backend = w->backend;
  return w;
}

// A [2] f32 scratch for the losses, held by the job (never a JS object).
moe::TensorView stats_scratch(Napi::Env env, Job& job, const Place& place) {
  moe::TensorView v;
  if (place.on_device()) {
    new_output(env, job, moe::DType::kF32, shape_of({moe::kRouterStatsLen}), place, &v);
    return v;
  }
  std::shared_ptr<HostBlock> b;
  throw_if_error(env, alloc_host_block(moe::kRouterStatsLen * sizeof(float), &b));
  job.hold.push_back(b);
  v = moe::make_view(b->data, moe::DType::kF32, {moe::kRouterStatsLen});
  return v;
}

// The file mappings (map_file) that hold every tensor of an expert matrix argument (one [E,r,c]
// tensor or an array of them); false when any tensor's data lies elsewhere.
bool mapped_blocks_of(Napi::Env env, const Napi::Value& v, std::vector<std::shared_ptr<HostBlock>>* out) {
  auto one = [&](const Napi::Value& t) {
    if (!t.IsObject()) return false;
    const Napi::Value data = t.As<Napi::Object>().Get("data");
    if (!data.IsTypedArray()) return false;
    std::shared_ptr<HostBlock> b = block_of(env, data.As<Napi::TypedArray>().ArrayBuffer());
    if (!b || !b->mapped) return false;
    out->push_back(std::move(b));
    return true;
  };
  if (!v.IsArray()) return one(v);
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t e = 0; e < a.Length(); ++e)
    if (!one(a.Get(e))) return false;
  return true;
}

Napi::Value PackExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "pack_experts");
  Options o(info, 1, "pack_experts", {"backend", "exactF32", "batchInvariant"});
  auto job = std::make_unique<Job>(o.async());
  moe::Backend* backend = backend_option(o);
  auto src = std::make_shared<moe::ExpertWeightSource>(read_expert_source(*job, info[0]));
  src->exact_f32 = o.flag("exactF32", false);
  src->batch_invariant = o.flag("batchInvariant", false);
  // Quantised weights in files the package mapped stay as they are for as long as the mappings do:
  // the backend may read them in place, holding the mappings (the CPU backend does; no copy).
  if (moe::is_quant(src->dtype)) {
    auto blocks = std::make_shared<std::vector<std::shared_ptr<HostBlock>>>();
    const Napi::Object w = info[0].As<Napi::Object>();
    if (mapped_blocks_of(env, w.Get("w1"), blocks.get()) && mapped_blocks_of(env, w.Get("w3"), blocks.get()) &&
        mapped_blocks_of(env, w.Get("w2"), blocks.get())) {
      std::sort(blocks->begin(), blocks->end());
      blocks->erase(std::unique(blocks->begin(), blocks->end()), blocks->end());
      src->keep_alive = blocks;
    }
  }
  const Napi::Value gv = info[0].As<Napi::Object>().Get("gate");
  auto gate = std::make_shared<moe::TensorView>();
  const bool has_gate = given(gv);
  if (has_gate) {
    *gate = host_tensor(*job, gv, "gate", kAnyFloat, 2);
    if (gate->dims[0] != src->num_experts || gate->dims[1] != src->d)
      throw_range_error(env, "gate.dims " + dims_string(*gate) + " must be [" + std::to_string(src->num_experts) + "," +
                                 std::to_string(src->d) + "] (experts, hidden size)");
  }
  job->backend = backend;
  return run_make_job<moe::PackedExperts>(
      env, std::move(job),
      [backend, src, gate, has_gate](std::unique_ptr<moe::PackedExperts>* out) {
        return backend->pack_experts(*src, has_gate ? gate.get() : nullptr, out);
      },
      ExpertsHandle::NewInstance);
}

// The backend of an op whose tensors are in `place`: the device's when they are device tensors
// (options.backend, when given, must name it), else options.backend.
moe::Backend* device_or_option(Napi::Env env, const Place& place, const Options& o) {
  moe::Backend* b = backend_option(o);
  if (!place.on_device()) return b;
  if (given(o.get("backend")) && b != place.device)
    throw_type_error(env, std::string("options.backend is '") + b->name() + "' but the tensors are device tensors of '" +
                              place.device->name() + "'");
  return place.device;
}

Napi::Value Route(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "route");
  Options o(info, 2, "route",
            {"topK", "normalize", "wantLogits", "wantStats", "noiseGate", "noiseSeed", "randomRouting", "randomSeed", "backend"});
  auto job = std::make_unique<Job>(o.async());
  // host tensors (staged onto options.backend when that is a device backend), or device tensors of
  // one backend, which runs it and keeps the outputs on the device
  const Place place = place_of(info[0]);
  job->backend = device_or_option(env, place, o);
  moe::RouteArgs a;
  a.x = tensor_arg(*job, info[0], "x", kAnyFloat, 2, place);
  a.gate = tensor_arg(*job, info[1], "gate", kAnyFloat, 2, place);
  check_same(env, "gate.dims[1]", a.gate.dims[1], "x.dims[1]", a.x.dims[1]);
  const int64_t T = a.x.dims[0], E = a.gate.dims[0];
  if (E < 1) throw_range_error(env, "gate must have at least one expert row, got dims " + dims_string(a.gate));
  a.params = read_route(*job, o, place, E, a.x.dims[1]);
  const int64_t k = a.params.top_k;
  Napi::Object r = Napi::Object::New(env);
  r.Set("topkIds", new_output(env, *job, moe::DType::kI32, shape_of({T, k}), place, &a.topk_ids));
  r.Set("topkWeights", new_output(env, *job, moe::DType::kF32, shape_of({T, k}), place, &a.topk_weights));
  r.Set("expertCounts", new_output(env, *job, moe::DType::kI32, shape_of({E}), place, &a.expert_counts));
  if (o.flag("wantLogits", false)) r.Set("logits", new_output(env, *job, moe::DType::kF32, shape_of({T, E}), place, &a.logits));
  if (o.flag("wantStats", false)) {
    if (place.on_device())
      throw_moe_error(env, "ERR_UNSUPPORTED", "router losses are not returned for device tensors: run route on host tensors");
    a.stats = stats_scratch(env, *job, place);
  }
  job->result = Napi::Persistent(r);
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->route(a); };
  return_stats(job.get(), a.stats);
  return run_job(env, std::move(job));
}

Napi::Value Permute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "permute");
  Options o(info, 1, "permute", {"numExperts", "capacity", "backend"});
  auto job = std::make_unique<Job>(o.async());
  job->backend = backend_option(o);
  const Place place;
  moe::PermuteArgs a;
  a.topk_ids = tensor_arg(*job, info[0], "topkIds", kI32, 2, place);
  if (!o.has("numExperts")) throw_type_error(env, "options.numExperts is required");
  const int64_t E = o.integer("numExperts", 1, 1, 65536);
  a.num_experts = int(E);
  a.capacity = o.integer("capacity", -1, -1, kMaxInt32);
  const int64_t T = a.topk_ids.dims[0], k = a.topk_ids.dims[1];
  if (k < 1) throw_range_error(env, "topkIds.dims[1] (k) must be at least 1, got " + std::to_string(k));
  if (T * k > kMaxInt32) throw_range_error(env, "topkIds has too many slots: " + std::to_string(T * k));
  const int32_t* idp = a.topk_ids.as<const int32_t>();
  for (int64_t s = 0; s < T * k; ++s)
    if ((idp[s] < 0 && idp[s] != moe::kNoExpert) || idp[s] >= E)
      throw_range_error(env, "topkIds.data[" + std::to_string(s) + "] must be an expert index in [0, " + std::to_string(E) +
                                 ") or -1 (no expert), got " + std::to_string(idp[s]));
  Napi::Object r = Napi::Object::New(env);
  r.Set("expertOffsets", new_output(env, *job, moe::DType::kI32, shape_of({E + 1}), place, &a.expert_offsets));
  r.Set("sortedRows", new_output(env, *job, moe::DType::kI32, shape_of({T * k}), place, &a.sorted_rows));
  r.Set("rowOf", new_output(env, *job, moe::DType::kI32, shape_of({T, k}), place, &a.row_of));
  r.Set("dropped", new_output(env, *job, moe::DType::kI32, shape_of({E}), place, &a.dropped));
  job->result = Napi::Persistent(r);
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->permute(a); };
  return run_job(env, std::move(job));
}

Napi::Value GroupedGemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "grouped_gemm");
  Options o(info, 4, "grouped_gemm", {});
  auto job = std::make_unique<Job>(o.async());
  // x may be a device tensor of the experts' backend (y then stays there); the index tensors are
  // always host tensors, checked here before any kernel reads them
  const Place place = place_of(info[0]);
  moe::GroupedGemmArgs a;
  a.x = tensor_arg(*job, info[0], "x", kAnyFloat, 2, place);
  a.sorted_rows = host_tensor(*job, info[1], "sortedRows", kI32, 1);
  a.expert_offsets = host_tensor(*job, info[2], "expertOffsets", kI32, 1);
  std::shared_ptr<moe::PackedExperts> w = experts_arg(*job, info[3], "experts");
  if (place.on_device()) check_place(env, "the experts", w->backend, place);
  a.experts = w.get();
  const int64_t T = a.x.dims[0], E = w->num_experts;
  check_same(env, "x.dims[1]", a.x.dims[1], "the experts' d", w->d);
  check_same(env, "expertOffsets.dims[0]", a.expert_offsets.dims[0], "numExperts + 1", E + 1);
  const int32_t* off = a.expert_offsets.as<const int32_t>();
  if (off[0] != 0) throw_range_error(env, "expertOffsets.data[0] must be 0, got " + std::to_string(off[0]));
  for (int64_t e = 0; e < E; ++e)
    if (off[e + 1] < off[e])
      throw_range_error(env, "expertOffsets must be non-decreasing, got data[" + std::to_string(e + 1) + "] = " +
                                 std::to_string(off[e + 1]) + " < " + std::to_string(off[e]));
  const int64_t R = off[E];
  if (R > a.sorted_rows.dims[0])
    throw_range_error(env, "expertOffsets.data[E] (" + std::to_string(R) + ") exceeds sortedRows length " +
                               std::to_string(a.sorted_rows.dims[0]));
  const int32_t* rp = a.sorted_rows.as<const int32_t>();
  for (int64_t r = 0; r < R; ++r)
    if (rp[r] < 0 || rp[r] >= T)
      throw_range_error(env, "sortedRows.data[" + std::to_string(r) + "] must be a token index in [0, " + std::to_string(T) +
                                 "), got " + std::to_string(rp[r]));
  job->result = Napi::Persistent(new_output(env, *job, moe::DType::kF32, shape_of({R, w->d}), place, &a.y));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->grouped_gemm(a); };
  return run_job(env, std::move(job));
}

Napi::Value Combine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "combine");
  Options o(info, 3, "combine", {"outType", "backend"});
  auto job = std::make_unique<Job>(o.async());
  // y (and topkWeights) may be device tensors of one backend, which runs it and keeps the output on
  // the device; rowOf is always a host tensor, checked here before any kernel reads it
  const Place place = place_of(info[0]);
  job->backend = device_or_option(env, place, o);
  moe::CombineArgs a;
  a.y = tensor_arg(*job, info[0], "y", kF32, 2, place);
  a.row_of = host_tensor(*job, info[1], "rowOf", kI32, 2);
  a.topk_weights = is_device_tensor(info[2]) ? tensor_arg(*job, info[2], "topkWeights", kF32, 2, place)
                                              : host_tensor(*job, info[2], "topkWeights", kF32, 2);
  const moe::DType out_t = given(o.get("outType")) ? to_dtype(o.get("outType"), "options.outType", kAnyFloat) : moe::DType::kF32;
  const int64_t T = a.row_of.dims[0], k = a.row_of.dims[1], R = a.y.dims[0], d = a.y.dims[1];
  check_same(env, "topkWeights.dims[0]", a.topk_weights.dims[0], "rowOf.dims[0]", T);
  check_same(env, "topkWeights.dims[1]", a.topk_weights.dims[1], "rowOf.dims[1]", k);
  const int32_t* rp = a.row_of.as<const int32_t>();
  for (int64_t s = 0; s < T * k; ++s)
    if (rp[s] < -1 || rp[s] >= R)
      throw_range_error(env, "rowOf.data[" + std::to_string(s) + "] must be -1 or a row of y in [0, " + std::to_string(R) +
                                 "), got " + std::to_string(rp[s]));
  job->result = Napi::Persistent(new_output(env, *job, out_t, shape_of({T, d}), place, &a.out));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->combine(a); };
  return run_job(env, std::move(job));
}

Napi::Value MoeForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "moe_forward");
  Options o(info, 2, "moe_forward",
            {"topK", "normalize", "capacity", "capacityFactor", "evalCapacityFactor", "decode", "noiseGate", "noiseSeed",
             "randomRouting", "randomSeed", "wantRouting", "wantStats", "wantLogits", "sharedExperts", "countsOut"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);  // device x: device outputs
  moe::MoeForwardArgs a;
  a.x = tensor_arg(*job, info[0], "x", kAnyFloat, 2, place);
  std::shared_ptr<moe::PackedExperts> w = experts_arg(*job, info[1], "experts");
  a.experts = w.get();
  if (place.on_device()) check_place(env, "the experts", w->backend, place);  // host tensors: staged by a device backend
  if (!w->has_gate) throw_type_error(env, "experts were packed without the router gate: pack them with their gate for moe_forward");
  const int64_t T = a.x.dims[0], E = w->num_experts;
  check_same(env, "x.dims[1]", a.x.dims[1], "the experts' d", w->d);
  moe::MoeForwardParams& p = a.params;
  p.route = read_route(*job, o, place, E, w->d);
  auto factor = [&](const char* k) { return o.number(k, 0, 0, 1e300); };
  p.capacity_factor = factor("capacityFactor");
  p.eval_capacity_factor = factor("evalCapacityFactor");
  p.decode = int(o.integer("decode", -1, -1, 1));
  p.capacity = o.integer("capacity", -1, -1, kMaxInt32);
  if (T * p.route.top_k > kMaxInt32) throw_range_error(env, "too many tokens: " + std::to_string(T));
  if (o.has("sharedExperts")) {
    std::shared_ptr<moe::PackedExperts> s = ExpertsHandle::Get(o.get("sharedExperts"), "options.sharedExperts")->obj;
    if (s->num_experts != 1)
      throw_range_error(env, "sharedExperts must be packed as one expert, got " + std::to_string(s->num_experts));
    check_same(env, "sharedExperts d", s->d, "the experts' d", w->d);
    if (s->backend != w->backend)
      throw_type_error(env, std::string("sharedExperts were packed for '") + s->backend->name() + "', the experts for '" +
                                w->backend->name() + "'");
    if (s->dtype != w->dtype)
      throw_type_error(env, std::string("sharedExperts.type '") + moe::dtype_name(s->dtype) + "' differs from the experts' '" +
                                moe::dtype_name(w->dtype) + "'");
    job->hold.push_back(s);
    a.shared = s.get();
  }
  const bool want_routing = o.flag("wantRouting", false), want_logits = o.flag("wantLogits", false),
             want_stats = o.flag("wantStats", false);
  const int64_t k = p.route.top_k;
  Napi::Object r = Napi::Object::New(env);
  r.Set("out", new_output(env, *job, a.x.dtype, shape_of({T, w->d}), place, &a.out));
  if (place.on_device()) {
    if (want_logits || want_stats)
      throw_moe_error(env, "ERR_UNSUPPORTED", "router logits and losses are not returned for device tensors: run on host tensors");
    if (want_routing) {  // the counts only; options.countsOut: the caller's device int32 [E] (a row of a [layers, E] tensor)
      if (o.has("countsOut")) {
        a.expert_counts = tensor_arg(*job, o.get("countsOut"), "countsOut", kI32, 1, place, moe::Dir::kOut);
        check_same(env, "countsOut.dims[0]", a.expert_counts.dims[0], "the number of experts", E);
        r.Set("expertCounts", o.get("countsOut"));
      } else {
        r.Set("expertCounts", new_output(env, *job, moe::DType::kI32, shape_of({E}), place, &a.expert_counts));
      }
    }
  } else {
    if (o.has("countsOut")) throw_type_error(env, "countsOut is for device tensors: x is a host tensor");
    if (want_routing) {
      r.Set("topkIds", new_output(env, *job, moe::DType::kI32, shape_of({T, k}), place, &a.topk_ids));
      r.Set("topkWeights", new_output(env, *job, moe::DType::kF32, shape_of({T, k}), place, &a.topk_weights));
      r.Set("expertCounts", new_output(env, *job, moe::DType::kI32, shape_of({E}), place, &a.expert_counts));
      r.Set("dropped", new_output(env, *job, moe::DType::kI32, shape_of({E}), place, &a.dropped));
    }
    if (want_logits) r.Set("logits", new_output(env, *job, moe::DType::kF32, shape_of({T, E}), place, &a.logits));
    if (want_stats) a.stats = stats_scratch(env, *job, place);
  }
  job->result = Napi::Persistent(r);
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->moe_forward(a); };
  return_stats(job.get(), a.stats);
  return run_job(env, std::move(job));
}

Napi::Value DenseFfn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "dense_ffn");
  Options o(info, 2, "dense_ffn", {});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  moe::DenseFfnArgs a;
  a.x = tensor_arg(*job, info[0], "x", kAnyFloat, 2, place);
  std::shared_ptr<moe::PackedExperts> w = experts_arg(*job, info[1], "weights");
  a.weights = w.get();
  if (place.on_device()) check_place(env, "the FFN", w->backend, place);
  check_same(env, "weights expert count", w->num_experts, "1 (a dense FFN)", 1);
  check_same(env, "x.dims[1]", a.x.dims[1], "the FFN's d", w->d);
  job->result = Napi::Persistent(new_output(env, *job, a.x.dtype, shape_of({a.x.dims[0], w->d}), place, &a.out));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->dense_ffn(a); };
  return run_job(env, std::move(job));
}

Napi::Value MergeExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "merge_experts");
  Options o(info, 2, "merge_experts", {});
  auto job = std::make_unique<Job>(o.async());
  job->backend = &moe::cpu_backend();  // a weight transform on host memory
  auto a = std::make_shared<moe::MergeExpertsArgs>();
  a->src = read_expert_source(*job, info[0]);
  if (!moe::is_float(a->src.dtype) || !moe::is_float(a->src.w2_dtype))
    throw_type_error(env, std::string("merge_experts averages float weights, got '") + moe::dtype_name(a->src.dtype) +
                              "' (dequantize() them first)");
  const int64_t E = a->src.num_experts, f = a->src.f, d = a->src.d;
  if (!info[1].IsArray()) throw_type_error(env, "distribution must be an array of numbers, got " + describe(info[1]));
  Napi::Array dist = info[1].As<Napi::Array>();
  check_same(env, "distribution length", dist.Length(), "the number of experts", E);
  double sum = 0;
  for (uint32_t e = 0; e < dist.Length(); ++e) {
    const Napi::Value v = dist.Get(e);
    const double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!std::isfinite(x) || x < 0)
      throw_range_error(env, "distribution[" + std::to_string(e) + "] must be a finite number >= 0, got " + describe(v));
    a->p.push_back(x);
    sum += x;
  }
  if (!(sum > 0)) throw_range_error(env, "distribution must not be all zeros");
  moe::TensorView o1, o3, o2;
  const Place host;
  Napi::Object r = Napi::Object::New(env);
  r.Set("w1", new_output(env, *job, a->src.dtype, shape_of({f, d}), host, &o1));
  r.Set("w3", new_output(env, *job, a->src.dtype, shape_of({f, d}), host, &o3));
  r.Set("w2", new_output(env, *job, a->src.dtype, shape_of({d, f}), host, &o2));
  a->out_w1 = o1.data, a->out_w3 = o3.data, a->out_w2 = o2.data;
  job->result = Napi::Persistent(r);
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->merge_experts(*a); };
  return run_job(env, std::move(job));
}

}  // namespace

void InitMoeBindings(Napi::Env env, Napi::Object exports) {
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
