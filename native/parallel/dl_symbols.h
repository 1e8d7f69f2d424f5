// Resolving the symbols of a library loaded with dlopen (mpi_lib.cc, nccl_lib.cc): each loader
// resolves its whole table with `&` (not `&&`, so every symbol is tried) and reports the first
// name that was missing.
#pragma once
#include <dlfcn.h>

#include <string>
#include <type_traits>

namespace moe {
namespace dist {

// *out = the address of `name` in lib, as a function pointer type or as void* (an object the
// library exports); false, and the first missing name kept in *missing, when it has none.
template <class T>
bool dl_resolve(void* lib, const char* name, T* out, std::string* missing) {
  void* p = dlsym(lib, name);
  if (!p) {
    if (missing->empty()) *missing = name;
    return false;
  }
  if constexpr (std::is_same_v<T, void*>) *out = p;
  else *out = reinterpret_cast<T>(p);
  return true;
}

}  // namespace dist
}  // namespace moe
