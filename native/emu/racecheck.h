// moe-kernels CUDA emulator: the shadow state of the shared-memory race detector (private to
// native/emu; emu_worker.cc drives it, emu.h's set_racecheck states the rules).
//
// Happens-before inside a block, with one clock per worker that ticks at every synchronisation:
//   - an access is stamped with the clock when it happens;
//   - a completed __syncthreads (any variant) ticks the clock and becomes `last_bar`: every access
//     stamped before it is ordered before everything after it;
//   - a completed __syncwarp ticks the clock and stores it for every pair of lanes of its mask
//     (`common`): an access of lane a stamped before common[a][b] is ordered before lane b's
//     accesses from then on.
// Since a fiber runs until it synchronises, "now" is the time of the access being checked, so an
// earlier access is unordered with it exactly when it is stamped at or after the last barrier and,
// for lanes of one warp, at or after their last common __syncwarp.
//
// Per shared byte: the last write and two reads: the last one, and the last one before it by a
// thread of another warp (so that a write is checked against some reader of every other warp that
// read since the barrier: if readers of two warps exist, the two slots hold two warps, and one of
// them is not the writer's). Shadow slots of earlier blocks carry stamps before the block's first
// barrier, so nothing is cleared between blocks. The clock is 64-bit: it does not wrap.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe_emu {

enum class AccessKind : uint8_t {
  kNone,
  kRead,          // a load in an instrumented translation unit
  kWrite,         // a store
  kAtomicRead,    // an atomic load (does not race with atomics)
  kAtomic,        // an atomic read-modify-write or store (does not race with atomics)
  kLdmatrix,      // the 16-byte row a lane addresses
  kCpAsyncIssue,  // cp.async's 16-byte destination, when issued
  kCpAsyncLand,   // the same, when it lands at cp.async.wait_group
};

inline bool access_writes(AccessKind k) {
  return k == AccessKind::kWrite || k == AccessKind::kAtomic || k == AccessKind::kCpAsyncIssue ||
         k == AccessKind::kCpAsyncLand;
}
inline bool access_atomic(AccessKind k) { return k == AccessKind::kAtomic || k == AccessKind::kAtomicRead; }

inline const char* access_name(AccessKind k) {
  switch (k) {
    case AccessKind::kRead: return "read";
    case AccessKind::kWrite: return "write";
    case AccessKind::kAtomicRead: return "atomic read";
    case AccessKind::kAtomic: return "atomic update";
    case AccessKind::kLdmatrix: return "ldmatrix read";
    case AccessKind::kCpAsyncIssue: return "cp.async write (at issue)";
    case AccessKind::kCpAsyncLand: return "cp.async write (landing at wait_group)";
    case AccessKind::kNone: break;
  }
  return "access";
}

// One access: who, where and when. `where` is a code address in an instrumented translation unit
// (line < 0), or a source file the emulator knows with its line (ldmatrix, cp.async).
struct Access {
  uint64_t stamp = 0;  // the clock when it happened; 0: never (before every block's first barrier)
  const void* where = nullptr;
  int32_t line = -1;
  uint16_t tid = 0;  // linear thread index in the block
  AccessKind kind = AccessKind::kNone;
};

struct Race {
  size_t offset = 0;  // arena offset of the first byte the two accesses share
  Access earlier, later;
};

class RaceShadow {
 public:
  static constexpr int kLanes = 32;

  void begin_block(int nwarps) {
    barrier();
    common_.assign(size_t(nwarps) * kLanes * kLanes, 0);
  }
  void barrier() { last_bar_ = ++clock_; }
  void syncwarp(int warp, unsigned mask) {
    const uint64_t now = ++clock_;
    uint64_t* c = &common_[size_t(warp) * kLanes * kLanes];
    for (unsigned a = mask; a; a &= a - 1)
      for (unsigned b = mask; b; b &= b - 1) c[__builtin_ctz(a) * kLanes + __builtin_ctz(b)] = now;
  }
  // Makes room for the shadow of arena offsets [0, bytes).
  void cover(size_t bytes) {
    if (bytes > shadow_.size()) shadow_.resize(bytes);
  }
  size_t covered() const { return shadow_.size(); }

  // Records an access of arena bytes [offset, offset + n) by thread `tid`; on the first conflict
  // with an earlier access fills *race and returns true (the access is recorded all the same).
  bool access(size_t offset, size_t n, AccessKind kind, int tid, const void* where, int line, Race* race) {
    const Access now{clock_, where, line, uint16_t(tid), kind};
    const bool writes = access_writes(kind);
    bool found = false;
    if (offset >= shadow_.size()) return false;
    if (n > shadow_.size() - offset) n = shadow_.size() - offset;
    for (size_t i = 0; i < n; ++i) {
      Byte& b = shadow_[offset + i];
      if (!found) {
        const Access* other = nullptr;
        if (conflicts(b.w, now)) other = &b.w;
        else if (writes && conflicts(b.r, now)) other = &b.r;
        else if (writes && conflicts(b.r2, now)) other = &b.r2;
        if (other) {
          found = true;
          race->offset = offset + i;
          race->earlier = *other;
          race->later = now;
        }
      }
      if (writes) {
        b.w = now;
      } else {
        if (b.r.stamp >= last_bar_ && b.r.tid / kLanes != tid / kLanes) b.r2 = b.r;
        b.r = now;
      }
    }
    return found;
  }

 private:
  struct Byte {
    Access w, r, r2;
  };

  // Whether `prev` (a recorded access, possibly none) and `now` race.
  bool conflicts(const Access& prev, const Access& now) const {
    if (prev.kind == AccessKind::kNone || prev.stamp < last_bar_ || prev.tid == now.tid) return false;
    if (!access_writes(prev.kind) && !access_writes(now.kind)) return false;
    if (access_atomic(prev.kind) && access_atomic(now.kind)) return false;
    const int warp = prev.tid / kLanes;
    if (warp != now.tid / kLanes) return true;
    return common_[size_t(warp) * kLanes * kLanes + (prev.tid % kLanes) * kLanes + now.tid % kLanes] <= prev.stamp;
  }

  std::vector<Byte> shadow_;
  std::vector<uint64_t> common_;
  uint64_t clock_ = 0, last_bar_ = 0;
};

}  // namespace moe_emu
