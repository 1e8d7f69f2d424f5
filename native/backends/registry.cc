// moe-kernels: the registry of the backends of this build (moe/backend.h). The only file outside a
// backend's folder that knows which backends exist; each folder exports one instance().
#include <string>
#include <vector>

#include "moe/backend.h"

namespace moe {
namespace cpu {
Backend& instance();  // native/backends/cpu/cpu_backend.cc
}
namespace cuda {
Backend& instance();  // native/backends/cuda/cuda_backend.cu, or backend_none.cc in a build without CUDA
}

const std::vector<Backend*>& all_backends() {
  static const std::vector<Backend*> all = {&cpu::instance(), &cuda::instance()};
  return all;
}

Backend& cpu_backend() { return cpu::instance(); }

Backend* find_backend(const std::string& name) {
  for (Backend* b : all_backends())
    if (b->capabilities().name == name && b->capabilities().compiled) return b;
  return nullptr;
}

void shutdown_backends() {
  for (Backend* b : all_backends()) b->executor().shutdown();
}

}  // namespace moe
