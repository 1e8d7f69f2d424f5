// CPU linear layer y = x W^T (no bias) on the panel GEMM machinery of the grouped GEMM
// (panel_gemm.h) with a single group: W [out,in] is packed once into ceil(out/kNR) row panels of
// K = in (16-bit weights stay 16-bit and are widened in registers), x is gathered per call into
// micro-panels. Decode (T = 1) streams the panels at memory bandwidth, several panels per task;
// prefill runs the 6x16 micro-kernel at the FMA rate. The tile epilogue converts to y's type.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_ops.h"
#include "threadpool.h"
#include "panel_gemm.h"

namespace moe {
namespace cpu {

namespace {
using cpu::kMR;
using cpu::kNR;

struct CpuPackedLinear final : PackedLinear {
  cpu::AlignedBuffer buf;
  cpu::WeightType wtype = cpu::kWF32;  // kWBF16Pairs: the bf16 dot layout
  int64_t k_pad = 0;                   // K as packed (in_features, even in the bf16 dot layout)
  std::vector<float> bias;  // [out] or empty
  size_t elem_size = 4;
  int64_t panels = 0;  // ceil(out / kNR)
  size_t bytes() const override { return buf.size() + bias.size() * sizeof(float); }
};

template <class El>
void pack_panels(const TensorView& w, CpuPackedLinear& p) {
  const int64_t in = p.in_features, n = p.out_features, kp = p.k_pad;
  const bool pairs = cpu::bf16_pairs(p.wtype);
  cpu::parallel_pack(p.panels, [&](int64_t q) {
    El* dst = p.buf.as<El>() + size_t(q) * size_t(kp) * kNR;
    if constexpr (sizeof(El) == 2)
      if (pairs) return cpu::pack_row_panel_pairs(w.as<const El>(), n, in, kp, q, dst);
    cpu::pack_row_panel(w.as<const El>(), n, in, kp, q, dst);
  });
}
}  // namespace

Status pack_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out) {
  return pack_linear_precision(w, bias, /*exact_f32=*/false, out);
}

Status pack_linear_precision(const TensorView& w, const TensorView* bias, bool exact_f32,
                             std::unique_ptr<PackedLinear>* out) {
  if (w.ndim != 2 || w.dims[0] < 1 || w.dims[1] < 1) return Status::invalid("pack_linear: w must be [out,in], both >= 1");
  if (bias && (bias->ndim != 1 || bias->dims[0] != w.dims[0] || !is_float(bias->dtype)))
    return Status::invalid("pack_linear: bias must be a float [out] tensor");
  if (is_quant(w.dtype)) return pack_quant_linear(w, bias, out);  // quant_experts.cc
  if (!is_float(w.dtype)) return Status::unsupported(std::string("pack_linear: weights of type ") + dtype_name(w.dtype));
  if (bias && (bias->ndim != 1 || bias->dims[0] != w.dims[0] || !is_float(bias->dtype)))
    return Status::invalid("pack_linear: bias must be a float [out] tensor");
  auto p = std::make_unique<CpuPackedLinear>();
  if (bias) {
    p->has_bias = true;
    p->bias.resize(size_t(w.dims[0]));
    widen_to_f32(*bias, p->bias.data());
  }
  p->out_features = w.dims[0];
  p->in_features = w.dims[1];
  p->dtype = w.dtype;
  p->elem_size = dtype_size(w.dtype);
  p->wtype = cpu::packed_weight_type(w.dtype, exact_f32);
  p->k_pad = cpu::packed_k(p->wtype, p->in_features);
  p->panels = cpu::ceil_div(p->out_features, kNR);
  if (!p->buf.reserve(size_t(p->panels) * size_t(p->k_pad) * kNR * p->elem_size))
    return Status::oom("pack_linear: cannot allocate the packed weights");
  if (p->elem_size == 4)
    pack_panels<uint32_t>(w, *p);
  else
    pack_panels<uint16_t>(w, *p);
  *out = std::move(p);
  return Status::ok();
}

Status linear(const TensorView& x, const PackedLinear& pw, const TensorView& y) {
  // CpuBackend passes only weights whose `backend` is itself, all made by pack_linear above.
  const int64_t in = pw.in_features, n = pw.out_features;
  if (x.ndim != 2 || x.dims[1] != in) return Status::invalid("linear: x must be [T,in]");
  const int64_t T = x.dims[0];
  if (y.ndim != 2 || y.dims[0] != T || y.dims[1] != n) return Status::invalid("linear: y must be [T,out]");
  if (T == 0) return Status::ok();
  if (T > INT32_MAX) return Status::invalid("linear: too many rows");

  std::vector<float> x_wide;
  const float* x32 = x.as<const float>();
  if (x.dtype != DType::kF32) {
    x_wide.resize(size_t(x.numel()));
    widen_to_f32(x, x_wide.data());
    x32 = x_wide.data();
  }
  if (is_quant(pw.dtype)) return quant_linear(x32, T, pw, y);  // quant_experts.cc
  const auto* w = static_cast<const CpuPackedLinear*>(&pw);
  const int32_t offsets[2] = {0, int32_t(T)};
  const cpu::RowLayout L = cpu::make_row_layout(offsets, 1);
  const int64_t n_mp = L.mp_base[1];
  const size_t a_floats = cpu::round_up_floats(size_t(n_mp) * size_t(cpu::micro_panel_floats(w->wtype, in)));
  const size_t thread_floats = size_t(ComputePool::instance().num_threads()) * cpu::kThreadScratchFloats;
  cpu::AlignedBuffer& buf = cpu::thread_scratch();
  if (!buf.reserve((a_floats + thread_floats) * sizeof(float)))
    return Status::oom("linear: cannot allocate the activation scratch");
  float* a = buf.as<float>();
  float* tiles = a + a_floats;
  cpu::gather_micro_panels(x32, in, nullptr, offsets, L, a, w->wtype);

  const cpu::GemmKernels& kern = cpu::kernels();
  const size_t panel_bytes = size_t(w->k_pad) * kNR * w->elem_size;
  cpu::GemmPhase ph{&kern, w->wtype, w->elem_size, w->buf.as<const uint8_t>(),
                    size_t(w->panels) * panel_bytes, w->k_pad, a, &L};
  cpu::run_phase(ph, cpu::make_tasks(L, w->panels, int64_t(panel_bytes)), tiles,
                 [&](const cpu::Task& t, int64_t p, int mp, int rows, const float* tile) {
                   const int64_t r0 = int64_t(t.mp0 + mp) * kMR;
                   const int64_t c0 = p * kNR;
                   const int64_t ncols = std::min<int64_t>(kNR, n - c0);
                   const float* b = w->has_bias ? w->bias.data() + c0 : nullptr;
                   for (int i = 0; i < rows; ++i) {
                     const size_t o = size_t(r0 + i) * size_t(n) + size_t(c0);
                     const float* acc = tile + size_t(i) * kNR;
                     if (y.dtype == DType::kF32 && !b)
                       std::memcpy(y.as<float>() + o, acc, size_t(ncols) * sizeof(float));
                     else
                       for (int64_t j = 0; j < ncols; ++j) store_from_f32(y.data, y.dtype, o + size_t(j), b ? acc[j] + b[j] : acc[j]);
                   }
                 });
  if (buf.size() > cpu::kKeepScratchBytes) buf.release();
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
