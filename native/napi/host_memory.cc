// N-API glue: host memory native code may use off the JS thread (host_memory.h).
#include "host_memory.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#ifndef _WIN32
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "args.h"

namespace moe_addon {

namespace {

// Marks the ArrayBuffers whose memory is a HostBlock (and whose wrap is a shared_ptr to it).
constexpr napi_type_tag kHostBlockTag = {0x6d6f652d6b65726eULL, 0x686f7374626c6b31ULL};

void finalize_backing(napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<HostBlock>*>(hint); }
void finalize_wrap(napi_env, void* data, void*) { delete static_cast<std::shared_ptr<HostBlock>*>(data); }

}  // namespace

HostBlock::~HostBlock() {
#ifndef _WIN32
  if (mapped) {
    if (data) munmap(data, bytes);
    return;
  }
#endif
  std::free(data);
}

bool map_file_block(const std::string& path, std::shared_ptr<HostBlock>* out, std::string* code, std::string* message) {
  const auto fail = [&](const char* c, const std::string& m) {
    *code = c;
    *message = path + ": " + m;
    return false;
  };
#ifdef _WIN32
  return fail("ERR_UNSUPPORTED", "memory-mapping files is not implemented on Windows");
#else
  const auto sys_error = [&](const char* what, int err) {
    return fail(err == ENOENT || err == ENOTDIR ? "ERR_FILE_NOT_FOUND" : err == ENOMEM ? "ERR_OUT_OF_MEMORY" : "ERR_FILE_READ",
                std::string(what) + " (" + std::strerror(err) + ")");
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("cannot open", errno);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return sys_error("cannot stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail("ERR_FILE_READ", S_ISDIR(st.st_mode) ? "cannot map: it is a directory, not a file" : "cannot map: it is not a regular file");
  }
  if (st.st_size <= 0) {
    ::close(fd);
    return fail("ERR_FILE_READ", "cannot map: the file is empty");
  }
  const size_t bytes = size_t(st.st_size);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file open
  if (p == MAP_FAILED) return sys_error("cannot map", err);
  auto b = std::make_shared<HostBlock>();
  b->data = p;
  b->bytes = bytes;
  b->mapped = true;
  *out = std::move(b);
  return true;
#endif
}

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
  return wrap_host_block(env, *block);
}

Napi::ArrayBuffer wrap_host_block(Napi::Env env, const std::shared_ptr<HostBlock>& block) {
  const size_t bytes = block->bytes;
  napi_value ab = nullptr;
  // The backing store keeps a reference: the memory lives as long as any ArrayBuffer holds it (a
  // transfer moves the backing store, and its finaliser, to the new owner).
  auto* backing = new std::shared_ptr<HostBlock>(block);
  napi_status st = napi_create_external_arraybuffer(env, block->data, bytes, finalize_backing, backing, &ab);
  if (st != napi_ok) {
    delete backing;
    throw_moe_error(env, "ERR_OUT_OF_MEMORY", "cannot create an ArrayBuffer of " + std::to_string(bytes) + " bytes");
  }
  // The object remembers its block, for block_of().
  auto* wrap = new std::shared_ptr<HostBlock>(block);
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
