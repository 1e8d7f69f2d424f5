// N-API bindings of the decoder-model ops (moe/decoder_ops.h): argument checks, outputs allocated on
// the JS thread (or the caller's `out` tensor, to avoid allocations in a decode loop), the op called
// through the backend of the op's tensors (a device tensor's backend, else the CPU) or of its packed
// weights. Each takes its tensors, then one options object (`async: true` returns a Promise):
//
//   embedding(table, ids, {outType, out, async})                         -> [T,d]
//   rms_norm(x, weight, {eps, outType, out, async})                      -> [T,d]
//   pack_linear(w, {bias, backend, exactF32, async})                               -> Linear
//   linear(x, w, {outType, out, async})                                  -> [T,out]
//   rope(q, k | null, positions, {theta, qOut, kOut, async})             -> {q, k}
//   create_kv_cache({maxSeq, numKvHeads, headDim, type}, {backend})      -> KvCache
//   attention(q, k, v, cache, {startPos, slidingWindow, outType, out, async}) -> [T,Hq,hd]
//   create_kv_pool({numBlocks, blockSize, numKvHeads, headDim, type}, {backend}) -> KvPool
//   paged_attention(q, k, v, pool, {positions, seqOf, blockTables, slidingWindow, outType, out, async})
//                                                                        -> [T,Hq,hd]
//   add(a, b, {outType, out, async})                                     -> a's dims
//   sample(logits, {temperature, topP, topK, minP, seed, step, repetitionPenalty, presencePenalty,
//                   frequencyPenalty, penaltyTokens, out, async})          -> [T] int32 (host)
//   sample(logits, {rows: [{...the same keys per row}], out, async})     -> [T] int32 (host)
//   cast(x, {outType, out, async})                                       -> x's dims in outType
// outType and out may be absent; a given out must have the result's dims (and outType, when both are
// given); it is written and returned.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <memory>
#include <string>

#include "args.h"
#include "handles.h"
#include "jobs.h"
#include "moe/backend.h"
#include "moe/sampling_rule.h"

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
  // a host table may be quantised (rows of blocks, dequantised as they are read); a device table is float
  a.table = tensor_arg(*job, info[0], "table", place.on_device() ? kAnyFloat : kAnyWeight, 2, place);
  a.ids = host_tensor(*job, info[1], "ids", kI32, 1);
  const int64_t V = a.table.dims[0], d = a.table.dims[1], T = a.ids.dims[0];
  const int32_t* ip = a.ids.as<const int32_t>();
  for (int64_t t = 0; t < T; ++t)
    if (ip[t] < 0 || ip[t] >= V)
      throw_range_error(env, "ids.data[" + std::to_string(t) + "] must be a token index in [0, " + std::to_string(V) +
                                 "), got " + std::to_string(ip[t]));
  const moe::DType out_default = moe::is_quant(a.table.dtype) ? moe::DType::kF32 : a.table.dtype;
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), o.get("outType"), out_default, kAnyFloat, shape_of({T, d}), place, &a.out));
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
  Options o(info, 1, "pack_linear", {"bias", "backend", "exactF32"});
  auto job = std::make_unique<Job>(o.async());
  moe::Backend* backend = backend_option(o);
  job->backend = backend;
  moe::TensorView w = host_tensor(*job, info[0], "w", kAnyWeight, 2);
  if (w.dims[0] < 1 || w.dims[1] < 1) throw_range_error(env, "w must have at least one row and one column, got dims " + dims_string(w));
  const bool has_bias = o.has("bias");
  const bool exact_f32 = o.flag("exactF32", false);
  moe::TensorView bias;
  if (has_bias) {
    bias = host_tensor(*job, o.get("bias"), "bias", kAnyFloat, 1);
    check_same(env, "bias.dims[0]", bias.dims[0], "w.dims[0] (out features)", w.dims[0]);
  }
  return run_make_job<moe::PackedLinear>(
      env, std::move(job),
      [backend, w, bias, has_bias, exact_f32](std::unique_ptr<moe::PackedLinear>* out) {
        return backend->pack_linear(w, has_bias ? &bias : nullptr, exact_f32, out);
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

Napi::Value CreateKvPool(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "create_kv_pool");
  Options o(info, 1, "create_kv_pool", {"backend"});
  if (o.async()) throw_type_error(env, "create_kv_pool is synchronous: options.async must not be true");
  moe::Backend* backend = backend_option(o);
  if (!info[0].IsObject() || info[0].IsArray())
    throw_type_error(env, "shape must be an object {numBlocks, blockSize, numKvHeads, headDim, type}, got " + describe(info[0]));
  Napi::Object s = info[0].As<Napi::Object>();
  moe::KvPoolShape shape;
  shape.num_blocks = to_int(s.Get("numBlocks"), "numBlocks", 1, int64_t(1) << 24);
  shape.block_size = to_int(s.Get("blockSize"), "blockSize", 1, 4096);
  shape.num_kv_heads = to_int(s.Get("numKvHeads"), "numKvHeads", 1, 4096);
  shape.head_dim = to_int(s.Get("headDim"), "headDim", 1, 65536);
  shape.dtype = given(s.Get("type")) ? to_dtype(s.Get("type"), "type", kAnyFloat) : moe::DType::kF32;
  const double bytes = 2.0 * double(shape.num_blocks) * double(shape.block_size) * double(shape.num_kv_heads) *
                       double(shape.head_dim) * double(moe::dtype_size(shape.dtype));
  if (bytes > 9.0e15) throw_moe_error(env, "ERR_OUT_OF_MEMORY", "a KV pool of " + std::to_string(bytes) + " bytes");
  std::unique_ptr<moe::KvPool> p;
  throw_if_error(env, backend->create_kv_pool(shape, &p));
  return KvPoolHandle::NewInstance(env, std::shared_ptr<moe::KvPool>(std::move(p)));
}

// The positions, sequences and block tables are host int32 tensors, checked here: every block a
// position of the call reaches is a block of the pool, and no (sequence, position) comes twice.
Napi::Value PagedAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 5, "paged_attention");
  Options o(info, 4, "paged_attention", {"positions", "seqOf", "blockTables", "slidingWindow", "outType", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  moe::PagedAttentionArgs a;
  a.q = tensor_arg(*job, info[0], "q", kAnyFloat, 3, place);
  a.k = tensor_arg(*job, info[1], "k", kAnyFloat, 3, place);
  a.v = tensor_arg(*job, info[2], "v", kAnyFloat, 3, place);
  std::shared_ptr<moe::KvPool> pool = KvPoolHandle::Get(info[3], "pool")->obj;
  check_place(env, "the KvPool", pool->backend, place);
  job->hold.push_back(pool);
  a.pool = pool.get();
  job->backend = pool->backend;
  const int64_t T = a.q.dims[0], Hq = a.q.dims[1], B = pool->block_size;
  check_same(env, "k.dims[1]", a.k.dims[1], "the pool's numKvHeads", pool->num_kv_heads);
  check_same(env, "k.dims[2]", a.k.dims[2], "the pool's headDim", pool->head_dim);
  check_same(env, "q.dims[2]", a.q.dims[2], "the pool's headDim", pool->head_dim);
  check_same(env, "k.dims[0]", a.k.dims[0], "q.dims[0]", T);
  if (!same_dims(a.k, a.v)) throw_range_error(env, "v.dims " + dims_string(a.v) + " must equal k.dims " + dims_string(a.k));
  if (Hq % pool->num_kv_heads != 0)
    throw_range_error(env, "q.dims[1] (" + std::to_string(Hq) + " query heads) must be a multiple of the pool's numKvHeads (" +
                               std::to_string(pool->num_kv_heads) + ")");
  for (const char* k : {"positions", "seqOf", "blockTables"})
    if (!o.has(k)) throw_type_error(env, std::string("options.") + k + " is required");
  a.positions = host_tensor(*job, o.get("positions"), "positions", kI32, 1);
  a.seq_of = host_tensor(*job, o.get("seqOf"), "seqOf", kI32, 1);
  a.block_tables = host_tensor(*job, o.get("blockTables"), "blockTables", kI32, 2);
  check_same(env, "positions.dims[0]", a.positions.dims[0], "q.dims[0]", T);
  check_same(env, "seqOf.dims[0]", a.seq_of.dims[0], "q.dims[0]", T);
  a.sliding_window = o.integer("slidingWindow", 0, 0, kMaxSafeInteger);
  const int64_t S = a.block_tables.dims[0], max_blocks = a.block_tables.dims[1];
  const int32_t* pos = a.positions.as<const int32_t>();
  const int32_t* seq = a.seq_of.as<const int32_t>();
  const int32_t* tables = a.block_tables.as<const int32_t>();
  std::vector<std::pair<int32_t, int32_t>> seen;
  seen.reserve(size_t(T));
  a.max_position = 0;
  for (int64_t t = 0; t < T; ++t) {
    const std::string at = "[" + std::to_string(t) + "]";
    if (seq[t] < 0 || seq[t] >= S)
      throw_range_error(env, "seqOf.data" + at + " must be a row of blockTables in [0, " + std::to_string(S) + "), got " + std::to_string(seq[t]));
    if (pos[t] < 0 || pos[t] / B >= max_blocks)
      throw_range_error(env, "positions.data" + at + " must be in [0, " + std::to_string(max_blocks * B) + ") (blockTables.dims[1] x the pool's blockSize), got " +
                                 std::to_string(pos[t]));
    const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, pos[t] - a.sliding_window + 1) : 0;
    for (int64_t b = lo / B; b <= pos[t] / B; ++b) {
      const int32_t id = tables[seq[t] * max_blocks + b];
      if (id < 0 || id >= pool->num_blocks)
        throw_range_error(env, "blockTables.data[" + std::to_string(seq[t]) + "][" + std::to_string(b) + "] (block of positions " +
                                   std::to_string(b * B) + ".. of sequence " + std::to_string(seq[t]) + ", read by token " + std::to_string(t) +
                                   ") must be a block of the pool in [0, " + std::to_string(pool->num_blocks) + "), got " + std::to_string(id));
    }
    seen.emplace_back(seq[t], pos[t]);
    a.max_position = std::max<int64_t>(a.max_position, pos[t]);
  }
  std::sort(seen.begin(), seen.end());
  for (size_t i = 1; i < seen.size(); ++i)
    if (seen[i] == seen[i - 1])
      throw_range_error(env, "sequence " + std::to_string(seen[i].first) + " has position " + std::to_string(seen[i].second) +
                                 " twice in one call");
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), o.get("outType"), a.q.dtype, kAnyFloat, a.q, place, &a.out));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->paged_attention(a); };
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

// ---- sample ---------------------------------------------------------------------------------------
#define MOE_SAMPLE_KEYS                                                                                           \
  "temperature", "topP", "topK", "minP", "seed", "step", "repetitionPenalty", "presencePenalty", "frequencyPenalty", \
      "penaltyTokens"

// One row's parameters from options (top level, or an entry of options.rows) and its penalty history
// as (id, count) pairs, ids in [0, V).
void read_sample_row(Napi::Env env, const Options& o, int64_t V, moe::SampleRow* row,
                     std::vector<std::pair<int32_t, int32_t>>* history) {
  row->temperature = float(o.number("temperature", 0.0, 0.0, 1e30));
  row->top_p = float(o.number("topP", 1.0, 0.0, 1.0, true));
  row->min_p = float(o.number("minP", 0.0, 0.0, 1.0));
  row->top_k = int32_t(o.integer("topK", 0, 0, INT32_MAX));
  row->repetition = float(o.number("repetitionPenalty", 1.0, 0.0, 1e30, true));
  row->presence = float(o.number("presencePenalty", 0.0, -1e30, 1e30));
  row->frequency = float(o.number("frequencyPenalty", 0.0, -1e30, 1e30));
  row->seed = uint64_t(o.integer("seed", 0, 0, kMaxSafeInteger));
  row->step = uint64_t(o.integer("step", 0, 0, kMaxSafeInteger));
  history->clear();
  const Napi::Value toks = o.get("penaltyTokens");
  if (!given(toks)) return;
  const std::string what = o.name("penaltyTokens");
  std::vector<int32_t> ids;
  auto take = [&](int64_t id, uint32_t i) {
    if (id < 0 || id >= V)
      throw_range_error(env, what + "[" + std::to_string(i) + "] must be a token id in [0, " + std::to_string(V) + "), got " + std::to_string(id));
    ids.push_back(int32_t(id));
  };
  if (toks.IsTypedArray() && toks.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    Napi::Int32Array a = toks.As<Napi::Int32Array>();
    for (size_t i = 0; i < a.ElementLength(); ++i) take(a[i], uint32_t(i));
  } else if (toks.IsArray()) {
    Napi::Array a = toks.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) take(to_int(a.Get(i), (what + "[" + std::to_string(i) + "]").c_str(), 0, kMaxSafeInteger), i);
  } else {
    throw_type_error(env, what + " must be an array of token ids or an Int32Array, got " + describe(toks));
  }
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j < ids.size() && ids[j] == ids[i]) ++j;
    history->emplace_back(ids[i], int32_t(std::min<size_t>(j - i, size_t(INT32_MAX))));
    i = j;
  }
}

// The ids are a host tensor whatever the place of the logits. Top-level options sample every row
// with one set of parameters, row t drawing with (seed, step, t); options.rows gives each row its own,
// and each draws with its own (seed, step) whatever its position in the call.
Napi::Value Sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "sample");
  Options o(info, 1, "sample", {MOE_SAMPLE_KEYS, "rows", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  job->backend = backend_of(place);
  moe::SampleArgs a;
  a.logits = tensor_arg(*job, info[0], "logits", kF32, -1, place);
  if (a.logits.ndim != 1 && a.logits.ndim != 2) throw_range_error(env, "logits.dims must be [V] or [T,V], got " + dims_string(a.logits));
  const int64_t V = a.logits.dims[a.logits.ndim - 1], T = a.logits.ndim == 2 ? a.logits.dims[0] : 1;
  if (V < 1 || V > moe::kSampleMaxVocab)
    throw_range_error(env, "logits must have 1 to 2^23 entries per row, got dims " + dims_string(a.logits));
  auto rows = std::make_shared<std::vector<moe::SampleRow>>(size_t(T));
  std::vector<std::vector<std::pair<int32_t, int32_t>>> hist(static_cast<size_t>(T));
  if (o.has("rows")) {
    for (const char* k : {MOE_SAMPLE_KEYS})
      if (o.has(k)) throw_type_error(env, std::string("options.") + k + " cannot be given with options.rows (each row has its own)");
    const Napi::Value rv = o.get("rows");
    if (!rv.IsArray()) throw_type_error(env, "options.rows must be an array of per-row options, got " + describe(rv));
    Napi::Array arr = rv.As<Napi::Array>();
    check_same(env, "options.rows.length", int64_t(arr.Length()), "the rows of logits", T);
    for (uint32_t t = 0; t < arr.Length(); ++t) {
      const std::string label = "options.rows[" + std::to_string(t) + "]";
      const Napi::Value e = arr.Get(t);
      if (!e.IsObject()) throw_type_error(env, label + " must be an object, got " + describe(e));
      Options ro(env, e, label, "sample", {MOE_SAMPLE_KEYS});
      read_sample_row(env, ro, V, &(*rows)[t], &hist[t]);
      (*rows)[t].stream = 0;
    }
  } else {
    moe::SampleRow r;
    read_sample_row(env, o, V, &r, &hist[0]);
    for (int64_t t = 0; t < T; ++t) {
      (*rows)[size_t(t)] = r;
      (*rows)[size_t(t)].stream = uint64_t(t);
      if (t > 0) hist[size_t(t)] = hist[0];
    }
  }
  job->hold.push_back(rows);
  a.rows.data = rows->data();
  a.rows.dtype = moe::DType::kI32;
  a.rows.ndim = 2, a.rows.dims[0] = T, a.rows.dims[1] = moe::kSampleRowWords;
  size_t n_pen = 0;
  for (const auto& h : hist) n_pen += h.size();
  if (n_pen > size_t(INT32_MAX)) throw_range_error(env, "sample: too many penalty tokens");
  if (n_pen > 0) {
    // ids, counts and offsets in one block the job holds
    auto pen = std::make_shared<std::vector<int32_t>>(2 * n_pen + size_t(T) + 1);
    int32_t* ids = pen->data();
    int32_t* counts = ids + n_pen;
    int32_t* off = counts + n_pen;
    size_t j = 0;
    for (int64_t t = 0; t < T; ++t) {
      off[t] = int32_t(j);
      for (const auto& e : hist[size_t(t)]) ids[j] = e.first, counts[j] = e.second, ++j;
    }
    off[T] = int32_t(j);
    job->hold.push_back(pen);
    auto view = [](int32_t* p, int64_t n) {
      moe::TensorView v;
      v.data = p, v.dtype = moe::DType::kI32, v.ndim = 1, v.dims[0] = n;
      return v;
    };
    a.penalty_ids = view(ids, int64_t(n_pen));
    a.penalty_counts = view(counts, int64_t(n_pen));
    a.penalty_offsets = view(off, T + 1);
  }
  const Place host;
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), env.Undefined(), moe::DType::kI32, kI32, shape_of({T}), host, &a.ids));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->sample(a); };
  return run_job(env, std::move(job));
}
#undef MOE_SAMPLE_KEYS

Napi::Value Cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "cast");
  Options o(info, 1, "cast", {"outType", "out"});
  auto job = std::make_unique<Job>(o.async());
  const Place place = place_of(info[0]);
  job->backend = backend_of(place);
  moe::CastArgs a;
  a.src = tensor_arg(*job, info[0], "x", kAnyFloat, -1, place);
  if (!o.has("outType") && !o.has("out")) throw_type_error(env, "cast: options.outType (or options.out) is required");
  job->result = Napi::Persistent(output_arg(*job, o.get("out"), o.get("outType"), a.src.dtype, kAnyFloat, a.src, place, &a.dst));
  moe::Backend* b = job->backend;
  job->compute = [b, a]() { return b->cast(a); };
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
  exports.Set("create_kv_pool", Napi::Function::New(env, CreateKvPool, "create_kv_pool"));
  exports.Set("paged_attention", Napi::Function::New(env, PagedAttention, "paged_attention"));
  exports.Set("add", Napi::Function::New(env, Add, "add"));
  exports.Set("sample", Napi::Function::New(env, Sample, "sample"));
  exports.Set("cast", Napi::Function::New(env, Cast, "cast"));
}

}  // namespace moe_addon
