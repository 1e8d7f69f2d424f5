// test/emu/schedules.h: running a kernel test under every fiber schedule of the emulator
// (round-robin, reverse, random, drift), because a missing barrier can hide under one of them; and
// switching the shared-memory race detector for a scope.
// Include after cuda_compat.cuh.
#pragma once
#include <cstdint>

namespace emu_test {

inline constexpr moe_emu::Schedule kAllSchedules[] = {moe_emu::Schedule::kRoundRobin, moe_emu::Schedule::kReverse,
                                                      moe_emu::Schedule::kRandom, moe_emu::Schedule::kDrift};

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

// Turns the race detector on or off for its scope (run.sh turns it on for the whole run), e.g. for a
// test that wants to see what a racy kernel computes under each schedule.
struct RaceCheckScope {
  bool old;
  explicit RaceCheckScope(bool on) : old(moe_emu::racecheck()) { moe_emu::set_racecheck(on); }
  ~RaceCheckScope() { moe_emu::set_racecheck(old); }
  RaceCheckScope(const RaceCheckScope&) = delete;
  RaceCheckScope& operator=(const RaceCheckScope&) = delete;
};

// Sets the shared memory a block may opt in to for its scope (e.g. sm_90's 227 KB), then restores it.
struct SmemOptinScope {
  size_t old;
  explicit SmemOptinScope(size_t bytes) : old(moe_emu::smem_optin()) { moe_emu::set_smem_optin(bytes); }
  ~SmemOptinScope() { moe_emu::set_smem_optin(old); }
  SmemOptinScope(const SmemOptinScope&) = delete;
  SmemOptinScope& operator=(const SmemOptinScope&) = delete;
};

}  // namespace emu_test
