// test/emu: native/backends/cuda/grouped_gemm.cu run in the emulator against a scalar reference written
// here from the op's semantics (DESIGN.md "grouped GEMM"): for each sorted row r of expert e and its
// token t, h = silu(W1_e x_t) * (W3_e x_t), y_r = W2_e h, accumulated in double from the same rounded
// inputs the kernels see (x rounded to the weight dtype; h rounded to it between the GEMMs).
// Tolerance against max|ref|: 1e-4 for f32 weights, 1e-2 for bf16, 2e-3 for f16.
// Paths: tensor cores (f16/bf16, d % 8 == f % 8 == 0), SIMT (f32 and the general fallback), decode
// (max_rows <= 16, vector and scalar loads). Shapes: d=64 f=128 E=3 T=33 k=2; d=128 f=256 E=8 T=64
// k=2; tails d=40 f=56; general d=33 f=47; decode T=1..4; experts with no rows, all rows on one
// expert, E=1; rows past R (max_rows > R); x in another dtype or misaligned. The smallest shape of
// each path under every schedule (bf16: synchronisation does not depend on the dtype), the rest under
// round-robin. run.sh runs this file in three builds, one with ucontext fibers (~30x slower at warp
// collectives): keep the case count low.
#include "../../native/backends/cuda/cuda_compat.cuh"
#include "../../native/backends/cuda/launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "dev_dtype.h"
#include "schedules.h"

namespace {

using emu_test::kAllSchedules;
using emu_test::ScheduleScope;
using emu_test::SmemOptinScope;
using emu_test::dtype_name;
using emu_test::elem_bytes;
using emu_test::round_to;
using emu_test::store_as;
using emu_test::load_as;

using moe::DevDType;
using moe::GroupedGemmPath;

const char* path_name(GroupedGemmPath p) {
  switch (p) {
    case GroupedGemmPath::kAuto: return "auto";
    case GroupedGemmPath::kDecode: return "decode";
    case GroupedGemmPath::kTensorCores: return "tensor-cores";
    case GroupedGemmPath::kSimt: return "simt";
  }
  return "?";
}

// 256-byte aligned "device" memory (the emulator's device memory is host memory).
struct Buffer {
  unsigned char* mem = nullptr;
  explicit Buffer(size_t n) : mem(static_cast<unsigned char*>(std::aligned_alloc(256, (n + 255) / 256 * 256 + 256))) {}
  Buffer(Buffer&& o) noexcept : mem(o.mem) { o.mem = nullptr; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(mem); }
  unsigned char* data() const { return mem; }
};

struct Rng {
  uint64_t s;
  double next() {  // [0, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return double(s >> 11) / double(1ull << 53);
  }
  float sym(double scale) { return float((next() * 2 - 1) * scale); }
};

enum class Routing {
  kRandom,     // k distinct random experts per token
  kSubset,     // k distinct experts among {1, 2, E-1}: the other experts get no rows
  kAllToLast,  // k == 1: every token to expert E-1 (all rows on one expert)
};

struct Case {
  int64_t T = 1;
  int k = 1, E = 1;
  int64_t d = 64, f = 128;
  DevDType w = DevDType::kBF16, x = DevDType::kBF16;
  Routing routing = Routing::kRandom;
  GroupedGemmPath path = GroupedGemmPath::kAuto;
  GroupedGemmPath expect = GroupedGemmPath::kAuto;  // the path kAuto must pick (kAuto: don't check)
  int64_t extra_rows = 0;  // max_rows = T*k + extra_rows (rows past R must stay untouched)
  size_t x_misalign = 0;   // bytes added to x's address (an element multiple)
};

std::string describe_case(const Case& c) {
  return "T=" + std::to_string(c.T) + " k=" + std::to_string(c.k) + " E=" + std::to_string(c.E) +
         " d=" + std::to_string(c.d) + " f=" + std::to_string(c.f) + " w=" + dtype_name(c.w) +
         " x=" + dtype_name(c.x) + " path=" + path_name(c.path) +
         (c.path == GroupedGemmPath::kAuto
              ? std::string("->") +
                    path_name(moe::grouped_gemm_path(c.T * c.k + c.extra_rows, c.d, c.f, c.w))
              : std::string()) +
         " (" +
         moe_emu::schedule_name(moe_emu::schedule()) + ")";
}

// The routing's permute (stable counting sort by expert): expert_offsets [E+1], sorted_rows [T*k].
void make_routing(const Case& c, Rng& rng, std::vector<int32_t>* offsets, std::vector<int32_t>* sorted_rows) {
  std::vector<int32_t> ids(size_t(c.T * c.k));
  const std::vector<int> subset = {1 % c.E, 2 % c.E, c.E - 1};
  for (int64_t t = 0; t < c.T; ++t) {
    for (int j = 0; j < c.k; ++j) {
      int e = 0;
      for (bool taken = true; taken;) {
        switch (c.routing) {
          case Routing::kRandom: e = int(rng.next() * c.E); break;
          case Routing::kSubset: e = subset[size_t(rng.next() * 3)]; break;
          case Routing::kAllToLast: e = c.E - 1; break;
        }
        taken = false;
        for (int i = 0; i < j; ++i) taken = taken || ids[size_t(t * c.k + i)] == e;
      }
      ids[size_t(t * c.k + j)] = e;
    }
  }
  offsets->assign(size_t(c.E) + 1, 0);
  for (int32_t e : ids) (*offsets)[size_t(e) + 1]++;
  for (int e = 0; e < c.E; ++e) (*offsets)[size_t(e) + 1] += (*offsets)[size_t(e)];
  sorted_rows->assign(ids.size(), -1);
  std::vector<int32_t> fill(offsets->begin(), offsets->end() - 1);
  for (size_t s = 0; s < ids.size(); ++s) (*sorted_rows)[size_t(fill[size_t(ids[s])]++)] = int32_t(s / size_t(c.k));
}

double tolerance(DevDType w) {
  switch (w) {
    case DevDType::kF32: return 1e-4;
    case DevDType::kF16: return 2e-3;
    case DevDType::kBF16: return 1e-2;
  }
  return 0;
}

// Compares got [rows, cols] with ref: |got - ref| <= tol * max|ref|. Returns false after recording.
template <typename Got>
bool compare(const std::string& what, const char* name, const std::vector<double>& ref, int64_t rows, int64_t cols,
             const Got& got, double tol) {
  double scale = 0;
  for (double v : ref) scale = std::max(scale, std::fabs(v));
  const double bound = tol * std::max(scale, 1e-30);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = 0; n < cols; ++n) {
      const size_t i = size_t(r * cols + n);
      const double g = got(i);
      if (!(std::fabs(g - ref[i]) <= bound)) {
        emu_test::fail(__FILE__, __LINE__, what + ": " + name + "[" + std::to_string(r) + "," + std::to_string(n) +
                                               "] = " + emu_test::describe(g) + ", want " +
                                               emu_test::describe(ref[i]) + " (max|ref| " +
                                               emu_test::describe(scale) + ")");
        return false;
      }
    }
  return true;
}

bool run_case(const Case& c) {
  const std::string what = describe_case(c);
  Rng rng{uint64_t(c.T * 7919 + c.E * 131 + c.d * 17 + c.f + int(c.w) * 3 + int(c.x))};
  std::vector<int32_t> offsets, sorted_rows;
  make_routing(c, rng, &offsets, &sorted_rows);
  const int64_t R = offsets[size_t(c.E)], max_rows = c.T * c.k + c.extra_rows;
  if (c.expect != GroupedGemmPath::kAuto && moe::grouped_gemm_path(max_rows, c.d, c.f, c.w) != c.expect) {
    emu_test::fail(__FILE__, __LINE__, what + ": kAuto does not pick " + path_name(c.expect));
    return false;
  }

  // Inputs, rounded to their dtypes; xr: x as the kernels read it (rounded to the weight dtype).
  std::vector<float> x(size_t(c.T * c.d)), xr(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = round_to(rng.sym(1.0), c.x);
    xr[i] = round_to(x[i], c.w);
  }
  const double ws1 = 2.0 / std::sqrt(double(c.d)), ws2 = 2.0 / std::sqrt(double(c.f));
  std::vector<std::vector<float>> w1(size_t(c.E)), w3(size_t(c.E)), w2(size_t(c.E));
  std::vector<Buffer> w1b, w3b, w2b;
  std::vector<const void*> w1p, w3p, w2p;
  for (int e = 0; e < c.E; ++e) {
    w1[size_t(e)].resize(size_t(c.f * c.d));
    w3[size_t(e)].resize(size_t(c.f * c.d));
    w2[size_t(e)].resize(size_t(c.d * c.f));
    w1b.emplace_back(w1[size_t(e)].size() * elem_bytes(c.w));
    w3b.emplace_back(w3[size_t(e)].size() * elem_bytes(c.w));
    w2b.emplace_back(w2[size_t(e)].size() * elem_bytes(c.w));
    for (size_t i = 0; i < w1[size_t(e)].size(); ++i) {
      w1[size_t(e)][i] = round_to(rng.sym(ws1), c.w);
      w3[size_t(e)][i] = round_to(rng.sym(ws1), c.w);
      w2[size_t(e)][i] = round_to(rng.sym(ws2), c.w);
      store_as(w1b.back().data(), i, w1[size_t(e)][i], c.w);
      store_as(w3b.back().data(), i, w3[size_t(e)][i], c.w);
      store_as(w2b.back().data(), i, w2[size_t(e)][i], c.w);
    }
  }
  for (int e = 0; e < c.E; ++e) {
    w1p.push_back(w1b[size_t(e)].data());
    w3p.push_back(w3b[size_t(e)].data());
    w2p.push_back(w2b[size_t(e)].data());
  }

  // Reference in double; h rounded to the weight dtype as the kernels store it.
  std::vector<double> h_ref(size_t(R * c.f)), y_ref(size_t(R * c.d));
  std::vector<double> h_row(size_t(c.f));
  for (int e = 0; e < c.E; ++e)
    for (int64_t r = offsets[size_t(e)]; r < offsets[size_t(e) + 1]; ++r) {
      const float* xt = &xr[size_t(sorted_rows[size_t(r)] * c.d)];
      for (int64_t n = 0; n < c.f; ++n) {
        double a = 0, b = 0;
        for (int64_t i = 0; i < c.d; ++i) {
          a += double(w1[size_t(e)][size_t(n * c.d + i)]) * xt[i];
          b += double(w3[size_t(e)][size_t(n * c.d + i)]) * xt[i];
        }
        const double h = a / (1 + std::exp(-a)) * b;
        h_ref[size_t(r * c.f + n)] = h;
        h_row[size_t(n)] = round_to(float(h), c.w);
      }
      for (int64_t n = 0; n < c.d; ++n) {
        double acc = 0;
        for (int64_t i = 0; i < c.f; ++i) acc += double(w2[size_t(e)][size_t(n * c.f + i)]) * h_row[size_t(i)];
        y_ref[size_t(r * c.d + n)] = acc;
      }
    }

  // Device buffers.
  const size_t packed_bytes = moe::grouped_gemm_packed_bytes(c.E, c.d, c.f, c.w);
  const size_t ws_bytes = moe::grouped_gemm_workspace_bytes(c.T, max_rows, c.d, c.f, c.w);
  if (packed_bytes == 0 || ws_bytes == 0) {
    emu_test::fail(__FILE__, __LINE__, what + ": zero packed/workspace size");
    return false;
  }
  Buffer packed(packed_bytes), ws(ws_bytes), xb(x.size() * elem_bytes(c.x) + c.x_misalign),
      yb(size_t(max_rows * c.d) * sizeof(float));
  std::memset(packed.data(), 0xA5, packed_bytes);  // the packer must write every byte it owns
  if (moe::grouped_gemm_pack(c.E, c.d, c.f, c.w, w1p.data(), w3p.data(), w2p.data(), packed.data(), packed_bytes) !=
      cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": grouped_gemm_pack failed");
    return false;
  }
  void* xdev = xb.data() + c.x_misalign;
  for (size_t i = 0; i < x.size(); ++i) store_as(xdev, i, x[i], c.x);
  std::memset(ws.data(), 0xFF, ws_bytes);  // NaN in every float type: unwritten h shows
  float* y = reinterpret_cast<float*>(yb.data());
  std::fill(y, y + max_rows * c.d, -12345.f);
  std::vector<int32_t> rows_padded(size_t(max_rows), -1);  // [max_rows], -1 past R like permute's
  std::copy(sorted_rows.begin(), sorted_rows.end(), rows_padded.begin());
  const int32_t* rows_dev = rows_padded.data();

  const cudaError_t err = moe::launch_grouped_gemm(xdev, c.x, c.T, rows_dev, offsets.data(), max_rows, packed.data(),
                                                   c.E, c.d, c.f, c.w, y, ws.data(), ws_bytes, nullptr, c.path);
  if (err != cudaSuccess) {
    emu_test::fail(__FILE__, __LINE__, what + ": " + moe_error_string(err));
    return false;
  }
  const void* h = ws.data();  // the workspace starts with h [max_rows][f]
  const double tol = tolerance(c.w);
  if (!compare(what, "h", h_ref, R, c.f, [&](size_t i) { return load_as(h, i, c.w); }, tol)) return false;
  if (!compare(what, "y", y_ref, R, c.d, [&](size_t i) { return y[i]; }, tol)) return false;
  for (int64_t i = R * c.d; i < max_rows * c.d; ++i)
    if (y[i] != -12345.f) {
      emu_test::fail(__FILE__, __LINE__, what + ": y written past R at element " + std::to_string(i));
      return false;
    }
  return true;
}


// x_dtype < 0: x in the weight dtype.
Case make(int64_t T, int k, int E, int64_t d, int64_t f, DevDType w, int x_dtype = -1) {
  Case c;
  c.T = T, c.k = k, c.E = E, c.d = d, c.f = f, c.w = w;
  c.x = x_dtype < 0 ? w : DevDType(x_dtype);
  return c;
}

Case with_path(Case c, GroupedGemmPath expect) {
  c.expect = expect;
  return c;
}

}  // namespace

// ---- tensor cores -----------------------------------------------------------------------------------

// The schedule matters for a kernel's synchronisation, not for its dtype: bf16 under every schedule,
// f16 under round-robin (the default).
TEST(grouped_gemm_tensor_cores_small_every_schedule) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    if (!run_case(with_path(make(33, 2, 3, 64, 128, DevDType::kBF16), GroupedGemmPath::kTensorCores))) return;
  }
  run_case(with_path(make(33, 2, 3, 64, 128, DevDType::kF16), GroupedGemmPath::kTensorCores));
}

TEST(grouped_gemm_tensor_cores_mixtral_like_d128_f256_e8) {
  run_case(with_path(make(64, 2, 8, 128, 256, DevDType::kBF16), GroupedGemmPath::kTensorCores));
}

// The 128x128 tile with 8 warps and 4 stages in 80 KB of dynamic shared memory (opted in), taken when
// max_rows >= 256 * E: 300 rows on one expert with K and N tails (d = 136: 5 k-tiles, the last
// partial, so the 4-stage pipeline refills; N = 2 * 200 and 136: partial column tiles), under every
// schedule (the race detector is on in run.sh); then 1200 rows over 4 experts, and over 3 of 4.
TEST(grouped_gemm_tensor_cores_large_tile) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    if (!run_case(with_path(make(300, 1, 1, 136, 200, DevDType::kBF16), GroupedGemmPath::kTensorCores))) return;
  }
  if (!run_case(with_path(make(600, 2, 4, 128, 256, DevDType::kF16), GroupedGemmPath::kTensorCores))) return;
  Case c = with_path(make(600, 2, 4, 64, 128, DevDType::kBF16), GroupedGemmPath::kTensorCores);
  c.routing = Routing::kSubset;
  run_case(c);
}

// The 128x256x64 tile with 8 warps of 64x64 and 4 stages in 216 KB, taken for the same row counts
// where a block may opt in to that much (sm_90/100's 227 KB, set here): 300 rows on one expert with
// K and N tails (d = 136: 3 k-tiles of 64, the last partial, fewer than the stages; N = 2 * 200 and
// 136: partial column tiles) under every schedule with the race detector; K = 2 * 4 * 64 + 8 (9
// k-tiles: the pipeline wraps twice) with 1200 rows over 4 experts; and over 3 of 4.
TEST(grouped_gemm_tensor_cores_wide_tile_sm90) {
  SmemOptinScope sm90(227 * 1024);
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    if (!run_case(with_path(make(300, 1, 1, 136, 200, DevDType::kBF16), GroupedGemmPath::kTensorCores))) return;
  }
  if (!run_case(with_path(make(600, 2, 4, 520, 264, DevDType::kF16), GroupedGemmPath::kTensorCores))) return;
  Case c = with_path(make(600, 2, 4, 64, 128, DevDType::kBF16), GroupedGemmPath::kTensorCores);
  c.routing = Routing::kSubset;
  run_case(c);
}

TEST(grouped_gemm_tensor_cores_tails_d40_f56) {
  // K = 40 is not a multiple of the 32-wide k tile, N = 2*56 = 112 not of the 128-wide n tile.
  for (DevDType w : {DevDType::kBF16, DevDType::kF16})
    if (!run_case(with_path(make(33, 2, 3, 40, 56, w), GroupedGemmPath::kTensorCores))) return;
}

TEST(grouped_gemm_tensor_cores_empty_experts_one_expert_e1_rows_past_r) {
  Case c = make(40, 2, 8, 64, 128, DevDType::kBF16);
  c.routing = Routing::kSubset;  // five experts without rows
  if (!run_case(c)) return;
  c = make(70, 1, 4, 64, 128, DevDType::kBF16);
  c.routing = Routing::kAllToLast;  // 70 rows on one expert: two m tiles, the second partial
  if (!run_case(c)) return;
  c = make(20, 1, 1, 64, 64, DevDType::kF16);  // E = 1
  if (!run_case(c)) return;
  c = make(20, 2, 5, 64, 64, DevDType::kBF16);
  c.extra_rows = 30;  // R < max_rows, as after capacity drops
  if (!run_case(c)) return;
  // Decode-sized batches forced onto the tile path: tiles that are nearly all zero-filled rows.
  c = make(3, 2, 8, 64, 128, DevDType::kBF16);
  c.path = GroupedGemmPath::kTensorCores;
  if (!run_case(c)) return;
}

TEST(grouped_gemm_activation_dtypes_and_alignment) {
  Case c = make(33, 2, 3, 64, 128, DevDType::kBF16, int(DevDType::kF32));  // converted to bf16 first
  if (!run_case(c)) return;
  c = make(33, 2, 3, 64, 128, DevDType::kF16, int(DevDType::kBF16));
  if (!run_case(c)) return;
  c = make(33, 2, 3, 64, 128, DevDType::kBF16);
  c.x_misalign = 2;  // same dtype, not 16-byte aligned: copied
  if (!run_case(c)) return;
  c = make(3, 2, 3, 64, 128, DevDType::kF32, int(DevDType::kBF16));  // decode, bf16 x widened to f32
  if (!run_case(c)) return;
}

// ---- SIMT: f32, and the general fallback ------------------------------------------------------------

TEST(grouped_gemm_simt_f32_small_every_schedule) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    if (!run_case(with_path(make(33, 2, 3, 64, 128, DevDType::kF32), GroupedGemmPath::kSimt))) return;
  }
}

TEST(grouped_gemm_simt_general_d33_f47) {
  for (DevDType w : {DevDType::kF32, DevDType::kBF16, DevDType::kF16})
    if (!run_case(with_path(make(33, 2, 3, 33, 47, w), GroupedGemmPath::kSimt))) return;
  Case c = make(40, 2, 8, 33, 47, DevDType::kF32);
  c.routing = Routing::kSubset;
  if (!run_case(c)) return;
  c = make(33, 2, 3, 64, 128, DevDType::kBF16);  // forced: the fallback on a tensor-core shape
  c.path = GroupedGemmPath::kSimt;
  if (!run_case(c)) return;
}

// ---- decode -------------------------------------------------------------------------------------------

TEST(grouped_gemm_decode_every_schedule) {
  for (moe_emu::Schedule s : kAllSchedules) {
    ScheduleScope scope(s);
    if (!run_case(with_path(make(1, 2, 8, 64, 128, DevDType::kBF16), GroupedGemmPath::kDecode))) return;
    if (!run_case(with_path(make(3, 2, 8, 64, 128, DevDType::kBF16), GroupedGemmPath::kDecode))) return;
  }
}

TEST(grouped_gemm_decode_tokens_1_to_4_and_shapes) {
  // Every dtype at T = 1 (one row per pass) and T = 4 (four); the emulator's warp collectives are
  // slow with ucontext fibers, so the case count stays low.
  for (int64_t T : {1, 2, 4})
    for (DevDType w : {DevDType::kBF16, DevDType::kF16, DevDType::kF32})
      if ((T != 2 || w == DevDType::kF16) &&
          !run_case(with_path(make(T, 2, 8, 64, 128, w), GroupedGemmPath::kDecode)))
        return;
  // Scalar loads (K not a multiple of 16 bytes), E = 1, all rows on one expert, 16 rows.
  for (DevDType w : {DevDType::kBF16, DevDType::kF32})
    if (!run_case(with_path(make(3, 2, 3, 33, 47, w), GroupedGemmPath::kDecode))) return;
  if (!run_case(make(4, 1, 1, 40, 56, DevDType::kBF16))) return;
  Case c = make(16, 1, 5, 64, 128, DevDType::kBF16);
  c.routing = Routing::kAllToLast;
  if (!run_case(with_path(c, GroupedGemmPath::kDecode))) return;
  // One pass over the weights for every row bound: 8 rows (T = 8, k = 2) and 16 (all on one expert),
  // with K long enough for the unrolled steps of the k loop and a remainder step (GEMM1 K = d,
  // GEMM2 K = f, 256 bf16 per step of a warp).
  if (!run_case(with_path(make(8, 2, 4, 512, 768, DevDType::kBF16), GroupedGemmPath::kDecode))) return;
  c = make(16, 1, 2, 768, 1280, DevDType::kBF16);
  c.routing = Routing::kAllToLast;
  if (!run_case(with_path(c, GroupedGemmPath::kDecode))) return;
  c = make(4, 2, 64, 64, 64, DevDType::kF16);  // E = 64: the expert scan takes two steps
  if (!run_case(with_path(c, GroupedGemmPath::kDecode))) return;
  c = make(5, 2, 40, 64, 64, DevDType::kBF16);
  c.path = GroupedGemmPath::kTensorCores;  // E = 40 through the tile scan
  if (!run_case(c)) return;
}

// ---- arguments ------------------------------------------------------------------------------------------

TEST(grouped_gemm_rejects_bad_arguments) {
  const int E = 2;
  const int64_t d = 64, f = 64, T = 4, max_rows = 8;
  const size_t pb = moe::grouped_gemm_packed_bytes(E, d, f, DevDType::kBF16);
  const size_t wb = moe::grouped_gemm_workspace_bytes(T, max_rows, d, f, DevDType::kBF16);
  CHECK(pb > 0 && wb > 0);
  CHECK_EQ(moe::grouped_gemm_packed_bytes(0, d, f, DevDType::kBF16), size_t(0));
  CHECK_EQ(moe::grouped_gemm_packed_bytes(E, 0, f, DevDType::kBF16), size_t(0));
  CHECK_EQ(moe::grouped_gemm_packed_bytes(E, d, f, DevDType(7)), size_t(0));
  CHECK_EQ(moe::grouped_gemm_workspace_bytes(-1, max_rows, d, f, DevDType::kBF16), size_t(0));
  Buffer packed(pb), ws(wb), x(size_t(T * d) * 2), y(size_t(max_rows * d) * 4);
  std::vector<int32_t> offsets = {0, 4, 8}, rows = {0, 1, 2, 3, 0, 1, 2, 3};
  float* yp = reinterpret_cast<float*>(y.data());
  auto launch = [&](const void* xp, int64_t mr, void* wsp, size_t wsb, GroupedGemmPath path) {
    return moe::launch_grouped_gemm(xp, DevDType::kBF16, T, rows.data(), offsets.data(), mr, packed.data(), E, d, f,
                                    DevDType::kBF16, yp, wsp, wsb, nullptr, path);
  };
  CHECK(launch(x.data(), max_rows, ws.data(), wb - 1, GroupedGemmPath::kAuto) == cudaErrorInvalidValue);
  CHECK(launch(nullptr, max_rows, ws.data(), wb, GroupedGemmPath::kAuto) == cudaErrorInvalidValue);
  CHECK(launch(x.data(), max_rows, ws.data() + 8, wb, GroupedGemmPath::kAuto) == cudaErrorInvalidValue);
  CHECK(launch(x.data(), -1, ws.data(), wb, GroupedGemmPath::kAuto) == cudaErrorInvalidValue);
  CHECK_OK(launch(x.data(), 0, ws.data(), wb, GroupedGemmPath::kAuto));  // nothing to do
  // bf16 x at an odd address:
  CHECK(launch(x.data() + 1, max_rows, ws.data(), wb, GroupedGemmPath::kAuto) == cudaErrorInvalidValue);
  CHECK(moe::launch_grouped_gemm(x.data(), DevDType::kF32, T, rows.data(), offsets.data(), max_rows, packed.data(),
                                 E, d, 60, DevDType::kF32, yp, ws.data(), wb, nullptr,
                                 GroupedGemmPath::kTensorCores) == cudaErrorInvalidValue);
  std::vector<const void*> none(size_t(E), nullptr);
  CHECK(moe::grouped_gemm_pack(E, d, f, DevDType::kBF16, none.data(), none.data(), none.data(), packed.data(), pb) ==
        cudaErrorInvalidValue);
  CHECK(moe::grouped_gemm_path(16, 64, 64, DevDType::kBF16) == GroupedGemmPath::kDecode);
  CHECK(moe::grouped_gemm_path(17, 64, 64, DevDType::kBF16) == GroupedGemmPath::kTensorCores);
  CHECK(moe::grouped_gemm_path(17, 64, 60, DevDType::kF16) == GroupedGemmPath::kSimt);
  CHECK(moe::grouped_gemm_path(17, 64, 64, DevDType::kF32) == GroupedGemmPath::kSimt);
}
