// moe-kernels: the exact rule of token sampling, shared by the CUDA kernel
// (native/backends/cuda/sampling.cu), the CPU backend and the tests. Every decision after the
// penalties and the weights is made on integers, so a parallel GPU reduction and a sequential loop
// choose the same id from the same logits. For one row with parameters p (a SampleRow):
//
//   l'_i   = penalized_logit(l_i, c_i, p) where c_i > 0 is the count of token i in the row's penalty
//            history (repetition: l > 0 ? l / r : l * r; then l - (min(c, 2^24) * frequency +
//            presence), all in double, rounded to float once); l'_i = l_i for the other tokens
//   greedy = argmax of the l' (ties to the lower index, NaN never wins, 0 when every l' is NaN);
//            temperature <= 0 stops here
//   m      = l'_greedy
//   q_i    = sample_weight(l'_i, m, temperature)    integer weight in [0, 2^40]:
//            floor(expf((l'_i - m) / temperature) * 2^40), 0 for NaN (and -inf) logits;
//            when m = +inf, 2^40 for +inf logits and 0 for the rest
//   min-p  : q_i = 0 where q_i < min_p_threshold(min_p) = round(min_p * 2^32) * 2^8 (the max has 2^40)
//   top-k  : for 0 < k < vocab, only the k largest q survive (ties: lower index first), the rest 0:
//            tau_k = the k-th largest q, keep q_i > tau_k and the first k - #{q > tau_k} of q == tau_k
//   Q      = sum_i q_i  (< 2^63 for vocab <= 2^23); Q == 0 falls back to greedy
//   P      = top_p_mass(Q, top_p) = max(1, ceil(Q * round(top_p * 2^32) / 2^32)), top_p in [0, 1]
//   tau    = the largest v with S(v) = sum_{q_i >= v} q_i >= P
//   A      = sum_{q_i > tau} q_i  (< P),  n_eq = ceil((P - A) / tau)
//   N      = {i : q_i > tau} and the n_eq lowest indices with q_i == tau: exactly the shortest prefix
//            of the weights sorted in decreasing order (ties: lower index first) whose sum is >= P
//   Qn     = A + n_eq * tau
//   target = mulhi_u64(philox_u64(seed, step, stream), Qn)           uniform in [0, Qn)
//   id     = the smallest i in N with sum_{j in N, j <= i} q_j > target   (index order)
//
// The only floating-point steps are the penalties (IEEE double operations, each correctly rounded on
// every backend; the one product is exact, so contracting it into an FMA changes nothing) and expf
// (the GPU's and the C library's may differ in the last bit, so "same logits" means the same q).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "rng_philox.h"

namespace moe {

constexpr int kSampleWeightBits = 40;
constexpr uint64_t kSampleWeightOne = uint64_t(1) << kSampleWeightBits;
constexpr int64_t kSampleMaxVocab = int64_t(1) << 23;
constexpr int32_t kSamplePenaltyCountCap = int32_t(1) << 24;

// One row's sampling parameters: the same struct on the host and the device (56 bytes, no padding
// the compilers could disagree on). Defaults: greedy, no filter, no penalty.
struct SampleRow {
  float temperature = 0.f;  // <= 0: greedy
  float top_p = 1.f;        // [0, 1]: nucleus mass
  float min_p = 0.f;        // [0, 1]: weights below min_p x the top weight are dropped
  int32_t top_k = 0;        // 0: off; else the k largest weights only
  float repetition = 1.f;   // > 0; 1: off
  float presence = 0.f;     // subtracted once from a token in the history
  float frequency = 0.f;    // subtracted per occurrence
  uint32_t reserved = 0;
  uint64_t seed = 0, step = 0, stream = 0;  // the draw: philox_u64(seed, step, stream)
};
static_assert(sizeof(SampleRow) == 56, "SampleRow is shared with the device");

MOE_HOST_DEVICE inline float penalized_logit(float logit, int32_t count, float repetition, float presence,
                                             float frequency) {
  if (count <= 0 || logit != logit) return logit;
  double x = logit;
  if (repetition != 1.f) x = x > 0 ? x / double(repetition) : x * double(repetition);
  const double c = double(count < kSamplePenaltyCountCap ? count : kSamplePenaltyCountCap);
  x -= c * double(frequency) + double(presence);  // c * frequency is exact (24 x 24 bits)
  return float(x);
}

MOE_HOST_DEVICE inline uint64_t sample_weight(float logit, float row_max, float temperature) {
  if (logit != logit) return 0;  // NaN
  if (row_max == INFINITY) return logit == INFINITY ? kSampleWeightOne : 0;
  if (row_max == -INFINITY) return 0;                     // every logit -inf (or NaN)
  const float e = expf((logit - row_max) / temperature);  // in [0, 1]; -inf logits give 0
  if (!(e > 0.f)) return 0;                                // (and no NaN reaches the cast)
  return uint64_t(e * float(kSampleWeightOne));            // exact scaling, truncation
}

// round(p * 2^32) for p clamped to [0, 1] (NaN: 1), <= 2^32.
MOE_HOST_DEVICE inline uint64_t sample_fraction_u32(float p) {
  const float c = p != p ? 1.f : (p < 0.f ? 0.f : (p > 1.f ? 1.f : p));
  return uint64_t(double(c) * 4294967296.0 + 0.5);
}

// The smallest weight min-p keeps: round(min_p * 2^32) * 2^8 (a fraction of the top weight 2^40).
MOE_HOST_DEVICE inline uint64_t min_p_threshold(float min_p) {
  return min_p != min_p || min_p <= 0.f ? 0 : sample_fraction_u32(min_p) << (kSampleWeightBits - 32);
}

MOE_HOST_DEVICE inline uint64_t top_p_mass(uint64_t total, float top_p) {
  const uint64_t tp = sample_fraction_u32(top_p);
  // ceil(total * tp / 2^32) with total = hi * 2^32 + lo, without overflow
  const uint64_t hi = total >> 32, lo = uint32_t(total);
  const uint64_t lo_prod = lo * tp;  // < 2^64
  const uint64_t mass = hi * tp + (lo_prod >> 32) + ((lo_prod & 0xffffffffu) != 0 ? 1 : 0);
  return mass < 1 ? 1 : mass;
}

}  // namespace moe

namespace moe {

// The top-p stage of the rule from the weights on, sequentially, for one row (host code): q [vocab]
// holds the filtered weights, total their sum (> 0). Returns the chosen id. O(vocab * 42) on
// integers: the threshold search reads the weights once per bit.
inline int32_t sample_top_p_weights(const uint64_t* q, int64_t vocab, uint64_t total, float top_p, uint64_t seed,
                                    uint64_t step, uint64_t stream) {
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
  const uint64_t target = mulhi_u64(philox_u64(seed, step, stream), above + ties * tau);
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

// Scratch of one sequential sampler (reused across rows).
struct SampleScratch {
  std::vector<float> logits;
  std::vector<uint64_t> q, sorted;
};

// The whole rule for one row (host code: the CPU backend's sampler). The penalty history is n_pen
// distinct token ids in [0, vocab) with their counts (> 0).
inline int32_t sample_row(const float* logits, int64_t vocab, const SampleRow& p, const int32_t* pen_ids,
                          const int32_t* pen_counts, int64_t n_pen, SampleScratch& s) {
  const float* row = logits;
  if (n_pen > 0) {
    s.logits.assign(logits, logits + vocab);
    for (int64_t j = 0; j < n_pen; ++j) {
      float& l = s.logits[size_t(pen_ids[j])];
      l = penalized_logit(l, pen_counts[j], p.repetition, p.presence, p.frequency);
    }
    row = s.logits.data();
  }
  int64_t greedy = -1;
  for (int64_t i = 0; i < vocab; ++i)
    if (row[i] == row[i] && (greedy < 0 || row[i] > row[greedy])) greedy = i;
  if (greedy < 0) return 0;
  if (!(p.temperature > 0.f)) return int32_t(greedy);
  const float m = row[greedy];
  const uint64_t theta = min_p_threshold(p.min_p);
  s.q.resize(size_t(vocab));
  uint64_t* q = s.q.data();
  uint64_t total = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const uint64_t w = sample_weight(row[i], m, p.temperature);
    total += q[i] = w < theta ? 0 : w;
  }
  if (total == 0) return int32_t(greedy);
  if (p.top_k > 0 && p.top_k < vocab) {
    const size_t k = size_t(p.top_k);
    s.sorted.assign(q, q + vocab);
    std::nth_element(s.sorted.begin(), s.sorted.begin() + (k - 1), s.sorted.end(), [](uint64_t a, uint64_t b) { return a > b; });
    const uint64_t tau_k = s.sorted[k - 1];
    size_t above = 0;
    for (int64_t i = 0; i < vocab; ++i) above += q[i] > tau_k;
    size_t ties = k - above, rank = 0;
    total = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (q[i] < tau_k || (q[i] == tau_k && rank++ >= ties)) q[i] = 0;
      total += q[i];
    }
  }
  return sample_top_p_weights(q, vocab, total, p.top_p, p.seed, p.step, p.stream);
}

}  // namespace moe
