// moe-kernels CUDA backend: the executor. Jobs are enqueued in submission order by one thread; a job
// enqueues its work on streams (the tensor stream, or a layer's own stream) and returns at once.
// Completion is an event poll: a second thread records nothing itself, it queries the events recorded
// after each job's work and, once they are reached, runs the job's host work (copies out of pinned
// staging) and calls `done`. So a slow GPU job never blocks the CPU backend's pool, and jobs on
// different layers' streams overlap on the device; on the emulator, where work runs when it is
// issued, the enqueue thread is where the kernels run.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

#include "backend_runtime.h"

namespace moe {
namespace cuda {

namespace {

struct Job {
  std::function<Status()> run;
  std::function<void(Status)> done;
};

// A job whose work is enqueued: its call, the events after its work on each stream, its status.
struct Pending {
  std::unique_ptr<Call> call;
  std::vector<cudaEvent_t> events;
  Status status;
  std::function<void(Status)> done;
};

}  // namespace

class CudaExecutor final : public Executor {
 public:
  ~CudaExecutor() override { shutdown(); }

  void submit(std::function<Status()> run, std::function<void(Status)> done) override {
    start();
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(Job{std::move(run), std::move(done)});
      ++outstanding_;
    }
    cv_.notify_all();
  }

  Status run_sync(const std::function<Status()>& run) override {
    // Through the queue, so that a sync call keeps its place among the async ones (device tensors
    // are written in call order).
    std::mutex m;
    std::condition_variable cv;
    bool finished = false;
    Status result;
    submit(run, [&](Status st) {
      std::lock_guard<std::mutex> lk(m);
      result = std::move(st);
      finished = true;
      cv.notify_all();
    });
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return finished; });
    return result;
  }

  void drain() override {
    std::unique_lock<std::mutex> lk(mu_);
    idle_.wait(lk, [&] { return outstanding_ == 0; });
  }

  void shutdown() override {
    std::lock_guard<std::mutex> life(life_mu_);
    if (!started_) return;
    drain();
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    enqueuer_.join();
    poller_.join();
    started_ = false;
  }

 private:
  void start() {
    std::lock_guard<std::mutex> life(life_mu_);
    if (started_) return;
    stop_ = false;
    enqueuer_ = std::thread([this] { enqueue_main(); });
    poller_ = std::thread([this] { poll_main(); });
    started_ = true;
  }

  void enqueue_main() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      auto p = std::make_unique<Pending>();
      p->call = std::make_unique<Call>();
      p->done = std::move(job.done);
      set_current_call(p->call.get());
      p->status = run_guarded(job.run);
      set_current_call(nullptr);
      // Whatever was enqueued (even by a job that failed half-way) is waited for before its staging
      // memory is released.
      for (cudaStream_t s : p->call->streams()) {
        cudaEvent_t e = nullptr;
        cudaError_t err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
        if (err == cudaSuccess) err = cudaEventRecord(e, s);
        if (err != cudaSuccess) {
          if (e) cudaEventDestroy(e);
          // no event to poll: wait for the stream here instead
          const cudaError_t w = cudaStreamSynchronize(s);
          if (p->status.is_ok()) p->status = from_cuda(w != cudaSuccess ? w : err, "waiting for the kernels");
          continue;
        }
        p->events.push_back(e);
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        pending_.push_back(std::move(p));
      }
      cv_.notify_all();
    }
  }

  void poll_main() {
    auto backoff = std::chrono::microseconds(0);
    for (;;) {
      std::list<std::unique_ptr<Pending>> batch;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return !pending_.empty() || (stop_ && outstanding_ == 0); });
        if (pending_.empty()) return;
        batch.splice(batch.end(), pending_);
      }
      bool progressed = false;
      for (auto it = batch.begin(); it != batch.end();) {
        Pending& p = **it;
        bool reached = true;
        for (size_t i = 0; i < p.events.size();) {
          const cudaError_t q = cudaEventQuery(p.events[i]);
          if (q == cudaErrorNotReady) {
            reached = false;
            break;
          }
          if (q != cudaSuccess && p.status.is_ok()) p.status = from_cuda(q, "running the kernels");
          cudaEventDestroy(p.events[i]);
          p.events.erase(p.events.begin() + long(i));
        }
        if (!reached) {
          ++it;
          continue;
        }
        p.call->complete(p.status.is_ok());
        p.done(std::move(p.status));
        it = batch.erase(it);
        progressed = true;
        std::lock_guard<std::mutex> lk(mu_);
        if (--outstanding_ == 0) idle_.notify_all();
      }
      if (!batch.empty()) {
        std::lock_guard<std::mutex> lk(mu_);
        pending_.splice(pending_.begin(), batch);  // older jobs first
      }
      if (progressed) {
        backoff = std::chrono::microseconds(0);
      } else {
        // nothing reached yet: poll again soon (GPU work takes microseconds to milliseconds)
        backoff = backoff.count() == 0 ? std::chrono::microseconds(5) : std::min(backoff * 2, std::chrono::microseconds(200));
        std::this_thread::sleep_for(backoff);
      }
    }
  }

  std::mutex life_mu_;
  bool started_ = false;
  std::thread enqueuer_, poller_;

  std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<Job> queue_;
  std::list<std::unique_ptr<Pending>> pending_;
  size_t outstanding_ = 0;  // submitted and not done
  bool stop_ = false;
};

Executor& executor() {
  static CudaExecutor* e = new CudaExecutor();  // leaked: shutdown_backends() stops its threads
  return *e;
}

}  // namespace cuda
}  // namespace moe
