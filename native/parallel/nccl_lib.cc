// NCCL loaded with dlopen: see nccl_lib.h.
#include "nccl_lib.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "dl_symbols.h"

namespace moe {
namespace dist {

std::string NcclLib::error_string(ncclResult_t r) const {
  const char* s = GetErrorString ? GetErrorString(r) : nullptr;
  return s ? std::string(s) : "NCCL error " + std::to_string(r);
}

const NcclLib* load_nccl(std::string* why) {
  static std::once_flag once;
  static NcclLib* lib = nullptr;
  static std::string reason;
  std::call_once(once, [] {
    const char* env = std::getenv("MOE_NCCL_LIBRARY");
    const std::string path = env && *env ? env : "libnccl.so.2";
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      reason = "cannot load " + path + " (" + (e ? e : "unknown error") +
               "): install NCCL 2 (e.g. the nvidia-nccl-cu12 wheel or libnccl2) or set MOE_NCCL_LIBRARY";
      return;
    }
    auto* n = new NcclLib();  // never freed: the library stays loaded
    std::string missing;
    const bool ok = dl_resolve(h, "ncclGetVersion", &n->GetVersion, &missing) &
                    dl_resolve(h, "ncclGetErrorString", &n->GetErrorString, &missing) &
                    dl_resolve(h, "ncclGetUniqueId", &n->GetUniqueId, &missing) &
                    dl_resolve(h, "ncclCommInitRank", &n->CommInitRank, &missing) &
                    dl_resolve(h, "ncclCommDestroy", &n->CommDestroy, &missing) &
                    dl_resolve(h, "ncclCommAbort", &n->CommAbort, &missing) &
                    dl_resolve(h, "ncclCommGetAsyncError", &n->CommGetAsyncError, &missing) &
                    dl_resolve(h, "ncclSend", &n->Send, &missing) & dl_resolve(h, "ncclRecv", &n->Recv, &missing) &
                    dl_resolve(h, "ncclGroupStart", &n->GroupStart, &missing) &
                    dl_resolve(h, "ncclGroupEnd", &n->GroupEnd, &missing) &
                    dl_resolve(h, "ncclAllReduce", &n->AllReduce, &missing);
    if (!ok) {
      reason = path + " lacks " + missing + " (NCCL >= 2.7 is needed for ncclSend/ncclRecv)";
      delete n;
      return;
    }
    if (n->GetVersion(&n->version) != 0) n->version = 0;
    lib = n;
  });
  if (!lib && why) *why = reason;
  return lib;
}

ncclResult_t nccl_all_to_all_v(const NcclLib& lib, ncclComm_t comm, int nranks, int type, size_t elem_bytes,
                               const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                               const int64_t* recv_counts, const int64_t* recv_displs, ncclStream_t stream,
                               std::string* why) {
  ncclResult_t r = lib.GroupStart();
  if (r != 0) {
    if (why) *why = "ncclGroupStart: " + lib.error_string(r);
    return r;
  }
  ncclResult_t first = 0;
  for (int p = 0; p < nranks && first == 0; ++p) {
    // zero-count pairs are skipped on both sides, so they match
    if (send_counts[p] > 0) {
      r = lib.Send(static_cast<const char*>(send) + size_t(send_displs[p]) * elem_bytes, size_t(send_counts[p]), type, p,
                   comm, stream);
      if (r != 0 && first == 0) {
        first = r;
        if (why) *why = "ncclSend to rank " + std::to_string(p) + ": " + lib.error_string(r);
      }
    }
    if (recv_counts[p] > 0 && first == 0) {
      r = lib.Recv(static_cast<char*>(recv) + size_t(recv_displs[p]) * elem_bytes, size_t(recv_counts[p]), type, p, comm,
                   stream);
      if (r != 0) {
        first = r;
        if (why) *why = "ncclRecv from rank " + std::to_string(p) + ": " + lib.error_string(r);
      }
    }
  }
  r = lib.GroupEnd();  // always closes the group, also after an error
  if (first == 0 && r != 0 && why) *why = "ncclGroupEnd: " + lib.error_string(r);
  return first != 0 ? first : r;
}

Status NcclComm::create(const NcclLib& lib, const NcclUniqueId& id, int nranks, int rank, std::unique_ptr<NcclComm>* out) {
  ncclComm_t c = nullptr;
  const ncclResult_t r = lib.CommInitRank(&c, nranks, id, rank);
  if (r != 0)
    return Status::internal("ncclCommInitRank (rank " + std::to_string(rank) + " of " + std::to_string(nranks) +
                            ") failed: " + lib.error_string(r));
  out->reset(new NcclComm(lib, c, nranks, rank));
  return Status::ok();
}

NcclComm::~NcclComm() {
  if (comm_ && !aborted_.load()) lib_.CommDestroy(comm_);
}

void NcclComm::abort() {
  if (!aborted_.exchange(true) && comm_) lib_.CommAbort(comm_);
}

Status NcclComm::all_to_all_v(const void* send, const int64_t* send_bytes, const int64_t* send_offsets, void* recv,
                              const int64_t* recv_bytes, const int64_t* recv_offsets, void* queue) {
  if (aborted_.load()) return Status::internal("the NCCL communicator was aborted after a collective timed out");
  std::string why;
  const ncclResult_t r = nccl_all_to_all_v(lib_, comm_, size_, kNcclUint8, 1, send, send_bytes, send_offsets, recv, recv_bytes,
                                           recv_offsets, queue, &why);
  if (r != 0) return Status::internal("NCCL all-to-all-v (rank " + std::to_string(rank_) + "): " + why);
  ncclResult_t async = 0;
  if (lib_.CommGetAsyncError(comm_, &async) == 0 && async != 0)
    return Status::internal("NCCL communicator failed (rank " + std::to_string(rank_) + "): " + lib_.error_string(async));
  return Status::ok();
}

}  // namespace dist
}  // namespace moe
