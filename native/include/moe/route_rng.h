// moe-kernels: the routing variants' arithmetic that both backends must share bit for bit, in one
// header that compiles as plain C++ (native/backends/cpu) and as host/device code under nvcc or the CUDA
// emulator (native/backends/cuda): the expert capacity rule, and a counter-based random generator keyed by
// (seed, token, expert, stream), so a seeded variant routes the same on every backend, every run,
// whatever the thread or block layout (no generator state to advance).
//
//   expert_capacity(T, k, E, factor)   Switch/GShard: ceil(T*k/E * factor) slots per expert
//   forward_capacity(...)              which capacity a forward applies (prefill / decode factor)
//   route_uniform(seed, t, e, stream)  a float in [0, 1), a multiple of 2^-24
//   route_normal(seed, t, e)           N(0, 1) by Box-Muller from two 24-bit uniforms
//   route_softplus(v)                  log(1 + exp(v)), overflow-safe
//   route_keep_second(seed, t, w0, w1) GShard random routing of a top-2 token's second expert
//
// The generator is a hash, not a sequence: splitmix64's finaliser (Steele, Lea, Flood 2014, the
// mixer of java.util.SplittableRandom) applied to the seed and then to each key word in turn.
// Uniform and Gaussian draws use only integer arithmetic up to the final float conversion; the
// Gaussian's log/cos/sqrt are f32 library calls, which may differ in the last bit between the CPU's
// libm and the GPU's, so cross-backend tests use inputs whose routing does not hinge on that bit.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MOE_ROUTE_HD __host__ __device__ __forceinline__
#else  // plain C++, and the CUDA emulator (where device code is host code)
#define MOE_ROUTE_HD inline
#endif

namespace moe {

// Id of a routing slot that goes to no expert (GShard random routing drops a second expert this
// way): permute gives it row_of = -1 without counting it as a capacity drop, combine skips it.
constexpr int32_t kNoExpert = -1;

// Key streams of the generator, so that the noise and the random-routing draws of one token are
// independent even with the same seed.
enum : uint32_t { kRouteStreamNoise = 1, kRouteStreamRandomRouting = 2 };

// Slots each expert keeps for T tokens routed to k of E experts with a capacity factor (Switch
// Transformer eq. 3, GShard's C = 2N/E for k = 2 at factor 1): ceil(T*k/E * factor), computed in
// double on the host by both backends. factor <= 0 (or not finite): -1, dropless.
inline int64_t expert_capacity(int64_t T, int k, int E, double factor) {
  if (!(factor > 0) || !std::isfinite(factor) || E < 1) return -1;
  const double c = std::ceil(double(T) * double(k) / double(E) * factor);
  return c >= 2147483647.0 ? 2147483647 : int64_t(c);
}

// The capacity a forward applies (MoeForwardParams in moe/moe_ops.h, launch_moe_forward's options):
// an explicit capacity >= 0 wins; otherwise a call is "decode" when decode == 1, or when decode == -1
// (auto) and T == 1, and then takes eval_factor if it is > 0; every other call takes factor.
inline int64_t forward_capacity(int64_t capacity, double factor, double eval_factor, int decode, int64_t T, int k,
                                int E) {
  if (capacity >= 0) return capacity;
  const bool is_decode = decode == 1 || (decode < 0 && T == 1);
  return expert_capacity(T, k, E, is_decode && eval_factor > 0 ? eval_factor : factor);
}

MOE_ROUTE_HD uint64_t route_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// 64 random bits for (seed, token, expert, stream).
MOE_ROUTE_HD uint64_t route_hash(uint64_t seed, uint64_t token, uint32_t expert, uint32_t stream) {
  uint64_t h = route_mix64(seed + 0x9e3779b97f4a7c15ull);
  h = route_mix64(h ^ token);
  h = route_mix64(h ^ ((uint64_t(stream) << 32) | uint64_t(expert)));
  return h;
}

// Uniform in [0, 1): the top 24 bits times 2^-24 (exact in f32).
MOE_ROUTE_HD float route_uniform(uint64_t seed, uint64_t token, uint32_t expert, uint32_t stream) {
  return float(uint32_t(route_hash(seed, token, expert, stream) >> 40)) * (1.0f / 16777216.0f);
}

// Standard normal for the noise of (token, expert): Box-Muller, z = sqrt(-2 ln u1) cos(2 pi u2) with
// u1 = (top 24 bits + 1) * 2^-24 in (0, 1] and u2 = (the next 24 bits) * 2^-24 in [0, 1).
MOE_ROUTE_HD float route_normal(uint64_t seed, uint64_t token, uint32_t expert) {
  const uint64_t h = route_hash(seed, token, expert, kRouteStreamNoise);
  const float u1 = float(uint32_t(h >> 40) + 1u) * (1.0f / 16777216.0f);
  const float u2 = float(uint32_t(h >> 16) & 0xffffffu) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

// softplus(v) = log(1 + exp(v)); v itself above 20, where exp(-v) is below f32's resolution of 1.
MOE_ROUTE_HD float route_softplus(float v) { return v > 20.f ? v : log1pf(expf(v)); }

// GShard random routing (Lepikhin et al. 2020, "GShard", Algorithm 1, the second-expert loop:
// g2 = g2 / (g1 + g2); rnd = uniform(0, 1); dispatch to e2 if 2 * g2 > rnd): the second expert of a
// top-2 token is kept with probability min(1, 2 * g2), g2 its weight normalised over the two.
// w0, w1: the token's two routing weights in pick order (renormalised or not: the ratio is the same).
MOE_ROUTE_HD bool route_keep_second(uint64_t seed, uint64_t token, float w0, float w1) {
  const float g2 = w1 / (w0 + w1);
  return 2.0f * g2 > route_uniform(seed, token, 0u, kRouteStreamRandomRouting);
}

}  // namespace moe
