// CPU grouped GEMM over experts with fused SwiGLU:
//   for each row r of expert e:  y[r] = W2_e (silu(W1_e x[src(r)]) * (W3_e x[src(r)])).
//
// pack_experts repacks every expert once into column panels (layout in gemm_kernels.h), keeping
// 16-bit weights 16-bit. grouped_gemm then runs three parallel phases:
//   0. gather: the token rows of each expert are copied into micro-panels of kMR rows (A1);
//   1. GEMM1 over the interleaved W1/W3 panels, SwiGLU in the epilogue, h written as micro-panels
//      (H), the A operand of
//   2. GEMM2 over the W2 panels, written to y.
// A GEMM phase is split into tasks of (expert, block of rows, block of panels); the split depends
// only on the shapes and expert_offsets. Every output element is one multiply-add chain in k
// order inside one task (K is never split across tasks), so results are bitwise reproducible
// whatever thread claims which task, and a row's result does not depend on the rows batched with
// it.
//
// Inside a task, the kernel runs over one micro-panel (kMR rows) at a time against all of the
// task's panels (streaming order): the first micro-panel streams the weights from memory, the
// rest re-read them from L2, so decode reads each active weight once and prefill runs at the FMA
// rate. Only panels too long to stay in L2 switch to a BLIS-style blocked order with K blocks of
// kKC, each chunk held in L1 (widened to f32 once if 16-bit) for all micro-panels. Both orders
// give the same bits.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "gemm_kernels.h"
#include "moe/cpu_features.h"
#include "moe/ops.h"
#include "moe/threadpool.h"

namespace moe {

namespace {
using cpu::GemmKernels;
using cpu::kGateCols;
using cpu::kMR;
using cpu::kNR;
using cpu::WeightType;

// ---- tuning constants -------------------------------------------------------------------------
constexpr size_t kCacheLine = 64;
constexpr size_t kAlign = kCacheLine;            // packed weights and scratch start on a line
constexpr size_t kHugePage = size_t(2) << 20;    // x86-64 transparent huge page
constexpr int64_t kKC = 256;                     // blocked order's K block: kKC x kNR f32 = 16 KiB (L1)
constexpr int kMaxMicroPanelsPerBlock = 32;      // rows per task <= 192
constexpr int kMaxPanelsPerTask = 8;             // bounds the per-thread tile scratch
constexpr int64_t kStreamPanelBytes = 512 << 10;  // a task's panels up to this size stay in L2
constexpr int64_t kMinTasks = 32;                // fewer, larger tasks leave cores idle at the end
constexpr int64_t kGatherChunkElems = 1 << 16;   // floats copied by one gather task
constexpr int kPackPanelsPerTask = 4;            // panels packed by one task
constexpr size_t kKeepScratchBytes = size_t(64) << 20;  // larger per-call scratch is released

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 64-byte aligned, uninitialised storage.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  ~AlignedBuffer() { std::free(ptr_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  // Returns false when the allocation fails; the old contents are not kept.
  bool reserve(size_t bytes) {
    if (bytes <= size_) return true;
    std::free(ptr_);
    size_ = 0;
    // Large buffers start on a huge-page boundary and ask for transparent huge pages: packing
    // gigabytes then takes thousands of page faults instead of millions, and streaming the
    // weights misses the TLB far less.
    const size_t align = bytes >= kHugePage ? kHugePage : kAlign;
    const size_t padded = (bytes + align - 1) / align * align;
    ptr_ = std::aligned_alloc(align, padded);
    if (!ptr_) return false;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHugePage) madvise(ptr_, padded, MADV_HUGEPAGE);  // advisory: failure is harmless
#endif
    size_ = bytes;
    return true;
  }
  void release() { std::free(ptr_); ptr_ = nullptr; size_ = 0; }
  size_t size() const { return size_; }
  template <class T> T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

// The packed weights of all experts, one allocation, original element type.
struct CpuPackedExperts final : PackedExperts {
  AlignedBuffer buf;
  size_t elem_size = 4;
  int64_t f_pad = 0;        // f rounded up to kGateCols: K of GEMM2
  int64_t gemm1_panels = 0;  // f_pad / kGateCols
  int64_t gemm2_panels = 0;  // ceil(d / kNR)
  size_t w2_offset = 0;      // elements from an expert's start to its GEMM2 panels
  size_t expert_elems = 0;   // elements per expert
  size_t bytes() const override { return buf.size(); }
  const uint8_t* expert(int e) const { return buf.as<const uint8_t>() + size_t(e) * expert_elems * elem_size; }
};

const GemmKernels& kernels() {
  return cpu_features().kernel == "avx2-fma" ? cpu::avx2_kernels() : cpu::portable_kernels();
}

// ---- packing ------------------------------------------------------------------------------------
// El is the raw element (uint32_t for f32 bits, uint16_t for f16/bf16): packing only moves bits.
// Each k step gathers one element from each of the panel's source rows (their cache lines serve
// the next steps too) and writes one contiguous group; columns past the matrix edge are zero.
template <class El>
void pack_gemm1_panel(const El* w1, const El* w3, int64_t d, int64_t f, int64_t p, El* dst) {
  const int64_t valid = std::min<int64_t>(kGateCols, f - p * kGateCols);
  const El* g = w1 + p * kGateCols * d;
  const El* u = w3 + p * kGateCols * d;
  for (int64_t k = 0; k < d; ++k, dst += kNR) {
    if (valid == kGateCols) {  // constant trip count: the common, unrolled case
      for (int j = 0; j < kGateCols; ++j) dst[j] = g[j * d + k];
      for (int j = 0; j < kGateCols; ++j) dst[kGateCols + j] = u[j * d + k];
    } else {
      for (int j = 0; j < kGateCols; ++j) dst[j] = j < valid ? g[j * d + k] : El(0);
      for (int j = 0; j < kGateCols; ++j) dst[kGateCols + j] = j < valid ? u[j * d + k] : El(0);
    }
  }
}

template <class El>
void pack_gemm2_panel(const El* w2, int64_t d, int64_t f, int64_t f_pad, int64_t p, El* dst) {
  const int64_t valid = std::min<int64_t>(kNR, d - p * kNR);
  const El* src = w2 + p * kNR * f;
  for (int64_t k = 0; k < f; ++k, dst += kNR) {
    if (valid == kNR) {
      for (int j = 0; j < kNR; ++j) dst[j] = src[j * f + k];
    } else {
      for (int j = 0; j < kNR; ++j) dst[j] = j < valid ? src[j * f + k] : El(0);
    }
  }
  std::memset(dst, 0, size_t(f_pad - f) * kNR * sizeof(El));  // hidden units past f
}

template <class El>
void pack_all(const ExpertWeightSource& src, CpuPackedExperts& p) {
  const int64_t per_expert = p.gemm1_panels + p.gemm2_panels;
  const int64_t total = per_expert * p.num_experts;
  parallel_for(ceil_div(total, kPackPanelsPerTask), [&](int64_t task, int) {
    const int64_t end = std::min(total, (task + 1) * kPackPanelsPerTask);
    for (int64_t g = task * kPackPanelsPerTask; g < end; ++g) {
      const int e = int(g / per_expert);
      const int64_t panel = g % per_expert;
      El* base = p.buf.as<El>() + size_t(e) * p.expert_elems;
      if (panel < p.gemm1_panels) {
        pack_gemm1_panel(static_cast<const El*>(src.w1[size_t(e)]), static_cast<const El*>(src.w3[size_t(e)]),
                         p.d, p.f, panel, base + size_t(panel) * size_t(p.d) * kNR);
      } else {
        const int64_t q = panel - p.gemm1_panels;
        pack_gemm2_panel(static_cast<const El*>(src.w2[size_t(e)]), p.d, p.f, p.f_pad, q,
                         base + p.w2_offset + size_t(q) * size_t(p.f_pad) * kNR);
      }
    }
  });
}

// ---- grouped GEMM -------------------------------------------------------------------------------
// A task: rows [mp0*kMR, ...) of expert e (n_mp micro-panels, `rows` rows) x panels [p0, p0+np).
struct Task {
  int32_t e, mp0, n_mp, rows;
  int64_t p0, np;
};

// The micro-panels of the gathered rows: expert e's rows start at micro-panel mp_base[e].
struct RowLayout {
  std::vector<int64_t> rows;     // [E] rows of each expert
  std::vector<int64_t> mp_base;  // [E+1] first micro-panel of each expert
};

// Splits a GEMM with `panels` panels of `panel_bytes` per expert into tasks (shape-only).
std::vector<Task> make_tasks(const RowLayout& L, int64_t panels, int64_t panel_bytes) {
  const int E = int(L.rows.size());
  int64_t units = 0;  // (row block, panel) pairs
  for (int e = 0; e < E; ++e)
    units += ceil_div(L.mp_base[size_t(e) + 1] - L.mp_base[size_t(e)], kMaxMicroPanelsPerBlock) * panels;
  int64_t np = std::clamp<int64_t>(kStreamPanelBytes / panel_bytes, 1, kMaxPanelsPerTask);
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

// One GEMM phase: C = A x panels, K = k_len, with `epilogue(task, p, mp, rows, tile)` consuming
// each finished kMR x kNR tile.
struct GemmPhase {
  const GemmKernels* kern;
  WeightType wtype;
  size_t elem_size;
  const CpuPackedExperts* w;
  size_t weight_offset;  // elements from an expert's start to this phase's panels
  int64_t k_len;
  const float* a;        // micro-panels, each k_len * kMR floats
  const RowLayout* rows;
};

constexpr size_t kTileFloats = size_t(kMR) * kNR;
constexpr size_t kTileScratchFloats = size_t(kMaxPanelsPerTask) * kMaxMicroPanelsPerBlock * kTileFloats;
constexpr size_t kWidenScratchFloats = size_t(kKC) * kNR;

// Requests [p, p + bytes) into L2 ahead of use.
inline void prefetch_chunk(const uint8_t* p, int64_t bytes) {
  constexpr int kLocalityL2 = 2;
  for (int64_t i = 0; i < bytes; i += int64_t(kCacheLine)) __builtin_prefetch(p + i, 0, kLocalityL2);
}

template <class Epilogue>
void run_task(const GemmPhase& ph, const Task& t, float* tiles, float* widened, const Epilogue& epilogue) {
  const size_t panel_elems = size_t(ph.k_len) * kNR;
  const uint8_t* wbase = ph.w->expert(t.e) + ph.weight_offset * ph.elem_size;
  const float* a = ph.a + size_t(ph.rows->mp_base[size_t(t.e)] + t.mp0) * size_t(ph.k_len) * kMR;
  auto panel_ptr = [&](int64_t p, int64_t k0) {
    return wbase + (size_t(p) * panel_elems + size_t(k0) * kNR) * ph.elem_size;
  };
  auto mp_rows = [&](int mp) { return std::min<int>(kMR, t.rows - mp * kMR); };
  // a micro-panel's tiles are adjacent, as the streaming kernel writes them
  auto tile = [&](int64_t pl, int mp) { return tiles + (size_t(mp) * size_t(t.np) + size_t(pl)) * kTileFloats; };
  const cpu::MicroKernel micro = ph.kern->micro[ph.wtype];
  const size_t a_stride = size_t(ph.k_len) * kMR;  // floats per micro-panel of A

  if (t.n_mp == 1 || t.np * int64_t(panel_elems * ph.elem_size) <= kStreamPanelBytes) {
    // Streaming order: the first micro-panel streams the task's panels from memory straight
    // through (prefetched, 16-bit widened in registers); the others re-read them from L2, which
    // feeds the kernel faster than it consumes (64 bytes per 12 FMAs). Measured on Zen 5 this
    // matches or beats the blocked order below even at hundreds of rows, with or without widening.
    for (int mp = 0; mp < t.n_mp; ++mp)
      ph.kern->stream[ph.wtype](mp_rows(mp), ph.k_len, a + size_t(mp) * a_stride, panel_ptr(t.p0, 0),
                                panel_elems * ph.elem_size, int(t.np), tile(0, mp));
    for (int mp = 0; mp < t.n_mp; ++mp)
      for (int64_t pl = 0; pl < t.np; ++pl) epilogue(t, t.p0 + pl, mp, mp_rows(mp), tile(pl, mp));
    return;
  }
  // Blocked order, for panels too long to stay in L2 (K above 8192 f32, 16384 16-bit): per K block,
  // the panel chunk (L1) meets every micro-panel of the block (L2), widened to f32 once.
  for (int64_t k0 = 0; k0 < ph.k_len; k0 += kKC) {
    const int64_t kc = std::min(kKC, ph.k_len - k0);
    for (int64_t pl = 0; pl < t.np; ++pl) {
      const void* b = panel_ptr(t.p0 + pl, k0);
      // The chunk after this one comes from memory: request it now, so the first micro-panel
      // that meets it (or the widening) does not wait on DRAM latency.
      if (pl + 1 < t.np)
        prefetch_chunk(panel_ptr(t.p0 + pl + 1, k0), std::min(kKC, ph.k_len - k0) * kNR * int64_t(ph.elem_size));
      else if (k0 + kKC < ph.k_len)
        prefetch_chunk(panel_ptr(t.p0, k0 + kKC), std::min(kKC, ph.k_len - k0 - kKC) * kNR * int64_t(ph.elem_size));
      cpu::MicroKernel fn = micro;
      if (ph.wtype != cpu::kWF32) {  // widen the 16-bit chunk once for all micro-panels
        ph.kern->widen(ph.wtype, static_cast<const uint16_t*>(b), widened, kc * kNR);
        b = widened;
        fn = ph.kern->micro[cpu::kWF32];
      }
      for (int mp = 0; mp < t.n_mp; ++mp)
        fn(mp_rows(mp), kc, a + size_t(mp) * a_stride + size_t(k0) * kMR, b, tile(pl, mp), k0 > 0);
    }
  }
  for (int64_t pl = 0; pl < t.np; ++pl)
    for (int mp = 0; mp < t.n_mp; ++mp) epilogue(t, t.p0 + pl, mp, mp_rows(mp), tile(pl, mp));
}

template <class Epilogue>
void run_phase(const GemmPhase& ph, const std::vector<Task>& tasks, float* scratch, const Epilogue& epilogue) {
  parallel_for(int64_t(tasks.size()), [&](int64_t i, int thread) {
    float* tiles = scratch + size_t(thread) * (kTileScratchFloats + kWidenScratchFloats);
    run_task(ph, tasks[size_t(i)], tiles, tiles + kTileScratchFloats, epilogue);
  });
}

// Per calling thread: activations in micro-panels (A1, H) and per-worker tiles. Reused across
// calls so a forward does not page-fault fresh memory; grows with T*k*(d+f), never with weights.
struct CallScratch {
  AlignedBuffer buf;
};
thread_local CallScratch t_scratch;

}  // namespace

Status pack_experts(const ExpertWeightSource& src, std::unique_ptr<PackedExperts>* out) {
  if (src.num_experts < 1 || src.d < 1 || src.f < 1) return Status::invalid("pack_experts: empty shape");
  if (src.dtype != DType::kF32 && src.dtype != DType::kF16 && src.dtype != DType::kBF16)
    return Status::unsupported(std::string("pack_experts: weights of type ") + dtype_name(src.dtype));
  auto p = std::make_unique<CpuPackedExperts>();
  p->num_experts = src.num_experts;
  p->d = src.d;
  p->f = src.f;
  p->dtype = src.dtype;
  p->elem_size = dtype_size(src.dtype);
  p->f_pad = ceil_div(src.f, kGateCols) * kGateCols;
  p->gemm1_panels = p->f_pad / kGateCols;
  p->gemm2_panels = ceil_div(src.d, kNR);
  p->w2_offset = size_t(p->gemm1_panels) * size_t(src.d) * kNR;
  p->expert_elems = p->w2_offset + size_t(p->gemm2_panels) * size_t(p->f_pad) * kNR;
  if (!p->buf.reserve(p->expert_elems * size_t(src.num_experts) * p->elem_size))
    return Status::oom("pack_experts: cannot allocate the packed weights");
  if (p->elem_size == 4)
    pack_all<uint32_t>(src, *p);
  else
    pack_all<uint16_t>(src, *p);
  *out = std::move(p);
  return Status::ok();
}

Status grouped_gemm(const float* x, int64_t T, const int32_t* sorted_rows,
                    const int32_t* expert_offsets, const PackedExperts& pw, float* y) {
  // Every PackedExperts reaching the CPU backend was made by pack_experts above (the addon builds
  // with -fno-rtti under node-gyp, so this cannot be a dynamic_cast).
  const auto* w = static_cast<const CpuPackedExperts*>(&pw);
  const int E = w->num_experts;
  const int64_t d = w->d, f_pad = w->f_pad, R = expert_offsets[E];
  if (R == 0) return Status::ok();
  (void)T;

  RowLayout L;
  L.rows.resize(size_t(E));
  L.mp_base.resize(size_t(E) + 1);
  L.mp_base[0] = 0;
  for (int e = 0; e < E; ++e) {
    L.rows[size_t(e)] = expert_offsets[e + 1] - expert_offsets[e];
    L.mp_base[size_t(e) + 1] = L.mp_base[size_t(e)] + ceil_div(L.rows[size_t(e)], kMR);
  }
  const int64_t n_mp = L.mp_base[size_t(E)];

  // scratch: A1 [n_mp][d][kMR], H [n_mp][f_pad][kMR], per-thread tiles
  const int nthreads = ComputePool::instance().num_threads();
  const size_t a1_floats = size_t(n_mp) * size_t(d) * kMR;
  const size_t h_floats = size_t(n_mp) * size_t(f_pad) * kMR;
  const size_t thread_floats = size_t(nthreads) * (kTileScratchFloats + kWidenScratchFloats);
  const auto round_up = [](size_t n) { return (n * sizeof(float) + kAlign - 1) / kAlign * kAlign / sizeof(float); };
  AlignedBuffer& buf = t_scratch.buf;
  if (!buf.reserve((round_up(a1_floats) + round_up(h_floats) + thread_floats) * sizeof(float)))
    return Status::oom("grouped_gemm: cannot allocate the activation scratch");
  float* a1 = buf.as<float>();
  float* h = a1 + round_up(a1_floats);
  float* tiles = h + round_up(h_floats);

  // 0. gather the token rows of each expert into micro-panels
  const int64_t mp_per_chunk = std::max<int64_t>(1, kGatherChunkElems / (d * kMR));
  std::vector<int> mp_expert(static_cast<size_t>(n_mp));
  for (int e = 0; e < E; ++e)
    for (int64_t m = L.mp_base[size_t(e)]; m < L.mp_base[size_t(e) + 1]; ++m) mp_expert[size_t(m)] = e;
  parallel_for(ceil_div(n_mp, mp_per_chunk), [&](int64_t task, int) {
    const int64_t end = std::min(n_mp, (task + 1) * mp_per_chunk);
    for (int64_t m = task * mp_per_chunk; m < end; ++m) {
      const int e = mp_expert[size_t(m)];
      const int64_t r0 = expert_offsets[e] + (m - L.mp_base[size_t(e)]) * kMR;
      const int rows = int(std::min<int64_t>(kMR, expert_offsets[e + 1] - r0));
      float* dst = a1 + size_t(m) * size_t(d) * kMR;
      for (int i = 0; i < rows; ++i) {
        const int64_t src = sorted_rows ? sorted_rows[r0 + i] : r0 + i;
        const float* xr = x + size_t(src) * size_t(d);
        for (int64_t k = 0; k < d; ++k) dst[size_t(k) * kMR + size_t(i)] = xr[k];
      }
    }
  });

  const GemmKernels& kern = kernels();
  const WeightType wt = cpu::weight_type(w->dtype);

  // 1. GEMM1 (interleaved W1/W3) with the SwiGLU epilogue -> H
  GemmPhase g1{&kern, wt, w->elem_size, w, 0, d, a1, &L};
  run_phase(g1, make_tasks(L, w->gemm1_panels, d * kNR * int64_t(w->elem_size)), tiles,
            [&](const Task& t, int64_t p, int mp, int rows, const float* tile) {
              float* hm = h + size_t(L.mp_base[size_t(t.e)] + t.mp0 + mp) * size_t(f_pad) * kMR;
              kern.swiglu(rows, tile, hm + size_t(p) * kGateCols * kMR);
            });

  // 2. GEMM2 (W2 panels) -> y
  GemmPhase g2{&kern, wt, w->elem_size, w, w->w2_offset, f_pad, h, &L};
  run_phase(g2, make_tasks(L, w->gemm2_panels, f_pad * kNR * int64_t(w->elem_size)), tiles,
            [&](const Task& t, int64_t p, int mp, int rows, const float* tile) {
              const int64_t r0 = expert_offsets[t.e] + int64_t(t.mp0 + mp) * kMR;
              const int64_t c0 = p * kNR;
              const size_t ncols = size_t(std::min<int64_t>(kNR, d - c0));
              for (int i = 0; i < rows; ++i)
                std::memcpy(y + size_t(r0 + i) * size_t(d) + size_t(c0), tile + size_t(i) * kNR, ncols * sizeof(float));
            });

  if (buf.size() > kKeepScratchBytes) buf.release();
  return Status::ok();
}

}  // namespace moe
