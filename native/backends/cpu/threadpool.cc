// The process-wide compute pool: N-1 workers plus the calling thread run the tasks of one
// parallel_for at a time; a dispatcher thread runs submitted jobs in FIFO order.
#include "threadpool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace moe {

namespace {
thread_local bool t_in_parallel = false;

// How long a thread spins for the next parallel_for (or for the workers to finish) before it
// sleeps on a condition variable. A forward runs several parallel_for phases back to back; waking
// a sleeping thread costs tens of microseconds on a VM, a spin of this length costs nothing then.
constexpr auto kSpinBudget = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until pred() holds or the budget is spent; returns pred().
template <class Pred>
bool spin_until(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinBudget;
  for (int i = 0;; ++i) {
    if (pred()) return true;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return pred();
    cpu_relax();
  }
}

int configured_threads() {
  if (const char* s = std::getenv("MOE_NUM_THREADS")) {
    int n = std::atoi(s);
    if (n >= 1 && n <= 256) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : int(hc);
}
}  // namespace

struct ComputePool::Impl {
  int nthreads = 1;
  std::vector<std::thread> workers;

  // one parallel_for at a time
  std::mutex run_mu;

  // the current parallel_for, published to the workers
  // generation and active are atomics so that waiting threads can spin on them; they change
  // under `mu` (generation) or notify under it (active), so sleeping waiters never miss a change.
  std::mutex mu;
  std::condition_variable cv_work, cv_done;
  std::atomic<uint64_t> generation{0};
  std::atomic<bool> stopping{false};
  const std::function<void(int64_t, int)>* fn = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int> active{0};  // workers still inside the current generation

  // dispatcher
  std::thread dispatcher;
  std::mutex qmu;
  std::condition_variable qcv, qidle;
  std::deque<std::function<void()>> queue;
  int running = 0;  // jobs taken off the queue and not finished (0 or 1)
  bool qstop = false;

  // lifecycle: threads start on first use and stop at shutdown() (the library is unloading)
  std::mutex life_mu;
  std::atomic<bool> started{false};

  void run_tasks(int thread) {
    for (;;) {
      int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n) break;
      (*fn)(t, thread);
    }
  }

  // `seen`: the generation when the worker was started (by the thread that starts the pool, before
  // any parallel_for of its own could publish a new one).
  void worker_main(int index, uint64_t seen) {
    t_in_parallel = true;  // a worker never starts a nested parallel_for
    auto woken = [&] { return stopping.load(std::memory_order_acquire) || generation.load(std::memory_order_acquire) != seen; };
    for (;;) {
      if (!spin_until(woken)) {
        std::unique_lock<std::mutex> lk(mu);
        cv_work.wait(lk, woken);
      }
      if (stopping.load(std::memory_order_acquire)) return;
      seen = generation.load(std::memory_order_acquire);
      run_tasks(index);
      if (active.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu);
        cv_done.notify_one();
      }
    }
  }

  void dispatcher_main() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lk(qmu);
        qcv.wait(lk, [&] { return qstop || !queue.empty(); });
        if (queue.empty()) return;
        job = std::move(queue.front());
        queue.pop_front();
        ++running;
      }
      job();
      std::lock_guard<std::mutex> lk(qmu);
      --running;
      if (queue.empty() && running == 0) qidle.notify_all();
    }
  }

  void start() {
    if (started.load(std::memory_order_acquire)) return;
    std::lock_guard<std::mutex> lk(life_mu);
    if (started.load(std::memory_order_relaxed)) return;
    stopping.store(false, std::memory_order_relaxed);
    qstop = false;
    const uint64_t gen = generation.load(std::memory_order_acquire);
    for (int i = 1; i < nthreads; ++i) workers.emplace_back([this, i, gen] { worker_main(i, gen); });
    dispatcher = std::thread([this] { dispatcher_main(); });
    started.store(true, std::memory_order_release);
  }

  void wait_idle() {
    std::unique_lock<std::mutex> lk(qmu);
    qidle.wait(lk, [&] { return queue.empty() && running == 0; });
  }

  void stop() {
    std::lock_guard<std::mutex> lk(life_mu);
    if (!started.load(std::memory_order_relaxed)) return;
    {
      std::lock_guard<std::mutex> q(qmu);
      qstop = true;  // the dispatcher finishes the queue, then returns
    }
    qcv.notify_all();
    if (dispatcher.joinable()) dispatcher.join();
    {
      std::lock_guard<std::mutex> r(run_mu);  // no parallel_for in flight (from a sync caller)
      std::lock_guard<std::mutex> m(mu);
      stopping.store(true, std::memory_order_release);
    }
    cv_work.notify_all();
    for (auto& w : workers) w.join();
    workers.clear();
    started.store(false, std::memory_order_release);
  }
};

ComputePool::ComputePool() : impl_(new Impl) { impl_->nthreads = configured_threads(); }

ComputePool::~ComputePool() {
  impl_->stop();
  delete impl_;
}

ComputePool& ComputePool::instance() {
  // Leaked on purpose: worker threads must outlive every static destructor that could still be
  // running a job at process exit.
  static ComputePool* pool = new ComputePool();
  return *pool;
}

int ComputePool::num_threads() const { return impl_->nthreads; }

void ComputePool::parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn) {
  if (n <= 0) return;
  Impl& s = *impl_;
  if (t_in_parallel || n == 1 || s.nthreads == 1) {
    for (int64_t t = 0; t < n; ++t) fn(t, 0);
    return;
  }
  s.start();
  std::lock_guard<std::mutex> run_lock(s.run_mu);
  {
    std::lock_guard<std::mutex> lk(s.mu);
    s.fn = &fn;
    s.n = n;
    s.next.store(0, std::memory_order_relaxed);
    s.active.store(int(s.workers.size()), std::memory_order_relaxed);
    s.generation.fetch_add(1, std::memory_order_release);
  }
  s.cv_work.notify_all();
  t_in_parallel = true;
  s.run_tasks(0);
  t_in_parallel = false;
  auto done = [&] { return s.active.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done)) {
    std::unique_lock<std::mutex> lk(s.mu);
    s.cv_done.wait(lk, done);
  }
  s.fn = nullptr;
}

void ComputePool::submit(std::function<void()> job) {
  impl_->start();
  {
    std::lock_guard<std::mutex> lk(impl_->qmu);
    impl_->queue.push_back(std::move(job));
  }
  impl_->qcv.notify_one();
}

}  // namespace moe

namespace moe {
void ComputePool::wait_idle() {
  if (impl_->started.load(std::memory_order_acquire)) impl_->wait_idle();
}
void ComputePool::shutdown() { impl_->stop(); }
}  // namespace moe
