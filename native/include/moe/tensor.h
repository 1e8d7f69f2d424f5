// moe-kernels: a non-owning view of a dense row-major tensor, the currency of the backend API.
#pragma once
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

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= dims[i];
    return n;
  }
  int64_t dim(int i) const { return i < 0 ? dims[ndim + i] : dims[i]; }
  template <class T> T* as() const { return static_cast<T*>(data); }
  bool empty() const { return data == nullptr && numel() != 0; }
};

inline TensorView make_view(void* data, DType t, std::initializer_list<int64_t> dims) {
  TensorView v;
  v.data = data;
  v.dtype = t;
  for (int64_t d : dims) v.dims[v.ndim++] = d;
  return v;
}

}  // namespace moe
