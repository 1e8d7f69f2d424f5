// CPU grouped GEMM over experts with fused SwiGLU:
//   for each row r of expert e:  y[r] = W2_e (silu(W1_e x[src(r)]) * (W3_e x[src(r)])).
//
// pack_experts repacks every expert once into column panels (layout in gemm_kernels.h), keeping
// 16-bit weights 16-bit. grouped_gemm then runs three parallel phases of the panel GEMM machinery
// (panel_gemm.h, which explains the task split, the streaming and blocked orders, and why results
// are bitwise reproducible), with one group per expert:
//   0. gather: the token rows of each expert are copied into micro-panels of kMR rows (A1);
//   1. GEMM1 over the interleaved W1/W3 panels, SwiGLU in the epilogue, h written as micro-panels
//      (H), the A operand of
//   2. GEMM2 over the W2 panels, written to y.
#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm_kernels.h"
#include "cpu_ops.h"
#include "threadpool.h"
#include "panel_gemm.h"

namespace moe {
namespace cpu {

namespace {
using cpu::AlignedBuffer;
using cpu::ceil_div;
using cpu::GemmKernels;
using cpu::kGateCols;
using cpu::kMR;
using cpu::kNR;
using cpu::WeightType;

// The packed weights of all experts, one allocation, original element type.
struct CpuPackedExperts final : PackedExperts {
  AlignedBuffer buf;
  WeightType wtype = cpu::kWF32;  // the kernels' weight type: kWBF16Pairs for the bf16 dot layout
  size_t elem_size = 4;
  int64_t d_k = 0;          // K of GEMM1 as packed (d, padded to even in the bf16 dot layout)
  int64_t f_pad = 0;        // f rounded up to kGateCols: K of GEMM2
  int64_t gemm1_panels = 0;  // f_pad / kGateCols
  int64_t gemm2_panels = 0;  // ceil(d / kNR)
  size_t w2_offset = 0;      // elements from an expert's start to its GEMM2 panels
  size_t expert_elems = 0;   // elements per expert
  std::vector<uint8_t> gate_data;  // the router gate packed with the experts, as given
  TensorView gate;                 // a view of gate_data (absent without a gate)
  size_t bytes() const override { return buf.size() + gate_data.size(); }
  const uint8_t* expert(int e) const { return buf.as<const uint8_t>() + size_t(e) * expert_elems * elem_size; }
};

// ---- packing ------------------------------------------------------------------------------------
// GEMM1 panel p: kGateCols rows of W1 then the same rows of W3, as in gemm_kernels.h; GEMM2 panels
// are plain row panels (cpu::pack_row_panel). El is the raw element: packing only moves bits.
// PAIRS: the bf16 dot layout, K = d_k (d padded to even).
template <class El, bool PAIRS>
void pack_gemm1_panel(const El* w1, const El* w3, int64_t d, int64_t d_k, int64_t f, int64_t p, El* dst) {
  const int64_t valid = std::min<int64_t>(kGateCols, f - p * kGateCols);
  const El* g = w1 + p * kGateCols * d;
  const El* u = w3 + p * kGateCols * d;
  if constexpr (PAIRS) {
    for (int64_t k = 0; k < d_k; ++k)
      for (int j = 0; j < kNR; ++j) {
        const El* src = j < kGateCols ? g + j * d : u + (j - kGateCols) * d;
        dst[(k / 2) * 2 * kNR + j * 2 + (k & 1)] = (j % kGateCols) < valid && k < d ? src[k] : El(0);
      }
    return;
  }
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

template <class El, bool PAIRS>
void pack_all(const ExpertWeightSource& src, CpuPackedExperts& p) {
  const int64_t per_expert = p.gemm1_panels + p.gemm2_panels;
  const int64_t total = per_expert * p.num_experts;
  cpu::parallel_pack(total, [&](int64_t g) {
    const int e = int(g / per_expert);
    const int64_t panel = g % per_expert;
    El* base = p.buf.as<El>() + size_t(e) * p.expert_elems;
    if (panel < p.gemm1_panels) {
      pack_gemm1_panel<El, PAIRS>(static_cast<const El*>(src.w1[size_t(e)]), static_cast<const El*>(src.w3[size_t(e)]),
                                  p.d, p.d_k, p.f, panel, base + size_t(panel) * size_t(p.d_k) * kNR);
    } else {
      const int64_t q = panel - p.gemm1_panels;
      El* dst = base + p.w2_offset + size_t(q) * size_t(p.f_pad) * kNR;
      if constexpr (PAIRS) cpu::pack_row_panel_pairs(static_cast<const El*>(src.w2[size_t(e)]), p.d, p.f, p.f_pad, q, dst);
      else cpu::pack_row_panel(static_cast<const El*>(src.w2[size_t(e)]), p.d, p.f, p.f_pad, q, dst);
    }
  });
}

}  // namespace

Status pack_experts(const ExpertWeightSource& src, const TensorView* gate, std::unique_ptr<PackedExperts>* out) {
  if (src.num_experts < 1 || src.d < 1 || src.f < 1) return Status::invalid("pack_experts: empty shape");
  if (is_quant(src.dtype)) return pack_quant_experts(src, gate, out);  // quant_experts.cc
  if (src.dtype != DType::kF32 && src.dtype != DType::kF16 && src.dtype != DType::kBF16)
    return Status::unsupported(std::string("pack_experts: weights of type ") + dtype_name(src.dtype));
  auto p = std::make_unique<CpuPackedExperts>();
  p->num_experts = src.num_experts;
  p->d = src.d;
  p->f = src.f;
  p->dtype = p->w2_dtype = src.dtype;
  p->elem_size = dtype_size(src.dtype);
  p->wtype = cpu::packed_weight_type(src.dtype, src.exact_f32);
  p->d_k = cpu::packed_k(p->wtype, src.d);
  p->f_pad = ceil_div(src.f, kGateCols) * kGateCols;  // even: a whole number of bf16 pairs
  p->gemm1_panels = p->f_pad / kGateCols;
  p->gemm2_panels = ceil_div(src.d, kNR);
  p->w2_offset = size_t(p->gemm1_panels) * size_t(p->d_k) * kNR;
  p->expert_elems = p->w2_offset + size_t(p->gemm2_panels) * size_t(p->f_pad) * kNR;
  if (!p->buf.reserve(p->expert_elems * size_t(src.num_experts) * p->elem_size))
    return Status::oom("pack_experts: cannot allocate the packed weights");
  if (gate) {
    if (gate->ndim != 2 || gate->dims[0] != src.num_experts || gate->dims[1] != src.d || !is_float(gate->dtype))
      return Status::invalid("pack_experts: the gate must be a float [E,d] tensor");
    p->gate_data.assign(static_cast<const uint8_t*>(gate->data), static_cast<const uint8_t*>(gate->data) + gate->bytes());
    p->gate = *gate;
    p->gate.data = p->gate_data.data();
    p->has_gate = true;
  }
  if (p->elem_size == 4)
    pack_all<uint32_t, false>(src, *p);
  else if (cpu::bf16_pairs(p->wtype))
    pack_all<uint16_t, true>(src, *p);
  else
    pack_all<uint16_t, false>(src, *p);
  *out = std::move(p);
  return Status::ok();
}

const TensorView& packed_gate(const PackedExperts& w) {
  if (is_quant(w.dtype)) return quant_packed_gate(w);
  return static_cast<const CpuPackedExperts&>(w).gate;
}

Status grouped_gemm(const float* x, int64_t T, const int32_t* sorted_rows,
                    const int32_t* expert_offsets, const PackedExperts& pw, float* y) {
  if (is_quant(pw.dtype)) return quant_grouped_gemm(x, T, sorted_rows, expert_offsets, pw, y);  // quant_experts.cc
  // CpuBackend passes only experts whose `backend` is itself, all made by pack_experts above.
  const auto* w = static_cast<const CpuPackedExperts*>(&pw);
  const int E = w->num_experts;
  const int64_t d = w->d, f_pad = w->f_pad, R = expert_offsets[E];
  if (R == 0) return Status::ok();
  (void)T;

  const cpu::RowLayout L = cpu::make_row_layout(expert_offsets, E);
  const int64_t n_mp = L.mp_base[size_t(E)];

  // scratch: A1 [n_mp][d][kMR], H [n_mp][f_pad][kMR] (f32, or words of bf16 pairs), per-thread tiles
  const WeightType wt = w->wtype;
  const bool pairs = cpu::bf16_pairs(wt);
  const int64_t a1_mp = cpu::micro_panel_floats(wt, d), h_mp = cpu::micro_panel_floats(wt, f_pad);
  const int nthreads = ComputePool::instance().num_threads();
  const size_t a1_floats = cpu::round_up_floats(size_t(n_mp) * size_t(a1_mp));
  const size_t h_floats = cpu::round_up_floats(size_t(n_mp) * size_t(h_mp));
  const size_t thread_floats = size_t(nthreads) * cpu::kThreadScratchFloats;
  AlignedBuffer& buf = cpu::thread_scratch();
  if (!buf.reserve((a1_floats + h_floats + thread_floats) * sizeof(float)))
    return Status::oom("grouped_gemm: cannot allocate the activation scratch");
  float* a1 = buf.as<float>();
  float* h = a1 + a1_floats;
  float* tiles = h + h_floats;

  // 0. gather the token rows of each expert into micro-panels
  cpu::gather_micro_panels(x, d, sorted_rows, expert_offsets, L, a1, wt);

  const GemmKernels& kern = cpu::kernels();
  const size_t expert_bytes = w->expert_elems * w->elem_size;

  // 1. GEMM1 (interleaved W1/W3) with the SwiGLU epilogue -> H
  cpu::GemmPhase g1{&kern, wt, w->elem_size, w->expert(0), expert_bytes, w->d_k, a1, &L};
  cpu::run_phase(g1, cpu::make_tasks(L, w->gemm1_panels, w->d_k * kNR * int64_t(w->elem_size)), tiles,
            [&](const cpu::Task& t, int64_t p, int mp, int rows, const float* tile) {
              float* hm = h + size_t(L.mp_base[size_t(t.e)] + t.mp0 + mp) * size_t(h_mp);
              // tile columns p*kGateCols.. are H's k steps: kGateCols f32 steps or kGateCols / 2 pairs
              const size_t words = pairs ? kGateCols / 2 : kGateCols;
              float* hp = hm + size_t(p) * words * kMR;
              if (pairs) kern.swiglu_pairs(rows, tile, reinterpret_cast<uint32_t*>(hp));
              else kern.swiglu(rows, tile, hp);
              if (rows < kMR)  // lanes past the expert's rows are zeros (the wide kernels read them)
                for (size_t w = 0; w < words; ++w) std::fill(hp + w * kMR + rows, hp + (w + 1) * kMR, 0.f);
            });

  // 2. GEMM2 (W2 panels) -> y
  cpu::GemmPhase g2{&kern, wt, w->elem_size, w->expert(0) + w->w2_offset * w->elem_size, expert_bytes, f_pad, h, &L};
  cpu::run_phase(g2, cpu::make_tasks(L, w->gemm2_panels, f_pad * kNR * int64_t(w->elem_size)), tiles,
            [&](const cpu::Task& t, int64_t p, int mp, int rows, const float* tile) {
              const int64_t r0 = expert_offsets[t.e] + int64_t(t.mp0 + mp) * kMR;
              const int64_t c0 = p * kNR;
              const size_t ncols = size_t(std::min<int64_t>(kNR, d - c0));
              for (int i = 0; i < rows; ++i)
                std::memcpy(y + size_t(r0 + i) * size_t(d) + size_t(c0), tile + size_t(i) * kNR, ncols * sizeof(float));
            });

  if (buf.size() > cpu::kKeepScratchBytes) buf.release();
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
