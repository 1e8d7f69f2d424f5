// N-API glue: host memory that native code may use off the JS thread.
//
// The rule (README, "Memory and threads"): an async call never reads or writes memory it does not
// hold. Tensors the package allocated (every op's outputs, DeviceTensor.toHost(), ...) live in a
// HostBlock that backs an external ArrayBuffer: a job holds the block, so the memory outlives a
// transfer, a detach or a worker's teardown, and is used in place. Any other typed array (made in JS,
// a Buffer, a SharedArrayBuffer) is copied into a HostBlock before an async call returns, and an
// output of that kind is written back when the call settles, on the JS thread, if its buffer still
// holds it. Sync calls use every typed array in place: no JS runs while they do.
#pragma once
#include <napi.h>

#include <cstddef>
#include <memory>
#include <string>

#include "moe/status.h"

namespace moe_addon {

// malloc'd memory, zeroed, freed with the last holder; or a file mapped by map_file_block,
// unmapped with the last holder (an ArrayBuffer over it, a job reading it, a packed tensor's source).
struct HostBlock {
  void* data = nullptr;
  size_t bytes = 0;
  // A file mapping (munmap), not calloc'd memory (free).
  bool mapped = false;
  ~HostBlock();
};

// A zeroed block of `bytes` (ERR_OUT_OF_MEMORY when it cannot be had, never a V8 fatal error).
moe::Status alloc_host_block(size_t bytes, std::shared_ptr<HostBlock>* out);

// A new ArrayBuffer over a fresh block (tagged as the package's), and the block.
Napi::ArrayBuffer new_host_buffer(Napi::Env env, size_t bytes, std::shared_ptr<HostBlock>* block);

// A whole file mapped private and copy-on-write (PROT_READ|PROT_WRITE, MAP_PRIVATE): the file is never
// written, and a write through the mapping (an op's `out`, a JS store) lands in a private page
// instead of faulting. False when it cannot be mapped, with `code` (ERR_FILE_NOT_FOUND, ERR_FILE_READ,
// ERR_OUT_OF_MEMORY, ERR_UNSUPPORTED) and a message naming the file.
bool map_file_block(const std::string& path, std::shared_ptr<HostBlock>* out, std::string* code, std::string* message);

// An ArrayBuffer over an existing non-empty block, tagged so that block_of() finds the block: async
// jobs then hold the block and read it in place, as they do a package-allocated output.
Napi::ArrayBuffer wrap_host_block(Napi::Env env, const std::shared_ptr<HostBlock>& block);

// The block behind an ArrayBuffer the package made, or null for any other (or a detached) buffer.
std::shared_ptr<HostBlock> block_of(Napi::Env env, napi_value arraybuffer);

// The largest typed array this addon hands out, in elements (V8's limit on typed array lengths).
constexpr size_t kMaxTypedArrayElements = (size_t(1) << 32) - 1;

}  // namespace moe_addon
