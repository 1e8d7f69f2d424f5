// N-API glue: the one handle template of every native object JS holds: packed experts (Experts), a
// linear layer's packed weights (Linear), a KV cache (KvCache), a paged KV pool (KvPool) and device
// memory (DeviceBuffer) and a device collective's communicator (DeviceComm: NCCL).
//
// A handle owns its object through a shared_ptr; a job in flight holds its own reference, so
// dispose() (or the finaliser) during a call frees the object when the call is done. JS cannot
// construct a handle around nothing: the constructor takes its object from NewInstance only.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "args.h"
#include "moe/backend.h"

namespace moe_addon {

template <class T>
class Handle : public Napi::ObjectWrap<Handle<T>> {
 public:
  static constexpr bool kExperts = std::is_same_v<T, moe::PackedExperts>;
  static constexpr bool kLinear = std::is_same_v<T, moe::PackedLinear>;
  static constexpr bool kCache = std::is_same_v<T, moe::KvCache>;
  static constexpr bool kPool = std::is_same_v<T, moe::KvPool>;
  static constexpr bool kComm = std::is_same_v<T, moe::DeviceComm>;
  static constexpr const char* kName =
      kExperts ? "Experts" : kLinear ? "Linear" : kCache ? "KvCache" : kPool ? "KvPool" : kComm ? "DeviceComm" : "DeviceBuffer";
  static constexpr const char* kMaker = kExperts  ? "ExpertWeights.pack()"
                                        : kLinear ? "Linear.pack()"
                                        : kCache  ? "new KvCache()"
                                        : kPool   ? "new KvPool()"
                                        : kComm   ? "ProcessGroup.nccl()"
                                                  : "DeviceTensor.zeros() or DeviceTensor.from()";

  static Napi::FunctionReference& ctor(Napi::Env env) {
    AddonData& d = addon_data(env);
    if constexpr (kExperts) return d.experts_ctor;
    else if constexpr (kLinear) return d.linear_ctor;
    else if constexpr (kCache) return d.kv_cache_ctor;
    else if constexpr (kPool) return d.kv_pool_ctor;
    else if constexpr (kComm) return d.device_comm_ctor;
    else return d.device_buffer_ctor;
  }

  static void Init(Napi::Env env, Napi::Object exports) {
    using W = Handle<T>;
    std::vector<typename Napi::ObjectWrap<W>::PropertyDescriptor> props = {W::InstanceMethod("dispose", &W::Dispose),
                                                                          W::InstanceMethod("info", &W::Info)};
    if constexpr (kCache) props.push_back(W::InstanceMethod("truncate", &W::Truncate));
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

  // The handle of v, or null when v is not one of these (disposed or not).
  static Handle* Peek(const Napi::Value& v) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(ctor(v.Env()).Value())) return nullptr;
    return Handle::Unwrap(v.As<Napi::Object>());
  }

  // The handle of a JS value that must be an undisposed T.
  static Handle* Get(const Napi::Value& v, const char* name) {
    Handle* h = Peek(v);
    if (!h) throw_type_error(v.Env(), std::string(name) + " must be a " + kName + " (from " + kMaker + "), got " + describe(v));
    if (!h->obj) throw_moe_error(v.Env(), "ERR_DISPOSED", std::string(name) + " was disposed and cannot be used again");
    return h;
  }

  explicit Handle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Handle<T>>(info) {
    if (!pending_) throw_type_error(info.Env(), std::string(kName) + " cannot be constructed directly: use " + kMaker);
    obj = std::move(*pending_);
    external_bytes_ = int64_t(bytes_of(*obj));
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), external_bytes_);
  }

  std::shared_ptr<T> obj;
  // KvCache: positions written by the calls made so far (queued ones included), and the async calls
  // running on it.
  int64_t length = 0;
  std::shared_ptr<std::atomic<int>> inflight = std::make_shared<std::atomic<int>>(0);

 private:
  static size_t bytes_of(const T& o) {
    if constexpr (std::is_same_v<T, moe::Buffer>) return o.bytes;
    else if constexpr (kComm) return 0;
    else return o.bytes();
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (obj) {
      obj.reset();  // jobs that use it hold their own reference
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -external_bytes_);
      external_bytes_ = 0;
    }
    return info.Env().Undefined();
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("disposed", Napi::Boolean::New(env, !obj));
    auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
    if constexpr (std::is_same_v<T, moe::Buffer>) {
      num("bytes", obj ? double(obj->bytes) : 0.0);
      return o;
    } else if constexpr (kComm) {
      if (obj) num("rank", obj->rank()), num("size", obj->size());
      return o;
    } else {
      if (!obj) return o;
      o.Set("type", Napi::String::New(env, moe::dtype_name(obj->dtype)));
      num("bytes", double(obj->bytes()));
      o.Set("backend", Napi::String::New(env, obj->backend ? obj->backend->name() : "?"));
      if constexpr (kExperts) {
        num("numExperts", obj->num_experts), num("d", double(obj->d)), num("f", double(obj->f));
        o.Set("hasGate", Napi::Boolean::New(env, obj->has_gate));
        o.Set("w2Type", Napi::String::New(env, moe::dtype_name(obj->w2_dtype)));
        num("inPlaceBytes", double(obj->in_place_bytes));
        o.Set("batchInvariant", Napi::Boolean::New(env, obj->batch_invariant));
      } else if constexpr (kLinear) {
        num("inFeatures", double(obj->in_features)), num("outFeatures", double(obj->out_features));
        o.Set("bias", Napi::Boolean::New(env, obj->has_bias));
      } else if constexpr (kPool) {
        num("numBlocks", double(obj->num_blocks)), num("blockSize", double(obj->block_size));
        num("numKvHeads", double(obj->num_kv_heads)), num("headDim", double(obj->head_dim));
      } else {
        num("maxSeq", double(obj->max_seq)), num("numKvHeads", double(obj->num_kv_heads));
        num("headDim", double(obj->head_dim)), num("length", double(length));
      }
      return o;
    }
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

using ExpertsHandle = Handle<moe::PackedExperts>;
using LinearHandle = Handle<moe::PackedLinear>;
using KvCacheHandle = Handle<moe::KvCache>;
using KvPoolHandle = Handle<moe::KvPool>;
using BufferHandle = Handle<moe::Buffer>;
using CommHandle = Handle<moe::DeviceComm>;

inline void InitHandles(Napi::Env env, Napi::Object exports) {
  ExpertsHandle::Init(env, exports);
  LinearHandle::Init(env, exports);
  KvCacheHandle::Init(env, exports);
  KvPoolHandle::Init(env, exports);
  BufferHandle::Init(env, exports);
  CommHandle::Init(env, exports);
}

}  // namespace moe_addon
