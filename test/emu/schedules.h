// test/emu/schedules.h: running a kernel test under every fiber schedule of the emulator
// (round-robin, reverse, random), because a missing barrier can hide under one of them.
// Include after cuda_compat.cuh.
#pragma once
#include <cstdint>

namespace emu_test {

inline constexpr moe_emu::Schedule kAllSchedules[] = {moe_emu::Schedule::kRoundRobin, moe_emu::Schedule::kReverse,
                                                      moe_emu::Schedule::kRandom};

// Sets the emulator's schedule (a random one seeded with `seed`) for its scope, then restores it.
struct ScheduleScope {
  moe_emu::Schedule old;
  uint64_t old_seed;
  explicit ScheduleScope(moe_emu::Schedule s, uint64_t seed = 2024)
      : old(moe_emu::schedule()), old_seed(moe_emu::schedule_seed()) {
    moe_emu::set_schedule(s, seed);
  }
  ~ScheduleScope() { moe_emu::set_schedule(old, old_seed); }
  ScheduleScope(const ScheduleScope&) = delete;
  ScheduleScope& operator=(const ScheduleScope&) = delete;
};

}  // namespace emu_test
