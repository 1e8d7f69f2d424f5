// test/emu: a tiny test framework for the emulator's C++ tests. TEST(name) registers a case;
// CHECK* record a failure and let the case go on; main (check.cc) runs every case (arguments: `word`
// keeps only cases whose name contains a word, `-word` drops those containing it), prints one line
// per case and a final "N passed, M failed", and exits non-zero when anything failed.
#pragma once
#include <string>
#include <vector>

namespace emu_test {

using TestFn = void (*)();
void register_test(const char* name, TestFn fn);
void fail(const char* file, int line, const std::string& what);
std::string describe(double v);

struct Registrar {
  Registrar(const char* name, TestFn fn) { register_test(name, fn); }
};

}  // namespace emu_test

#define TEST(name)                                                        \
  static void emu_test_##name();                                          \
  static ::emu_test::Registrar emu_test_reg_##name(#name, emu_test_##name); \
  static void emu_test_##name()

#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) ::emu_test::fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define CHECK_EQ(a, b)                                                                        \
  do {                                                                                        \
    const auto emu_a_ = (a);                                                                  \
    const auto emu_b_ = (b);                                                                  \
    if (!(emu_a_ == emu_b_))                                                                  \
      ::emu_test::fail(__FILE__, __LINE__,                                                    \
                       "CHECK_EQ(" #a ", " #b "): " + ::emu_test::describe(double(emu_a_)) + \
                           " vs " + ::emu_test::describe(double(emu_b_)));                    \
  } while (0)

// Expects a cudaError_t expression to be cudaSuccess; prints the emulator's message otherwise.
#define CHECK_OK(expr)                                                                          \
  do {                                                                                          \
    const cudaError_t emu_e_ = (expr);                                                          \
    if (emu_e_ != cudaSuccess)                                                                  \
      ::emu_test::fail(__FILE__, __LINE__, std::string(#expr " failed: ") + moe_error_string(emu_e_)); \
  } while (0)

// Expects a specific error code and a message containing `needle`.
#define CHECK_ERR(expr, code, needle)                                                          \
  do {                                                                                         \
    const cudaError_t emu_e_ = (expr);                                                         \
    const std::string emu_m_ = moe_error_string(emu_e_);                                       \
    if (emu_e_ != (code) || emu_m_.find(needle) == std::string::npos)                          \
      ::emu_test::fail(__FILE__, __LINE__,                                                     \
                       std::string(#expr ": expected " #code " mentioning '") + (needle) +     \
                           "', got " + cudaGetErrorName(emu_e_) + ": " + emu_m_);              \
  } while (0)
