// Open MPI, loaded at run time: the few MPI functions the process group uses, declared here and
// looked up with dlsym in libmpi.so.40, the way vLLM's pynccl declares NCCL. The addon then needs
// no MPI to build or to load; a process group on a machine without Open MPI fails with a reason.
//
// Open MPI's handles are pointers to global objects (MPI_COMM_WORLD is &ompi_mpi_comm_world,
// MPI_INT is &ompi_mpi_int, ...), so the constants are dlsym'd addresses too. MPICH and its ABI
// (integer handles) are not supported: the loader says so when it finds no ompi_mpi_comm_world.
//
// No N-API in here. Every function is called from one thread only (the process group's comm
// thread), so the library is initialised with MPI_THREAD_SERIALIZED.
#pragma once
#include <string>

namespace moe {
namespace dist {

using MpiHandle = void*;  // MPI_Comm, MPI_Datatype, MPI_Op, MPI_Errhandler: all pointers in Open MPI

struct MpiLib {
  // functions (MPI standard signatures with the handles as void*)
  int (*Initialized)(int* flag) = nullptr;
  int (*Finalized)(int* flag) = nullptr;
  int (*Init_thread)(int* argc, char*** argv, int required, int* provided) = nullptr;
  int (*Finalize)() = nullptr;
  int (*Comm_rank)(MpiHandle comm, int* rank) = nullptr;
  int (*Comm_size)(MpiHandle comm, int* size) = nullptr;
  int (*Comm_set_errhandler)(MpiHandle comm, MpiHandle errhandler) = nullptr;
  int (*Error_string)(int code, char* s, int* len) = nullptr;
  int (*Get_library_version)(char* s, int* len) = nullptr;
  int (*Barrier)(MpiHandle comm) = nullptr;
  int (*Bcast)(void* buf, int count, MpiHandle type, int root, MpiHandle comm) = nullptr;
  int (*Alltoall)(const void* sbuf, int scount, MpiHandle stype, void* rbuf, int rcount, MpiHandle rtype,
                  MpiHandle comm) = nullptr;
  int (*Alltoallv)(const void* sbuf, const int* scounts, const int* sdispls, MpiHandle stype, void* rbuf,
                   const int* rcounts, const int* rdispls, MpiHandle rtype, MpiHandle comm) = nullptr;
  int (*Allreduce)(const void* sbuf, void* rbuf, int count, MpiHandle type, MpiHandle op, MpiHandle comm) = nullptr;

  // predefined handles (addresses of Open MPI's global objects)
  MpiHandle comm_world = nullptr;
  MpiHandle t_byte = nullptr, t_uint16 = nullptr, t_int = nullptr, t_float = nullptr, t_double = nullptr;
  MpiHandle op_sum = nullptr, op_max = nullptr, op_min = nullptr;
  MpiHandle errors_return = nullptr;

  static constexpr int kSuccess = 0;            // MPI_SUCCESS
  static constexpr int kThreadSerialized = 2;   // MPI_THREAD_SERIALIZED
  static constexpr int kMaxErrorString = 256;   // MPI_MAX_ERROR_STRING (Open MPI)

  // The text of an MPI error code ("MPI error <code>" when the library cannot say).
  std::string error_string(int code) const;
};

// The library, loaded on first use (libmpi.so.40, or the path in MOE_MPI_LIBRARY); nullptr with
// the reason in *why when it cannot be loaded or is not Open MPI. Thread-safe; loaded once.
const MpiLib* load_mpi(std::string* why);

}  // namespace dist
}  // namespace moe
