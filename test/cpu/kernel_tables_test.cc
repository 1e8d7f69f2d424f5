// test/cpu: C++ tests of the CPU kernel tables (native/backends/cpu/gemm_kernels.h) and of the
// precision switch that JS does not reach yet (ExpertWeightSource::exact_f32, pack_linear_precision).
//
//   - every table this CPU can run, in one process: the streaming kernel over several panels, with
//     K split in blocks and accumulated, gives the same bits as the one-panel micro-kernel (the
//     contract that makes results independent of rows, tasks and threads), and both match a
//     float64 reference (of bf16-rounded activations for the bf16 dot layout);
//   - the table in use (MOE_CPU_KERNEL, set by run.sh per table): grouped_gemm and linear with bf16
//     weights, by default and with exact_f32, against the float64 reference: exact stays within the
//     f32 tolerance everywhere, the default too except on avx512-bf16, where it rounds the
//     activations (bf16 tolerance, and different bits from exact);
//   - `--exact-hash` prints a hash of exact_f32 results, which run.sh compares across tables
//     (avx512-bf16 with exact_f32 must be the avx512 table, bit for bit);
//   - `--tables` lists the tables this CPU can run.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../emu/check.h"
#include "gemm_kernels.h"
#include "cpu_features.h"
#include "cpu_ops.h"

using namespace moe;
using namespace moe::cpu;

namespace {

constexpr CpuKernel kAllTables[] = {CpuKernel::kPortable, CpuKernel::kAvx2, CpuKernel::kAvx512, CpuKernel::kAvx512Bf16};

const GemmKernels& table(CpuKernel k) {
  switch (k) {
    case CpuKernel::kAvx512Bf16: return avx512_bf16_kernels();
    case CpuKernel::kAvx512: return avx512_kernels();
    case CpuKernel::kAvx2: return avx2_kernels();
    default: return portable_kernels();
  }
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
  float uniform() {  // [-1, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return float(int32_t(s >> 32)) / 2147483648.0f;
  }
};

float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Weight element k of column j of a panel stored in type w (the bf16 dot layout for pairs).
double panel_at(const uint8_t* b, WeightType w, int64_t k, int j) {
  switch (w) {
    case kWF32: return reinterpret_cast<const float*>(b)[k * kNR + j];
    case kWF16: return f16_to_f32(reinterpret_cast<const uint16_t*>(b)[k * kNR + j]);
    case kWBF16: return bf16_to_f32(reinterpret_cast<const uint16_t*>(b)[k * kNR + j]);
    default: return bf16_to_f32(reinterpret_cast<const uint16_t*>(b)[(k / 2) * 2 * kNR + j * 2 + (k & 1)]);
  }
}

// Activation (k, i) of a micro-panel of type w.
double a_at(const float* a, WeightType w, int64_t k, int i) {
  if (!bf16_pairs(w)) return a[k * kMR + i];
  uint32_t word;
  std::memcpy(&word, a + (k / 2) * kMR + i, 4);
  return bf16_to_f32(uint16_t(k & 1 ? word >> 16 : word & 0xffff));
}

const char* wname(WeightType w) {
  static const char* n[] = {"f32", "f16", "bf16", "bf16-pairs"};
  return n[w];
}

// Random panels and a micro-panel of type w for K = kc (even for pairs).
void fill_operands(WeightType w, int64_t kc, int np, Rng& r, std::vector<uint8_t>& b, std::vector<float>& a) {
  const size_t es = w == kWF32 ? 4 : 2;
  b.assign(size_t(np) * size_t(kc) * kNR * es, 0);
  for (size_t i = 0; i < b.size() / es; ++i) {
    const float v = r.uniform();
    if (es == 4) std::memcpy(&b[i * 4], &v, 4);
    else {
      const uint16_t h = w == kWF16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  a.assign(size_t(micro_panel_floats(w, kc)), 0.f);
  if (!bf16_pairs(w)) {
    for (float& v : a) v = r.uniform();
  } else {
    for (float& v : a) {
      const uint32_t word = uint32_t(f32_to_bf16(r.uniform())) | uint32_t(f32_to_bf16(r.uniform())) << 16;
      std::memcpy(&v, &word, 4);
    }
  }
}

bool same_bits(const float* x, const float* y, size_t n) { return std::memcmp(x, y, n * sizeof(float)) == 0; }

}  // namespace

// The streaming kernel over np panels, with or without prefetch, and K-blocked with accumulation,
// gives the one-panel micro-kernel's bits; all match the float64 reference.
TEST(stream_equals_micro_every_table) {
  for (CpuKernel tk : kAllTables) {
    if (!cpu_can_run(tk)) continue;
    const GemmKernels& t = table(tk);
    for (int wi = 0; wi < kNumWeightTypes; ++wi) {
      const WeightType w = WeightType(wi);
      if (!t.stream[w]) continue;
      for (int64_t kc : {2, 8, 66, 300}) {
        for (int np : {1, 2, 3, 5, 8, 9}) {
          Rng r(uint64_t(kc * 131 + np * 7 + wi));
          std::vector<uint8_t> b;
          std::vector<float> a;
          fill_operands(w, kc, np, r, b, a);
          const size_t es = w == kWF32 ? 4 : 2;
          const size_t panel_bytes = size_t(kc) * kNR * es;
          const size_t tile = size_t(kMR) * kNR;
          for (int rows = 1; rows <= kMR; ++rows) {
            std::vector<float> micro(np * tile, 0.f), stream(np * tile, 0.f), pf(np * tile, 0.f), blocked(np * tile, 0.f);
            for (int q = 0; q < np; ++q) t.micro[w](rows, kc, a.data(), b.data() + q * panel_bytes, micro.data() + q * tile, false);
            t.stream[w](rows, kc, a.data(), b.data(), panel_bytes, np, stream.data(), 0, 0);
            t.stream[w](rows, kc, a.data(), b.data(), panel_bytes, np, pf.data(), 0, 4096);
            const int64_t k1 = kc / 4 * 2;  // an even split point (0 for kc = 2: an empty first block)
            const float* a2 = a.data() + (bf16_pairs(w) ? k1 / 2 : k1) * kMR;
            t.stream[w](rows, k1, a.data(), b.data(), panel_bytes, np, blocked.data(), 0, 0);
            t.stream[w](rows, kc - k1, a2, b.data() + size_t(k1) * kNR * es, panel_bytes, np, blocked.data(), kStreamAccumulate, 0);
            const std::string what = std::string(t.name) + " " + wname(w) + " K=" + std::to_string(kc) + " np=" +
                                     std::to_string(np) + " rows=" + std::to_string(rows);
            bool same = true;
            for (int q = 0; q < np; ++q)
              for (int i = 0; i < rows; ++i) {
                const size_t o = q * tile + size_t(i) * kNR;
                same = same && same_bits(&stream[o], &micro[o], kNR) && same_bits(&pf[o], &micro[o], kNR) &&
                       same_bits(&blocked[o], &micro[o], kNR);
              }
            if (!same) emu_test::fail(__FILE__, __LINE__, what + ": stream / prefetch / blocked bits differ from micro");
            double worst = 0;
            for (int q = 0; q < np; ++q)
              for (int i = 0; i < rows; ++i)
                for (int j = 0; j < kNR; ++j) {
                  double ref = 0, mag = 0;
                  for (int64_t k = 0; k < kc; ++k) {
                    const double p = a_at(a.data(), w, k, i) * panel_at(b.data() + q * panel_bytes, w, k, j);
                    ref += p;
                    mag += std::fabs(p);
                  }
                  worst = std::max(worst, std::fabs(micro[q * tile + size_t(i) * kNR + j] - ref) / (1e-6 + mag));
                }
            if (!(worst < 1e-5)) emu_test::fail(__FILE__, __LINE__, what + ": off the reference by " + emu_test::describe(worst) + " of sum |terms|");
          }
        }
      }
    }
  }
}

// The wide kernel over g micro-panels gives, tile by tile, the bits of the streaming kernel on each
// micro-panel (zeros in the lanes past the rows, as the gathers write them).
TEST(wide_equals_stream_every_table) {
  for (CpuKernel tk : kAllTables) {
    if (!cpu_can_run(tk)) continue;
    const GemmKernels& t = table(tk);
    for (int wi = 0; wi < kNumWeightTypes; ++wi) {
      const WeightType w = WeightType(wi);
      if (!t.wide[w]) continue;
      for (int g = 2; g <= kMaxWideGroup; ++g)
        for (int64_t kc : {2, 66, 300})
          for (int np : {1, 2, 3, 8}) {
            Rng r(uint64_t(g * 1000 + kc * 13 + np + wi));
            std::vector<uint8_t> b;
            std::vector<float> a0;
            fill_operands(w, kc, np, r, b, a0);
            const size_t mpf = a0.size(), tile = size_t(kMR) * kNR;
            std::vector<float> a(mpf * g);
            for (int m = 0; m < g; ++m) {
              std::vector<uint8_t> bb;
              std::vector<float> am;
              fill_operands(w, kc, 1, r, bb, am);
              std::copy(am.begin(), am.end(), a.begin() + m * mpf);
            }
            const int last_rows = 1 + int(kc % kMR);  // the last micro-panel is partial
            for (size_t word = 0; word < mpf; word += kMR)
              std::fill(a.begin() + (g - 1) * mpf + word + last_rows, a.begin() + (g - 1) * mpf + word + kMR, 0.f);
            const size_t es = w == kWF32 ? 4 : 2;
            const size_t panel_bytes = size_t(kc) * kNR * es;
            const int c_np = np + 1;  // a task's tile layout may be wider than the call
            std::vector<float> wide(size_t(g) * c_np * tile, 0.f), ref(size_t(g) * c_np * tile, 0.f);
            t.wide[w](g, kc, a.data(), mpf, b.data(), panel_bytes, np, wide.data(), c_np, 0, 4096);
            for (int m = 0; m < g; ++m) {
              std::vector<float> one(size_t(np) * tile);
              t.stream[w](m == g - 1 ? last_rows : kMR, kc, a.data() + m * mpf, b.data(), panel_bytes, np, one.data(), 0, 0);
              for (int q = 0; q < np; ++q) std::copy(one.begin() + q * tile, one.begin() + (q + 1) * tile, ref.begin() + (size_t(m) * c_np + q) * tile);
            }
            bool same = true;
            for (int m = 0; m < g; ++m)
              for (int q = 0; q < np; ++q)
                for (int i = 0; i < (m == g - 1 ? last_rows : kMR); ++i) {
                  const size_t o = (size_t(m) * c_np + q) * tile + size_t(i) * kNR;
                  same = same && same_bits(&wide[o], &ref[o], kNR);
                }
            if (!same)
              emu_test::fail(__FILE__, __LINE__, std::string(t.name) + " " + wname(w) + " g=" + std::to_string(g) + " K=" +
                                                     std::to_string(kc) + " np=" + std::to_string(np) + ": wide bits differ from stream");
          }
    }
  }
}

namespace {

// A small layer with bf16 weights: d odd (K padding of the bf16 dot layout), f not a multiple of
// the tile, rows spread unevenly over the experts.
struct Bf16Layer {
  int E = 3;
  int64_t d = 37, f = 45, R = 29;
  std::vector<uint16_t> w1, w3, w2;
  std::vector<float> x;
  std::vector<int32_t> offsets{0, 11, 11, 29};  // expert 1 gets no rows
  Bf16Layer() {
    Rng r(7);
    for (auto* m : {&w1, &w3}) {
      m->resize(size_t(E * f * d));
      for (auto& v : *m) v = f32_to_bf16(r.uniform() / std::sqrt(float(d)));
    }
    w2.resize(size_t(E * d * f));
    for (auto& v : w2) v = f32_to_bf16(r.uniform() / std::sqrt(float(f)));
    x.resize(size_t(R * d));
    for (auto& v : x) v = r.uniform();
  }
  ExpertWeightSource source(bool exact) const {
    ExpertWeightSource s;
    s.num_experts = E;
    s.d = d;
    s.f = f;
    s.dtype = DType::kBF16;
    s.exact_f32 = exact;
    for (int e = 0; e < E; ++e) {
      s.w1.push_back(w1.data() + size_t(e) * f * d);
      s.w3.push_back(w3.data() + size_t(e) * f * d);
      s.w2.push_back(w2.data() + size_t(e) * d * f);
    }
    return s;
  }
  std::vector<float> run(bool exact) const {
    std::unique_ptr<PackedExperts> p;
    CHECK(pack_experts(source(exact), nullptr, &p).is_ok());
    std::vector<float> y(size_t(R * d));
    CHECK(grouped_gemm(x.data(), R, nullptr, offsets.data(), *p, y.data()).is_ok());
    return y;
  }
  // float64 reference; bf16_act: x and h rounded to bf16 as the avx512-bf16 table does
  std::vector<double> reference(bool bf16_act) const {
    std::vector<double> y(static_cast<size_t>(R * d)), h(static_cast<size_t>(f));
    for (int e = 0; e < E; ++e)
      for (int r = offsets[e]; r < offsets[e + 1]; ++r) {
        for (int64_t j = 0; j < f; ++j) {
          double g = 0, u = 0;
          for (int64_t k = 0; k < d; ++k) {
            const double xv = bf16_act ? bf16_round(x[r * d + k]) : x[r * d + k];
            g += bf16_to_f32(w1[(e * f + j) * d + k]) * xv;
            u += bf16_to_f32(w3[(e * f + j) * d + k]) * xv;
          }
          const double hv = g / (1 + std::exp(-g)) * u;
          h[j] = bf16_act ? bf16_round(float(hv)) : hv;
        }
        for (int64_t i = 0; i < d; ++i) {
          double s = 0;
          for (int64_t j = 0; j < f; ++j) s += bf16_to_f32(w2[(e * d + i) * f + j]) * h[j];
          y[r * d + i] = s;
        }
      }
    return y;
  }
};

// max |got - ref| / (atol + rtol |ref|)
double worst_ratio(const std::vector<float>& got, const std::vector<double>& ref, double atol, double rtol) {
  double w = 0;
  for (size_t i = 0; i < ref.size(); ++i) w = std::max(w, std::fabs(got[i] - ref[i]) / (atol + rtol * std::fabs(ref[i])));
  return w;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

bool rounds_activations() { return cpu_features().table == CpuKernel::kAvx512Bf16; }

}  // namespace

// exact_f32 multiplies bf16 weights with f32 activations on every table; the default does too
// except on avx512-bf16, which rounds them to bf16 (and must then differ from exact).
TEST(grouped_gemm_precision_exact_and_default) {
  const Bf16Layer L;
  const std::vector<double> ref = L.reference(false);
  const std::vector<float> exact = L.run(true), fast = L.run(false);
  const double f32_tol = worst_ratio(exact, ref, 1e-5, 1e-4);
  if (!(f32_tol <= 1)) emu_test::fail(__FILE__, __LINE__, "exact_f32: off the float64 reference by " + emu_test::describe(f32_tol) + " x the f32 tolerance");
  if (!rounds_activations()) {
    CHECK(same_bits(fast.data(), exact.data(), fast.size()));
    return;
  }
  CHECK(!same_bits(fast.data(), exact.data(), fast.size()));
  // the default against the reference of bf16-rounded activations: f32 arithmetic plus a few h
  // rounding ties (2^-10 of max |ref|), and against the exact reference: the bf16-activation tolerance
  const std::vector<double> ref_bf = L.reference(true);
  const double tie = std::ldexp(max_abs(ref_bf), -10);
  const double own = worst_ratio(fast, ref_bf, 1e-5 + tie, 1e-4);
  if (!(own <= 1)) emu_test::fail(__FILE__, __LINE__, "default: off the bf16-activation reference by " + emu_test::describe(own));
  const double loose = worst_ratio(fast, ref, 1e-5 + std::ldexp(max_abs(ref), -6), 1e-2);
  if (!(loose <= 1)) emu_test::fail(__FILE__, __LINE__, "default: off the float64 reference by " + emu_test::describe(loose) + " x the bf16-activation tolerance");
  // ... and is not merely the exact path within the f32 tolerance
  CHECK(worst_ratio(fast, ref, 1e-5, 1e-4) > 1);
}

TEST(linear_precision_exact_and_default) {
  const int64_t T = 7, in = 41, out = 35;  // in odd: the bf16 dot layout pads K
  Rng r(11);
  std::vector<uint16_t> w(size_t(out * in));
  for (auto& v : w) v = f32_to_bf16(r.uniform() / std::sqrt(float(in)));
  std::vector<float> x(size_t(T * in));
  for (auto& v : x) v = r.uniform();
  const TensorView wv = make_view(w.data(), DType::kBF16, {out, in});
  const TensorView xv = make_view(x.data(), DType::kF32, {T, in});
  auto run = [&](bool exact) {
    std::unique_ptr<PackedLinear> p;
    CHECK(pack_linear_precision(wv, nullptr, exact, &p).is_ok());
    std::vector<float> y(size_t(T * out));
    CHECK(linear(xv, *p, make_view(y.data(), DType::kF32, {T, out})).is_ok());
    return y;
  };
  auto reference = [&](bool bf16_act) {
    std::vector<double> y(size_t(T * out));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < out; ++j) {
        double s = 0;
        for (int64_t k = 0; k < in; ++k) s += bf16_to_f32(w[j * in + k]) * (bf16_act ? bf16_round(x[t * in + k]) : x[t * in + k]);
        y[t * out + j] = s;
      }
    return y;
  };
  std::unique_ptr<PackedLinear> plain;
  CHECK(pack_linear(wv, nullptr, &plain).is_ok());
  std::vector<float> y_plain(size_t(T * out));
  CHECK(linear(xv, *plain, make_view(y_plain.data(), DType::kF32, {T, out})).is_ok());
  const std::vector<float> exact = run(true), fast = run(false);
  CHECK(same_bits(y_plain.data(), fast.data(), fast.size()));  // pack_linear is the default precision
  CHECK(worst_ratio(exact, reference(false), 1e-5, 1e-4) <= 1);
  // one rounding (x) and exact products: the f32 tolerance holds against the bf16-x reference
  CHECK(worst_ratio(fast, reference(rounds_activations()), 1e-5, 1e-4) <= 1);
  CHECK(same_bits(fast.data(), exact.data(), fast.size()) == !rounds_activations());
}

// The SwiGLU epilogues: every table's f32 one gives the avx2-fma table's bits (the zmm tables run the
// same arithmetic two rows per register and transpose a full tile with permutes), for 1..6 rows,
// lanes past the rows untouched, values near 0, large and past exp's clamp; all within 1e-6 of a
// float64 silu(g)*u. avx512-bf16's bf16-pair epilogue is the f32 one rounded to nearest even.
TEST(swiglu_epilogues_agree_every_table) {
  if (!cpu_can_run(CpuKernel::kAvx2)) return;
  const GemmKernels& ref = avx2_kernels();
  for (int seed = 0; seed < 20; ++seed) {
    Rng r(uint64_t(1000 + seed));
    std::vector<float> c(size_t(kMR) * kNR);
    const float scale = seed % 4 == 0 ? 200.f : seed % 4 == 1 ? 1e-3f : 8.f;  // past the clamp, tiny, moderate
    for (float& v : c) v = r.uniform() * scale;
    for (int rows = 1; rows <= kMR; ++rows) {
      std::vector<float> want(size_t(kGateCols) * kMR, -7.f);
      ref.swiglu(rows, c.data(), want.data());
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < kGateCols; ++j) {
          const double g = c[size_t(i) * kNR + j], u = c[size_t(i) * kNR + kGateCols + j];
          const double exact = g / (1.0 + std::exp(-g)) * u;
          CHECK(std::fabs(want[size_t(j) * kMR + i] - exact) <= 1e-6 * (1.0 + std::fabs(exact)));
        }
      for (CpuKernel tk : kAllTables) {
        if (tk == CpuKernel::kPortable || !cpu_can_run(tk)) continue;
        const GemmKernels& t = table(tk);
        std::vector<float> got(want.size(), -7.f);  // lanes past `rows` must keep it
        t.swiglu(rows, c.data(), got.data());
        CHECK(same_bits(got.data(), want.data(), got.size()));
        if (!t.swiglu_pairs) continue;
        std::vector<uint32_t> pairs(size_t(kGateCols / 2) * kMR, 0xdeadbeefu);
        t.swiglu_pairs(rows, c.data(), pairs.data());
        for (int j = 0; j < kGateCols / 2; ++j)
          for (int i = 0; i < kMR; ++i) {
            const uint32_t expect = i >= rows ? 0xdeadbeefu
                                              : uint32_t(f32_to_bf16(want[size_t(2 * j) * kMR + i])) |
                                                    uint32_t(f32_to_bf16(want[size_t(2 * j + 1) * kMR + i])) << 16;
            CHECK_EQ(pairs[size_t(j) * kMR + i], expect);
          }
      }
    }
  }
}

TEST(forced_table_is_reported) {
  const CpuFeatures& f = cpu_features();
  CHECK(cpu_can_run(f.table));
  CHECK(f.kernel == cpu_kernel_name(f.table));
  const char* env = std::getenv("MOE_CPU_KERNEL");
  if (env && *env) {
    const std::string want = std::string(env) == "avx2" ? "avx2-fma" : env;
    if (f.kernel != want) emu_test::fail(__FILE__, __LINE__, "MOE_CPU_KERNEL=" + std::string(env) + " ran " + f.kernel);
  } else {
    // unforced: the widest table this CPU can run
    for (int k = int(f.table) + 1; k <= int(CpuKernel::kAvx512Bf16); ++k) CHECK(!cpu_can_run(CpuKernel(k)));
  }
}

namespace {
// FNV-1a of exact_f32 results (grouped_gemm and linear with bf16 weights).
uint64_t exact_hash() {
  const Bf16Layer L;
  const std::vector<float> y = L.run(true);
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  mix(y.data(), y.size() * 4);
  std::vector<uint16_t> w(size_t(L.d * L.f));
  for (size_t i = 0; i < w.size(); ++i) w[i] = L.w1[i];
  std::unique_ptr<PackedLinear> p;
  if (!pack_linear_precision(make_view(w.data(), DType::kBF16, {L.f, L.d}), nullptr, true, &p).is_ok()) return 0;
  std::vector<float> out(size_t(L.R * L.f));
  if (!linear(make_view(const_cast<float*>(L.x.data()), DType::kF32, {L.R, L.d}), *p, make_view(out.data(), DType::kF32, {L.R, L.f})).is_ok()) return 0;
  mix(out.data(), out.size() * 4);
  return h;
}
}  // namespace

// Hooks for run.sh, before the test runner parses its arguments.
__attribute__((constructor)) static void special_modes(int argc, char** argv) {
  if (argc < 2) return;
  if (!std::strcmp(argv[1], "--tables")) {
    for (CpuKernel k : kAllTables)
      if (cpu_can_run(k)) std::printf("%s\n", cpu_kernel_name(k));
    std::exit(0);
  }
  if (!std::strcmp(argv[1], "--exact-hash")) {
    std::printf("%s %016llx\n", cpu_features().kernel.c_str(), static_cast<unsigned long long>(exact_hash()));
    std::exit(0);
  }
}
