// N-API bindings of the decoder-model ops (moe/decoder_ops.h): argument checks, outputs allocated on
// the JS thread (or the caller's `out` tensor, to avoid allocations in a decode loop), the op called
// through the backend of the op's tensors (a device tensor's backend, else the CPU) or of its packed
// weights. Each takes its tensors, then one options object (`async: true` returns a Promise):
//
//   embedding(table, ids, {outType, out, async})                         -> [T,d]
//   rms_norm(x, weight, {eps, outType, out, async})                      -> [T,d]
//   pack_linear(w, {bias, backend, async})                               -> Linear
//   linear(x, w, {outType, out, async})                                  -> [T,out]
//   rope(q, k | null, positions, {theta, qOut, kOut, async})             -> {q, k}
//   create_kv_cache({maxSeq, numKvHeads, headDim, type}, {backend})      -> KvCache
//   attention(q, k, v, cache, {startPos, slidingWindow, outType, out, async}) -> [T,Hq,hd]
//   add(a, b, {outType, out, async})                                     -> a's dims
//   sample(logits, {temperature, topP, seed, step, out, async})          -> [T] int32 (host)
// outType and out may be absent; a given out must have the result's dims (and outType, when both are
// given); it is written and returned.
#include <napi.h>

#include <atomic>
#include <memory>
#include <string>

#include "args.h"
#include "handles.h"
#include "jobs.h"
#include "moe/backend.h"

namespace moe_addon {

namespace {

moe::Backend* backend_of(const Place& p) { return p.on_device() ? p.device : &moe::cpu_backend(); }

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "embedding");
  Options o(info, 2, "embedding", {"outType", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  job->backend = backend_of(place);
  moe::EmbeddingArgs a;
  a.table = tensor_arg(*job, info[0], "table", kAnyFloat, 2, place);
  a.ids = host_tensor(*job, info[1], "ids", kI32, 1);
  const int64_t V = a.table.dims[0], d = a.table.dims[1], T = a.ids.dims[0];
  const int32_t* ip = a.ids.as<const int32_t>();
  for (int64_t t = 0; t < T; ++t)
    if (ip[t] < 0 || ip[t] >= V)
      throw_range_error(env, "ids.data[" + std::to_string(t) + "] must be a token index in [0, " + std::to_string(V) +
                                 "), got " + std::to_string(ip[t]));
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), o.get("outType"), a.table.dtype, kAnyFloat, shape_of({T, d}), place, &a.out));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->embedding(a); };
  return run_job(env, std::move(job));
}

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "rms_norm");
  Options o(info, 2, "rms_norm", {"eps", "outType", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  job->backend = backend_of(place);
  moe::RmsNormArgs a;
  a.x = tensor_arg(*job, info[0], "x", kAnyFloat, 2, place);
  a.weight = tensor_arg(*job, info[1], "weight", kAnyFloat, 1, place);
  check_same(env, "weight.dims[0]", a.weight.dims[0], "x.dims[1]", a.x.dims[1]);
  a.eps = float(o.number("eps", 1e-5, 0.0, 1.0));
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), o.get("outType"), a.x.dtype, kAnyFloat, a.x, place, &a.out));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->rms_norm(a); };
  return run_job(env, std::move(job));
}

Napi::Value PackLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "pack_linear");
  Options o(info, 1, "pack_linear", {"bias", "backend"});
  auto job = std::make_unique<Job>(o.async());
  moe::Backend* backend = backend_option(o);
  job->backend = backend;
  moe::TensorView w = host_tensor(*job, info[0], "w", kAnyWeight, 2);
  if (w.dims[0] < 1 || w.dims[1] < 1) throw_range_error(env, "w must have at least one row and one column, got dims " + dims_string(w));
  const bool has_bias = o.has("bias");
  moe::TensorView bias;
  if (has_bias) {
    bias = host_tensor(*job, o.get("bias"), "bias", kAnyFloat, 1);
    check_same(env, "bias.dims[0]", bias.dims[0], "w.dims[0] (out features)", w.dims[0]);
  }
  return run_make_job<moe::PackedLinear>(
      env, std::move(job),
      [backend, w, bias, has_bias](std::unique_ptr<moe::PackedLinear>* out) {
        return backend->pack_linear(w, has_bias ? &bias : nullptr, out);
      },
      LinearHandle::NewInstance);
}

Napi::Value Linear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "linear");
  Options o(info, 2, "linear", {"outType", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  moe::LinearArgs a;
  a.x = tensor_arg(*job, info[0], "x", kAnyFloat, 2, place);
  std::shared_ptr<moe::PackedLinear> w = LinearHandle::Get(info[1], "w")->obj;
  check_place(env, "the Linear", w->backend, place);
  job->hold.push_back(w);
  a.w = w.get();
  job->backend = w->backend;
  check_same(env, "x.dims[1]", a.x.dims[1], "the weights' in features", w->in_features);
  job->result = Napi::Persistent(
      output_arg(*job, o.get("out"), o.get("outType"), moe::DType::kF32, kAnyFloat, shape_of({a.x.dims[0], w->out_features}), place, &a.y));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->linear(a); };
  return run_job(env, std::move(job));
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "rope");
  Options o(info, 3, "rope", {"theta", "qOut", "kOut"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  job->backend = backend_of(place);
  moe::RopeArgs q, k;
  q.x = tensor_arg(*job, info[0], "q", kAnyFloat, 3, place);
  const bool has_k = given(info[1]);
  if (has_k) k.x = tensor_arg(*job, info[1], "k", kAnyFloat, 3, place);
  // positions: host int32, or (device q) a device tensor, which costs no copy per call
  q.positions = place.on_device() && is_device_tensor(info[2]) ? tensor_arg(*job, info[2], "positions", kI32, 1, place)
                                                                : host_tensor(*job, info[2], "positions", kI32, 1);
  const int64_t T = q.x.dims[0], hd = q.x.dims[2];
  if (hd % 2 != 0) throw_range_error(env, "q.dims[2] (head dim) must be even, got " + std::to_string(hd));
  check_same(env, "positions.dims[0]", q.positions.dims[0], "q.dims[0]", T);
  if (has_k) {
    check_same(env, "k.dims[0]", k.x.dims[0], "q.dims[0]", T);
    check_same(env, "k.dims[2]", k.x.dims[2], "q.dims[2]", hd);
  }
  q.theta = o.number("theta", 10000.0, 1.0, 1e30, true);
  k.theta = q.theta, k.positions = q.positions;
  Napi::Value none = env.Undefined();
  Napi::Object r = Napi::Object::New(env);
  r.Set("q", output_arg(*job, o.get("qOut"), none, q.x.dtype, kAnyFloat, q.x, place, &q.out));
  r.Set("k", has_k ? Napi::Value(output_arg(*job, o.get("kOut"), none, k.x.dtype, kAnyFloat, k.x, place, &k.out)) : env.Null());
  job->result = Napi::Persistent(r);
  moe::Backend* b = job->backend;
  job->compute = [b, q, k, has_k]() {
    MOE_RETURN_IF_ERROR(b->rope(q));
    return has_k ? b->rope(k) : moe::Status::ok();
  };
  return run_job(env, std::move(job));
}

Napi::Value CreateKvCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "create_kv_cache");
  Options o(info, 1, "create_kv_cache", {"backend"});
  if (o.async()) throw_type_error(env, "create_kv_cache is synchronous: options.async must not be true");
  moe::Backend* backend = backend_option(o);
  if (!info[0].IsObject() || info[0].IsArray()) throw_type_error(env, "shape must be an object {maxSeq, numKvHeads, headDim, type}, got " + describe(info[0]));
  Napi::Object s = info[0].As<Napi::Object>();
  moe::KvCacheShape shape;
  shape.max_seq = to_int(s.Get("maxSeq"), "maxSeq", 1, int64_t(1) << 24);
  shape.num_kv_heads = to_int(s.Get("numKvHeads"), "numKvHeads", 1, 4096);
  shape.head_dim = to_int(s.Get("headDim"), "headDim", 1, 65536);
  shape.dtype = given(s.Get("type")) ? to_dtype(s.Get("type"), "type", kAnyFloat) : moe::DType::kF32;
  std::unique_ptr<moe::KvCache> c;
  throw_if_error(env, backend->create_kv_cache(shape, &c));
  return KvCacheHandle::NewInstance(env, std::shared_ptr<moe::KvCache>(std::move(c)));
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "attention");
  Options o(info, 4, "attention", {"startPos", "slidingWindow", "outType", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  moe::AttentionArgs a;
  a.q = tensor_arg(*job, info[0], "q", kAnyFloat, 3, place);
  a.k = tensor_arg(*job, info[1], "k", kAnyFloat, 3, place);
  a.v = tensor_arg(*job, info[2], "v", kAnyFloat, 3, place);
  KvCacheHandle* h = KvCacheHandle::Get(info[3], "cache");
  std::shared_ptr<moe::KvCache> cache = h->obj;
  check_place(env, "the KvCache", cache->backend, place);
  job->hold.push_back(cache);
  a.cache = cache.get();
  job->backend = cache->backend;
  const int64_t T = a.q.dims[0], Hq = a.q.dims[1];
  check_same(env, "k.dims[1]", a.k.dims[1], "the cache's numKvHeads", cache->num_kv_heads);
  check_same(env, "k.dims[2]", a.k.dims[2], "the cache's headDim", cache->head_dim);
  check_same(env, "q.dims[2]", a.q.dims[2], "the cache's headDim", cache->head_dim);
  check_same(env, "k.dims[0]", a.k.dims[0], "q.dims[0]", T);
  for (int i = 0; i < 3; ++i)
    if (a.v.dims[i] != a.k.dims[i]) throw_range_error(env, "v.dims " + dims_string(a.v) + " must equal k.dims " + dims_string(a.k));
  if (Hq % cache->num_kv_heads != 0)
    throw_range_error(env, "q.dims[1] (" + std::to_string(Hq) + " query heads) must be a multiple of the cache's numKvHeads (" +
                               std::to_string(cache->num_kv_heads) + ")");
  const int64_t start = o.integer("startPos", h->length, 0, h->length);
  if (start + T > cache->max_seq)
    throw_range_error(env, "startPos + T (" + std::to_string(start) + " + " + std::to_string(T) +
                               ") must not exceed the cache's maxSeq (" + std::to_string(cache->max_seq) + ")");
  a.params.start_pos = start;
  a.params.sliding_window = o.integer("slidingWindow", 0, 0, kMaxSafeInteger);
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), o.get("outType"), a.q.dtype, kAnyFloat, a.q, place, &a.out));
  if (!job->async && h->inflight->load() > 0)
    throw_moe_error(env, "ERR_BUSY", "cache is in use by an async attention call: await it before a sync call");
  h->length = start + T;
  auto inflight = h->inflight;
  const bool async = job->async;
  if (async) inflight->fetch_add(1);
  moe::Backend* b = job->backend;
  job->compute = [b, a, inflight, async]() {
    moe::Status st = b->attention(a);
    if (async) inflight->fetch_sub(1);
    return st;
  };
  return run_job(env, std::move(job));
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "add");
  Options o(info, 2, "add", {"outType", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  job->backend = backend_of(place);
  moe::AddArgs a;
  a.a = tensor_arg(*job, info[0], "a", kAnyFloat, -1, place);
  a.b = tensor_arg(*job, info[1], "b", kAnyFloat, -1, place);
  if (!same_dims(a.a, a.b)) throw_range_error(env, "b.dims " + dims_string(a.b) + " must equal a.dims " + dims_string(a.a));
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), o.get("outType"), a.a.dtype, kAnyFloat, a.a, place, &a.out));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->add(a); };
  return run_job(env, std::move(job));
}

// The ids are a host tensor whatever the place of the logits.
Napi::Value Sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "sample");
  Options o(info, 1, "sample", {"temperature", "topP", "seed", "step", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  job->backend = backend_of(place);
  moe::SampleArgs a;
  a.logits = tensor_arg(*job, info[0], "logits", kF32, -1, place);
  if (a.logits.ndim != 1 && a.logits.ndim != 2) throw_range_error(env, "logits.dims must be [V] or [T,V], got " + dims_string(a.logits));
  const int64_t V = a.logits.dims[a.logits.ndim - 1], T = a.logits.ndim == 2 ? a.logits.dims[0] : 1;
  if (V < 1) throw_range_error(env, "logits must have at least one entry per row, got dims " + dims_string(a.logits));
  a.params.temperature = float(o.number("temperature", 0.0, 0.0, 1e30));
  a.params.top_p = float(o.number("topP", 1.0, 0.0, 1.0, true));
  a.params.seed = uint64_t(o.integer("seed", 0, 0, kMaxSafeInteger));
  a.params.step = uint64_t(o.integer("step", 0, 0, kMaxSafeInteger));
  const Place host;
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), env.Undefined(), moe::DType::kI32, kI32, shape_of({T}), host, &a.ids));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->sample(a); };
  return run_job(env, std::move(job));
}

}  // namespace

void InitDecoderBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("embedding", Napi::Function::New(env, Embedding, "embedding"));
  exports.Set("rms_norm", Napi::Function::New(env, RmsNorm, "rms_norm"));
  exports.Set("pack_linear", Napi::Function::New(env, PackLinear, "pack_linear"));
  exports.Set("linear", Napi::Function::New(env, Linear, "linear"));
  exports.Set("rope", Napi::Function::New(env, Rope, "rope"));
  exports.Set("create_kv_cache", Napi::Function::New(env, CreateKvCache, "create_kv_cache"));
  exports.Set("attention", Napi::Function::New(env, Attention, "attention"));
  exports.Set("add", Napi::Function::New(env, Add, "add"));
  exports.Set("sample", Napi::Function::New(env, Sample, "sample"));
}

}  // namespace moe_addon
