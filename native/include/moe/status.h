// moe-kernels: status values returned by every backend op.
// The kernel library never throws across its C++ API and never exits: an op returns a Status,
// and the addon turns a non-OK status into a JS error carrying `code`.
#pragma once
#include <string>
#include <utility>

namespace moe {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // shapes or values the op cannot accept
  kOutOfMemory = 2,      // an allocation failed
  kUnsupported = 3,      // dtype/backend combination not built
  kInternal = 4,         // a bug: an invariant the op relies on was broken
};

inline const char* status_code_name(StatusCode c) {
  switch (c) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "ERR_INVALID_ARGUMENT";
    case StatusCode::kOutOfMemory: return "ERR_OUT_OF_MEMORY";
    case StatusCode::kUnsupported: return "ERR_UNSUPPORTED";
    case StatusCode::kInternal: return "ERR_INTERNAL";
  }
  return "ERR_INTERNAL";
}

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return Status(); }
  static Status invalid(std::string m) { return Status(StatusCode::kInvalidArgument, std::move(m)); }
  static Status oom(std::string m) { return Status(StatusCode::kOutOfMemory, std::move(m)); }
  static Status unsupported(std::string m) { return Status(StatusCode::kUnsupported, std::move(m)); }
  static Status internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

#define MOE_RETURN_IF_ERROR(expr)          \
  do {                                     \
    ::moe::Status _moe_st = (expr);        \
    if (!_moe_st.is_ok()) return _moe_st;  \
  } while (0)

}  // namespace moe
