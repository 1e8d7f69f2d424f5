// moe-kernels CUDA emulator: the cuda_runtime_api.h host functions that launchers and tests use, on
// host memory: memory (cudaMalloc poisons what it hands out), copies, streams and events (the
// emulator runs work when it is issued, so they are handles and timestamps), device attributes of
// the emulated device, errors. The execution model itself is emu_worker.cc.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "emu.h"
#include "emu_state.h"

using moe_emu::host_error;

namespace {
size_t g_optin() { return moe_emu::config().smem_optin; }
}  // namespace

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = moe_emu::t_last_error;
  moe_emu::t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return moe_emu::t_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorIllegalInstruction: return "cudaErrorIllegalInstruction";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "unknown error";
  }
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (!ptr) return host_error(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  const size_t rounded = (size + moe_emu::kDeviceAllocAlign - 1) / moe_emu::kDeviceAllocAlign *
                         moe_emu::kDeviceAllocAlign;
  void* p = std::aligned_alloc(moe_emu::kDeviceAllocAlign, rounded);
  if (!p) return host_error(cudaErrorMemoryAllocation, moe_emu::fmt("cudaMalloc: %zu bytes", size));
  std::memset(p, moe_emu::kPoisonByte, rounded);  // device memory starts out as garbage: make it NaN
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) { return cudaMalloc(ptr, size); }
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) { return cudaMalloc(ptr, size); }
cudaError_t cudaFreeHost(void* ptr) { return cudaFree(ptr); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  if (count && (!dst || !src)) return host_error(cudaErrorInvalidValue, "cudaMemcpy: null pointer");
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count && !ptr) return host_error(cudaErrorInvalidValue, "cudaMemset: null pointer");
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  return cudaMemset(ptr, value, count);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (!stream) return host_error(cudaErrorInvalidValue, "cudaStreamCreate: null result pointer");
  *stream = new CUstream_st{0};
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) { return cudaStreamCreate(stream); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete stream;
  return cudaSuccess;
}

// Stream-ordered allocation: the emulator runs every operation when it is issued, so these are the
// plain forms.
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t) { return cudaMalloc(ptr, size); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return cudaFree(ptr); }

// Events: a host timestamp taken when recorded (everything issued before it has run by then).
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (!event) return host_error(cudaErrorInvalidValue, "cudaEventCreate: null result pointer");
  *event = new CUevent_st{std::chrono::steady_clock::now()};
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (!event) return host_error(cudaErrorInvalidValue, "cudaEventRecord: null event");
  event->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
// Work completes when it is issued: a recorded event is always reached.
cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!event) return host_error(cudaErrorInvalidValue, "cudaEventQuery: null event");
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms || !start || !end) return host_error(cudaErrorInvalidValue, "cudaEventElapsedTime: null argument");
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (!func) return host_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: null function");
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > g_optin())
      return host_error(cudaErrorInvalidValue,
                        moe_emu::fmt("cudaFuncSetAttribute: MaxDynamicSharedMemorySize %d is not in "
                                     "[0, %zu]",
                                     value, g_optin()));
    std::lock_guard<std::mutex> lock(moe_emu::g_attr_mu);
    moe_emu::max_dynamic_smem_attr()[func] = value;
  }
  return cudaSuccess;  // other attributes (carveout, ...) are performance hints
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (!value) return host_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: null result pointer");
  if (device != 0) return host_error(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: the emulator has device 0 only");
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = int(moe_emu::kMaxThreadsPerBlock); break;
    case cudaDevAttrMaxBlockDimX:
    case cudaDevAttrMaxBlockDimY: *value = int(moe_emu::kMaxBlockDimXY); break;
    case cudaDevAttrMaxBlockDimZ: *value = int(moe_emu::kMaxBlockDimZ); break;
    case cudaDevAttrMaxGridDimX: *value = int(moe_emu::kMaxGridDimX); break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ: *value = int(moe_emu::kMaxGridDimYZ); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(moe_emu::kDefaultSharedLimit); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(g_optin()); break;
    case cudaDevAttrWarpSize: *value = moe_emu::kWarpSize; break;
    case cudaDevAttrMultiProcessorCount: *value = moe_emu::kEmulatedSmCount; break;
    case cudaDevAttrComputeCapabilityMajor: *value = MOE_EMU_ARCH / 100; break;
    case cudaDevAttrComputeCapabilityMinor: *value = MOE_EMU_ARCH % 100 / 10; break;
    default:
      return host_error(cudaErrorInvalidValue,
                        moe_emu::fmt("cudaDeviceGetAttribute: attribute %d is not emulated", int(attr)));
  }
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (!device) return host_error(cudaErrorInvalidValue, "cudaGetDevice: null result pointer");
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess
                     : host_error(cudaErrorInvalidDevice, "cudaSetDevice: the emulator has device 0 only");
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return host_error(cudaErrorInvalidValue, "cudaGetDeviceCount: null result pointer");
  *count = 1;
  return cudaSuccess;
}

}  // extern "C"
