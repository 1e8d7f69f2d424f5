// The non-template parts of the CPU panel GEMM machinery (panel_gemm.h).
#include "panel_gemm.h"

#include <algorithm>

#include "cpu_features.h"

namespace moe {
namespace cpu {

namespace {
constexpr int64_t kGatherChunkElems = 1 << 16;  // floats copied by one gather task
}  // namespace

AlignedBuffer& thread_scratch() {
  thread_local AlignedBuffer buf;
  return buf;
}

const GemmKernels& kernels() {
  static const GemmKernels& k = [&]() -> const GemmKernels& {
    switch (cpu_features().table) {
      case CpuKernel::kAvx512Bf16: return avx512_bf16_kernels();
      case CpuKernel::kAvx512: return avx512_kernels();
      case CpuKernel::kAvx2: return avx2_kernels();
      default: return portable_kernels();
    }
  }();
  return k;
}

WeightType packed_weight_type(DType t, bool exact_f32) {
  const WeightType w = weight_type(t);
  return w == kWBF16 && !exact_f32 && kernels().stream[kWBF16Pairs] ? kWBF16Pairs : w;
}

RowLayout make_row_layout(const int32_t* group_offsets, int groups) {
  RowLayout L;
  L.rows.resize(size_t(groups));
  L.mp_base.resize(size_t(groups) + 1);
  L.mp_base[0] = 0;
  for (int e = 0; e < groups; ++e) {
    L.rows[size_t(e)] = group_offsets[e + 1] - group_offsets[e];
    L.mp_base[size_t(e) + 1] = L.mp_base[size_t(e)] + ceil_div(L.rows[size_t(e)], kMR);
  }
  return L;
}

std::vector<Task> make_tasks(const RowLayout& L, int64_t panels, int64_t panel_bytes) {
  const int E = int(L.rows.size());
  int64_t units = 0;  // (row block, panel) pairs
  for (int e = 0; e < E; ++e)
    units += ceil_div(L.mp_base[size_t(e) + 1] - L.mp_base[size_t(e)], kMaxMicroPanelsPerBlock) * panels;
  // Panels per task. With more than one micro-panel, as many as stay in L2 together (the others
  // re-read them from there). A decode (every group one micro-panel) reads each panel once, so
  // L2 does not bound it: take the most panels per task, for independent chains and memory streams
  // in the kernel (one panel of a long K left a single chain of multiply-adds per vector, bound by
  // the FMA latency below the memory bandwidth).
  bool decode = true;
  for (int e = 0; e < E; ++e) decode = decode && L.mp_base[size_t(e) + 1] - L.mp_base[size_t(e)] <= 1;
  int64_t np = decode ? kMaxDecodePanelsPerTask : std::clamp<int64_t>(kStreamPanelBytes / panel_bytes, 1, kMaxPanelsPerTask);
  np = std::max<int64_t>(1, std::min(np, units / kMinTasks));
  std::vector<Task> tasks;
  for (int e = 0; e < E; ++e) {
    const int64_t M = L.rows[size_t(e)];
    if (M == 0) continue;
    const int64_t n_mp = L.mp_base[size_t(e) + 1] - L.mp_base[size_t(e)];
    const int64_t blocks = ceil_div(n_mp, kMaxMicroPanelsPerBlock);
    const int64_t per_block = ceil_div(n_mp, blocks);  // even blocks of micro-panels
    for (int64_t mp0 = 0; mp0 < n_mp; mp0 += per_block) {
      const int64_t bmp = std::min(per_block, n_mp - mp0);
      const int64_t rows = std::min(bmp * kMR, M - mp0 * kMR);
      for (int64_t p0 = 0; p0 < panels; p0 += np)
        tasks.push_back({int32_t(e), int32_t(mp0), int32_t(bmp), int32_t(rows), p0, std::min(np, panels - p0)});
    }
  }
  return tasks;
}

void gather_micro_panels(const float* x, int64_t d, const int32_t* sorted_rows,
                         const int32_t* group_offsets, const RowLayout& L, float* a, WeightType wtype) {
  const bool pairs = bf16_pairs(wtype);
  const size_t mp_floats = size_t(micro_panel_floats(wtype, d));
  const int E = int(L.rows.size());
  const int64_t n_mp = L.mp_base[size_t(E)];
  const int64_t mp_per_chunk = std::max<int64_t>(1, kGatherChunkElems / (d * kMR));
  std::vector<int> mp_group(static_cast<size_t>(n_mp));
  for (int e = 0; e < E; ++e)
    for (int64_t m = L.mp_base[size_t(e)]; m < L.mp_base[size_t(e) + 1]; ++m) mp_group[size_t(m)] = e;
  parallel_for(ceil_div(n_mp, mp_per_chunk), [&](int64_t task, int) {
    const int64_t end = std::min(n_mp, (task + 1) * mp_per_chunk);
    for (int64_t m = task * mp_per_chunk; m < end; ++m) {
      const int e = mp_group[size_t(m)];
      const int64_t r0 = group_offsets[e] + (m - L.mp_base[size_t(e)]) * kMR;
      const int rows = int(std::min<int64_t>(kMR, group_offsets[e + 1] - r0));
      float* dst = a + size_t(m) * mp_floats;
      const float* src[kMR];
      for (int i = 0; i < rows; ++i) src[i] = x + size_t(sorted_rows ? sorted_rows[r0 + i] : r0 + i) * size_t(d);
      // lanes past the group's rows are zeros: the wide kernels compute them (gemm_kernels.h)
      if (pairs) {
        kernels().gather_pairs(src, rows, d, reinterpret_cast<uint32_t*>(dst));
      } else {
        for (int i = 0; i < rows; ++i)
          for (int64_t k = 0; k < d; ++k) dst[size_t(k) * kMR + size_t(i)] = src[i][k];
      }
      if (rows < kMR)
        for (size_t w = 0; w < mp_floats; w += kMR) std::fill(dst + w + rows, dst + w + kMR, 0.f);
    }
  });
}

}  // namespace cpu
}  // namespace moe
