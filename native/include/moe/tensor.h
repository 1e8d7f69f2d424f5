// moe-kernels: a non-owning view of a dense row-major tensor, the currency of the backend API.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "moe/dtype.h"

namespace moe {

constexpr int kMaxDims = 4;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int ndim = 0;
  int64_t dims[kMaxDims] = {0, 0, 0, 0};
  // Where `data` points: host memory (false), or device memory of the backend the op runs on (a
  // Buffer of moe/backend.h). A backend whose memory is the host's sees host views only; the CUDA
  // backend stages host views through device memory (one generic adapter, not per op).
  bool device = false;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= dims[i];
    return n;
  }
  // Quantised types: whole blocks along the last dim (the addon checks that it is a multiple).
  size_t bytes() const {
    if (!is_quant(dtype)) return size_t(numel()) * dtype_size(dtype);
    return size_t(numel() / quant_block_elems(dtype)) * dtype_size(dtype);
  }
  int64_t dim(int i) const { return i < 0 ? dims[ndim + i] : dims[i]; }
  template <class T> T* as() const { return static_cast<T*>(data); }
  // An optional argument is absent when it has no dims (a present tensor with no elements may have
  // a null data pointer: a zero-length typed array).
  bool present() const { return ndim > 0; }
};

inline TensorView make_view(void* data, DType t, std::initializer_list<int64_t> dims) {
  TensorView v;
  v.data = data;
  v.dtype = t;
  for (int64_t d : dims) v.dims[v.ndim++] = d;
  return v;
}

// The direction of a tensor argument of an op, for code that moves tensors between memories.
enum class Dir { kIn, kOut };

}  // namespace moe
