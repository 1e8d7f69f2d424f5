// N-API bindings for files the package reads in place (the GGUF loader, lib/hf/gguf.ts).
//
//   map_file(path)                              -> ArrayBuffer over the whole file, mapped private
//                                                  (host_memory.h: map_file_block); unmapped when the
//                                                  last holder (the buffer, a job, a view) is gone
//   advise_file(buffer, offset, length, advice) -> advice 'dontneed' drops the pages of a byte range
//                                                  from this process (they are read again from the
//                                                  page cache if touched: a loader calls it after
//                                                  packing a tensor so that RSS stays near one copy),
//                                                  'willneed' starts reading them ahead
// Both are synchronous: mmap and madvise return without reading the file.
#include <napi.h>

#include <string>

#ifndef _WIN32
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "args.h"
#include "host_memory.h"

namespace moe_addon {

namespace {

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 1, "map_file");
  if (!info[0].IsString() || info[0].As<Napi::String>().Utf8Value().empty())
    throw_type_error(env, "path must be a non-empty string, got " + describe(info[0]));
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.find('\0') != std::string::npos) throw_type_error(env, "path must not contain a NUL character");
  std::shared_ptr<HostBlock> block;
  std::string code, message;
  if (!map_file_block(path, &block, &code, &message)) throw_moe_error(env, code, message);
  return wrap_host_block(env, block);
}

Napi::Value AdviseFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "advise_file");
  if (!info[0].IsArrayBuffer()) throw_type_error(env, "buffer must be an ArrayBuffer from map_file, got " + describe(info[0]));
  std::shared_ptr<HostBlock> block = block_of(env, info[0]);
  if (!block || !block->mapped) throw_type_error(env, "buffer must be an ArrayBuffer from map_file (a mapped file), got another buffer");
  const int64_t offset = to_int(info[1], "offset", 0, int64_t(block->bytes));
  const int64_t length = to_int(info[2], "length", 0, int64_t(block->bytes) - offset);
  if (!info[3].IsString()) throw_type_error(env, "advice must be 'dontneed' or 'willneed', got " + describe(info[3]));
  const std::string advice = info[3].As<Napi::String>().Utf8Value();
  if (advice != "dontneed" && advice != "willneed") throw_type_error(env, "advice must be 'dontneed' or 'willneed', got " + describe(info[3]));
#ifndef _WIN32
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t base = reinterpret_cast<uintptr_t>(block->data);
  uintptr_t start = base + uintptr_t(offset), end = start + uintptr_t(length);
  // dontneed: whole pages inside the range only, so a neighbour's pages stay; willneed: every page it touches
  if (advice == "dontneed") {
    start = (start + page - 1) / page * page;
    end = end / page * page;
  } else {
    start = start / page * page;
    end = (end + page - 1) / page * page;
  }
  if (end > start) madvise(reinterpret_cast<void*>(start), end - start, advice == "dontneed" ? MADV_DONTNEED : MADV_WILLNEED);
#endif
  return env.Undefined();
}

}  // namespace

void InitFileBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("map_file", Napi::Function::New(env, MapFile, "map_file"));
  exports.Set("advise_file", Napi::Function::New(env, AdviseFile, "advise_file"));
}

}  // namespace moe_addon
