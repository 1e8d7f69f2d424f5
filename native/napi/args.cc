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

static Napi::Error make_moe_error(Napi::Env env, const std::string& code, const std::string& msg) {
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

static const char* kTypeNames[] = {"float32", "float16", "bfloat16", "int32"};

moe::DType to_dtype(const Napi::Value& v, const char* name, unsigned allowed) {
  Napi::Env env = v.Env();
  std::string allowed_s;
  for (int i = 0; i < 4; ++i)
    if (allowed & (1u << i)) allowed_s += (allowed_s.empty() ? "'" : ", '") + std::string(kTypeNames[i]) + "'";
  if (!v.IsString())
    throw_type_error(env, std::string(name) + " must be one of " + allowed_s + ", got " + describe(v));
  std::string s = v.As<Napi::String>().Utf8Value();
  for (int i = 0; i < 4; ++i)
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

moe::TensorView to_tensor(const Napi::Value& v, const char* name, unsigned allowed, int ndim,
                          KeepAlive* keep) {
  Napi::Env env = v.Env();
  const std::string n(name);
  moe::TensorView t = to_tensor_shape(v, name, allowed, ndim);
  Napi::Object o = v.As<Napi::Object>();
  const double numel = double(t.numel());

  Napi::Value data = o.Get("data");
  napi_typedarray_type want = t.dtype == moe::DType::kF32   ? napi_float32_array
                              : t.dtype == moe::DType::kI32 ? napi_int32_array
                                                            : napi_uint16_array;
  const char* want_name = t.dtype == moe::DType::kF32   ? "Float32Array"
                          : t.dtype == moe::DType::kI32 ? "Int32Array"
                                                        : "Uint16Array";
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != want)
    throw_type_error(env, n + ".data must be a " + std::string(want_name) + " for type '" +
                              moe::dtype_name(t.dtype) + "', got " + describe(data));
  auto ta = data.As<Napi::TypedArray>();
  if (double(ta.ElementLength()) != numel)
    throw_range_error(env, n + ".data has " + std::to_string(ta.ElementLength()) +
                               " elements but dims " + dims_string(t) + " need " +
                               std::to_string(int64_t(numel)));
  t.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  if (keep) keep->push_back(Napi::Persistent(ta.As<Napi::Object>()));
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

Napi::Object new_tensor(Napi::Env env, moe::DType t, const moe::TensorView& shape, moe::TensorView* view) {
  moe::TensorView v;
  v.dtype = t;
  size_t n = 1;
  Napi::Array jd = Napi::Array::New(env, size_t(shape.ndim));
  for (int i = 0; i < shape.ndim; ++i) {
    jd.Set(uint32_t(i), Napi::Number::New(env, double(shape.dims[i])));
    v.dims[v.ndim++] = shape.dims[i];
    n *= size_t(shape.dims[i]);
  }
  Napi::Value data;
  if (t == moe::DType::kF32) {
    auto a = Napi::Float32Array::New(env, n);
    v.data = a.Data();
    data = a;
  } else if (t == moe::DType::kI32) {
    auto a = Napi::Int32Array::New(env, n);
    v.data = a.Data();
    data = a;
  } else {
    auto a = Napi::Uint16Array::New(env, n);
    v.data = a.Data();
    data = a;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Napi::String::New(env, moe::dtype_name(t)));
  o.Set("data", data);
  o.Set("dims", jd);
  if (view) *view = v;
  return o;
}

Napi::Object new_tensor(Napi::Env env, moe::DType t, std::initializer_list<int64_t> dims,
                        moe::TensorView* view) {
  moe::TensorView shape;
  for (int64_t d : dims) shape.dims[shape.ndim++] = d;
  return new_tensor(env, t, shape, view);
}

bool async_flag(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() && !info[i].IsUndefined() ? to_bool(info[i], "async") : false;
}

void expect_args(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() < n)
    throw_type_error(info.Env(), std::string(fn) + " expects " + std::to_string(n) + " arguments, got " +
                                     std::to_string(info.Length()));
}

void check_same(Napi::Env env, const char* a, int64_t va, const char* b, int64_t vb) {
  if (va != vb)
    throw_range_error(env, std::string(a) + " (" + std::to_string(va) + ") must equal " + b + " (" +
                               std::to_string(vb) + ")");
}

}  // namespace moe_addon
