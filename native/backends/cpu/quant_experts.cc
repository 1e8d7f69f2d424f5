// CPU grouped GEMM and linear layer over quantised weights (moe/quant.h), chosen by grouped_gemm()
// and linear() when the packed weights are quantised.
//
// The kernels take ggml's layout as it is: per expert, W1 and W3 as f rows of d values and W2 as d
// rows of f values, each row whole blocks. So packing either keeps pointers into the caller's bytes
// when the source says they stay (ExpertWeightSource::keep_alive: a GGUF file the package mapped;
// no copy, the mapping held), or copies each expert's W1, W3 and W2 once into its own buffer (the
// caller's bytes may then be dropped). GEMM1 reads row j of W1 and row j of W3 for hidden unit j.
//
// Two paths, by the number of tokens T of the call (the same for every expert):
//   decode (T <= kDecodeTokens): the activations are quantised to 8 bits per block (ActQ8 of
//     quant_kernels.h) and every output is an integer dot product against a weight row
//     (vpdpbusd / vpmaddubsw / portable, the table of quant_kernels()). The weights stream once.
//   prefill: a K chunk of kNR weight rows is dequantised to an f32 panel in L1 (the table's SIMD
//     dequantiser) and the f32 micro-kernel of the GEMM tables (gemm_kernels.h) runs every
//     micro-panel of tokens against it, as the bf16 path does with its widened chunks.
// Each output is one fixed chain of operations in both paths, so results never depend on the thread
// count; they do depend on which path ran (within the bf16 tolerance of each other).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "cpu_ops.h"
#include "panel_gemm.h"
#include "quant_kernels.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

namespace {

constexpr int64_t kDecodeTokens = 8;  // T at or below this takes the integer-dot path

// kDecodeTokens, or MOE_CPU_QUANT_DECODE_TOKENS (read once): the bench sets it high to measure the
// integer-dot path at prefill sizes against the dequantised panels.
int64_t decode_tokens() {
  static const int64_t v = [] {
    const char* s = std::getenv("MOE_CPU_QUANT_DECODE_TOKENS");
    return s && *s ? std::max<int64_t>(0, std::atoll(s)) : kDecodeTokens;
  }();
  return v;
}
constexpr int64_t kRowsPerTask1 = 64;   // GEMM1 hidden units per decode task (~300 KB of q4_k at d=4096)
constexpr int64_t kRowsPerTask2 = 64;   // GEMM2 output columns per decode task (~500 KB at f=14336)
constexpr int kPrefetchRows = 4;        // decode: weight rows requested ahead of the one being dotted
constexpr int kTokTile = 8;            // activation rows per decode tile (<= kDecodeTokens * top_k is typical)
constexpr int64_t kKChunk = 256;       // prefill: K values dequantised per panel chunk (a multiple of every block)

float silu_mul(float g, float u) { return g / (1.f + std::exp(-g)) * u; }

struct QuantPackedExperts final : PackedExperts {
  AlignedBuffer buf;                  // the copies, unless the weights are read in place
  std::shared_ptr<const void> owner;  // holds the caller's bytes when they are read in place
  size_t row1 = 0, row2 = 0;          // bytes of a W1/W3 row (d values) and of a W2 row (f values)
  std::vector<const uint8_t*> w1s, w3s, w2s;  // per expert: [f rows], [f rows], [d rows]
  std::vector<uint8_t> gate_data;
  TensorView gate;
  size_t bytes() const override { return buf.size() + gate_data.size(); }
  const uint8_t* w1(int e) const { return w1s[size_t(e)]; }
  const uint8_t* w3(int e) const { return w3s[size_t(e)]; }
  const uint8_t* w2(int e) const { return w2s[size_t(e)]; }
};

struct QuantPackedLinear final : PackedLinear {
  AlignedBuffer buf;
  size_t row = 0;
  std::vector<float> bias;
  size_t bytes() const override { return buf.size() + bias.size() * sizeof(float); }
};

// ---- decode: quantised activations, integer dots -----------------------------------------------
// act[r] = quantised x[src(r)] for r < R (src = sorted_rows[r], or r).
void quantize_rows_act(const QuantKernels& k, DType wt, const float* x, int64_t n, const int32_t* sorted_rows, int64_t R,
                       uint8_t* act) {
  const size_t ab = act_row_bytes(wt, n);
  auto row = [&](int64_t r, int) {
    const float* src = x + size_t(sorted_rows ? sorted_rows[r] : r) * size_t(n);
    if (act_is_256(wt))
      k.quantize_act256(src, n, reinterpret_cast<ActQ8_256*>(act + size_t(r) * ab));
    else
      k.quantize_act32(src, n, reinterpret_cast<ActQ8_32*>(act + size_t(r) * ab));
  };
  constexpr int64_t kSerialValues = 1 << 16;  // below this, waking the pool costs more than the work
  if (R * n <= kSerialValues)
    for (int64_t r = 0; r < R; ++r) row(r, 0);
  else
    parallel_for(R, row);
}

// out[r * out_stride + c] = dot(w row r0 + r, act row c) for rows [r0, r1) (rows row_stride bytes
// apart) and activation rows [0, ncols), in tiles of kTokTile columns.
void dot_rows(const QuantKernels& k, DType wt, int64_t n, const uint8_t* w, size_t row_stride, int64_t nrows,
              const uint8_t* act, int64_t ncols, float* out, size_t out_stride) {
  const QuantDotTile tile = k.tile[quant_index(wt)];
  const int64_t nb = n / quant_block_elems(wt);
  const size_t ab = act_row_bytes(wt, n), rb = row_bytes(wt, n);
  // row by row, each row's bytes requested kPrefetchRows rows ahead: a decode task streams its rows
  // from memory, and the hardware prefetcher alone restarts at every task
  for (int64_t r = 0; r < nrows; ++r) {
    if (r + kPrefetchRows < nrows) prefetch_chunk(w + size_t(r + kPrefetchRows) * row_stride, int64_t(rb));
    for (int64_t c0 = 0; c0 < ncols; c0 += kTokTile)
      tile(nb, w + size_t(r) * row_stride, row_stride, 1, act + size_t(c0) * ab, ab, int(std::min<int64_t>(kTokTile, ncols - c0)),
           out + size_t(r) * out_stride + c0, out_stride);
  }
}

// ---- prefill: dequantised panels and the f32 micro-kernel -----------------------------------------
// panel[k][j] (row stride kNR) = W row (rows[j]) values [k0, k0 + kc) for j < nrows, zero beyond.
void dequant_panel(const QuantKernels& k, DType wt, const uint8_t* const* rows, int nrows, int64_t k0, int64_t kc,
                   float* tmp /* [kNR][kKChunk] */, float* panel) {
  const int64_t qk = quant_block_elems(wt);
  const size_t bb = quant_block_bytes(wt);
  for (int j = 0; j < nrows; ++j) k.dequant[quant_index(wt)](rows[j] + size_t(k0 / qk) * bb, kc / qk, tmp + size_t(j) * kKChunk);
  static_assert(kNR == 16, "to_panel writes panels of 16 columns");
  k.to_panel(tmp, size_t(kKChunk), nrows, kc, panel);
}

// A GEMM over row groups (experts) whose B panels are made on the fly: for every task (group,
// block of micro-panels, panel p), `rows_of(e, p, ptrs)` names the kNR weight rows of panel p
// (returns how many are valid), and `epilogue(e, mp_global_index, rows, p, tile)` takes each tile.
constexpr size_t kPanelThreadFloats = size_t(kMaxMicroPanelsPerBlock) * kTileFloats + size_t(kKChunk) * kNR * 2;

// scratch: kPanelThreadFloats per pool thread (uninitialised).
template <class RowsOf, class Epilogue>
void panel_phase(const QuantKernels& qk, DType wt, int64_t K, const float* a, const RowLayout& L, int64_t panels,
                 float* scratch, const RowsOf& rows_of, const Epilogue& epilogue) {
  const GemmKernels& gk = kernels();
  const MicroKernel micro = gk.micro[kWF32];
  const std::vector<Task> tasks = make_tasks(L, panels, int64_t(K) * kNR * 4);
  const size_t per_thread = kPanelThreadFloats;
  parallel_for(int64_t(tasks.size()), [&](int64_t ti, int thread) {
    const Task& t = tasks[size_t(ti)];
    float* tiles = scratch + per_thread * size_t(thread);
    float* tmp = tiles + size_t(kMaxMicroPanelsPerBlock) * kTileFloats;
    float* panel = tmp + size_t(kKChunk) * kNR;
    const float* a0 = a + size_t(L.mp_base[size_t(t.e)] + t.mp0) * size_t(K) * kMR;
    for (int64_t p = t.p0; p < t.p0 + t.np; ++p) {
      const uint8_t* rows[kNR];
      const int nrows = rows_of(t.e, p, rows);
      for (int64_t k0 = 0; k0 < K; k0 += kKChunk) {
        const int64_t kc = std::min(kKChunk, K - k0);
        dequant_panel(qk, wt, rows, nrows, k0, kc, tmp, panel);
        for (int mp = 0; mp < t.n_mp; ++mp)
          micro(std::min<int>(kMR, t.rows - mp * kMR), kc, a0 + size_t(mp) * size_t(K) * kMR + size_t(k0) * kMR, panel,
                tiles + size_t(mp) * kTileFloats, k0 > 0);
      }
      for (int mp = 0; mp < t.n_mp; ++mp)
        epilogue(t.e, t.mp0 + mp, std::min<int>(kMR, t.rows - mp * kMR), p, tiles + size_t(mp) * kTileFloats);
    }
  });
}

}  // namespace

// ---- packing --------------------------------------------------------------------------------------
Status pack_quant_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out) {
  const DType t = src.dtype, t2 = src.w2_dtype;
  if (!is_quant(t2)) return Status::invalid("pack_experts: W2 must be quantised like W1 and W3");
  if (src.d % quant_block_elems(t) || src.f % quant_block_elems(t2))
    return Status::invalid(std::string("pack_experts: ") + dtype_name(t) + "/" + dtype_name(t2) + " experts need d a multiple of " +
                           std::to_string(quant_block_elems(t)) + " and f of " + std::to_string(quant_block_elems(t2)) +
                           ", got d=" + std::to_string(src.d) + ", f=" + std::to_string(src.f));
  auto p = std::make_unique<QuantPackedExperts>();
  p->num_experts = src.num_experts;
  p->d = src.d;
  p->f = src.f;
  p->dtype = t;
  p->w2_dtype = t2;
  p->row1 = row_bytes(t, src.d);
  p->row2 = row_bytes(t2, src.f);
  const size_t m13 = size_t(src.f) * p->row1, m2 = size_t(src.d) * p->row2, expert_bytes = 2 * m13 + m2;
  const size_t E = size_t(src.num_experts);
  if (src.keep_alive) {  // read in place: no copy
    p->owner = src.keep_alive;
    p->in_place_bytes = expert_bytes * E;
    for (size_t e = 0; e < E; ++e) {
      p->w1s.push_back(static_cast<const uint8_t*>(src.w1[e]));
      p->w3s.push_back(static_cast<const uint8_t*>(src.w3[e]));
      p->w2s.push_back(static_cast<const uint8_t*>(src.w2[e]));
    }
  } else {
    if (!p->buf.reserve(expert_bytes * E)) return Status::oom("pack_experts: cannot allocate the packed weights");
    for (size_t e = 0; e < E; ++e) {
      const uint8_t* base = p->buf.as<const uint8_t>() + e * expert_bytes;
      p->w1s.push_back(base);
      p->w3s.push_back(base + m13);
      p->w2s.push_back(base + 2 * m13);
    }
  }
  if (gate) {
    if (gate->ndim != 2 || gate->dims[0] != src.num_experts || gate->dims[1] != src.d || !is_float(gate->dtype))
      return Status::invalid("pack_experts: the gate must be a float [E,d] tensor");
    p->gate_data.assign(static_cast<const uint8_t*>(gate->data), static_cast<const uint8_t*>(gate->data) + gate->bytes());
    p->gate = *gate;
    p->gate.data = p->gate_data.data();
    p->has_gate = true;
  }
  if (!src.keep_alive) {  // the copies, in tasks of ~1 MiB (each expert's three matrices split alike)
    constexpr size_t kPackTaskBytes = size_t(1) << 20;
    const int64_t parts = int64_t(std::max<size_t>(1, expert_bytes / kPackTaskBytes));
    parallel_for(int64_t(E) * parts, [&](int64_t task, int) {
      const size_t e = size_t(task / parts), part = size_t(task % parts);
      const std::pair<const void*, size_t> mats[3] = {{src.w1[e], m13}, {src.w3[e], m13}, {src.w2[e], m2}};
      for (int m = 0; m < 3; ++m) {
        const size_t n = mats[m].second, b0 = n * part / size_t(parts), b1 = n * (part + 1) / size_t(parts);
        uint8_t* dst = const_cast<uint8_t*>(m == 0 ? p->w1s[e] : m == 1 ? p->w3s[e] : p->w2s[e]);
        std::memcpy(dst + b0, static_cast<const uint8_t*>(mats[m].first) + b0, b1 - b0);
      }
    });
  }
  *out = std::move(p);
  return Status::ok();
}

const TensorView& quant_packed_gate(const PackedExperts& w) { return static_cast<const QuantPackedExperts&>(w).gate; }

Status pack_quant_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out) {
  const DType t = w.dtype;
  const int64_t qk = quant_block_elems(t);
  if (w.dims[1] % qk)
    return Status::invalid(std::string("pack_linear: ") + dtype_name(t) + " weights need in features a multiple of " + std::to_string(qk));
  auto p = std::make_unique<QuantPackedLinear>();
  if (bias) {
    p->has_bias = true;
    p->bias.resize(size_t(w.dims[0]));
    widen_to_f32(*bias, p->bias.data());
  }
  p->out_features = w.dims[0];
  p->in_features = w.dims[1];
  p->dtype = t;
  p->row = row_bytes(t, w.dims[1]);
  if (!p->buf.reserve(p->row * size_t(w.dims[0]))) return Status::oom("pack_linear: cannot allocate the packed weights");
  std::memcpy(p->buf.as<uint8_t>(), w.data, p->row * size_t(w.dims[0]));
  *out = std::move(p);
  return Status::ok();
}

// ---- the grouped GEMM -----------------------------------------------------------------------------
Status quant_grouped_gemm(const float* x, int64_t T, const int32_t* sorted_rows, const int32_t* expert_offsets,
                          const PackedExperts& pw, float* y) {
  const auto* w = static_cast<const QuantPackedExperts*>(&pw);
  const int E = w->num_experts;
  const int64_t d = w->d, f = w->f, R = expert_offsets[E];
  const DType wt = w->dtype, wt2 = w->w2_dtype;
  if (R == 0) return Status::ok();
  const QuantKernels& qk = quant_kernels();
  std::vector<float> h(size_t(R) * size_t(f));

  if (T <= decode_tokens()) {
    std::vector<uint8_t> act1(size_t(R) * act_row_bytes(wt, d)), act2(size_t(R) * act_row_bytes(wt2, f));
    quantize_rows_act(qk, wt, x, d, sorted_rows, R, act1.data());
    // the experts that have rows: tasks only for them
    std::vector<int> active;
    for (int e = 0; e < E; ++e)
      if (expert_offsets[e + 1] > expert_offsets[e]) active.push_back(e);
    const int64_t EA = int64_t(active.size());
    // GEMM1 + SwiGLU: tasks of kRowsPerTask1 hidden units of one expert
    const int64_t c1 = ceil_div(f, kRowsPerTask1);
    parallel_for(c1 * EA, [&](int64_t task, int) {
      const int e = active[size_t(task / c1)];
      const int64_t j0 = (task % c1) * kRowsPerTask1, nj = std::min(kRowsPerTask1, f - j0);
      const int64_t r0 = expert_offsets[e], nr = expert_offsets[e + 1] - r0;
      if (nr == 0) return;
      const uint8_t* a = act1.data() + size_t(r0) * act_row_bytes(wt, d);
      // the chunk's W1 rows (gate), then its W3 rows (up): two streams
      float g[kRowsPerTask1 * kTokTile], u[kRowsPerTask1 * kTokTile];
      const uint8_t* w1 = w->w1(e) + size_t(j0) * w->row1;
      const uint8_t* w3 = w->w3(e) + size_t(j0) * w->row1;
      if (j0 == 0) prefetch_chunk(w1, int64_t(std::min<int64_t>(nj, kPrefetchRows) * int64_t(w->row1)));
      for (int64_t c0 = 0; c0 < nr; c0 += kTokTile) {
        const int64_t nc = std::min<int64_t>(kTokTile, nr - c0);
        const uint8_t* ac = a + size_t(c0) * act_row_bytes(wt, d);
        dot_rows(qk, wt, d, w1, w->row1, nj, ac, nc, g, kTokTile);
        dot_rows(qk, wt, d, w3, w->row1, nj, ac, nc, u, kTokTile);
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t j = 0; j < nj; ++j)
            h[size_t(r0 + c0 + c) * size_t(f) + size_t(j0 + j)] = silu_mul(g[j * kTokTile + c], u[j * kTokTile + c]);
      }
    });
    quantize_rows_act(qk, wt2, h.data(), f, nullptr, R, act2.data());
    // GEMM2: tasks of kRowsPerTask2 output columns of one expert
    const int64_t c2 = ceil_div(d, kRowsPerTask2);
    parallel_for(c2 * EA, [&](int64_t task, int) {
      const int e = active[size_t(task / c2)];
      const int64_t i0 = (task % c2) * kRowsPerTask2, ni = std::min(kRowsPerTask2, d - i0);
      const int64_t r0 = expert_offsets[e], nr = expert_offsets[e + 1] - r0;
      if (nr == 0) return;
      float o[kRowsPerTask2 * kTokTile];
      for (int64_t c0 = 0; c0 < nr; c0 += kTokTile) {
        const int64_t nc = std::min<int64_t>(kTokTile, nr - c0);
        dot_rows(qk, wt2, f, w->w2(e) + size_t(i0) * w->row2, w->row2, ni, act2.data() + size_t(r0 + c0) * act_row_bytes(wt2, f), nc,
                 o, kTokTile);
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t i = 0; i < ni; ++i) y[size_t(r0 + c0 + c) * size_t(d) + size_t(i0 + i)] = o[i * kTokTile + c];
      }
    });
    return Status::ok();
  }

  // prefill: gathered micro-panels, GEMM1 panels of kGateCols W1 rows + the same W3 rows
  const RowLayout L = make_row_layout(expert_offsets, E);
  const int64_t n_mp = L.mp_base[size_t(E)];
  // the calling thread's reused scratch (no page faults per call): A1, H, per-thread tiles and panels
  const size_t a1_floats = round_up_floats(size_t(n_mp) * size_t(d) * kMR), hp_floats = round_up_floats(size_t(n_mp) * size_t(f) * kMR);
  AlignedBuffer& buf = thread_scratch();
  if (!buf.reserve((a1_floats + hp_floats + kPanelThreadFloats * size_t(ComputePool::instance().num_threads())) * sizeof(float)))
    return Status::oom("grouped_gemm: cannot allocate the activation scratch");
  float* a1 = buf.as<float>();
  float* hp = a1 + a1_floats;
  float* scratch = hp + hp_floats;
  gather_micro_panels(x, d, sorted_rows, expert_offsets, L, a1);
  const GemmKernels& gk = kernels();
  panel_phase(
      qk, wt, d, a1, L, ceil_div(f, kGateCols), scratch,
      [&](int e, int64_t p, const uint8_t** rows) {
        const int64_t j0 = p * kGateCols;
        const int n = int(std::min<int64_t>(kGateCols, f - j0));
        for (int j = 0; j < kGateCols; ++j) {
          const int64_t jj = j0 + std::min(j, n - 1);  // rows past f: any valid row, their h is dropped below
          rows[j] = w->w1(e) + size_t(jj) * w->row1;
          rows[kGateCols + j] = w->w3(e) + size_t(jj) * w->row1;
        }
        return kNR;
      },
      [&](int e, int64_t mp, int rows, int64_t p, const float* tile) {
        float hm[kGateCols * kMR];
        gk.swiglu(rows, tile, hm);
        const int64_t j0 = p * kGateCols, n = std::min<int64_t>(kGateCols, f - j0);
        float* dst = hp + size_t(L.mp_base[size_t(e)] + mp) * size_t(f) * kMR;
        for (int64_t j = 0; j < n; ++j)
          for (int i = 0; i < kMR; ++i) dst[size_t(j0 + j) * kMR + size_t(i)] = i < rows ? hm[j * kMR + i] : 0.f;
      });
  panel_phase(
      qk, wt2, f, hp, L, ceil_div(d, kNR), scratch,
      [&](int e, int64_t p, const uint8_t** rows) {
        const int64_t i0 = p * kNR;
        const int n = int(std::min<int64_t>(kNR, d - i0));
        for (int j = 0; j < n; ++j) rows[j] = w->w2(e) + size_t(i0 + j) * w->row2;
        return n;
      },
      [&](int e, int64_t mp, int rows, int64_t p, const float* tile) {
        const int64_t r0 = expert_offsets[e] + mp * kMR, c0 = p * kNR;
        const size_t nc = size_t(std::min<int64_t>(kNR, d - c0));
        for (int i = 0; i < rows; ++i) std::memcpy(y + size_t(r0 + i) * size_t(d) + size_t(c0), tile + size_t(i) * kNR, nc * sizeof(float));
      });
  if (buf.size() > kKeepScratchBytes) buf.release();
  return Status::ok();
}

// ---- the linear layer ---------------------------------------------------------------------------
Status quant_linear(const float* x, int64_t T, const PackedLinear& pw, const TensorView& y) {
  const auto* w = static_cast<const QuantPackedLinear*>(&pw);
  const int64_t in = w->in_features, n = w->out_features;
  const DType wt = w->dtype;
  const QuantKernels& qk = quant_kernels();
  const float* b = w->has_bias ? w->bias.data() : nullptr;
  auto store = [&](int64_t t, int64_t j, float v) { store_from_f32(y.data, y.dtype, size_t(t * n + j), b ? v + b[j] : v); };
  if (T <= decode_tokens()) {
    std::vector<uint8_t> act(size_t(T) * act_row_bytes(wt, in));
    quantize_rows_act(qk, wt, x, in, nullptr, T, act.data());
    const int64_t chunks = ceil_div(n, kRowsPerTask2);
    parallel_for(chunks, [&](int64_t task, int) {
      const int64_t j0 = task * kRowsPerTask2, nj = std::min(kRowsPerTask2, n - j0);
      float o[kRowsPerTask2 * kTokTile];
      for (int64_t c0 = 0; c0 < T; c0 += kTokTile) {
        const int64_t nc = std::min<int64_t>(kTokTile, T - c0);
        dot_rows(qk, wt, in, w->buf.as<const uint8_t>() + size_t(j0) * w->row, w->row, nj, act.data() + size_t(c0) * act_row_bytes(wt, in),
                 nc, o, kTokTile);
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t j = 0; j < nj; ++j) store(c0 + c, j0 + j, o[j * kTokTile + c]);
      }
    });
    return Status::ok();
  }
  const int32_t offsets[2] = {0, int32_t(T)};
  const RowLayout L = make_row_layout(offsets, 1);
  const size_t a_floats = round_up_floats(size_t(L.mp_base[1]) * size_t(in) * kMR);
  AlignedBuffer& buf = thread_scratch();
  if (!buf.reserve((a_floats + kPanelThreadFloats * size_t(ComputePool::instance().num_threads())) * sizeof(float)))
    return Status::oom("linear: cannot allocate the activation scratch");
  float* a = buf.as<float>();
  gather_micro_panels(x, in, nullptr, offsets, L, a);
  panel_phase(
      qk, wt, in, a, L, ceil_div(n, kNR), a + a_floats,
      [&](int, int64_t p, const uint8_t** rows) {
        const int64_t j0 = p * kNR;
        const int cnt = int(std::min<int64_t>(kNR, n - j0));
        for (int j = 0; j < cnt; ++j) rows[j] = w->buf.as<const uint8_t>() + size_t(j0 + j) * w->row;
        return cnt;
      },
      [&](int, int64_t mp, int rows, int64_t p, const float* tile) {
        const int64_t j0 = p * kNR, cnt = std::min<int64_t>(kNR, n - j0);
        for (int i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cnt; ++j) store(mp * kMR + i, j0 + j, tile[size_t(i) * kNR + size_t(j)]);
      });
  if (buf.size() > kKeepScratchBytes) buf.release();
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
