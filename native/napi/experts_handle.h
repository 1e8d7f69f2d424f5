// N-API glue: the JS handle of a backend's packed expert weights (one copy per layer), with
// dispose() and a finaliser. Compute jobs hold a shared_ptr, so disposing during a call is safe.
#pragma once
#include <napi.h>

#include <memory>

#include "moe/moe_ops.h"

namespace moe_addon {

class ExpertsWrap : public Napi::ObjectWrap<ExpertsWrap> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<moe::PackedExperts> packed);
  // The packed weights of a JS value that must be an undisposed Experts handle.
  static std::shared_ptr<const moe::PackedExperts> Get(const Napi::Value& v, const char* name);

  explicit ExpertsWrap(const Napi::CallbackInfo& info);
  ~ExpertsWrap() override;

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  void Release(Napi::Env env);

  std::shared_ptr<moe::PackedExperts> packed_;
  int64_t external_bytes_ = 0;
};

}  // namespace moe_addon
