// Open MPI loaded with dlopen: see mpi_lib.h.
#include "mpi_lib.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

namespace moe {
namespace dist {

std::string MpiLib::error_string(int code) const {
  char buf[kMaxErrorString + 1] = {0};
  int len = 0;
  if (Error_string && Error_string(code, buf, &len) == kSuccess && len > 0) return std::string(buf, size_t(len));
  return "MPI error " + std::to_string(code);
}

namespace {

template <class F>
bool sym(void* lib, const char* name, F* out, std::string* missing) {
  void* p = dlsym(lib, name);
  if (!p) {
    if (missing->empty()) *missing = name;
    return false;
  }
  *out = reinterpret_cast<F>(p);
  return true;
}

bool obj(void* lib, const char* name, MpiHandle* out, std::string* missing) {
  void* p = dlsym(lib, name);
  if (!p) {
    if (missing->empty()) *missing = name;
    return false;
  }
  *out = p;
  return true;
}

}  // namespace

const MpiLib* load_mpi(std::string* why) {
  static std::once_flag once;
  static MpiLib* lib = nullptr;
  static std::string reason;
  std::call_once(once, [] {
    const char* env = std::getenv("MOE_MPI_LIBRARY");
    const std::string path = env && *env ? env : "libmpi.so.40";
    // RTLD_GLOBAL: Open MPI's own plugins (mca_*.so) are dlopened by it and resolve libmpi's
    // symbols globally, as mpi4py does.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
      const char* e = dlerror();
      reason = "cannot load " + path + " (" + (e ? e : "unknown error") +
               "): install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or set MOE_MPI_LIBRARY";
      return;
    }
    auto* m = new MpiLib();  // never freed: the library stays loaded for the life of the process
    std::string missing;
    bool ok = obj(h, "ompi_mpi_comm_world", &m->comm_world, &missing);
    if (!ok) {
      reason = path + " is not Open MPI (no symbol ompi_mpi_comm_world); only Open MPI's ABI is supported";
      delete m;
      return;
    }
    ok = sym(h, "MPI_Initialized", &m->Initialized, &missing) & sym(h, "MPI_Finalized", &m->Finalized, &missing) &
         sym(h, "MPI_Init_thread", &m->Init_thread, &missing) & sym(h, "MPI_Finalize", &m->Finalize, &missing) &
         sym(h, "MPI_Comm_rank", &m->Comm_rank, &missing) & sym(h, "MPI_Comm_size", &m->Comm_size, &missing) &
         sym(h, "MPI_Comm_set_errhandler", &m->Comm_set_errhandler, &missing) &
         sym(h, "MPI_Error_string", &m->Error_string, &missing) &
         sym(h, "MPI_Get_library_version", &m->Get_library_version, &missing) &
         sym(h, "MPI_Barrier", &m->Barrier, &missing) & sym(h, "MPI_Bcast", &m->Bcast, &missing) &
         sym(h, "MPI_Alltoall", &m->Alltoall, &missing) & sym(h, "MPI_Alltoallv", &m->Alltoallv, &missing) &
         sym(h, "MPI_Allreduce", &m->Allreduce, &missing) & obj(h, "ompi_mpi_byte", &m->t_byte, &missing) &
         obj(h, "ompi_mpi_uint16_t", &m->t_uint16, &missing) & obj(h, "ompi_mpi_int", &m->t_int, &missing) &
         obj(h, "ompi_mpi_float", &m->t_float, &missing) & obj(h, "ompi_mpi_double", &m->t_double, &missing) &
         obj(h, "ompi_mpi_op_sum", &m->op_sum, &missing) & obj(h, "ompi_mpi_op_max", &m->op_max, &missing) &
         obj(h, "ompi_mpi_op_min", &m->op_min, &missing) &
         obj(h, "ompi_mpi_errors_return", &m->errors_return, &missing);
    if (!ok) {
      reason = path + " lacks " + missing + " (an Open MPI this package does not know)";
      delete m;
      return;
    }
    lib = m;
  });
  if (!lib && why) *why = reason;
  return lib;
}

}  // namespace dist
}  // namespace moe
