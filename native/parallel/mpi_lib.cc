// Open MPI loaded with dlopen: see mpi_lib.h.
#include "mpi_lib.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "dl_symbols.h"

namespace moe {
namespace dist {

std::string MpiLib::error_string(int code) const {
  char buf[kMaxErrorString + 1] = {0};
  int len = 0;
  if (Error_string && Error_string(code, buf, &len) == kSuccess && len > 0) return std::string(buf, size_t(len));
  return "MPI error " + std::to_string(code);
}

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
    bool ok = dl_resolve(h, "ompi_mpi_comm_world", &m->comm_world, &missing);
    if (!ok) {
      reason = path + " is not Open MPI (no symbol ompi_mpi_comm_world); only Open MPI's ABI is supported";
      delete m;
      return;
    }
    auto r = [&](const char* name, auto* out) { return dl_resolve(h, name, out, &missing); };
    ok = r("MPI_Initialized", &m->Initialized) & r("MPI_Finalized", &m->Finalized) &
         r("MPI_Init_thread", &m->Init_thread) & r("MPI_Finalize", &m->Finalize) &
         r("MPI_Comm_rank", &m->Comm_rank) & r("MPI_Comm_size", &m->Comm_size) &
         r("MPI_Comm_set_errhandler", &m->Comm_set_errhandler) & r("MPI_Error_string", &m->Error_string) &
         r("MPI_Get_library_version", &m->Get_library_version) & r("MPI_Barrier", &m->Barrier) &
         r("MPI_Bcast", &m->Bcast) & r("MPI_Alltoall", &m->Alltoall) & r("MPI_Alltoallv", &m->Alltoallv) &
         r("MPI_Allreduce", &m->Allreduce) & r("ompi_mpi_byte", &m->t_byte) &
         r("ompi_mpi_uint16_t", &m->t_uint16) & r("ompi_mpi_int", &m->t_int) &
         r("ompi_mpi_float", &m->t_float) & r("ompi_mpi_double", &m->t_double) &
         r("ompi_mpi_op_sum", &m->op_sum) & r("ompi_mpi_op_max", &m->op_max) &
         r("ompi_mpi_op_min", &m->op_min) & r("ompi_mpi_errors_return", &m->errors_return);
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
