// NCCL, loaded at run time (libnccl.so.2, or the path in MOE_NCCL_LIBRARY), as vLLM's pynccl does:
// the few functions used are declared here with NCCL's ABI (nccl.h is not needed to build), so
// every build compiles this file and a machine without NCCL still loads the addon. The all-to-all-v
// of rows that expert parallelism needs is built from grouped ncclSend/ncclRecv.
//
// NOT VERIFIED: no machine of this project has a GPU or NCCL. The declarations follow nccl.h of
// NCCL 2.x; the loader and the "absent" path are what the tests here exercise.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "moe/backend.h"

namespace moe {
namespace dist {

using ncclComm_t = void*;
using ncclStream_t = void*;  // cudaStream_t
using ncclResult_t = int;    // ncclSuccess = 0
struct NcclUniqueId {
  char internal[128];        // NCCL_UNIQUE_ID_BYTES
};
enum NcclDataType : int { kNcclInt8 = 0, kNcclUint8 = 1, kNcclInt32 = 2, kNcclFloat16 = 6, kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclBfloat16 = 9 };
enum NcclRedOp : int { kNcclSum = 0, kNcclProd = 1, kNcclMax = 2, kNcclMin = 3 };

struct NcclLib {
  ncclResult_t (*GetVersion)(int* version) = nullptr;
  const char* (*GetErrorString)(ncclResult_t r) = nullptr;
  ncclResult_t (*GetUniqueId)(NcclUniqueId* id) = nullptr;
  ncclResult_t (*CommInitRank)(ncclComm_t* comm, int nranks, NcclUniqueId id, int rank) = nullptr;
  ncclResult_t (*CommDestroy)(ncclComm_t comm) = nullptr;
  ncclResult_t (*CommAbort)(ncclComm_t comm) = nullptr;
  ncclResult_t (*CommGetAsyncError)(ncclComm_t comm, ncclResult_t* r) = nullptr;
  ncclResult_t (*Send)(const void* buf, size_t count, int type, int peer, ncclComm_t comm, ncclStream_t s) = nullptr;
  ncclResult_t (*Recv)(void* buf, size_t count, int type, int peer, ncclComm_t comm, ncclStream_t s) = nullptr;
  ncclResult_t (*GroupStart)() = nullptr;
  ncclResult_t (*GroupEnd)() = nullptr;
  ncclResult_t (*AllReduce)(const void* sbuf, void* rbuf, size_t count, int type, int op, ncclComm_t comm,
                            ncclStream_t s) = nullptr;
  int version = 0;

  std::string error_string(ncclResult_t r) const;
};

// The library, loaded once; nullptr with the reason in *why when it is absent or incomplete.
const NcclLib* load_nccl(std::string* why);

// All-to-all-v of `type` elements (elem_bytes each) on the device: to each peer p, send_counts[p]
// elements from send + send_displs[p]; from each, recv_counts[p] into recv + recv_displs[p]. One
// NCCL group of send/recv pairs, enqueued on `stream` (the caller synchronises). Returns 0 or the
// NCCL error, its text in *why.
ncclResult_t nccl_all_to_all_v(const NcclLib& lib, ncclComm_t comm, int nranks, int type, size_t elem_bytes,
                               const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                               const int64_t* recv_counts, const int64_t* recv_displs, ncclStream_t stream,
                               std::string* why);

// One NCCL communicator, as the transport of a backend's all_to_all op (moe::DeviceComm): its
// transfers go on the stream the backend gives, in order with the backend's ops. Made by every rank
// with the same unique id (ncclCommInitRank, which waits for all of them), on the thread and device
// the backend's ops run on. ncclCommDestroy when the last holder lets go.
class NcclComm : public DeviceComm {
 public:
  static Status create(const NcclLib& lib, const NcclUniqueId& id, int nranks, int rank, std::unique_ptr<NcclComm>* out);
  ~NcclComm() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Status all_to_all_v(const void* send, const int64_t* send_bytes, const int64_t* send_offsets, void* recv,
                      const int64_t* recv_bytes, const int64_t* recv_offsets, void* queue) override;
  // ncclCommAbort (once; it also frees the communicator, so the destructor then leaves it alone).
  void abort() override;

 private:
  NcclComm(const NcclLib& lib, ncclComm_t c, int nranks, int rank) : lib_(lib), comm_(c), size_(nranks), rank_(rank) {}
  const NcclLib& lib_;
  ncclComm_t comm_;
  int size_, rank_;
  std::atomic<bool> aborted_{false};
};

}  // namespace dist
}  // namespace moe
