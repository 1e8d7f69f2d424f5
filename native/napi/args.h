// N-API glue: turning JS values into tensor views and plain C++ values, with errors that name the
// argument and the value it got. The addon never does math; it checks, converts and calls ops.
#pragma once
#include <napi.h>

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
};

// Per-environment state (the addon may be loaded by several worker_threads): JS classes that
// native code constructs. Owned by the env, freed with it.
struct AddonData {
  Napi::FunctionReference error_class;   // MoeError, from set_error_class
  Napi::FunctionReference experts_ctor;  // the Experts class
  Napi::FunctionReference linear_ctor;   // the Linear class (bind_decoder.cc)
  Napi::FunctionReference kv_cache_ctor;  // the KvCache class (bind_decoder.cc)
  Napi::FunctionReference device_buffer_ctor;  // the DeviceBuffer class (device.cc)
};
AddonData& addon_data(Napi::Env env);

// A short rendering of a JS value for error messages ("a string \"abc\"", "5.5", "[2,3]").
std::string describe(const Napi::Value& v);

[[noreturn]] void throw_type_error(Napi::Env env, const std::string& msg);
[[noreturn]] void throw_range_error(Napi::Env env, const std::string& msg);
// Throws the package's MoeError (registered by set_error_class) with a code.
[[noreturn]] void throw_moe_error(Napi::Env env, const std::string& code, const std::string& msg);
Napi::Error make_status_error(Napi::Env env, const moe::Status& st);
void throw_if_error(Napi::Env env, const moe::Status& st);

// JS objects an async job must keep alive until it finishes (the typed arrays it reads/writes).
using KeepAlive = std::vector<Napi::ObjectReference>;

// The type and dims of {type, dims, ...} (data not read): shared by host and device tensors.
moe::TensorView to_tensor_shape(const Napi::Value& v, const char* name, unsigned allowed, int ndim);

// Parses {type, data, dims}, reading data in place. ndim < 0 accepts any rank up to 4.
// When `keep` is given, the typed array is added to it.
moe::TensorView to_tensor(const Napi::Value& v, const char* name, unsigned allowed, int ndim,
                          KeepAlive* keep = nullptr);

// An integer in [lo, hi]; TypeError for a non-number or a non-integer, RangeError outside.
int64_t to_int(const Napi::Value& v, const char* name, int64_t lo, int64_t hi);
bool to_bool(const Napi::Value& v, const char* name);
moe::DType to_dtype(const Napi::Value& v, const char* name, unsigned allowed);

// Allocates a JS tensor {type, data, dims} of fresh zeroed storage, returns it and its view.
Napi::Object new_tensor(Napi::Env env, moe::DType t, std::initializer_list<int64_t> dims,
                        moe::TensorView* view);
// The same with the dims of `shape` (its data and dtype are ignored).
Napi::Object new_tensor(Napi::Env env, moe::DType t, const moe::TensorView& shape, moe::TensorView* view);

std::string dims_string(const moe::TensorView& v);

// The trailing `async` flag of an op at argument i: false when absent or undefined.
bool async_flag(const Napi::CallbackInfo& info, size_t i);
// TypeError unless the call has at least n arguments.
void expect_args(const Napi::CallbackInfo& info, size_t n, const char* fn);
// RangeError "a (va) must equal b (vb)" unless va == vb.
void check_same(Napi::Env env, const char* a, int64_t va, const char* b, int64_t vb);

}  // namespace moe_addon
