#include "jobs.h"

#include <new>

#include "moe/threadpool.h"

namespace moe_addon {

namespace {

struct AsyncJob {
  std::unique_ptr<Job> job;
  Napi::Promise::Deferred deferred;
};

moe::Status run_compute(Job& job) {
  // Nothing may escape onto a pool thread: an allocation failure becomes a status.
  try {
    return job.compute ? job.compute() : moe::Status::ok();
  } catch (const std::bad_alloc&) {
    return moe::Status::oom("out of memory while running the op");
  } catch (const std::exception& e) {
    return moe::Status::internal(std::string("unexpected exception: ") + e.what());
  } catch (...) {
    return moe::Status::internal("unexpected exception");
  }
}

Napi::Value finish_value(Napi::Env env, Job& job) {
  if (job.finish) return job.finish(env);
  if (!job.result.IsEmpty()) return job.result.Value();
  return env.Undefined();
}

void settle(Napi::Env env, Napi::Function, void*, AsyncJob* aj) {
  std::unique_ptr<AsyncJob> owned(aj);
  if (env == nullptr) {  // the environment is going away: nothing to settle, references die with it
    owned->job->keep.clear();
    owned.release();
    return;
  }
  Napi::HandleScope scope(env);
  Job& job = *owned->job;
  if (!job.status.is_ok()) {
    owned->deferred.Reject(make_status_error(env, job.status).Value());
    return;
  }
  try {
    owned->deferred.Resolve(finish_value(env, job));
  } catch (const Napi::Error& e) {
    owned->deferred.Reject(e.Value());
  }
}

using SettleFn = Napi::TypedThreadSafeFunction<void, AsyncJob, settle>;

}  // namespace

Napi::Value run_job(Napi::Env env, bool async, std::unique_ptr<Job> job) {
  if (!async) {
    job->status = run_compute(*job);
    throw_if_error(env, job->status);
    return finish_value(env, *job);
  }
  auto deferred = Napi::Promise::Deferred::New(env);
  Napi::Promise promise = deferred.Promise();
  SettleFn tsfn = SettleFn::New(env, "moe-kernels job", 0, 1);
  auto* aj = new AsyncJob{std::move(job), deferred};
  moe::ComputePool::instance().submit([aj, tsfn]() mutable {
    aj->job->status = run_compute(*aj->job);
    tsfn.BlockingCall(aj);
    tsfn.Release();
  });
  return promise;
}

}  // namespace moe_addon
