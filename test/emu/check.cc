// test/emu: the runner of the emulator's C++ tests (see check.h).
#include "check.h"

#include <chrono>
#include <cstdio>
#include <cstring>

namespace emu_test {
namespace {
struct Case {
  const char* name;
  TestFn fn;
};
std::vector<Case>& cases() {
  static std::vector<Case> c;
  return c;
}
std::vector<std::string> g_failures;
constexpr size_t kMaxReportedFailures = 8;  // per case: the first few say enough
}  // namespace

void register_test(const char* name, TestFn fn) { cases().push_back(Case{name, fn}); }

void fail(const char* file, int line, const std::string& what) {
  const char* base = std::strrchr(file, '/');
  g_failures.push_back(std::string(base ? base + 1 : file) + ":" + std::to_string(line) + ": " + what);
}

std::string describe(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace emu_test

// Arguments select cases by name: `word` runs the cases containing it (any of them, if several),
// `-word` skips the cases containing it.
bool selected(const char* name, int argc, char** argv) {
  bool any_include = false, included = false;
  for (int i = 1; i < argc; ++i) {
    if (argv[i][0] == '-') {
      if (std::strstr(name, argv[i] + 1)) return false;
    } else {
      any_include = true;
      included = included || std::strstr(name, argv[i]) != nullptr;
    }
  }
  return !any_include || included;
}

int main(int argc, char** argv) {
  using namespace emu_test;
  int passed = 0, failed = 0;
  for (const Case& c : cases()) {
    if (!selected(c.name, argc, argv)) continue;
    g_failures.clear();
    const auto t0 = std::chrono::steady_clock::now();
    c.fn();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (g_failures.empty()) {
      ++passed;
      std::printf("ok   %-40s %8.1f ms\n", c.name, ms);
    } else {
      ++failed;
      std::printf("FAIL %-40s %8.1f ms\n", c.name, ms);
      for (size_t i = 0; i < g_failures.size() && i < kMaxReportedFailures; ++i)
        std::printf("     %s\n", g_failures[i].c_str());
      if (g_failures.size() > kMaxReportedFailures)
        std::printf("     ... and %zu more\n", g_failures.size() - kMaxReportedFailures);
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
