// moe-kernels CUDA: permute, the GPU twin of permute() in native/backends/cpu/permute.cc: a stable counting
// sort of the T*k routing slots by expert, index-only (no activation is copied).
//
//   permute_histogram_kernel       per block of 2048 slots, the count of each bucket (shared-memory
//                                  atomics: counts do not depend on the order) -> counts [B, buckets]
//   permute_scan_blocks_kernel     one thread (B <= 8) or one warp (_wide_) per bucket: exclusive
//                                  prefix of its counts over the B blocks (in place), its total
//   permute_scan_buckets_kernel    one block: exclusive scan of the bucket totals, with the capacity
//                                  clamp (expert_offsets, dropped) and the invalid-id report
//   permute_scatter_kernel<mode>   per block: a stable rank of each slot among the block's slots of
//                                  its bucket (per-warp ballots, then a prefix over warps), plus the
//                                  block's base from the scans -> the slot's final position
//   permute_count_experts_kernel   expert counts for the general path (integer atomics)
//   permute_one_block_kernel       the fast path's three steps (histogram, bucket scan, scatter) in
//                                  one block, for up to kTileSlots slots (decode and small batches):
//                                  one launch instead of four, the same device functions, the same
//                                  results; the bucket counts stay in shared memory
//   launch_permute                 argument checks, workspace layout, the choice of path
//
// Fast path (E <= 1024): one pass whose buckets are the experts. General path (E up to 2^20 - 1):
// an LSD radix sort in two stable passes over the expert id's low and high bits (each <= 1024
// buckets), the first writing the slot order to the workspace, the second placing each slot at its
// expert's offset. Both give the CPU twin's order exactly: inside an expert, rows ascend by slot
// (= token order), and nothing depends on the timing of atomics, so results are bitwise identical
// across runs and backends.
//
// Id kNoExpert (-1, moe/route_rng.h: GShard random routing's dropped second slot): the slot goes to
// no expert (row_of = -1, no sorted row, counted neither in expert_offsets nor in dropped) and is not
// reported. Other invalid ids (outside [0, E)): such a slot is left out (row_of = -1, no sorted row, not counted in
// expert_offsets or dropped), nothing is written out of bounds, and the smallest such slot index
// (or -1) is written to the optional device int `first_invalid_slot`, from which the caller builds
// the CPU twin's error after the stream synchronises.
#include "cuda_compat.cuh"
#include "launchers.h"

#include <climits>

#include "../../include/moe/route_rng.h"

namespace moe {

namespace {
constexpr int kPermuteThreads = 256;
constexpr int kWarpLanes = 32;
constexpr int kPermuteWarps = kPermuteThreads / kWarpLanes;
constexpr int kItemsPerThread = 8;                             // elements per thread, kept in registers
constexpr int kWarpSlots = kWarpLanes * kItemsPerThread;       // consecutive elements per warp
static_assert(kWarpSlots <= 0xffff, "a warp's rank fits the low 16 bits");
constexpr int kTileSlots = kPermuteThreads * kItemsPerThread;  // consecutive elements per block
constexpr int kMaxBucketBits = 10;
constexpr int kMaxBuckets = 1 << kMaxBucketBits;  // per pass; also the fast path's largest E
constexpr int kSerialScanBlocks = 8;  // up to this many blocks, one thread walks a bucket's counts
constexpr int kScanThreads = 256;  // at most; fewer (whole warps) when there are few entries
constexpr int kScanWarps = kScanThreads / kWarpLanes;
constexpr int kScanItems = 16;     // consecutive entries per thread
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int32_t kNoSlot = INT_MAX;
// Slot indices stay in int32 with room for a tile past the end.
constexpr int64_t kMaxSlots = int64_t(1) << 30;
// General path: keys 0..E (E = "invalid", sorting last) in two passes of <= kMaxBucketBits each.
constexpr int kMaxExperts = (1 << (2 * kMaxBucketBits)) - 1;

static_assert(kScanWarps <= kWarpLanes, "the bucket scan's second level is one warp");
static_assert((1 + kPermuteWarps) * kMaxBuckets * sizeof(int32_t) <= 40 * 1024,
              "the scatter's per-warp counters (and the lone block's counts) fit the default shared memory, with "
              "room for the static arrays");
}  // namespace

// One pass of the sort: which elements, how a digit comes out of an element, where counts go.
// Element i is slot perm_in[i] (slot i when perm_in is null); its key is its expert id, or
// invalid_key when the id is outside [0, E) (-1: the slot is left out of the pass; E: it sorts last).
struct PermutePass {
  const int32_t* topk_ids;   // [n]
  const int32_t* perm_in;    // [n] or null
  int32_t num_elements;      // n = T * k
  int32_t num_experts;       // E
  int32_t invalid_key;
  int32_t shift, bits;       // digit = (key >> shift) & ((1 << bits) - 1)
  int32_t num_buckets;       // every digit is < num_buckets <= kMaxBuckets
  int32_t num_blocks;        // B = blocks of kTileSlots elements
  int32_t* block_counts;     // [B, num_buckets]: counts, then their exclusive prefix over blocks
  int32_t* bucket_totals;    // [num_buckets]
  int32_t* block_bad_slot;   // [B] smallest invalid slot of each block (kNoSlot if none), or null
};

// Where the scatter puts each element.
enum class ScatterMode {
  kDirect,  // fast path: buckets are experts; writes row_of, sorted_rows
  kToPerm,  // radix pass: writes perm_out[position] = slot
  kSorted,  // last radix pass: the position in the fully sorted order gives the expert position
};

struct ScatterOut {
  const int32_t* bucket_starts;   // [num_buckets] exclusive scan of bucket totals (kToPerm, kSorted)
  const int32_t* expert_starts;   // [E] exclusive scan of the expert counts, unclamped (kSorted)
  const int32_t* expert_offsets;  // [E+1] (kDirect, kSorted)
  int32_t capacity;               // -1: dropless
  int32_t top_k;
  int32_t* sorted_rows;           // [n] (kDirect, kSorted)
  int32_t* row_of;                // [n] (kDirect, kSorted)
  int32_t* perm_out;              // [n] (kToPerm)
};

struct Element {
  int32_t slot;   // -1 past the end
  int32_t key;
  int32_t digit;  // -1: not in this pass (past the end, or an invalid id left out)
  bool bad;       // a slot whose id is outside [0, E)
};

__device__ __forceinline__ Element load_element(const PermutePass& p, int i) {
  Element el{-1, -1, -1, false};
  if (i < p.num_elements) {
    el.slot = p.perm_in ? p.perm_in[i] : i;
    const int32_t id = p.topk_ids[el.slot];
    const bool no_expert = id < 0 || id >= p.num_experts;
    el.bad = no_expert && id != kNoExpert;  // kNoExpert (-1) is the explicit "no expert", not an error
    el.key = no_expert ? p.invalid_key : id;
    if (el.key >= 0) el.digit = (el.key >> p.shift) & ((1 << p.bits) - 1);
  }
  return el;
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_sum(T v) {
  const int lane = int(threadIdx.x) % kWarpLanes;
  MOE_UNROLL
  for (int offset = 1; offset < kWarpLanes; offset <<= 1) {
    const T other = __shfl_up_sync(kAllLanes, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

// Two non-negative int32 sums in one 64-bit value: lo in the low half, hi in the high half.
__device__ __forceinline__ long long pack_pair(int lo, int hi) {
  return (static_cast<long long>(hi) << 32) | static_cast<long long>(static_cast<unsigned>(lo));
}

// Element i of block b, chunk c of warp w, lane l: b * kTileSlots + w * kWarpSlots + c * 32 + l.
// The histogram and the scatter use the same mapping (the scatter's ranks depend on it).
__device__ __forceinline__ int element_index(int chunk) {
  return int(blockIdx.x) * kTileSlots + (int(threadIdx.x) / kWarpLanes) * kWarpSlots + chunk * kWarpLanes +
         int(threadIdx.x) % kWarpLanes;
}

// The block's count of each bucket into counts [num_buckets] (shared), and the smallest invalid slot
// of its elements (kNoSlot if none) into *block_bad (shared; only when `want_bad`). Ends with a
// __syncthreads: both are complete for every thread.
__device__ __forceinline__ void histogram_block(const PermutePass& p, int32_t* counts, int32_t* block_bad,
                                                bool want_bad) {
  for (int d = threadIdx.x; d < p.num_buckets; d += blockDim.x) counts[d] = 0;
  if (threadIdx.x == 0) *block_bad = kNoSlot;
  __syncthreads();
  int32_t bad = kNoSlot;
  MOE_UNROLL
  for (int c = 0; c < kItemsPerThread; ++c) {
    const Element el = load_element(p, element_index(c));
    if (el.bad) bad = min(bad, el.slot);
    if (el.digit >= 0) atomicAdd(&counts[el.digit], 1);
  }
  if (bad != kNoSlot && want_bad) atomicMin(block_bad, bad);
  __syncthreads();
}

__global__ void __launch_bounds__(kPermuteThreads) permute_histogram_kernel(PermutePass p) {
  MOE_DYNAMIC_SHARED(int32_t, counts);  // [num_buckets]
  MOE_SHARED(int32_t, block_bad, [1]);
  histogram_block(p, counts, &block_bad[0], p.block_bad_slot != nullptr);
  for (int d = threadIdx.x; d < p.num_buckets; d += blockDim.x)
    p.block_counts[int64_t(blockIdx.x) * p.num_buckets + d] = counts[d];
  if (threadIdx.x == 0 && p.block_bad_slot) p.block_bad_slot[blockIdx.x] = block_bad[0];
}

// Few blocks: one thread per bucket, walking the blocks in order (consecutive threads read
// consecutive counts).
__global__ void __launch_bounds__(kPermuteThreads) permute_scan_blocks_kernel(PermutePass p) {
  const int d = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (d >= p.num_buckets) return;
  int32_t* counts = p.block_counts + d;
  int run = 0;
#if defined(MOE_CUDA_REAL)
#pragma unroll 8  // independent loads in flight; the sum is the only chain
#endif
  for (int b = 0; b < p.num_blocks; ++b) {
    const int v = counts[int64_t(b) * p.num_buckets];
    counts[int64_t(b) * p.num_buckets] = run;
    run += v;
  }
  p.bucket_totals[d] = run;
}

// Many blocks: one warp per bucket, each lane walking a contiguous run of blocks, a warp scan of the
// lanes' sums in between (a thread walking all B blocks alone would be latency-bound for large B).
__global__ void __launch_bounds__(kPermuteThreads) permute_scan_blocks_wide_kernel(PermutePass p) {
  const int lane = int(threadIdx.x) % kWarpLanes;
  const int d = int(blockIdx.x) * (int(blockDim.x) / kWarpLanes) + int(threadIdx.x) / kWarpLanes;
  if (d >= p.num_buckets) return;  // the whole warp leaves: d is uniform across it
  const int per_lane = (p.num_blocks + kWarpLanes - 1) / kWarpLanes;
  const int b0 = min(lane * per_lane, p.num_blocks), b1 = min(b0 + per_lane, p.num_blocks);
  int32_t* counts = p.block_counts + d;
  int sum = 0;
  for (int b = b0; b < b1; ++b) sum += counts[int64_t(b) * p.num_buckets];
  const int incl = warp_inclusive_sum(sum);
  int run = incl - sum;
  for (int b = b0; b < b1; ++b) {
    const int v = counts[int64_t(b) * p.num_buckets];
    counts[int64_t(b) * p.num_buckets] = run;
    run += v;
  }
  if (lane == kWarpLanes - 1) p.bucket_totals[d] = incl;
}

// One block. starts[i] = sum of totals before i; kept_offsets[i] = the same over min(total, capacity)
// (capacity < 0: no clamp), kept_offsets[n] = their sum; dropped[i] = total - kept. Any output may
// be null. With first_invalid_slot: the minimum over block_bad_slot[num_blocks], -1 if none.
// Each thread scans kScanItems consecutive entries serially, the block scans the threads' sums. The
// two running sums travel packed in one 64-bit value (kept in the high half): both are <= T*k <
// 2^31, so the low half never carries into the high one.
// (The body is scan_buckets_block, shared with permute_one_block_kernel: whole warps, at most
// kScanThreads; thread 0's last writes, kept_offsets[n] and *first_invalid_slot, come after its last
// barrier.)
__device__ __forceinline__ void scan_buckets_block(const int32_t* totals, int n, int32_t capacity, int32_t* starts,
                                                   int32_t* kept_offsets, int32_t* dropped,
                                                   const int32_t* block_bad_slot, int num_blocks,
                                                   int32_t* first_invalid_slot) {
  MOE_SHARED(long long, warp_sums, [kScanWarps]);
  MOE_SHARED(long long, carry, [1]);
  MOE_SHARED(int32_t, first_bad, [1]);
  const int warp = int(threadIdx.x) / kWarpLanes, lane = int(threadIdx.x) % kWarpLanes;
  const int threads = int(blockDim.x), warps = threads / kWarpLanes;  // whole warps, <= kScanThreads
  if (threadIdx.x == 0) {
    carry[0] = 0;
    first_bad[0] = kNoSlot;
  }
  __syncthreads();
  for (int base = 0; base < n; base += threads * kScanItems) {  // uniform
    const int first = base + int(threadIdx.x) * kScanItems;
    int total[kScanItems];
    long long sum = 0;
    MOE_UNROLL
    for (int u = 0; u < kScanItems; ++u) {
      total[u] = first + u < n ? totals[first + u] : 0;
      sum += pack_pair(total[u], capacity < 0 ? total[u] : min(total[u], capacity));
    }
    const long long incl = warp_inclusive_sum(sum);
    if (lane == kWarpLanes - 1) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {  // each lane reads and writes only its own entry
      const long long w = warp_inclusive_sum(lane < warps ? warp_sums[lane] : 0ll);
      if (lane < warps) warp_sums[lane] = w;
    }
    __syncthreads();
    const long long before = carry[0] + (warp > 0 ? warp_sums[warp - 1] : 0ll) + incl - sum;
    int before_total = int(before & 0xffffffffll), before_kept = int(before >> 32);
    MOE_UNROLL
    for (int u = 0; u < kScanItems; ++u) {
      const int i = first + u;
      const int kept = capacity < 0 ? total[u] : min(total[u], capacity);
      if (i < n) {
        if (starts) starts[i] = before_total;
        if (kept_offsets) kept_offsets[i] = before_kept;
        if (dropped) dropped[i] = total[u] - kept;
      }
      before_total += total[u];
      before_kept += kept;
    }
    __syncthreads();  // everyone has read carry and warp_sums
    if (threadIdx.x == 0) carry[0] += warp_sums[warps - 1];
    __syncthreads();
  }
  if (threadIdx.x == 0 && kept_offsets) kept_offsets[n] = int(carry[0] >> 32);
  if (first_invalid_slot) {  // uniform
    int32_t m = kNoSlot;
    for (int b = threadIdx.x; b < num_blocks; b += threads) m = min(m, block_bad_slot[b]);
    if (m != kNoSlot) atomicMin(&first_bad[0], m);
    __syncthreads();
    if (threadIdx.x == 0) *first_invalid_slot = first_bad[0] == kNoSlot ? -1 : first_bad[0];
  }
}

__global__ void __launch_bounds__(kScanThreads)
    permute_scan_buckets_kernel(const int32_t* __restrict__ totals, int n, int32_t capacity,
                                int32_t* __restrict__ starts, int32_t* __restrict__ kept_offsets,
                                int32_t* __restrict__ dropped, const int32_t* __restrict__ block_bad_slot,
                                int num_blocks, int32_t* __restrict__ first_invalid_slot) {
  scan_buckets_block(totals, n, capacity, starts, kept_offsets, dropped, block_bad_slot, num_blocks, first_invalid_slot);
}

// The scatter of the block's elements. warp_counts: shared, [warps, num_buckets]. block_base: the
// block's first position per bucket before the bucket starts (the exclusive prefix of the counts
// over the blocks before it, [num_buckets] of this block), or null for 0 (a lone block).
template <ScatterMode kMode>
__device__ __forceinline__ void scatter_block(const PermutePass& p, const ScatterOut& o, int32_t* warp_counts,
                                              const int32_t* block_base) {
  const int warp = int(threadIdx.x) / kWarpLanes, lane = int(threadIdx.x) % kWarpLanes;
  const int nb = p.num_buckets;
  const int warps = int(blockDim.x) / kWarpLanes;
  for (int i = threadIdx.x; i < warps * nb; i += blockDim.x) warp_counts[i] = 0;
  __syncthreads();

  // 1. Rank of each element among the earlier elements of its warp with the same digit: lanes of
  // a chunk with equal digits found by one ballot per digit bit (the lanes whose digit agrees on
  // every bit), plus the warp's running count of that digit from earlier chunks.
  int32_t* my_counts = warp_counts + warp * nb;
  const unsigned lanes_before = (1u << lane) - 1u;
  // Per element, in registers: its slot (-1 past the end) and (digit << 16 | rank), -1 when it has
  // no digit (an invalid id in the fast path). rank < kWarpSlots, digit < kMaxBuckets.
  int32_t slot[kItemsPerThread], digit_rank[kItemsPerThread];
  MOE_UNROLL
  for (int c = 0; c < kItemsPerThread; ++c) slot[c] = -1;
  const int warp_first = int(blockIdx.x) * kTileSlots + warp * kWarpSlots;
  MOE_UNROLL
  for (int c = 0; c < kItemsPerThread; ++c) {
    if (warp_first + c * kWarpLanes >= p.num_elements) break;  // uniform: no element left in the warp
    const Element el = load_element(p, element_index(c));
    unsigned peers = __ballot_sync(kAllLanes, el.digit >= 0);
    for (int bit = 0; bit < p.bits; ++bit) {
      const bool set = (el.digit >> bit) & 1;
      const unsigned lanes_set = __ballot_sync(kAllLanes, set);
      peers &= set ? lanes_set : ~lanes_set;
    }
    slot[c] = el.slot;
    const int rank = el.digit >= 0 ? my_counts[el.digit] + __popc(peers & lanes_before) : 0;
    digit_rank[c] = el.digit >= 0 ? (el.digit << 16) | rank : -1;
    __syncwarp();  // every lane has read its count before the leaders update them
    if (el.digit >= 0 && (peers & lanes_before) == 0) my_counts[el.digit] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();

  // 2. Per bucket: warp w's first position = the block's base + the counts of warps before w.
  for (int d = threadIdx.x; d < nb; d += blockDim.x) {
    int run = block_base ? block_base[d] : 0;
    if (kMode != ScatterMode::kDirect) run += o.bucket_starts[d];
    for (int w = 0; w < warps; ++w) {
      const int count = warp_counts[w * nb + d];
      warp_counts[w * nb + d] = run;
      run += count;
    }
  }
  __syncthreads();

  // 3. Place. kDirect: position inside the expert; kToPerm/kSorted: position in the pass's order.
  MOE_UNROLL
  for (int c = 0; c < kItemsPerThread; ++c) {
    const int s = slot[c];
    if (s < 0) continue;
    if (digit_rank[c] < 0) {  // kDirect: an invalid id, left out
      o.row_of[s] = -1;
      continue;
    }
    const int digit = digit_rank[c] >> 16;
    const int pos = my_counts[digit] + (digit_rank[c] & 0xffff);
    if (kMode == ScatterMode::kToPerm) {
      o.perm_out[pos] = s;
      continue;
    }
    int expert = digit, in_expert = pos;
    if (kMode == ScatterMode::kSorted) {
      expert = p.topk_ids[s];  // re-read (cached) rather than kept in registers
      if (expert < 0 || expert >= p.num_experts) {  // an invalid id (it sorted last)
        o.row_of[s] = -1;
        continue;
      }
      in_expert = pos - o.expert_starts[expert];
    }
    if (o.capacity >= 0 && in_expert >= o.capacity) {
      o.row_of[s] = -1;
      continue;
    }
    const int row = o.expert_offsets[expert] + in_expert;
    o.row_of[s] = row;
    o.sorted_rows[row] = s / o.top_k;
  }
  if (kMode != ScatterMode::kToPerm) {  // sorted rows past the kept ones: -1 (this block's range)
    const int end = o.expert_offsets[p.num_experts];
    MOE_UNROLL
    for (int c = 0; c < kItemsPerThread; ++c) {
      const int i = element_index(c);
      if (i < p.num_elements && i >= end) o.sorted_rows[i] = -1;
    }
  }
}

template <ScatterMode kMode>
__global__ void __launch_bounds__(kPermuteThreads) permute_scatter_kernel(PermutePass p, ScatterOut o) {
  MOE_DYNAMIC_SHARED(int32_t, warp_counts);  // [warps, num_buckets]
  scatter_block<kMode>(p, o, warp_counts, p.block_counts + int64_t(blockIdx.x) * p.num_buckets);
}

// The fast path in one block (num_blocks == 1, E <= kMaxBuckets): the histogram's counts, in shared
// memory, are the bucket totals; the scan writes expert_offsets (o.expert_offsets, the same array)
// and dropped (and the invalid slot); the scatter reads expert_offsets back after a barrier. Dynamic shared memory: counts
// [num_buckets], then the scatter's [warps, num_buckets].
__global__ void __launch_bounds__(kPermuteThreads)
    permute_one_block_kernel(PermutePass p, ScatterOut o, int32_t* expert_offsets, int32_t* dropped,
                             int32_t* first_invalid_slot) {
  MOE_DYNAMIC_SHARED(int32_t, smem);
  MOE_SHARED(int32_t, block_bad, [1]);
  int32_t* counts = smem;
  histogram_block(p, counts, &block_bad[0], first_invalid_slot != nullptr);
  scan_buckets_block(counts, p.num_buckets, o.capacity, nullptr, expert_offsets, dropped, &block_bad[0], 1,
                     first_invalid_slot);
  __syncthreads();  // expert_offsets (thread 0 wrote the last one after the scan's last barrier)
  scatter_block<ScatterMode::kDirect>(p, o, smem + p.num_buckets, nullptr);
}

__global__ void __launch_bounds__(kPermuteThreads)
    permute_count_experts_kernel(const int32_t* __restrict__ topk_ids, int n, int num_experts,
                                 int32_t* __restrict__ counts) {
  const int stride = int(gridDim.x) * kPermuteThreads;
  for (int i = int(blockIdx.x) * kPermuteThreads + int(threadIdx.x); i < n; i += stride) {
    const int32_t e = topk_ids[i];
    if (e >= 0 && e < num_experts) atomicAdd(&counts[e], 1);
  }
}

namespace {

// Bits to write the values 0 .. n-1.
int bits_for(int64_t n) {
  int b = 0;
  while ((int64_t(1) << b) < n) ++b;
  return b;
}

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

// Workspace layout (byte offsets), shared by permute_workspace_bytes and the launcher.
struct PermutePlan {
  int32_t slots = 0, blocks = 0;
  bool direct = false;               // fast path: one pass, buckets = experts
  int lo_bits = 0, hi_bits = 0;      // general path: the two passes' digits
  int buckets = 0;                   // largest bucket count of a pass
  size_t block_counts = 0, bucket_totals = 0, bucket_starts = 0, block_bad = 0;  // every path
  size_t perm = 0, expert_counts = 0, expert_starts = 0;                         // general path
  size_t bytes = 0;
};

bool plan_permute(int64_t num_tokens, int top_k, int num_experts, PermutePlan* plan) {
  if (num_tokens < 0 || top_k < 1 || num_experts < 1 || num_experts > kMaxExperts) return false;
  if (num_tokens > kMaxSlots / top_k) return false;
  PermutePlan& L = *plan;
  L.slots = int32_t(num_tokens * top_k);
  L.blocks = L.slots == 0 ? 1 : (L.slots + kTileSlots - 1) / kTileSlots;  // one block even for no slot
  L.direct = num_experts <= kMaxBuckets;
  if (L.direct) {
    L.buckets = num_experts;
  } else {
    const int bits = bits_for(int64_t(num_experts) + 1);  // keys 0..E, E = invalid
    L.lo_bits = (bits + 1) / 2;
    L.hi_bits = bits - L.lo_bits;
    L.buckets = 1 << L.lo_bits;
  }
  size_t at = 0;
  auto take = [&at](size_t count) {
    const size_t offset = at;
    at += align_up(count * sizeof(int32_t));
    return offset;
  };
  L.block_counts = take(size_t(L.buckets) * size_t(L.blocks));
  L.bucket_totals = take(size_t(L.buckets));
  L.bucket_starts = take(size_t(L.buckets));
  L.block_bad = take(size_t(L.blocks));
  if (!L.direct) {
    L.perm = take(size_t(L.slots));
    L.expert_counts = take(size_t(num_experts));
    L.expert_starts = take(size_t(num_experts));
  }
  L.bytes = at;
  return true;
}

template <typename T>
T* at_offset(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(base) + offset);
}

// Whole warps enough for `n` entries (one thread each, or kScanItems each), at most `limit`.
unsigned warps_for(int64_t n, int per_thread, int limit) {
  const int64_t threads = (n + per_thread - 1) / per_thread;
  const int64_t rounded = (threads + kWarpLanes - 1) / kWarpLanes * kWarpLanes;
  return unsigned(rounded < kWarpLanes ? kWarpLanes : rounded > limit ? limit : rounded);
}

// Threads of the histogram and scatter blocks: kPermuteThreads, or for a lone block only the warps
// that hold elements (the element mapping is the same; a small batch then runs one or two warps).
unsigned tile_threads(const PermutePass& p) {
  return p.num_blocks == 1 ? warps_for(p.num_elements, kItemsPerThread, kPermuteThreads) : kPermuteThreads;
}

cudaError_t launch_count_and_scan(const PermutePass& p, cudaStream_t stream) {
  cudaError_t err = moe_launch(permute_histogram_kernel, dim3(unsigned(p.num_blocks)), dim3(tile_threads(p)),
                               size_t(p.num_buckets) * sizeof(int32_t), stream, p);
  if (err != cudaSuccess) return err;
  if (p.num_blocks > kSerialScanBlocks) {
    const unsigned buckets_per_block = kPermuteThreads / kWarpLanes;
    const unsigned grid = (unsigned(p.num_buckets) + buckets_per_block - 1) / buckets_per_block;
    return moe_launch(permute_scan_blocks_wide_kernel, dim3(grid), dim3(kPermuteThreads), 0, stream, p);
  }
  const unsigned threads = warps_for(p.num_buckets, 1, kPermuteThreads);
  return moe_launch(permute_scan_blocks_kernel, dim3((unsigned(p.num_buckets) + threads - 1) / threads),
                    dim3(threads), 0, stream, p);
}

cudaError_t launch_scan_buckets(const int32_t* totals, int n, int32_t capacity, int32_t* starts,
                                int32_t* kept_offsets, int32_t* dropped, const int32_t* block_bad_slot,
                                int num_blocks, int32_t* first_invalid_slot, cudaStream_t stream) {
  return moe_launch(permute_scan_buckets_kernel, dim3(1), dim3(warps_for(n, kScanItems, kScanThreads)), 0,
                    stream, totals, n, capacity, starts, kept_offsets, dropped, block_bad_slot, num_blocks,
                    first_invalid_slot);
}

// The fast path of a lone block (permute_one_block_kernel): the launch instead of launch_count_and_scan,
// launch_scan_buckets and launch_scatter<kDirect>.
cudaError_t launch_one_block(const PermutePass& p, const ScatterOut& o, int32_t* expert_offsets, int32_t* dropped,
                             int32_t* first_invalid_slot, cudaStream_t stream) {
  const unsigned threads = tile_threads(p);
  const size_t smem = (1 + size_t(threads / kWarpLanes)) * size_t(p.num_buckets) * sizeof(int32_t);
  return moe_launch(permute_one_block_kernel, dim3(1), dim3(threads), smem, stream, p, o, expert_offsets, dropped,
                    first_invalid_slot);
}

template <ScatterMode kMode>
cudaError_t launch_scatter(const PermutePass& p, const ScatterOut& o, cudaStream_t stream) {
  const unsigned threads = tile_threads(p);
  return moe_launch(permute_scatter_kernel<kMode>, dim3(unsigned(p.num_blocks)), dim3(threads),
                    size_t(threads / kWarpLanes) * size_t(p.num_buckets) * sizeof(int32_t), stream, p, o);
}

}  // namespace

size_t permute_workspace_bytes(int64_t num_tokens, int top_k, int num_experts) {
  PermutePlan plan;
  return plan_permute(num_tokens, top_k, num_experts, &plan) ? plan.bytes : 0;
}

cudaError_t launch_permute(const int32_t* topk_ids, int64_t num_tokens, int top_k, int num_experts,
                           int64_t capacity, int32_t* expert_offsets, int32_t* sorted_rows,
                           int32_t* row_of, int32_t* dropped, int32_t* first_invalid_slot,
                           void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  PermutePlan L;
  if (!plan_permute(num_tokens, top_k, num_experts, &L)) return cudaErrorInvalidValue;
  if (!expert_offsets || !workspace || workspace_bytes < L.bytes) return cudaErrorInvalidValue;
  if (L.slots > 0 && (!topk_ids || !sorted_rows || !row_of)) return cudaErrorInvalidValue;
  const int32_t cap = capacity < 0 ? -1 : int32_t(capacity < INT32_MAX ? capacity : INT32_MAX);

  PermutePass p{};
  p.topk_ids = topk_ids;
  p.num_elements = L.slots;
  p.num_experts = num_experts;
  p.num_blocks = L.blocks;
  p.block_counts = at_offset<int32_t>(workspace, L.block_counts);
  p.bucket_totals = at_offset<int32_t>(workspace, L.bucket_totals);
  p.block_bad_slot = at_offset<int32_t>(workspace, L.block_bad);
  int32_t* bucket_starts = at_offset<int32_t>(workspace, L.bucket_starts);

  ScatterOut o{};
  o.bucket_starts = bucket_starts;
  o.expert_offsets = expert_offsets;
  o.capacity = cap;
  o.top_k = top_k;
  o.sorted_rows = sorted_rows;
  o.row_of = row_of;

  cudaError_t err;
  if (L.direct) {
    // One pass: buckets are the experts; invalid ids are left out of it.
    p.invalid_key = -1;
    p.shift = 0;
    p.bits = bits_for(num_experts);
    p.num_buckets = num_experts;
    if (L.blocks == 1) return launch_one_block(p, o, expert_offsets, dropped, first_invalid_slot, stream);
    if ((err = launch_count_and_scan(p, stream)) != cudaSuccess) return err;
    err = launch_scan_buckets(p.bucket_totals, num_experts, cap, nullptr, expert_offsets, dropped,
                              p.block_bad_slot, L.blocks, first_invalid_slot, stream);
    if (err != cudaSuccess) return err;
    return launch_scatter<ScatterMode::kDirect>(p, o, stream);
  }

  // General path. Keys 0..E (invalid ids get E and sort last); pass 1 sorts the slots by the low
  // lo_bits of the key into `perm`, pass 2 stably by the rest, so the final order is by expert, then
  // by slot. Expert positions come from the expert counts, scanned with the capacity clamp.
  int32_t* perm = at_offset<int32_t>(workspace, L.perm);
  int32_t* expert_counts = at_offset<int32_t>(workspace, L.expert_counts);
  int32_t* expert_starts = at_offset<int32_t>(workspace, L.expert_starts);
  o.expert_starts = expert_starts;
  o.perm_out = perm;
  p.invalid_key = num_experts;

  p.shift = 0;
  p.bits = L.lo_bits;
  p.num_buckets = 1 << L.lo_bits;
  if ((err = launch_count_and_scan(p, stream)) != cudaSuccess) return err;
  err = launch_scan_buckets(p.bucket_totals, p.num_buckets, -1, bucket_starts, nullptr, nullptr, nullptr, 0,
                            nullptr, stream);
  if (err != cudaSuccess) return err;
  if ((err = launch_scatter<ScatterMode::kToPerm>(p, o, stream)) != cudaSuccess) return err;

  if ((err = cudaMemsetAsync(expert_counts, 0, size_t(num_experts) * sizeof(int32_t), stream)) != cudaSuccess)
    return err;
  const unsigned count_blocks = unsigned((L.slots + kPermuteThreads - 1) / kPermuteThreads);
  if (count_blocks > 0) {
    err = moe_launch(permute_count_experts_kernel, dim3(count_blocks < 4096 ? count_blocks : 4096u),
                     dim3(kPermuteThreads), 0, stream, topk_ids, L.slots, num_experts, expert_counts);
    if (err != cudaSuccess) return err;
  }
  err = launch_scan_buckets(expert_counts, num_experts, cap, expert_starts, expert_offsets, dropped,
                            p.block_bad_slot, L.blocks, first_invalid_slot, stream);
  if (err != cudaSuccess) return err;

  p.perm_in = perm;
  p.block_bad_slot = nullptr;  // reported from pass 1
  p.shift = L.lo_bits;
  p.bits = L.hi_bits;
  p.num_buckets = (num_experts >> L.lo_bits) + 1;
  if ((err = launch_count_and_scan(p, stream)) != cudaSuccess) return err;
  err = launch_scan_buckets(p.bucket_totals, p.num_buckets, -1, bucket_starts, nullptr, nullptr, nullptr, 0,
                            nullptr, stream);
  if (err != cudaSuccess) return err;
  return launch_scatter<ScatterMode::kSorted>(p, o, stream);
}

}  // namespace moe
