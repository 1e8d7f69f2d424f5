#include "experts_handle.h"

#include "args.h"

namespace moe_addon {

namespace {
// Set only while NewInstance runs, so JS cannot construct a handle around nothing.
std::shared_ptr<moe::PackedExperts>* g_pending = nullptr;
}  // namespace

void ExpertsWrap::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(env, "Experts",
                                   {InstanceMethod("dispose", &ExpertsWrap::Dispose),
                                    InstanceMethod("info", &ExpertsWrap::Info)});
  addon_data(env).experts_ctor = Napi::Persistent(cls);
  exports.Set("Experts", cls);
}

Napi::Object ExpertsWrap::NewInstance(Napi::Env env, std::shared_ptr<moe::PackedExperts> packed) {
  g_pending = &packed;
  Napi::Object o;
  try {
    o = addon_data(env).experts_ctor.New({});
  } catch (...) {
    g_pending = nullptr;
    throw;
  }
  g_pending = nullptr;
  return o;
}

ExpertsWrap::ExpertsWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ExpertsWrap>(info) {
  if (!g_pending)
    throw_type_error(info.Env(), "Experts cannot be constructed directly: use packExperts()");
  packed_ = std::move(*g_pending);
  external_bytes_ = int64_t(packed_->bytes());
  Napi::MemoryManagement::AdjustExternalMemory(info.Env(), external_bytes_);
}

ExpertsWrap::~ExpertsWrap() {
  // Finaliser: the packed weights go when the last in-flight job lets go of them.
  packed_.reset();
}

void ExpertsWrap::Release(Napi::Env env) {
  if (!packed_) return;
  packed_.reset();
  Napi::MemoryManagement::AdjustExternalMemory(env, -external_bytes_);
  external_bytes_ = 0;
}

Napi::Value ExpertsWrap::Dispose(const Napi::CallbackInfo& info) {
  Release(info.Env());
  return info.Env().Undefined();
}

Napi::Value ExpertsWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("disposed", Napi::Boolean::New(env, !packed_));
  if (packed_) {
    o.Set("numExperts", Napi::Number::New(env, packed_->num_experts));
    o.Set("d", Napi::Number::New(env, double(packed_->d)));
    o.Set("f", Napi::Number::New(env, double(packed_->f)));
    o.Set("type", Napi::String::New(env, moe::dtype_name(packed_->dtype)));
    o.Set("bytes", Napi::Number::New(env, double(packed_->bytes())));
  }
  return o;
}

std::shared_ptr<const moe::PackedExperts> ExpertsWrap::Get(const Napi::Value& v, const char* name) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(addon_data(env).experts_ctor.Value()))
    throw_type_error(env, std::string(name) + " must be packed expert weights (from packExperts), got " +
                              describe(v));
  ExpertsWrap* w = ExpertsWrap::Unwrap(v.As<Napi::Object>());
  if (!w->packed_)
    throw_moe_error(env, "ERR_DISPOSED", std::string(name) + " was disposed and cannot be used again");
  return w->packed_;
}

}  // namespace moe_addon
