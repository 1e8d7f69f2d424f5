// moe-kernels: the counter-based random numbers of sampling, the same on every backend.
//
// A draw is a pure function of (seed, step, row): no state, so the same seed and step give the
// same token on the CPU and the GPU, on any thread count and in any order of rows. splitmix64
// (Steele, Lea, Flood 2014; the finaliser of Java's SplittableRandom) mixes the counters:
//   rng_u64(seed, step, row) = mix(mix(mix(seed) ^ step) ^ row)
// where mix(z) is one splitmix64 output for state z (z += golden gamma, then the finaliser).
// rng_uniform takes the top 24 bits, so it is exact in f32 and lies in [0, 1).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

MOE_HOST_DEVICE inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

MOE_HOST_DEVICE inline uint64_t rng_u64(uint64_t seed, uint64_t step, uint64_t row) {
  return splitmix64(splitmix64(splitmix64(seed) ^ step) ^ row);
}

// Uniform in [0, 1) with 24 random bits: k * 2^-24 for k = rng_u64 >> 40.
MOE_HOST_DEVICE inline float rng_uniform(uint64_t seed, uint64_t step, uint64_t row) {
  return float(rng_u64(seed, step, row) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace moe
