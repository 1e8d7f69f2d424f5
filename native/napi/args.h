// N-API glue: turning JS values into plain C++ values, with errors that name the argument and the
// value it got. The addon never does math; it checks, converts and calls the backend.
#pragma once
#include <napi.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "moe/status.h"
#include "moe/tensor.h"

namespace moe_addon {

// Allowed dtypes for an argument, as a bit mask.
enum DTypeMask : unsigned {
  kF32 = 1u << int(moe::DType::kF32),
  kF16 = 1u << int(moe::DType::kF16),
  kBF16 = 1u << int(moe::DType::kBF16),
  kI32 = 1u << int(moe::DType::kI32),
  kAnyFloat = kF32 | kF16 | kBF16,
  kQ8_0 = 1u << int(moe::DType::kQ8_0),
  kQ4_0 = 1u << int(moe::DType::kQ4_0),
  kQ4_K = 1u << int(moe::DType::kQ4_K),
  kQ5_K = 1u << int(moe::DType::kQ5_K),
  kQ6_K = 1u << int(moe::DType::kQ6_K),
  kAnyQuant = kQ8_0 | kQ4_0 | kQ4_K | kQ5_K | kQ6_K,
  kAnyWeight = kAnyFloat | kAnyQuant,  // what packed weights accept
};

// Per-environment state (the addon may be loaded by several worker_threads): the JS classes that
// native code constructs. Owned by the env, freed with it.
struct AddonData {
  Napi::FunctionReference error_class;  // MoeError, from set_error_class
  Napi::FunctionReference experts_ctor, linear_ctor, kv_cache_ctor, kv_pool_ctor, device_buffer_ctor, device_comm_ctor;  // handles.h
  std::shared_ptr<void> jobs;  // the environment's async jobs in flight (jobs.cc)
};
AddonData& addon_data(Napi::Env env);

// A short rendering of a JS value for error messages ("a string \"abc\"", "5.5", "[2,3]").
std::string describe(const Napi::Value& v);

[[noreturn]] void throw_type_error(Napi::Env env, const std::string& msg);
[[noreturn]] void throw_range_error(Napi::Env env, const std::string& msg);
// Throws the package's MoeError (registered by set_error_class) with a code.
[[noreturn]] void throw_moe_error(Napi::Env env, const std::string& code, const std::string& msg);
Napi::Error make_status_error(Napi::Env env, const moe::Status& st);
Napi::Error make_moe_error(Napi::Env env, const std::string& code, const std::string& msg);
void throw_if_error(Napi::Env env, const moe::Status& st);

// An integer in [lo, hi]; TypeError for a non-number or a non-integer, RangeError outside.
int64_t to_int(const Napi::Value& v, const char* name, int64_t lo, int64_t hi);
bool to_bool(const Napi::Value& v, const char* name);
// A finite number in [lo, hi] (lo excluded when lo_open); TypeError for a non-number or NaN.
double to_number(const Napi::Value& v, const char* name, double lo, double hi, bool lo_open = false);
moe::DType to_dtype(const Napi::Value& v, const char* name, unsigned allowed);
// Not undefined and not null.
inline bool given(const Napi::Value& v) { return !v.IsUndefined() && !v.IsNull(); }

// The type and dims of {type, dims, ...} (data not read): shared by host and device tensors.
moe::TensorView to_tensor_shape(const Napi::Value& v, const char* name, unsigned allowed, int ndim);
moe::TensorView shape_of(std::initializer_list<int64_t> dims);
std::string dims_string(const moe::TensorView& v);
bool same_dims(const moe::TensorView& a, const moe::TensorView& b);

// TypeError unless the call has at least n arguments.
void expect_args(const Napi::CallbackInfo& info, size_t n, const char* fn);
// RangeError "a (va) must equal b (vb)" unless va == vb.
void check_same(Napi::Env env, const char* a, int64_t va, const char* b, int64_t vb);

constexpr int64_t kMaxSafeInteger = 9007199254740991;  // 2^53 - 1: every integer a JS number holds

// The options object of a call (one per call, sharp's baton): absent (undefined) or a plain object
// whose keys are all known to the op (TypeError naming an unknown one). Values are read by name.
class Options {
 public:
  Options(const Napi::CallbackInfo& info, size_t index, const char* fn, std::initializer_list<const char*> keys);
  // A nested options object (e.g. one entry of options.rows): `label` names it in messages
  // ("options.rows[2]"); `async` is not one of its keys.
  Options(Napi::Env env, const Napi::Value& v, std::string label, const char* fn, std::initializer_list<const char*> keys);
  Napi::Value get(const char* key) const;
  bool has(const char* key) const { return given(get(key)); }
  // `async`: true returns a Promise (default false).
  bool async() const;
  bool flag(const char* key, bool dflt) const;
  int64_t integer(const char* key, int64_t dflt, int64_t lo, int64_t hi) const;
  double number(const char* key, double dflt, double lo, double hi, bool lo_open = false) const;
  // "options.key" for messages.
  std::string name(const char* key) const { return label_ + "." + key; }

 private:
  Napi::Env env_;
  Napi::Object obj_;
  bool present_ = false;
  std::string label_ = "options";
  void read(const Napi::Value& v, const char* fn, std::initializer_list<const char*> keys, bool allow_async);
};

}  // namespace moe_addon
