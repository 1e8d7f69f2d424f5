// N-API glue: host memory native code may use off the JS thread (host_memory.h).
#include "host_memory.h"

#include <cstdlib>
#include <string>

#include "args.h"

namespace moe_addon {

namespace {

// Marks the ArrayBuffers whose memory is a HostBlock (and whose wrap is a shared_ptr to it).
constexpr napi_type_tag kHostBlockTag = {0x6d6f652d6b65726eULL, 0x686f7374626c6b31ULL};

void finalize_backing(napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<HostBlock>*>(hint); }
void finalize_wrap(napi_env, void* data, void*) { delete static_cast<std::shared_ptr<HostBlock>*>(data); }

}  // namespace

HostBlock::~HostBlock() { std::free(data); }

moe::Status alloc_host_block(size_t bytes, std::shared_ptr<HostBlock>* out) {
  auto b = std::make_shared<HostBlock>();
  if (bytes > 0) {
    b->data = std::calloc(1, bytes);
    if (!b->data) return moe::Status::oom("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  }
  b->bytes = bytes;
  *out = std::move(b);
  return moe::Status::ok();
}

Napi::ArrayBuffer new_host_buffer(Napi::Env env, size_t bytes, std::shared_ptr<HostBlock>* block) {
  if (bytes == 0) {  // nothing to hold: a plain empty buffer
    block->reset();
    return Napi::ArrayBuffer::New(env, 0);
  }
  throw_if_error(env, alloc_host_block(bytes, block));
  napi_value ab = nullptr;
  // The backing store keeps a reference: the memory lives as long as any ArrayBuffer holds it (a
  // transfer moves the backing store, and its finaliser, to the new owner).
  auto* backing = new std::shared_ptr<HostBlock>(*block);
  napi_status st = napi_create_external_arraybuffer(env, (*block)->data, bytes, finalize_backing, backing, &ab);
  if (st != napi_ok) {
    delete backing;
    throw_moe_error(env, "ERR_OUT_OF_MEMORY", "cannot create an ArrayBuffer of " + std::to_string(bytes) + " bytes");
  }
  // The object remembers its block, for block_of().
  auto* wrap = new std::shared_ptr<HostBlock>(*block);
  if (napi_type_tag_object(env, ab, &kHostBlockTag) != napi_ok ||
      napi_wrap(env, ab, wrap, finalize_wrap, nullptr, nullptr) != napi_ok) {
    delete wrap;
    throw_moe_error(env, "ERR_INTERNAL", "cannot tag an ArrayBuffer of the package");
  }
  return Napi::ArrayBuffer(env, ab);
}

std::shared_ptr<HostBlock> block_of(Napi::Env env, napi_value arraybuffer) {
  bool tagged = false;
  if (napi_check_object_type_tag(env, arraybuffer, &kHostBlockTag, &tagged) != napi_ok || !tagged) return nullptr;
  bool detached = false;
  if (napi_is_detached_arraybuffer(env, arraybuffer, &detached) != napi_ok || detached) return nullptr;
  void* p = nullptr;
  if (napi_unwrap(env, arraybuffer, &p) != napi_ok || !p) return nullptr;
  return *static_cast<std::shared_ptr<HostBlock>*>(p);
}

}  // namespace moe_addon
