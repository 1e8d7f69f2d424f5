// CPU panel GEMM machinery shared by the grouped expert GEMM (grouped_gemm.cc) and the plain packed
// linear layer (linear.cc): weights packed once into column panels (layout in gemm_kernels.h),
// activations gathered per call into micro-panels, and phases of tasks that run the micro-kernels.
//
// A phase is split into tasks of (group, block of rows, block of panels); a "group" is an expert
// of the grouped GEMM, or the single matrix of a linear layer. The split depends only on the
// shapes and the group offsets, and K is never split across tasks, so every output element is one
// multiply-add chain in k order: results are bitwise reproducible whatever thread claims which
// task, and a row's result does not depend on the rows batched with it.
//
// Inside a task (run_task): a decode (one micro-panel) streams the task's panels from memory, 4
// runs of consecutive panels side by side. With several micro-panels, the AVX-512 tables run K blocks of kKC steps: a first
// pass over up to 4 micro-panels (24 rows) fetches the block from memory while computing on it,
// the others re-read it from L2, 12 rows x 2 panels at a time; the AVX2 and portable tables run
// one micro-panel at a time against all of the task's panels (streaming order: the first streams
// them from memory, the rest re-read them from L2), or, for panels too long for L2, a BLIS-style
// blocked order whose chunks are held in L1 (widened to f32 once if 16-bit). Every order gives
// the same bits.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "gemm_kernels.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

// ---- tuning constants -------------------------------------------------------------------------
constexpr size_t kCacheLine = 64;
constexpr size_t kAlign = kCacheLine;            // packed weights and scratch start on a line
constexpr size_t kHugePage = size_t(2) << 20;    // x86-64 transparent huge page
constexpr int64_t kKC = 256;                     // K block: kKC x kNR f32 = 16 KiB per panel
constexpr int kMaxMicroPanelsPerBlock = 32;      // rows per task <= 192
constexpr int kMaxPanelsPerTask = 8;             // bounds the per-thread tile scratch
// A decode task (one micro-panel) takes up to 32 panels and reads them as kDecodeStreams streams
// of consecutive panels side by side (run_task): runs of up to 8 panels that the hardware
// prefetchers follow across panel boundaries. Streams of one panel each (8, then the next 8)
// restart the prefetchers at every panel: on this VM, 8 or 4 streams read 62-77 GB/s in
// panel-sized windows where the same streams read 80-83 long (peak probes of the same minute).
// Scaled layer, T=16, rounds alternated with a bandwidth probe (scratch gemm_bench, 3 rounds):
// bf16 67-74% -> 83-85% of the probe, f32 75-77% -> 84%; decode at T=1 unchanged within the
// noise (Mixtral shape, bf16 81-92% -> 91-93%).
constexpr int kMaxDecodePanelsPerTask = 32;
constexpr int kDecodeStreams = 4;
constexpr int64_t kStreamPanelBytes = 512 << 10;  // a task's panels up to this size stay in L2
constexpr int64_t kMinTasks = 32;                // fewer, larger tasks leave cores idle at the end
// Software prefetch distances of the kernels with a prefetch argument (the AVX-512 tables). A
// decode streams several panels per thread, which the hardware prefetchers of Zen 5 follow better
// alone: 4 KiB-ahead requests cost 10-20% of the stream rate there (bf16, scaled and Mixtral
// shapes, measured alternately). The first pass of a K block, which also computes 24 rows per
// element, gains from them.
constexpr int64_t kDecodePrefetchBytes = 0;
constexpr int64_t kFirstPassPrefetchBytes = 4096;
constexpr int kRestWideGroup = 2;                // micro-panels per pass over a block in L2
// K block of the wide passes: 8 panels x 1024 steps = 512 KiB f32 (256 KiB 16-bit) stay in L2 for
// the passes after the first; longer blocks than kKC halve the passes' tile loads and stores
// (scaled layer, alternated: f32 T=512 65 -> 63 ms, T=128 22 -> 19 ms).
constexpr int64_t kWideKC = 1024;
constexpr int kPackPanelsPerTask = 4;            // panels packed by one task
constexpr size_t kKeepScratchBytes = size_t(64) << 20;  // larger per-call scratch is released

constexpr size_t kTileFloats = size_t(kMR) * kNR;
constexpr size_t kTileScratchFloats = size_t(kMaxPanelsPerTask) * kMaxMicroPanelsPerBlock * kTileFloats;
static_assert(kMaxDecodePanelsPerTask <= kMaxPanelsPerTask * kMaxMicroPanelsPerBlock, "a decode task's tiles fit the scratch");
constexpr size_t kWidenScratchFloats = size_t(kKC) * kNR;
// Per-thread scratch a phase needs (tiles and the widened K chunk), in floats.
constexpr size_t kThreadScratchFloats = kTileScratchFloats + kWidenScratchFloats;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// n floats rounded up so that the next buffer carved after them starts on a cache line.
inline size_t round_up_floats(size_t n) {
  return (n * sizeof(float) + kAlign - 1) / kAlign * kAlign / sizeof(float);
}

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

// Per calling thread: activations in micro-panels and per-worker tiles. Reused across calls so a
// forward does not page-fault fresh memory; grows with the activations, never with the weights.
AlignedBuffer& thread_scratch();

// The kernel table picked by the run-time CPU check (cpu_features().table).
const GemmKernels& kernels();

// The weight type that packing gives weights of dtype t under the current table: bf16 in the
// bf16 dot layout where the table has it, unless the caller asked for exact f32 activations.
WeightType packed_weight_type(DType t, bool exact_f32);

// ---- packing ------------------------------------------------------------------------------------
// Panel p of a row-major matrix w [n, k_len] (n output columns, K = k_len): element [k][j] =
// w[p*kNR + j][k]; rows past n and steps past k_len (up to k_pad) are zero. El is the raw element
// (uint32_t for f32 bits, uint16_t for f16/bf16): packing only moves bits. Each k step gathers one
// element from each of the panel's source rows (their cache lines serve the next steps too).
template <class El>
void pack_row_panel(const El* w, int64_t n, int64_t k_len, int64_t k_pad, int64_t p, El* dst) {
  const int64_t valid = std::min<int64_t>(kNR, n - p * kNR);
  const El* src = w + p * kNR * k_len;
  for (int64_t k = 0; k < k_len; ++k, dst += kNR) {
    if (valid == kNR) {  // constant trip count: the common, unrolled case
      for (int j = 0; j < kNR; ++j) dst[j] = src[j * k_len + k];
    } else {
      for (int j = 0; j < kNR; ++j) dst[j] = j < valid ? src[j * k_len + k] : El(0);
    }
  }
  std::memset(dst, 0, size_t(k_pad - k_len) * kNR * sizeof(El));
}

// The bf16 dot layout of the same panel (gemm_kernels.h): element [k/2][j][k%2] = w[p*kNR + j][k],
// k_pad even; steps past k_len are zero.
inline void pack_row_panel_pairs(const uint16_t* w, int64_t n, int64_t k_len, int64_t k_pad, int64_t p, uint16_t* dst) {
  const int64_t valid = std::min<int64_t>(kNR, n - p * kNR);
  const uint16_t* src = w + p * kNR * k_len;
  for (int64_t k = 0; k < k_pad; ++k)
    for (int j = 0; j < kNR; ++j)
      dst[(k / 2) * 2 * kNR + j * 2 + (k & 1)] = j < valid && k < k_len ? src[j * k_len + k] : uint16_t(0);
}

// fn(panel) for every panel in [0, total), packed in parallel, kPackPanelsPerTask per task.
template <class Fn>
void parallel_pack(int64_t total, const Fn& fn) {
  parallel_for(ceil_div(total, kPackPanelsPerTask), [&](int64_t task, int) {
    const int64_t end = std::min(total, (task + 1) * kPackPanelsPerTask);
    for (int64_t g = task * kPackPanelsPerTask; g < end; ++g) fn(g);
  });
}

// ---- row layout and tasks -----------------------------------------------------------------------
// The micro-panels of the gathered rows: group g's rows start at micro-panel mp_base[g].
struct RowLayout {
  std::vector<int64_t> rows;     // [G] rows of each group
  std::vector<int64_t> mp_base;  // [G+1] first micro-panel of each group
};
RowLayout make_row_layout(const int32_t* group_offsets, int groups);

// A task: rows [mp0*kMR, ...) of group e (n_mp micro-panels, `rows` rows) x panels [p0, p0+np).
struct Task {
  int32_t e, mp0, n_mp, rows;
  int64_t p0, np;
};

// Splits a GEMM with `panels` panels of `panel_bytes` per group into tasks (shape-only).
std::vector<Task> make_tasks(const RowLayout& L, int64_t panels, int64_t panel_bytes);

// Copies the rows of every group into micro-panels a [n_mp][d][kMR]: row r of the layout is
// x[sorted_rows[r]] (x[r] when sorted_rows is null), r from group_offsets. For a weight type with
// bf16 pair activations the micro-panels are bf16 pairs (micro_panel_floats words each), rounded
// by the table's gather_pairs.
void gather_micro_panels(const float* x, int64_t d, const int32_t* sorted_rows,
                         const int32_t* group_offsets, const RowLayout& L, float* a,
                         WeightType wtype = kWF32);

// ---- phases -------------------------------------------------------------------------------------
// One GEMM phase: C = A x panels, K = k_len, with `epilogue(task, p, mp, rows, tile)` consuming
// each finished kMR x kNR tile.
struct GemmPhase {
  const GemmKernels* kern;
  WeightType wtype;
  size_t elem_size;
  const uint8_t* weights;  // the first panel of group 0
  size_t group_bytes;      // from one group's panels to the next's
  int64_t k_len;           // K as packed (packed_k: even for bf16 pairs)
  const float* a;          // micro-panels, each micro_panel_floats(wtype, k_len) words
  const RowLayout* rows;
};

// Requests [p, p + bytes) into L2 ahead of use.
inline void prefetch_chunk(const uint8_t* p, int64_t bytes) {
  constexpr int kLocalityL2 = 2;
  for (int64_t i = 0; i < bytes; i += int64_t(kCacheLine)) __builtin_prefetch(p + i, 0, kLocalityL2);
}

template <class Epilogue>
void run_task(const GemmPhase& ph, const Task& t, float* tiles, float* widened, const Epilogue& epilogue) {
  const size_t panel_elems = size_t(ph.k_len) * kNR;
  const size_t panel_bytes = panel_elems * ph.elem_size;
  const uint8_t* wbase = ph.weights + size_t(t.e) * ph.group_bytes;
  const bool pairs = bf16_pairs(ph.wtype);
  const size_t a_stride = size_t(micro_panel_floats(ph.wtype, ph.k_len));  // words per micro-panel of A
  const float* a = ph.a + size_t(ph.rows->mp_base[size_t(t.e)] + t.mp0) * a_stride;
  // A's words from a micro-panel's start to step k0 (k0 even for bf16 pairs)
  auto a_at = [&](int64_t k0) { return size_t(pairs ? k0 / 2 : k0) * kMR; };
  auto panel_ptr = [&](int64_t p, int64_t k0) {
    return wbase + (size_t(p) * panel_elems + size_t(k0) * kNR) * ph.elem_size;
  };
  auto mp_rows = [&](int mp) { return std::min<int>(kMR, t.rows - mp * kMR); };
  // a micro-panel's tiles are adjacent, as the streaming kernel writes them
  auto tile = [&](int64_t pl, int mp) { return tiles + (size_t(mp) * size_t(t.np) + size_t(pl)) * kTileFloats; };
  const StreamKernel stream = ph.kern->stream[ph.wtype];
  auto finish = [&] {
    for (int mp = 0; mp < t.n_mp; ++mp)
      for (int64_t pl = 0; pl < t.np; ++pl) epilogue(t, t.p0 + pl, mp, mp_rows(mp), tile(pl, mp));
  };

  if (t.n_mp == 1) {
    // Decode: one micro-panel streams the task's panels from memory straight through, several
    // panels at once (independent chains, one memory stream each), 16-bit widened in registers.
    // Stream q reads panels q*run .. q*run + run - 1 one after the other: pass j reads panel
    // q*run + j of every stream, so each stream is `run` consecutive panels of memory. Each
    // output is still its own chain: the order of the panels changes no bit.
    const int64_t streams = std::min<int64_t>(kDecodeStreams, t.np);
    const int64_t run = ceil_div(t.np, streams);
    for (int64_t j = 0; j < run; ++j) {
      const int64_t n = ceil_div(t.np - j, run);  // the streams that have a panel j
      stream(mp_rows(0), ph.k_len, a, panel_ptr(t.p0 + j, 0), panel_bytes * size_t(run), int(n),
             tiles + size_t(j * streams) * kTileFloats, 0, kDecodePrefetchBytes);
    }
    for (int64_t pl = 0; pl < t.np; ++pl)  // panel pl = q*run + j: pass j's tile q
      epilogue(t, t.p0 + pl, 0, mp_rows(0), tiles + size_t((pl % run) * streams + pl / run) * kTileFloats);
    return;
  }
  if (const WideKernel wide = ph.kern->wide[ph.wtype]) {
    // Several micro-panels, K-blocked: per block of kWideKC steps, the first pass takes up to
    // kMaxWideGroup micro-panels at once, so that each panel element fetched from memory meets up
    // to 24 rows and the pass stays compute-bound while the next lines arrive; the other passes
    // re-read the block from L2, kRestWideGroup micro-panels at a time (12 rows x 2 panels).
    auto pass = [&](int mp, int g, int64_t k0, int64_t kc, int flags, int64_t prefetch) {
      const float* am = a + size_t(mp) * a_stride + a_at(k0);
      if (g == 1) stream(mp_rows(mp), kc, am, panel_ptr(t.p0, k0), panel_bytes, int(t.np), tile(0, mp), flags, prefetch);
      else wide(g, kc, am, a_stride, panel_ptr(t.p0, k0), panel_bytes, int(t.np), tile(0, mp), int(t.np), flags, prefetch);
    };
    if (t.n_mp <= kMaxWideGroup) {  // one pass: no block is re-read, so no blocking
      pass(0, t.n_mp, 0, ph.k_len, 0, kFirstPassPrefetchBytes);
      finish();
      return;
    }
    for (int64_t k0 = 0; k0 < ph.k_len; k0 += kWideKC) {
      const int64_t kc = std::min(kWideKC, ph.k_len - k0);
      for (int mp = 0; mp < t.n_mp;) {
        const int g = std::min(mp == 0 ? kMaxWideGroup : kRestWideGroup, t.n_mp - mp);
        pass(mp, g, k0, kc, k0 > 0 ? kStreamAccumulate : 0, mp == 0 ? kFirstPassPrefetchBytes : 0);
        mp += g;
      }
    }
    finish();
    return;
  }
  // The tables without wide kernels (avx2-fma, portable), one micro-panel at a time.
  if (t.np * int64_t(panel_bytes) <= kStreamPanelBytes) {
    // Streaming order: the first micro-panel streams the task's panels from memory straight
    // through (prefetched, 16-bit widened in registers); the others re-read them from L2, which
    // feeds the kernel faster than it consumes (64 bytes per 12 FMAs). Measured on Zen 5 this
    // matches or beats the blocked order below even at hundreds of rows, with or without widening.
    for (int mp = 0; mp < t.n_mp; ++mp)
      stream(mp_rows(mp), ph.k_len, a + size_t(mp) * a_stride, panel_ptr(t.p0, 0), panel_bytes, int(t.np), tile(0, mp), 0, 0);
    finish();
    return;
  }
  // Blocked order, for panels too long to stay in L2 (K above 8192 f32, 16384 16-bit): per K
  // block, the panel chunk (L1) meets every micro-panel of the block (L2), widened to f32 once.
  const MicroKernel micro = ph.kern->micro[ph.wtype];
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
      MicroKernel fn = micro;
      if (ph.wtype != kWF32) {  // widen the 16-bit chunk once for all micro-panels
        ph.kern->widen(ph.wtype, static_cast<const uint16_t*>(b), widened, kc * kNR);
        b = widened;
        fn = ph.kern->micro[kWF32];
      }
      for (int mp = 0; mp < t.n_mp; ++mp)
        fn(mp_rows(mp), kc, a + size_t(mp) * a_stride + a_at(k0), b, tile(pl, mp), k0 > 0);
    }
  }
  finish();
}

// Runs the tasks on the pool; `scratch` holds kThreadScratchFloats per pool thread.
template <class Epilogue>
void run_phase(const GemmPhase& ph, const std::vector<Task>& tasks, float* scratch, const Epilogue& epilogue) {
  parallel_for(int64_t(tasks.size()), [&](int64_t i, int thread) {
    float* tiles = scratch + size_t(thread) * kThreadScratchFloats;
    run_task(ph, tasks[size_t(i)], tiles, tiles + kTileScratchFloats, epilogue);
  });
}

}  // namespace cpu
}  // namespace moe
