// N-API glue for device-resident tensors (moe/cuda_backend.h "device-resident tensors").
//
// A device tensor is a JS object {type, dims, buffer, byteOffset}: `buffer` a DeviceBuffer (this
// file's native class, owning device memory through a shared_ptr, freed by dispose() or its
// finaliser), `byteOffset` where the tensor starts in it (views share one buffer). The TypeScript
// DeviceTensor class (lib/core/device.ts) is such an object. Ops whose first tensor is a device tensor
// take all their tensors on the device (bind_decoder.cc, bind_moe.cc).
//
//   device_alloc(type, dims)                          -> {type, dims, buffer, byteOffset: 0} (zeroed)
//   device_upload(dst device tensor, src host tensor, async)
//   device_download(src device tensor, dst host tensor | null, async) -> host tensor
#pragma once
#include <napi.h>

#include <memory>
#include <vector>

#include "args.h"
#include "jobs.h"

namespace moe_addon {

using Holds = std::vector<std::shared_ptr<void>>;

// The backend an op runs on from its optional `backend` argument i: false for undefined/null/'cpu',
// true for this build's CUDA backend name, which must be available (ERR_BACKEND_UNAVAILABLE).
bool on_cuda(const Napi::CallbackInfo& info, size_t i);

// True when v is an object whose `buffer` is a DeviceBuffer.
bool is_device_tensor(const Napi::Value& v);
// Parses a device tensor (its buffer must be live and large enough); `hold` receives the buffer so
// that a job keeps it alive. The view's data is a device pointer.
moe::TensorView to_device_tensor(const Napi::Value& v, const char* name, unsigned allowed, int ndim, Holds* hold);
// A fresh zeroed device tensor object of `t` with the dims of `shape`, its view, and its buffer in hold.
Napi::Object new_device_tensor(Napi::Env env, moe::DType t, const moe::TensorView& shape, Holds* hold,
                               moe::TensorView* view);

// An op's tensors live in one place: all on the host (the CPU backend), or all device tensors (the
// CUDA backend); `device` is the place of the op's first tensor. TypeError naming the argument.
moe::TensorView tensor_arg(const Napi::Value& v, const char* name, unsigned allowed, int ndim, Job* job, bool device);
// TypeError unless a packed object's backend ("cpu" or a CUDA name) matches the place of the tensors.
void check_place(Napi::Env env, const char* what, const char* backend, bool device);

void InitDevice(Napi::Env env, Napi::Object exports);

}  // namespace moe_addon
