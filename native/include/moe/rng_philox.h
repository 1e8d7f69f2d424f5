// moe-kernels: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
// the counter-based generator behind sampling, usable from CUDA kernels and from plain C++ alike, so
// the CPU backend draws exactly the numbers the GPU draws. A draw is a pure function of its key and
// counter: no state, no order dependence.
//
// Sampling keys it as key = seed (64 bits), counter = (row low, row high, step low, step high):
// philox_u64(seed, step, row) is the draw of row `row` at decoding step `step`.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__  // (under native/emu and plain C++: ordinary functions)
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

struct Philox4x32 {
  uint32_t v[4];
};

// High and low 32 bits of a * b.
MOE_HOST_DEVICE inline void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  *lo = uint32_t(p);
}

// Ten rounds of Philox4x32 on counter c with key (k0, k1) (the Random123 reference constants).
MOE_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, c.v[0], &hi0, &lo0);
    philox_mulhilo(kM1, c.v[2], &hi1, &lo1);
    const Philox4x32 n = {{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    c = n;
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// The 64-bit draw of (seed, step, row): words 0 (low) and 1 (high) of the block.
MOE_HOST_DEVICE inline uint64_t philox_u64(uint64_t seed, uint64_t step, uint64_t row) {
  const Philox4x32 ctr = {{uint32_t(row), uint32_t(row >> 32), uint32_t(step), uint32_t(step >> 32)}};
  const Philox4x32 r = philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32));
  return (uint64_t(r.v[1]) << 32) | r.v[0];
}

// floor(a * b / 2^64), exactly.
MOE_HOST_DEVICE inline uint64_t mulhi_u64(uint64_t a, uint64_t b) {
  const uint64_t a_lo = uint32_t(a), a_hi = a >> 32, b_lo = uint32_t(b), b_hi = b >> 32;
  const uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const uint64_t mid = (lo_lo >> 32) + uint32_t(hi_lo) + uint32_t(lo_hi);
  return hi_hi + (hi_lo >> 32) + (lo_hi >> 32) + (mid >> 32);
}

}  // namespace moe
