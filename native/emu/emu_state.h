// moe-kernels CUDA emulator: state shared by its translation units (private to native/emu):
// emu_worker.cc (the execution model: blocks, fibers, barriers, warp collectives, launch) and
// emu_shims.cc (the cuda_runtime_api.h host functions). Not for kernels or tests: they use emu.h.
#pragma once
#include <atomic>
#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <string>

#include "emu.h"

// cudaStream_t is `CUstream_st*`; the emulator runs everything at launch time, so a stream is only
// a handle.
struct CUevent_st {
  std::chrono::steady_clock::time_point at;  // when cudaEventRecord ran (work is done by then)
};
struct CUstream_st {
  int unused;
};

namespace moe_emu {

// ---- limits of the emulated device (the CUDA programming guide's table for cc 8.x / 9.0) --------
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimXY = 1024;
constexpr unsigned kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimX = 2147483647u;
constexpr unsigned kMaxGridDimYZ = 65535;
constexpr size_t kStaticSharedLimit = 48 * 1024;       // static __shared__ per block
constexpr size_t kDefaultSharedLimit = 48 * 1024;      // static + dynamic without the opt-in
constexpr size_t kDefaultSharedOptin = 99 * 1024;      // sm_86 / sm_89, the smallest shipped target
constexpr size_t kMaxSharedOptin = 227 * 1024;         // sm_90, the largest (MOE_EMU_SMEM_OPTIN cap)
constexpr int kEmulatedSmCount = 8;                    // small, so grid-stride kernels still loop
// ---- emulator bookkeeping --------------------------------------------------------------------------
constexpr size_t kRedzoneBytes = 128;                  // canary fence around each shared array
constexpr size_t kMinSharedAlign = 16;                 // what ldmatrix and cp.async need
constexpr size_t kArenaBytes = 512 * 1024;             // kMaxSharedOptin + 48 KB static + redzones
static_assert(kMaxSharedOptin + kStaticSharedLimit + 64 * kRedzoneBytes <= kArenaBytes,
              "the arena holds the largest block with room for 64 shared arrays' redzones");
constexpr size_t kDefaultStackKB = 128;
constexpr size_t kDeviceAllocAlign = 256;              // cudaMalloc's alignment guarantee
constexpr unsigned char kPoisonByte = 0xFF;            // NaN as f32, f16 and bf16; -1 as int
constexpr unsigned char kCanaryLo = 0xBB, kCanaryHi = 0x7F;  // 0x7FBB per 16 bits: NaN as bf16, f16, f32
constexpr int kLdmatrixRows = 8;                       // rows of one m8n8 matrix
constexpr int kLdmatrixRowBytes = 16;                  // 8 x b16
constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
constexpr int kCpAsyncBytes = 16;

// printf-style formatting into a std::string.
std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));

// ---- configuration (environment variables read once) -----------------------------------------
struct Config {
  std::atomic<int> schedule{int(Schedule::kRoundRobin)};
  std::atomic<uint64_t> seed{1};
  std::atomic<int> threads{1};
  std::atomic<bool> racecheck{false};
  size_t stack_bytes = kDefaultStackKB * 1024;
  size_t smem_optin = kDefaultSharedOptin;
  std::once_flag env_once;
};
Config& config();

// Per-function attributes set with cudaFuncSetAttribute.
extern std::mutex g_attr_mu;
std::map<const void*, int>& max_dynamic_smem_attr();

// The last error seen on this host thread: code for cudaGetLastError, message for error_string.
extern thread_local cudaError_t t_last_error;
void set_message(cudaError_t code, std::string msg);
cudaError_t host_error(cudaError_t code, std::string msg);  // a failed host call

}  // namespace moe_emu
