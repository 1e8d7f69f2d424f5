// N-API glue: running an op synchronously or as a Promise on the compute pool.
//
// The "baton" pattern: everything a job needs is turned into plain C++ data on the JS thread
// (tensor views, ints); the compute step runs on the pool's dispatcher thread and never touches a
// JS value; the JS objects it reads and writes stay referenced in `keep` until the Promise settles
// on the JS thread.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <vector>

#include "args.h"
#include "moe/status.h"

namespace moe_addon {

struct Job {
  KeepAlive keep;                                    // inputs and outputs kept alive
  std::vector<std::shared_ptr<void>> hold;           // device buffers the job uses (device.h)
  Napi::ObjectReference result;                      // what the call returns, built before compute
  std::function<moe::Status()> compute;              // runs off the JS thread (async)
  std::function<Napi::Value(Napi::Env)> finish;      // optional: builds the result after compute
  moe::Status status;
};

// async: returns a Promise settled with the result; otherwise runs now and returns it.
Napi::Value run_job(Napi::Env env, bool async, std::unique_ptr<Job> job);

// A job that builds a backend object (packed weights): make(std::unique_ptr<T>*) -> Status runs as
// the compute step, then wrap(env, std::shared_ptr<T>) turns the object into its JS handle.
template <class T, class Make, class Wrap>
Napi::Value run_make_job(Napi::Env env, bool async, std::unique_ptr<Job> job, Make make, Wrap wrap) {
  auto made = std::make_shared<std::unique_ptr<T>>();
  job->compute = [made, make]() { return make(made.get()); };
  job->finish = [made, wrap](Napi::Env e) -> Napi::Value { return wrap(e, std::shared_ptr<T>(std::move(*made))); };
  return run_job(env, async, std::move(job));
}

}  // namespace moe_addon
