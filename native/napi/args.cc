#include "args.h"

#include <cmath>
#include <sstream>

namespace moe_addon {

AddonData& addon_data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (!d) {
    d = new AddonData();
    env.SetInstanceData(d);  // deleted by node-addon-api when the env goes away
  }
  return *d;
}

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? "true" : "false";
  if (v.IsNumber()) {
    const double x = v.As<Napi::Number>().DoubleValue();
    if (std::isnan(x)) return "NaN";  // as JS writes them
    if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
    // integers print whole (2^53 as 9007199254740992, not 9.00719925474099e+15)
    if (std::floor(x) == x && std::fabs(x) < 9.2e18) return std::to_string(int64_t(x));
    std::ostringstream o;
    o.precision(15);
    o << x;
    return o.str();
  }
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return "\"" + s + "\"";
  }
  if (v.IsTypedArray()) {
    static const char* names[] = {"Int8Array",  "Uint8Array",   "Uint8ClampedArray", "Int16Array",
                                  "Uint16Array", "Int32Array",  "Uint32Array",       "Float32Array",
                                  "Float64Array", "BigInt64Array", "BigUint64Array"};
    auto ta = v.As<Napi::TypedArray>();
    int t = int(ta.TypedArrayType());
    std::string n = t >= 0 && t < 11 ? names[t] : "TypedArray";
    return "a " + n + " of length " + std::to_string(ta.ElementLength());
  }
  if (v.IsArray()) {
    auto a = v.As<Napi::Array>();
    std::string s = "[";
    for (uint32_t i = 0; i < a.Length() && i < 6; ++i) {
      if (i) s += ",";
      s += describe(a.Get(i));
    }
    if (a.Length() > 6) s += ",...";
    return s + "]";
  }
  if (v.IsFunction()) return "a function";
  if (v.IsObject()) return "an object";
  return "a value of another type";
}

static Napi::Error with_code(Napi::Error e, const char* code) {
  e.Set("code", Napi::String::New(e.Env(), code));
  return e;
}

void throw_type_error(Napi::Env env, const std::string& msg) {
  throw with_code(Napi::TypeError::New(env, msg), "ERR_INVALID_ARG_TYPE");
}
void throw_range_error(Napi::Env env, const std::string& msg) {
  throw with_code(Napi::RangeError::New(env, msg), "ERR_OUT_OF_RANGE");
}

Napi::Error make_moe_error(Napi::Env env, const std::string& code, const std::string& msg) {
  Napi::FunctionReference& cls = addon_data(env).error_class;
  if (!cls.IsEmpty()) {
    Napi::Object e = cls.New({Napi::String::New(env, msg), Napi::String::New(env, code)});
    return Napi::Error(env, e);
  }
  return with_code(Napi::Error::New(env, msg), code.c_str());
}

void throw_moe_error(Napi::Env env, const std::string& code, const std::string& msg) {
  throw make_moe_error(env, code, msg);
}

Napi::Error make_status_error(Napi::Env env, const moe::Status& st) {
  return make_moe_error(env, moe::status_code_name(st.code()), st.message());
}

void throw_if_error(Napi::Env env, const moe::Status& st) {
  if (!st.is_ok()) throw make_status_error(env, st);
}

std::string dims_string(const moe::TensorView& v) {
  std::string s = "[";
  for (int i = 0; i < v.ndim; ++i) s += (i ? "," : "") + std::to_string(v.dims[i]);
  return s + "]";
}

static const char* kTypeNames[moe::kNumDTypes] = {"float32", "float16", "bfloat16", "int32", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k"};

moe::DType to_dtype(const Napi::Value& v, const char* name, unsigned allowed) {
  Napi::Env env = v.Env();
  std::string allowed_s;
  for (int i = 0; i < moe::kNumDTypes; ++i)
    if (allowed & (1u << i)) allowed_s += (allowed_s.empty() ? "'" : ", '") + std::string(kTypeNames[i]) + "'";
  if (!v.IsString())
    throw_type_error(env, std::string(name) + " must be one of " + allowed_s + ", got " + describe(v));
  std::string s = v.As<Napi::String>().Utf8Value();
  for (int i = 0; i < moe::kNumDTypes; ++i)
    if (s == kTypeNames[i]) {
      if (!(allowed & (1u << i)))
        throw_type_error(env, std::string(name) + " must be one of " + allowed_s + ", got \"" + s + "\"");
      return moe::DType(i);
    }
  throw_type_error(env, std::string(name) + " must be one of " + allowed_s + ", got " + describe(v));
}

moe::TensorView to_tensor_shape(const Napi::Value& v, const char* name, unsigned allowed, int ndim) {
  Napi::Env env = v.Env();
  const std::string n(name);
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray())
    throw_type_error(env, n + " must be a tensor {type, data, dims}, got " + describe(v));
  Napi::Object o = v.As<Napi::Object>();
  moe::TensorView t;
  t.dtype = to_dtype(o.Get("type"), (n + ".type").c_str(), allowed);

  Napi::Value dv = o.Get("dims");
  if (!dv.IsArray()) throw_type_error(env, n + ".dims must be an array of integers, got " + describe(dv));
  Napi::Array dims = dv.As<Napi::Array>();
  if (dims.Length() > uint32_t(moe::kMaxDims) || (ndim >= 0 && dims.Length() != uint32_t(ndim)))
    throw_range_error(env, n + ".dims must have " +
                               (ndim >= 0 ? std::to_string(ndim) : std::string("at most 4")) +
                               " entries, got " + describe(dv));
  t.ndim = int(dims.Length());
  double numel = 1;
  for (uint32_t i = 0; i < dims.Length(); ++i) {
    Napi::Value e = dims.Get(i);
    double x = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : NAN;
    if (!e.IsNumber() || !std::isfinite(x) || std::floor(x) != x)
      throw_type_error(env, n + ".dims must be an array of integers, got " + describe(dv));
    if (x < 0 || x > 2147483647.0)
      throw_range_error(env, n + ".dims[" + std::to_string(i) + "] must be in [0, 2^31), got " + describe(e));
    t.dims[i] = int64_t(x);
    numel *= x;
  }
  if (numel > 9007199254740991.0) throw_range_error(env, n + " has too many elements: dims " + describe(dv));
  return t;
}

int64_t to_int(const Napi::Value& v, const char* name, int64_t lo, int64_t hi) {
  Napi::Env env = v.Env();
  if (!v.IsNumber()) throw_type_error(env, std::string(name) + " must be an integer, got " + describe(v));
  double x = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x) || std::floor(x) != x)
    throw_type_error(env, std::string(name) + " must be an integer, got " + describe(v));
  if (x < double(lo) || x > double(hi))
    throw_range_error(env, std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                               std::to_string(hi) + "], got " + describe(v));
  return int64_t(x);
}

bool to_bool(const Napi::Value& v, const char* name) {
  if (!v.IsBoolean()) throw_type_error(v.Env(), std::string(name) + " must be a boolean, got " + describe(v));
  return v.As<Napi::Boolean>().Value();
}

void expect_args(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() < n)
    throw_type_error(info.Env(), std::string(fn) + " expects " + std::to_string(n) + " arguments, got " +
                                     std::to_string(info.Length()));
}

double to_number(const Napi::Value& v, const char* name, double lo, double hi, bool lo_open) {
  Napi::Env env = v.Env();
  if (!v.IsNumber() || std::isnan(v.As<Napi::Number>().DoubleValue()))
    throw_type_error(env, std::string(name) + " must be a number, got " + describe(v));
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
    throw_range_error(env, std::string(name) + " must be in " + (lo_open ? "(" : "[") + describe(Napi::Number::New(env, lo)) +
                               ", " + describe(Napi::Number::New(env, hi)) + "], got " + describe(v));
  return x;
}

moe::TensorView shape_of(std::initializer_list<int64_t> dims) {
  moe::TensorView s;
  for (int64_t d : dims) s.dims[s.ndim++] = d;
  return s;
}

bool same_dims(const moe::TensorView& a, const moe::TensorView& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.dims[i] != b.dims[i]) return false;
  return true;
}

Options::Options(const Napi::CallbackInfo& info, size_t index, const char* fn, std::initializer_list<const char*> keys)
    : env_(info.Env()) {
  if (index >= info.Length() || info[index].IsUndefined()) return;
  read(info[index], fn, keys, true);
}

Options::Options(Napi::Env env, const Napi::Value& v, std::string label, const char* fn,
                 std::initializer_list<const char*> keys)
    : env_(env), label_(std::move(label)) {
  if (v.IsUndefined()) return;
  read(v, fn, keys, false);
}

void Options::read(const Napi::Value& v, const char* fn, std::initializer_list<const char*> keys, bool allow_async) {
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray() || v.IsFunction())
    throw_type_error(env_, std::string(fn) + ": " + label_ + " must be an object, got " + describe(v));
  obj_ = v.As<Napi::Object>();
  present_ = true;
  Napi::Array names = obj_.GetPropertyNames();
  for (uint32_t n = 0; n < names.Length(); ++n) {
    const std::string key = names.Get(n).ToString().Utf8Value();
    bool known = allow_async && key == "async";
    for (const char* k : keys) known = known || key == k;
    if (!known) throw_type_error(env_, label_ + "." + key + " is not a known option of " + fn);
  }
}

Napi::Value Options::get(const char* key) const { return present_ ? obj_.Get(key) : env_.Undefined(); }

bool Options::async() const { return flag("async", false); }

bool Options::flag(const char* key, bool dflt) const {
  const Napi::Value v = get(key);
  return v.IsUndefined() ? dflt : to_bool(v, name(key).c_str());
}

int64_t Options::integer(const char* key, int64_t dflt, int64_t lo, int64_t hi) const {
  const Napi::Value v = get(key);
  return v.IsUndefined() ? dflt : to_int(v, name(key).c_str(), lo, hi);
}

double Options::number(const char* key, double dflt, double lo, double hi, bool lo_open) const {
  const Napi::Value v = get(key);
  return v.IsUndefined() ? dflt : to_number(v, name(key).c_str(), lo, hi, lo_open);
}

void check_same(Napi::Env env, const char* a, int64_t va, const char* b, int64_t vb) {
  if (va != vb)
    throw_range_error(env, std::string(a) + " (" + std::to_string(va) + ") must equal " + b + " (" +
                               std::to_string(vb) + ")");
}

}  // namespace moe_addon
