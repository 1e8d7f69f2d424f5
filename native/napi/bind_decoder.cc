// N-API glue for the decoder-model ops (moe/decoder_ops.h): argument checks, outputs allocated on the
// JS thread (or the caller's `out` tensor, to avoid allocations in a decode loop), compute on the
// pool, and the two native handles: Linear (packed weights of one matrix) and KvCache (one layer's
// keys and values plus its length). Each op takes a trailing `async` flag: true returns a Promise.
//
//   embedding(table, ids, outType, out, async)                        -> [T,d]
//   rms_norm(x, weight, eps, outType, out, async)                     -> [T,d]
//   pack_linear(w, async)                                             -> Linear
//   linear(x, w, outType, out, async)                                 -> [T,out]
//   rope(q, k, positions, theta, qOut, kOut, async)                   -> {q, k}
//   create_kv_cache(maxSeq, numKvHeads, headDim, type)                -> KvCache
//   attention(q, k, v, cache, startPos, slidingWindow, outType, out, async) -> [T,Hq,hd]
//   add(a, b, outType, out, async)                                    -> a's dims
//   sample(logits, temperature, topP, seed, step, out, async)         -> [T] int32
// outType and out may be null/undefined; a given out must have the result's dims (and outType,
// when both are given); it is written and returned.
#include <napi.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <type_traits>

#include "args.h"
#include "device_tensors.h"
#include "jobs.h"
#include "moe/cuda_backend.h"
#include "moe/decoder_ops.h"

namespace moe_addon {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

bool given(const Napi::Value& v) { return !v.IsUndefined() && !v.IsNull(); }

// A finite number in [lo, hi] (lo excluded when lo_open); TypeError for a non-number or NaN.
double to_number(const Napi::Value& v, const char* name, double lo, double hi, bool lo_open = false) {
  Napi::Env env = v.Env();
  if (!v.IsNumber() || std::isnan(v.As<Napi::Number>().DoubleValue()))
    throw_type_error(env, std::string(name) + " must be a number, got " + describe(v));
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
    throw_range_error(env, std::string(name) + " must be in " + (lo_open ? "(" : "[") + describe(Napi::Number::New(env, lo)) +
                               ", " + describe(Napi::Number::New(env, hi)) + "], got " + describe(v));
  return x;
}

// The result tensor of an op: the caller's `out` when given (its dims must be those of `shape`,
// its type `type` when that is given, or one of `allowed`), else a fresh one of `type` or `dflt`;
// a device tensor when `device`.
Napi::Object output(const Napi::Value& out_v, const Napi::Value& type_v, moe::DType dflt, unsigned allowed,
                    const moe::TensorView& shape, Job* job, moe::TensorView* view, bool device = false) {
  Napi::Env env = out_v.Env();
  const bool typed = given(type_v);
  const moe::DType t = typed ? to_dtype(type_v, "outType", allowed) : dflt;
  if (!given(out_v)) return device ? new_device_tensor(env, t, shape, &job->hold, view) : new_tensor(env, t, shape, view);
  if (is_device_tensor(out_v) != device)
    throw_type_error(env, std::string("out must be ") + (device ? "a device tensor, like the op's inputs" : "a host tensor, like the op's inputs") +
                              ", got " + (device ? "a host tensor" : "a device tensor"));
  *view = device ? to_device_tensor(out_v, "out", allowed, shape.ndim, &job->hold) : to_tensor(out_v, "out", allowed, shape.ndim, &job->keep);
  for (int i = 0; i < shape.ndim; ++i)
    if (view->dims[i] != shape.dims[i])
      throw_range_error(env, "out.dims must be " + dims_string(shape) + ", got " + dims_string(*view));
  if (typed && view->dtype != t)
    throw_type_error(env, std::string("out.type '") + moe::dtype_name(view->dtype) + "' differs from outType '" +
                              moe::dtype_name(t) + "'");
  return out_v.As<Napi::Object>();
}

moe::TensorView shape_of(std::initializer_list<int64_t> dims) {
  moe::TensorView s;
  for (int64_t d : dims) s.dims[s.ndim++] = d;
  return s;
}

// ---- handles ------------------------------------------------------------------------------------
// A JS object owning a backend object (packed linear weights or a KV cache) through a shared_ptr:
// compute jobs hold their own reference, so dispose() during a call is safe.
template <class T>
class Handle : public Napi::ObjectWrap<Handle<T>> {
 public:
  static constexpr bool kIsCache = std::is_same_v<T, moe::KvCache>;
  static constexpr const char* kName = kIsCache ? "KvCache" : "Linear";
  static constexpr const char* kMaker = kIsCache ? "KvCache.create()" : "Linear.pack()";

  static Napi::FunctionReference& ctor(Napi::Env env) {
    return kIsCache ? addon_data(env).kv_cache_ctor : addon_data(env).linear_ctor;
  }

  static void Init(Napi::Env env, Napi::Object exports) {
    using W = Handle<T>;
    std::vector<typename Napi::ObjectWrap<W>::PropertyDescriptor> props = {
        W::InstanceMethod("dispose", &W::Dispose), W::InstanceMethod("info", &W::Info)};
    if constexpr (kIsCache) props.push_back(W::InstanceMethod("truncate", &W::Truncate));
    Napi::Function cls = W::DefineClass(env, kName, props);
    ctor(env) = Napi::Persistent(cls);
    exports.Set(kName, cls);
  }

  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<T> obj) {
    pending_ = &obj;
    Napi::Object o;
    try {
      o = ctor(env).New({});
    } catch (...) {
      pending_ = nullptr;
      throw;
    }
    pending_ = nullptr;
    return o;
  }

  // The handle of a JS value that must be an undisposed T.
  static Handle* Get(const Napi::Value& v, const char* name) {
    Napi::Env env = v.Env();
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(ctor(env).Value()))
      throw_type_error(env, std::string(name) + " must be a " + kName + " (from " + kMaker + "), got " + describe(v));
    Handle* h = Handle::Unwrap(v.As<Napi::Object>());
    if (!h->obj)
      throw_moe_error(env, "ERR_DISPOSED", std::string(name) + " was disposed and cannot be used again");
    return h;
  }

  explicit Handle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Handle<T>>(info) {
    if (!pending_)
      throw_type_error(info.Env(), std::string(kName) + " cannot be constructed directly: use " + kMaker);
    obj = std::move(*pending_);
    external_bytes_ = int64_t(obj->bytes());
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), external_bytes_);
  }

  std::shared_ptr<T> obj;
  int64_t length = 0;  // KvCache: positions written by the calls made so far (queued ones included)
  std::shared_ptr<std::atomic<int>> inflight = std::make_shared<std::atomic<int>>(0);  // async calls running

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (obj) {
      obj.reset();
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -external_bytes_);
      external_bytes_ = 0;
    }
    return info.Env().Undefined();
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("disposed", Napi::Boolean::New(env, !obj));
    if (!obj) return o;
    o.Set("type", Napi::String::New(env, moe::dtype_name(obj->dtype)));
    o.Set("bytes", Napi::Number::New(env, double(obj->bytes())));
    if constexpr (kIsCache) {
      o.Set("maxSeq", Napi::Number::New(env, double(obj->max_seq)));
      o.Set("numKvHeads", Napi::Number::New(env, double(obj->num_kv_heads)));
      o.Set("headDim", Napi::Number::New(env, double(obj->head_dim)));
      o.Set("length", Napi::Number::New(env, double(length)));
    } else {
      o.Set("inFeatures", Napi::Number::New(env, double(obj->in_features)));
      o.Set("bias", Napi::Boolean::New(env, obj->has_bias));
      o.Set("outFeatures", Napi::Number::New(env, double(obj->out_features)));
    }
    return o;
  }

  // truncate(n): forget the positions from n on (0: a new sequence). Only bookkeeping: later calls
  // overwrite the data, and calls already queued run before any later one.
  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!obj) throw_moe_error(env, "ERR_DISPOSED", "KvCache was disposed and cannot be used again");
    expect_args(info, 1, "truncate");
    length = to_int(info[0], "length", 0, length);
    return env.Undefined();
  }

  int64_t external_bytes_ = 0;
  static inline thread_local std::shared_ptr<T>* pending_ = nullptr;  // set only while NewInstance runs
};

using LinearWrap = Handle<moe::PackedLinear>;
using KvCacheWrap = Handle<moe::KvCache>;

// ---- ops ------------------------------------------------------------------------------------------

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "embedding");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView table = tensor_arg(info[0], "table", kAnyFloat, 2, job.get(), dev);
  moe::TensorView ids = to_tensor(info[1], "ids", kI32, 1, &job->keep);
  const int64_t V = table.dims[0], d = table.dims[1], T = ids.dims[0];
  const int32_t* ip = ids.as<const int32_t>();
  for (int64_t t = 0; t < T; ++t)
    if (ip[t] < 0 || ip[t] >= V)
      throw_range_error(env, "ids.data[" + std::to_string(t) + "] must be a token index in [0, " + std::to_string(V) +
                                 "), got " + std::to_string(ip[t]));
  moe::TensorView out;
  job->result = Napi::Persistent(output(info[3], info[2], table.dtype, kAnyFloat, shape_of({T, d}), job.get(), &out, dev));
  job->compute = [=]() {
    return (dev ? moe::cuda::dev::embedding : moe::embedding)(table, ids.as<const int32_t>(), T, out);
  };
  return run_job(env, async_flag(info, 4), std::move(job));
}

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "rms_norm");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView x = tensor_arg(info[0], "x", kAnyFloat, 2, job.get(), dev);
  moe::TensorView w = tensor_arg(info[1], "weight", kAnyFloat, 1, job.get(), dev);
  check_same(env, "weight.dims[0]", w.dims[0], "x.dims[1]", x.dims[1]);
  const float eps = float(to_number(info[2], "eps", 0.0, 1.0));
  moe::TensorView out;
  job->result = Napi::Persistent(output(info[4], info[3], x.dtype, kAnyFloat, x, job.get(), &out, dev));
  job->compute = [=]() { return (dev ? moe::cuda::dev::rms_norm : moe::rms_norm)(x, w, eps, out); };
  return run_job(env, async_flag(info, 5), std::move(job));
}

// pack_linear(w, async, backend?, bias?)
Napi::Value PackLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "pack_linear");
  auto job = std::make_unique<Job>();
  moe::TensorView w = to_tensor(info[0], "w", kAnyFloat, 2, &job->keep);
  if (w.dims[0] < 1 || w.dims[1] < 1)
    throw_range_error(env, "w must have at least one row and one column, got dims " + dims_string(w));
  const bool cuda = on_cuda(info, 2);
  const bool has_bias = info.Length() > 3 && given(info[3]);
  moe::TensorView bias;
  if (has_bias) {
    bias = to_tensor(info[3], "bias", kAnyFloat, 1, &job->keep);
    check_same(env, "bias.dims[0]", bias.dims[0], "w.dims[0] (out features)", w.dims[0]);
  }
  return run_make_job<moe::PackedLinear>(
      env, async_flag(info, 1), std::move(job),
      [w, bias, has_bias, cuda](std::unique_ptr<moe::PackedLinear>* out) {
        return (cuda ? moe::cuda::dev::pack_linear : moe::pack_linear)(w, has_bias ? &bias : nullptr, out);
      },
      LinearWrap::NewInstance);
}

Napi::Value Linear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "linear");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView x = tensor_arg(info[0], "x", kAnyFloat, 2, job.get(), dev);
  std::shared_ptr<const moe::PackedLinear> w = LinearWrap::Get(info[1], "w")->obj;
  check_place(env, "the Linear", w->backend(), dev);
  check_same(env, "x.dims[1]", x.dims[1], "the weights' in features", w->in_features);
  moe::TensorView y;
  job->result = Napi::Persistent(output(info[3], info[2], moe::DType::kF32, kAnyFloat,
                                        shape_of({x.dims[0], w->out_features}), job.get(), &y, dev));
  job->compute = [=]() { return (dev ? moe::cuda::dev::linear : moe::linear)(x, *w, y); };
  return run_job(env, async_flag(info, 4), std::move(job));
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "rope");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView q = tensor_arg(info[0], "q", kAnyFloat, 3, job.get(), dev);
  const bool has_k = given(info[1]);
  moe::TensorView k = has_k ? tensor_arg(info[1], "k", kAnyFloat, 3, job.get(), dev) : moe::TensorView();
  // positions: a host int32 tensor, or (device q) a device one, which costs no copy per call
  const bool pos_dev = dev && is_device_tensor(info[2]);
  moe::TensorView pos = pos_dev ? to_device_tensor(info[2], "positions", kI32, 1, &job->hold)
                                : to_tensor(info[2], "positions", kI32, 1, &job->keep);
  const int64_t T = q.dims[0], hd = q.dims[2];
  if (hd % 2 != 0) throw_range_error(env, "q.dims[2] (head dim) must be even, got " + std::to_string(hd));
  check_same(env, "positions.dims[0]", pos.dims[0], "q.dims[0]", T);
  if (has_k) {
    check_same(env, "k.dims[0]", k.dims[0], "q.dims[0]", T);
    check_same(env, "k.dims[2]", k.dims[2], "q.dims[2]", hd);
  }
  const double theta = to_number(info[3], "theta", 1.0, 1e30, true);
  moe::TensorView qo, ko;
  Napi::Value none = env.Undefined();
  Napi::Object r = Napi::Object::New(env);
  r.Set("q", output(info.Length() > 4 ? info[4] : none, none, q.dtype, kAnyFloat, q, job.get(), &qo, dev));
  r.Set("k", has_k ? Napi::Value(output(info.Length() > 5 ? info[5] : none, none, k.dtype, kAnyFloat, k, job.get(), &ko, dev))
                   : env.Null());
  job->result = Napi::Persistent(r);
  job->compute = [=]() {
    auto op = [&](const moe::TensorView& x, const moe::TensorView& out) {
      if (dev) return moe::cuda::dev::rope(x, pos.as<const int32_t>(), pos_dev, theta, out);
      return moe::rope(x, pos.as<const int32_t>(), theta, out);
    };
    MOE_RETURN_IF_ERROR(op(q, qo));
    return has_k ? op(k, ko) : moe::Status::ok();
  };
  return run_job(env, async_flag(info, 6), std::move(job));
}

// create_kv_cache(maxSeq, numKvHeads, headDim, type, backend?)
Napi::Value CreateKvCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "create_kv_cache");
  const int64_t max_seq = to_int(info[0], "maxSeq", 1, int64_t(1) << 24);
  const int64_t heads = to_int(info[1], "numKvHeads", 1, 4096);
  const int64_t hd = to_int(info[2], "headDim", 1, 65536);
  const moe::DType t = to_dtype(info[3], "type", kAnyFloat);
  const bool cuda = on_cuda(info, 4);
  std::unique_ptr<moe::KvCache> c;
  throw_if_error(env, (cuda ? moe::cuda::dev::create_kv_cache : moe::create_kv_cache)(max_seq, heads, hd, t, &c));
  return KvCacheWrap::NewInstance(env, std::shared_ptr<moe::KvCache>(std::move(c)));
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 6, "attention");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView q = tensor_arg(info[0], "q", kAnyFloat, 3, job.get(), dev);
  moe::TensorView k = tensor_arg(info[1], "k", kAnyFloat, 3, job.get(), dev);
  moe::TensorView v = tensor_arg(info[2], "v", kAnyFloat, 3, job.get(), dev);
  KvCacheWrap* h = KvCacheWrap::Get(info[3], "cache");
  std::shared_ptr<moe::KvCache> cache = h->obj;
  check_place(env, "the KvCache", cache->backend(), dev);
  const int64_t T = q.dims[0], Hq = q.dims[1];
  check_same(env, "k.dims[1]", k.dims[1], "the cache's numKvHeads", cache->num_kv_heads);
  check_same(env, "k.dims[2]", k.dims[2], "the cache's headDim", cache->head_dim);
  check_same(env, "q.dims[2]", q.dims[2], "the cache's headDim", cache->head_dim);
  check_same(env, "k.dims[0]", k.dims[0], "q.dims[0]", T);
  for (int i = 0; i < 3; ++i)
    if (v.dims[i] != k.dims[i]) throw_range_error(env, "v.dims " + dims_string(v) + " must equal k.dims " + dims_string(k));
  if (Hq % cache->num_kv_heads != 0)
    throw_range_error(env, "q.dims[1] (" + std::to_string(Hq) + " query heads) must be a multiple of the cache's numKvHeads (" +
                               std::to_string(cache->num_kv_heads) + ")");
  const int64_t start = to_int(info[4], "startPos", 0, h->length);
  if (start + T > cache->max_seq)
    throw_range_error(env, "startPos + T (" + std::to_string(start) + " + " + std::to_string(T) +
                               ") must not exceed the cache's maxSeq (" + std::to_string(cache->max_seq) + ")");
  moe::AttentionParams p;
  p.start_pos = start;
  p.sliding_window = to_int(info[5], "slidingWindow", 0, kMaxSafeInteger);
  moe::TensorView out;
  job->result = Napi::Persistent(output(info[7], info[6], q.dtype, kAnyFloat, q, job.get(), &out, dev));
  const bool async = async_flag(info, 8);
  if (!async && h->inflight->load() > 0)
    throw_moe_error(env, "ERR_BUSY", "cache is in use by an async attention call: await it before a sync call");
  h->length = start + T;
  auto inflight = h->inflight;
  if (async) inflight->fetch_add(1);
  job->compute = [=]() {
    moe::Status st = (dev ? moe::cuda::dev::attention : moe::attention)(q, k, v, *cache, p, out);
    if (async) inflight->fetch_sub(1);
    return st;
  };
  return run_job(env, async, std::move(job));
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "add");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView a = tensor_arg(info[0], "a", kAnyFloat, -1, job.get(), dev);
  moe::TensorView b = tensor_arg(info[1], "b", kAnyFloat, -1, job.get(), dev);
  bool same = a.ndim == b.ndim;
  for (int i = 0; same && i < a.ndim; ++i) same = a.dims[i] == b.dims[i];
  if (!same) throw_range_error(env, "b.dims " + dims_string(b) + " must equal a.dims " + dims_string(a));
  moe::TensorView out;
  job->result = Napi::Persistent(output(info[3], info[2], a.dtype, kAnyFloat, a, job.get(), &out, dev));
  job->compute = [=]() { return (dev ? moe::cuda::dev::add : moe::add)(a, b, out); };
  return run_job(env, async_flag(info, 4), std::move(job));
}

// The ids are a host tensor whatever the place of the logits.
Napi::Value Sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 5, "sample");
  auto job = std::make_unique<Job>();
  const bool dev = is_device_tensor(info[0]);
  moe::TensorView l = tensor_arg(info[0], "logits", kF32, -1, job.get(), dev);
  if (l.ndim != 1 && l.ndim != 2)
    throw_range_error(env, "logits.dims must be [V] or [T,V], got " + dims_string(l));
  const int64_t V = l.dims[l.ndim - 1], T = l.ndim == 2 ? l.dims[0] : 1;
  if (V < 1) throw_range_error(env, "logits must have at least one entry per row, got dims " + dims_string(l));
  moe::SampleParams p;
  p.temperature = float(to_number(info[1], "temperature", 0.0, 1e30));
  p.top_p = float(to_number(info[2], "topP", 0.0, 1.0, true));
  p.seed = uint64_t(to_int(info[3], "seed", 0, int64_t(kMaxSafeInteger)));
  p.step = uint64_t(to_int(info[4], "step", 0, int64_t(kMaxSafeInteger)));
  moe::TensorView ids;
  job->result = Napi::Persistent(output(info[5], env.Undefined(), moe::DType::kI32, kI32, shape_of({T}), job.get(), &ids));
  job->compute = [=]() {
    if (dev) return moe::cuda::dev::sample(l, T, V, p, ids.as<int32_t>());
    return moe::sample(l.as<const float>(), T, V, p, ids.as<int32_t>());
  };
  return run_job(env, async_flag(info, 6), std::move(job));
}

}  // namespace

void InitModelOps(Napi::Env env, Napi::Object exports) {
  LinearWrap::Init(env, exports);
  KvCacheWrap::Init(env, exports);
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
