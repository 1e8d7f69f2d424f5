// moe-kernels CPU backend: the portable table of quant_kernels.h (plain C++), the activation
// quantisers every table shares, and the run-time choice of the table.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu_features.h"
#include "quant_kernels.h"

namespace moe {
namespace cpu {

using namespace quant;

namespace {

// Activations: d = amax / 127, q = round-to-nearest-even(x / d) (|q| <= 127).
void quantize_act32(const float* x, int64_t n, ActQ8_32* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32) {
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int q = int(std::nearbyint(x[j] * id));
      out[b].q[j] = int8_t(q);
      sum += q;
    }
    out[b].d = d;
    out[b].sum = sum;
  }
}

void quantize_act256(const float* x, int64_t n, ActQ8_256* out) {
  for (int64_t b = 0; b < n / 256; ++b, x += 256) {
    float amax = 0.f;
    for (int j = 0; j < 256; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 16 * g; j < 16 * g + 16; ++j) {
        const int q = int(std::nearbyint(x[j] * id));
        out[b].q[j] = int8_t(q);
        s += q;
      }
      out[b].bsums[g] = int16_t(s);
    }
    out[b].d = d;
    out[b].pad = 0;
  }
}

float dot_q8_0(int64_t nb, const void* wv, const void* av) {
  const auto* w = static_cast<const BlockQ8_0*>(wv);
  const auto* a = static_cast<const ActQ8_32*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += int32_t(w[b].qs[j]) * a[b].q[j];
    acc += f16_to_f32(w[b].d) * a[b].d * float(s);
  }
  return acc;
}

float dot_q4_0(int64_t nb, const void* wv, const void* av) {
  const auto* w = static_cast<const BlockQ4_0*>(wv);
  const auto* a = static_cast<const ActQ8_32*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t s = 0;
    for (int j = 0; j < 16; ++j) s += int32_t(w[b].qs[j] & 15) * a[b].q[j] + int32_t(w[b].qs[j] >> 4) * a[b].q[j + 16];
    acc += f16_to_f32(w[b].d) * a[b].d * float(s - 8 * a[b].sum);
  }
  return acc;
}

// q4_k and q5_k: sum_j sc_j * (q . a)_j and sum_j m_j * sum(a)_j per super-block.
template <bool kFive>
float dot_qk45(int64_t nb, const void* wv, const void* av) {
  const auto* a = static_cast<const ActQ8_256*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t *scales, *qs, *qh = nullptr;
    uint16_t dh, dminh;
    if (kFive) {
      const auto& w = static_cast<const BlockQ5_K*>(wv)[b];
      scales = w.scales, qs = w.qs, qh = w.qh, dh = w.d, dminh = w.dmin;
    } else {
      const auto& w = static_cast<const BlockQ4_K*>(wv)[b];
      scales = w.scales, qs = w.qs, dh = w.d, dminh = w.dmin;
    }
    int32_t sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      scale_min_k4(j, scales, &sc, &m);
      const uint8_t* q = qs + 32 * (j / 2);
      const int8_t* y = a[b].q + 32 * j;
      int32_t s = 0;
      for (int l = 0; l < 32; ++l) {
        int v = (j & 1) ? q[l] >> 4 : q[l] & 15;
        if (kFive && (qh[l] >> j & 1)) v += 16;
        s += v * y[l];
      }
      sumi += int32_t(sc) * s;
      summ += int32_t(m) * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
    }
    const float d = f16_to_f32(dh) * a[b].d, dmin = f16_to_f32(dminh) * a[b].d;
    acc += d * float(sumi) - dmin * float(summ);
  }
  return acc;
}

float dot_q6_k(int64_t nb, const void* wv, const void* av) {
  const auto* w = static_cast<const BlockQ6_K*>(wv);
  const auto* a = static_cast<const ActQ8_256*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sumi = 0;
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = w[b].ql + 64 * n;
      const uint8_t* qh = w[b].qh + 32 * n;
      const int8_t* y = a[b].q + 128 * n;
      int32_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // the eight sub-blocks of 16 of this half
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
        const int q2 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
        const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
        const int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        s[is + 0] += q1 * y[l];
        s[is + 2] += q2 * y[l + 32];
        s[is + 4] += q3 * y[l + 64];
        s[is + 6] += q4 * y[l + 96];
      }
      for (int i = 0; i < 8; ++i) sumi += int32_t(w[b].scales[8 * n + i]) * (s[i] - 32 * a[b].bsums[8 * n + i]);
    }
    acc += f16_to_f32(w[b].d) * a[b].d * float(sumi);
  }
  return acc;
}

}  // namespace

void quantize_act32_portable(const float* x, int64_t n, ActQ8_32* out) { quantize_act32(x, n, out); }
void quantize_act256_portable(const float* x, int64_t n, ActQ8_256* out) { quantize_act256(x, n, out); }

const QuantKernels& portable_quant_kernels() {
  static const QuantKernels k = {
      {dot_q8_0, dot_q4_0, dot_qk45<false>, dot_qk45<true>, dot_q6_k},
      {dot_tile<dot_q8_0>, dot_tile<dot_q4_0>, dot_tile<dot_qk45<false>>, dot_tile<dot_qk45<true>>, dot_tile<dot_q6_k>},
      MOE_QUANT_REFERENCE_DEQUANT,
      to_panel_scalar,
      quantize_act32,
      quantize_act256,
      "portable",
  };
  return k;
}

namespace {
struct Available {
  bool avx2 = false, avxvnni = false, avx512vnni = false;
};
Available available() {
  Available a;
  const CpuFeatures& f = cpu_features();
  a.avx2 = f.kernel != "portable" && f.avx2 && f.fma && f.f16c;
#if defined(__x86_64__)
  __builtin_cpu_init();
  a.avx512vnni = a.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  a.avxvnni = a.avx2 && __builtin_cpu_supports("avxvnni");
#endif
  return a;
}
}  // namespace

std::string available_quant_kernels() {
  const Available a = available();
  std::string s = "portable";
  if (a.avx2) s += ",avx2";
  if (a.avxvnni) s += ",avx-vnni";
  if (a.avx512vnni) s += ",avx512-vnni";
  return s;
}

const QuantKernels& quant_kernels() {
  static const QuantKernels* k = [] {
    const Available a = available();
    const char* force = std::getenv("MOE_CPU_QUANT_KERNEL");
    if (force && *force) {
      const std::string s(force);
      if (s == "avx512-vnni" && a.avx512vnni) return &avx512vnni_quant_kernels();
      if (s == "avx-vnni" && a.avxvnni) return &avxvnni_quant_kernels();
      if (s == "avx2" && a.avx2) return &avx2_quant_kernels();
      if (s == "portable") return &portable_quant_kernels();
    }
    // AVX512-VNNI first: its q4_k dot runs on 64-byte vectors (6.2-6.9 vs 7.1-8.2 ns per super-block
    // on Zen 5); the other formats use 256-bit vectors in both VNNI tables
    if (a.avx512vnni) return &avx512vnni_quant_kernels();
    if (a.avxvnni) return &avxvnni_quant_kernels();
    if (a.avx2) return &avx2_quant_kernels();
    return &portable_quant_kernels();
  }();
  return *k;
}

}  // namespace cpu
}  // namespace moe
