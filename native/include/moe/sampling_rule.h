// moe-kernels: the exact rule of temperature + top-p sampling, shared by the CUDA kernel
// (native/backends/cuda/sampling.cu), the CPU backend and the tests. Every decision is made on integers,
// so a parallel GPU reduction and a sequential loop choose the same id from the same logits:
//
//   m      = max of the non-NaN logits of the row
//   q_i    = sample_weight(logit_i, m, temperature)     integer weight in [0, 2^40]:
//            floor(expf((logit_i - m) / temperature) * 2^40), 0 for NaN (and -inf) logits;
//            when m = +inf, 2^40 for +inf logits and 0 for the rest; when m = -inf, 0 for all
//   Q      = sum_i q_i  (< 2^63 for vocab <= 2^23)
//   P      = top_p_mass(Q, top_p) = max(1, ceil(Q * round(top_p * 2^32) / 2^32)), top_p in [0, 1]
//   tau    = the largest v with S(v) = sum_{q_i >= v} q_i >= P
//   A      = sum_{q_i > tau} q_i  (< P),  n_eq = ceil((P - A) / tau)
//   N      = {i : q_i > tau} and the n_eq lowest indices with q_i == tau: exactly the shortest prefix
//            of the weights sorted in decreasing order (ties: lower index first) whose sum is >= P
//   Qn     = A + n_eq * tau
//   target = mulhi_u64(philox_u64(seed, step, row), Qn)           uniform in [0, Qn)
//   id     = the smallest i in N with sum_{j in N, j <= i} q_j > target   (index order)
// Q == 0 (every logit NaN or -inf) falls back to the greedy id. The only floating-point step is
// expf (the GPU's and the C library's may differ in the last bit, so "same logits" means the same q).
#pragma once
#include <cmath>
#include <cstdint>

#include "rng_philox.h"

namespace moe {

constexpr int kSampleWeightBits = 40;
constexpr uint64_t kSampleWeightOne = uint64_t(1) << kSampleWeightBits;
constexpr int64_t kSampleMaxVocab = int64_t(1) << 23;

MOE_HOST_DEVICE inline uint64_t sample_weight(float logit, float row_max, float temperature) {
  if (logit != logit) return 0;  // NaN
  if (row_max == INFINITY) return logit == INFINITY ? kSampleWeightOne : 0;
  if (row_max == -INFINITY) return 0;                     // every logit -inf (or NaN)
  const float e = expf((logit - row_max) / temperature);  // in [0, 1]; -inf logits give 0
  if (!(e > 0.f)) return 0;                                // (and no NaN reaches the cast)
  return uint64_t(e * float(kSampleWeightOne));            // exact scaling, truncation
}

MOE_HOST_DEVICE inline uint64_t top_p_mass(uint64_t total, float top_p) {
  const float p = top_p != top_p ? 1.f : (top_p < 0.f ? 0.f : (top_p > 1.f ? 1.f : top_p));
  const uint64_t tp = uint64_t(double(p) * 4294967296.0 + 0.5);  // round(top_p * 2^32), <= 2^32
  // ceil(total * tp / 2^32) with total = hi * 2^32 + lo, without overflow
  const uint64_t hi = total >> 32, lo = uint32_t(total);
  const uint64_t lo_prod = lo * tp;  // < 2^64
  const uint64_t mass = hi * tp + (lo_prod >> 32) + ((lo_prod & 0xffffffffu) != 0 ? 1 : 0);
  return mass < 1 ? 1 : mass;
}

}  // namespace moe

namespace moe {

// The rule above from the weights on, sequentially, for one row (host code): q [vocab] holds
// sample_weight of each logit, total their sum (> 0). Returns the chosen id. O(vocab * 42) on
// integers: the threshold search reads the weights once per bit.
inline int32_t sample_top_p_weights(const uint64_t* q, int64_t vocab, uint64_t total, float top_p, uint64_t seed,
                                    uint64_t step, uint64_t row) {
  const uint64_t mass = top_p_mass(total, top_p);
  uint64_t tau = 0;
  for (int b = kSampleWeightBits; b >= 0; --b) {
    const uint64_t cand = tau | (uint64_t(1) << b);
    uint64_t s = 0;
    for (int64_t i = 0; i < vocab; ++i) s += q[i] >= cand ? q[i] : 0;
    if (s >= mass) tau = cand;
  }
  uint64_t above = 0;
  for (int64_t i = 0; i < vocab; ++i) above += q[i] > tau ? q[i] : 0;
  const uint64_t ties = (mass - above + tau - 1) / tau;
  const uint64_t target = mulhi_u64(philox_u64(seed, step, row), above + ties * tau);
  uint64_t run = 0, tie_rank = 0;
  int64_t last = -1;
  for (int64_t i = 0; i < vocab; ++i) {
    const bool in = q[i] > tau || (q[i] == tau && tie_rank++ < ties);
    if (!in) continue;
    run += q[i];
    last = i;
    if (run > target) return int32_t(i);
  }
  return int32_t(last);  // not reached: target < the nucleus's sum
}

// The whole rule for one row (host code: the CPU backend's sampler). temperature must be > 0
// (greedy is the caller's choice); q is scratch for vocab weights. Returns the chosen id.
inline int32_t sample_top_p_row(const float* logits, int64_t vocab, float temperature, float top_p, uint64_t seed,
                                uint64_t step, uint64_t row, uint64_t* q) {
  int64_t greedy = -1;
  for (int64_t i = 0; i < vocab; ++i)
    if (logits[i] == logits[i] && (greedy < 0 || logits[i] > logits[greedy])) greedy = i;
  if (greedy < 0) return 0;
  const float m = logits[greedy];
  uint64_t total = 0;
  for (int64_t i = 0; i < vocab; ++i) total += q[i] = sample_weight(logits[i], m, temperature);
  if (total == 0) return int32_t(greedy);
  return sample_top_p_weights(q, vocab, total, top_p, seed, step, row);
}

}  // namespace moe
