// moe-kernels: the one compute pool of the process.
//
// Sized to the cores (MOE_NUM_THREADS overrides); its threads start on first use. `parallel_for` splits a job's tasks over the
// calling thread and the pool's workers; one job runs at a time, so concurrent requests queue
// instead of oversubscribing the machine. `submit` runs a job on the pool's dispatcher thread, in
// FIFO order: the async N-API calls use it so that compute never runs on the event loop.
#pragma once
#include <cstdint>
#include <functional>

namespace moe {

class ComputePool {
 public:
  static ComputePool& instance();

  int num_threads() const;  // workers + the calling thread

  // fn(task, thread_index) for task in [0, n). thread_index < num_threads(), stable for the
  // duration of the call (use it to pick per-thread scratch). Tasks are claimed dynamically, so a
  // task's result must not depend on which thread runs it. Nested calls run serially.
  void parallel_for(int64_t n, const std::function<void(int64_t task, int thread)>& fn);

  // Queues a job; it runs on the dispatcher thread, which then takes part in parallel_for.
  void submit(std::function<void()> job);

  // Waits until every submitted job has finished.
  void wait_idle();
  // Finishes the queued jobs, then stops and joins every thread of the pool (the library is about
  // to be unloaded: no thread may run its code afterwards). Threads start again on the next use.
  void shutdown();

 private:
  ComputePool();
  ~ComputePool();
  struct Impl;
  Impl* impl_;
};

inline void parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn) {
  ComputePool::instance().parallel_for(n, fn);
}

}  // namespace moe
