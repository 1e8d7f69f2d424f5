// N-API glue of the process group (lib/parallel/): MPI collectives on one dedicated comm thread, and
// NCCL communicators whose all-to-all runs as an op of the device backend (moe::DeviceComm, on the
// backend's executor and stream, in order with its other ops). No math, no backend names.
//
// MPI is loaded at run time (native/parallel/mpi_lib.h), initialised by the comm thread with
// MPI_THREAD_SERIALIZED, and every MPI call runs on that thread, in submission order, so the
// event loop never waits on a peer. Each call copies its input into native memory on the JS thread
// (the baton) and gets a fresh typed array back when it settles. MPI_COMM_WORLD's error handler is
// MPI_ERRORS_RETURN: a failed collective rejects with ERR_DIST instead of aborting the job.
//
// A collective that never completes (a peer stuck or gone without the transport noticing) cannot
// be cancelled in MPI; the TypeScript watchdog (lib/parallel/process-group.ts) rejects it after its
// timeout and calls dist_abandon(): the group is then broken (every later call fails), the pending
// completion no longer keeps the process alive, and exit never waits for the stuck thread.
#include <napi.h>

#include <chrono>
#include <climits>
#include <memory>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "handles.h"
#include "jobs.h"
#include "../parallel/mpi_lib.h"
#include "../parallel/nccl_lib.h"

namespace moe_addon {
namespace {

using moe::dist::MpiHandle;
using moe::dist::MpiLib;

// Element types of the collectives, from the typed array class.
enum class Elem { kU8, kU16, kI32, kF32, kF64 };
size_t elem_size(Elem e) {
  switch (e) {
    case Elem::kU8: return 1;
    case Elem::kU16: return 2;
    case Elem::kI32: case Elem::kF32: return 4;
    case Elem::kF64: return 8;
  }
  return 1;
}
MpiHandle mpi_type(const MpiLib& m, Elem e) {
  switch (e) {
    case Elem::kU8: return m.t_byte;
    case Elem::kU16: return m.t_uint16;
    case Elem::kI32: return m.t_int;
    case Elem::kF32: return m.t_float;
    case Elem::kF64: return m.t_double;
  }
  return m.t_byte;
}

// One collective call: built on the JS thread, run on the comm thread, settled on the JS thread.
struct CommOp {
  Napi::Promise::Deferred deferred;
  explicit CommOp(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  std::function<void(CommOp&)> run;  // comm thread: fills out / error
  std::string error, code = "ERR_DIST";
  Elem elem = Elem::kU8;
  std::vector<uint8_t> in, out;
  std::vector<int32_t> send_counts, recv_counts;  // all-to-all-v
  bool counts_given = false;
  int root = 0, op = 0;
  // result kinds: 0 undefined, 1 typed array, 2 {data, recvCounts}, 3 {rank, size, library}
  int result_kind = 0;
  std::string library;
};

// The process's one MPI state. Never freed: the comm thread may be stuck in MPI at exit, and a
// static std::thread would terminate the process from its destructor.
struct Comm {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> queue;  // run in order on the comm thread
  bool thread_started = false;
  const MpiLib* mpi = nullptr;
  // written by the comm thread, read under mu
  bool initialized = false, finalized = false;
  int rank = -1, size = 0;
  // JS thread only
  bool broken = false;
  int pending = 0;
  Napi::ThreadSafeFunction tsfn;
  bool tsfn_made = false;
  bool teardown_hooked = false;
};
Comm& comm() {
  static Comm* c = new Comm();
  return *c;
}

void settle(Napi::Env env, Napi::Function, CommOp* op);

void comm_thread_main() {
  Comm& c = comm();
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lk(c.mu);
      c.cv.wait(lk, [&] { return !c.queue.empty(); });
      task = std::move(c.queue.front());
      c.queue.pop_front();
    }
    task();
  }
}

// Queues a task for the comm thread (starting it on first use). Caller holds no lock.
void enqueue(std::function<void()> task) {
  Comm& c = comm();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    c.queue.push_back(std::move(task));
    if (!c.thread_started) {
      std::thread(comm_thread_main).detach();
      c.thread_started = true;
    }
  }
  c.cv.notify_all();
}

// ---- the MPI work, on the comm thread -----------------------------------------------------------

bool mpi_failed(CommOp& op, const MpiLib& m, int rc, const char* what) {
  if (rc == MpiLib::kSuccess) return false;
  op.error = std::string(what) + " failed: " + m.error_string(rc) +
             " (a peer rank may have exited or failed; every rank must make the same collective calls in the same order)";
  return true;
}

void run_init(CommOp& op) {
  Comm& c = comm();
  const MpiLib& m = *c.mpi;
  int flag = 0;
  m.Finalized(&flag);
  if (flag) {
    op.error = "MPI was already finalized in this process (a closed ProcessGroup cannot be opened again)";
    return;
  }
  m.Initialized(&flag);
  if (!flag) {
    int provided = 0;
    const int rc = m.Init_thread(nullptr, nullptr, MpiLib::kThreadSerialized, &provided);
    if (rc != MpiLib::kSuccess) {
      op.error = "MPI_Init_thread failed: " + m.error_string(rc);
      return;
    }
    if (provided < MpiLib::kThreadSerialized) {
      op.error = "MPI_Init_thread: the library gives thread level " + std::to_string(provided) +
                 ", the process group needs MPI_THREAD_SERIALIZED (2)";
      return;
    }
  }
  int rank = -1, size = 0;
  if (mpi_failed(op, m, m.Comm_set_errhandler(m.comm_world, m.errors_return), "MPI_Comm_set_errhandler")) return;
  if (mpi_failed(op, m, m.Comm_rank(m.comm_world, &rank), "MPI_Comm_rank")) return;
  if (mpi_failed(op, m, m.Comm_size(m.comm_world, &size), "MPI_Comm_size")) return;
  char ver[256 + 1] = {0};
  int len = 0;
  if (m.Get_library_version(ver, &len) == MpiLib::kSuccess) op.library.assign(ver, size_t(std::max(0, std::min(len, 256))));
  while (!op.library.empty() && (op.library.back() == '\n' || op.library.back() == '\0')) op.library.pop_back();
  std::lock_guard<std::mutex> lk(c.mu);
  c.initialized = true;
  c.rank = rank;
  c.size = size;
}

void run_all_to_all_v(CommOp& op) {
  Comm& c = comm();
  const MpiLib& m = *c.mpi;
  const int n = c.size;
  if (!op.counts_given) {
    op.recv_counts.assign(size_t(n), 0);
    if (mpi_failed(op, m, m.Alltoall(op.send_counts.data(), 1, m.t_int, op.recv_counts.data(), 1, m.t_int, m.comm_world),
                   "MPI_Alltoall (counts)"))
      return;
  }
  std::vector<int> sd(static_cast<size_t>(n)), rd(static_cast<size_t>(n));
  int64_t s = 0, r = 0;
  for (int p = 0; p < n; ++p) {
    sd[size_t(p)] = int(s);
    rd[size_t(p)] = int(r);
    s += op.send_counts[size_t(p)];
    if (op.recv_counts[size_t(p)] < 0) {
      op.error = "all_to_all_v: rank " + std::to_string(p) + " announced " + std::to_string(op.recv_counts[size_t(p)]) + " elements";
      return;
    }
    r += op.recv_counts[size_t(p)];
  }
  if (r > INT_MAX) {
    op.error = "all_to_all_v: " + std::to_string(r) + " elements to receive, more than MPI's int counts hold (2^31-1)";
    op.code = "ERR_UNSUPPORTED";
    return;
  }
  op.out.assign(size_t(r) * elem_size(op.elem), 0);
  const MpiHandle t = mpi_type(m, op.elem);
  mpi_failed(op, m,
             m.Alltoallv(op.in.data(), op.send_counts.data(), sd.data(), t, op.out.data(), op.recv_counts.data(), rd.data(), t,
                         m.comm_world),
             "MPI_Alltoallv");
}

// ---- settling, on the JS thread ---------------------------------------------------------------

Napi::Value typed_array(Napi::Env env, Elem e, const std::vector<uint8_t>& bytes) {
  const size_t n = bytes.size() / elem_size(e);
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes.size());
  if (!bytes.empty()) std::memcpy(ab.Data(), bytes.data(), bytes.size());
  switch (e) {
    case Elem::kU8: return Napi::Uint8Array::New(env, n, ab, 0);
    case Elem::kU16: return Napi::Uint16Array::New(env, n, ab, 0);
    case Elem::kI32: return Napi::Int32Array::New(env, n, ab, 0);
    case Elem::kF32: return Napi::Float32Array::New(env, n, ab, 0);
    case Elem::kF64: return Napi::Float64Array::New(env, n, ab, 0);
  }
  return env.Undefined();
}

void settle(Napi::Env env, Napi::Function, CommOp* op) {
  Comm& c = comm();
  std::unique_ptr<CommOp> own(op);
  if (env == nullptr) return;  // the environment is gone
  if (--c.pending == 0 && c.tsfn_made && !c.broken) c.tsfn.Unref(env);
  Napi::HandleScope scope(env);
  if (!op->error.empty()) {
    op->deferred.Reject(make_moe_error(env, op->code, op->error).Value());
    return;
  }
  Napi::Value v = env.Undefined();
  if (op->result_kind == 1) {
    v = typed_array(env, op->elem, op->out);
  } else if (op->result_kind == 2) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("data", typed_array(env, op->elem, op->out));
    std::vector<uint8_t> rc(op->recv_counts.size() * 4);
    if (!rc.empty()) std::memcpy(rc.data(), op->recv_counts.data(), rc.size());
    o.Set("recvCounts", typed_array(env, Elem::kI32, rc));
    v = o;
  } else if (op->result_kind == 3) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("rank", Napi::Number::New(env, c.rank));
    o.Set("size", Napi::Number::New(env, c.size));
    o.Set("library", Napi::String::New(env, op->library));
    v = o;
  }
  op->deferred.Resolve(v);
}

// The MPI library, or ERR_DIST_UNAVAILABLE with the loader's reason.
const MpiLib& need_mpi(Napi::Env env) {
  Comm& c = comm();
  if (!c.mpi) {
    std::string why;
    c.mpi = moe::dist::load_mpi(&why);
    if (!c.mpi) throw_moe_error(env, "ERR_DIST_UNAVAILABLE", "MPI is not available: " + why);
  }
  return *c.mpi;
}

void check_usable(Napi::Env env, bool need_init) {
  Comm& c = comm();
  if (c.broken)
    throw_moe_error(env, "ERR_DIST_BROKEN",
                    "the process group is broken: an earlier collective failed or timed out, and MPI cannot recover from that; "
                    "exit this process");
  std::lock_guard<std::mutex> lk(c.mu);
  if (need_init && !c.initialized) throw_moe_error(env, "ERR_DIST", "the process group is not initialised (call ProcessGroup.init() first)");
  if (c.finalized) throw_moe_error(env, "ERR_DISPOSED", "the process group was closed and cannot be used again");
}

Napi::Value submit(Napi::Env env, CommOp* op) {
  Comm& c = comm();
  if (!c.tsfn_made) {
    c.tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "moe-kernels-dist", 0, 1);
    c.tsfn.Unref(env);
    c.tsfn_made = true;
  }
  if (c.pending++ == 0) c.tsfn.Ref(env);  // a collective in flight keeps the process alive
  Napi::Promise p = op->deferred.Promise();
  enqueue([op] {
    op->run(*op);
    // BlockingCall fails only when the environment is tearing down; the op is then dropped.
    if (comm().tsfn.BlockingCall(op, settle) != napi_ok) delete op;
  });
  return p;
}

// The environment's teardown after a natural exit (the event loop ran dry): a group that is open
// and healthy is finalized here, so that a program that never called close() still ends as a
// normal MPI process (mpirun otherwise calls the exit abnormal and fails the job). Waits at most
// kTeardownFinalizeSeconds for MPI_Finalize, which waits for the other ranks. process.exit() does
// not run this hook: such an exit is abnormal to mpirun unless the group was closed.
constexpr int kTeardownFinalizeSeconds = 30;
void on_env_teardown(void*) {
  Comm& c = comm();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    if (!c.initialized || c.finalized || c.broken || c.pending > 0) return;
    c.finalized = true;
  }
  auto done = std::make_shared<bool>(false);
  enqueue([done] {
    comm().mpi->Finalize();
    std::lock_guard<std::mutex> lk(comm().mu);
    *done = true;
    comm().cv.notify_all();
  });
  std::unique_lock<std::mutex> lk(c.mu);
  c.cv.wait_for(lk, std::chrono::seconds(kTeardownFinalizeSeconds), [&] { return *done; });
}

// The element type and bytes of a typed array argument (copied: the call runs off the JS thread).
Elem read_array(Napi::Env env, const Napi::Value& v, const char* name, std::vector<uint8_t>* bytes) {
  if (!v.IsTypedArray())
    throw_type_error(env, std::string(name) + " must be a Uint8Array, Uint16Array, Int32Array, Float32Array or Float64Array, got " + describe(v));
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  Elem e;
  switch (ta.TypedArrayType()) {
    case napi_uint8_array: e = Elem::kU8; break;
    case napi_uint16_array: e = Elem::kU16; break;
    case napi_int32_array: e = Elem::kI32; break;
    case napi_float32_array: e = Elem::kF32; break;
    case napi_float64_array: e = Elem::kF64; break;
    default:
      throw_type_error(env, std::string(name) + " must be a Uint8Array, Uint16Array, Int32Array, Float32Array or Float64Array, got " + describe(v));
  }
  if (ta.ElementLength() > size_t(INT_MAX))
    throw_range_error(env, std::string(name) + " has " + std::to_string(ta.ElementLength()) + " elements, more than MPI's int counts hold (2^31-1)");
  const uint8_t* p = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  bytes->assign(p, p + ta.ByteLength());
  return e;
}

// Per-rank counts: an Int32Array of the group size, each >= 0.
std::vector<int32_t> read_counts(Napi::Env env, const Napi::Value& v, const char* name, int n) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_type_error(env, std::string(name) + " must be an Int32Array, got " + describe(v));
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  if (int64_t(a.ElementLength()) != n)
    throw_range_error(env, std::string(name) + " must have one count per rank (" + std::to_string(n) + "), got " + std::to_string(a.ElementLength()));
  std::vector<int32_t> out(a.Data(), a.Data() + a.ElementLength());
  for (int p = 0; p < n; ++p)
    if (out[size_t(p)] < 0) throw_range_error(env, std::string(name) + "[" + std::to_string(p) + "] must be >= 0, got " + std::to_string(out[size_t(p)]));
  return out;
}

// ---- bindings ----------------------------------------------------------------------------------

// dist_mpi_info() -> {available, reason}: whether Open MPI loads here (does not initialise it).
Napi::Value MpiInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string why;
  const MpiLib* m = moe::dist::load_mpi(&why);
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", Napi::Boolean::New(env, m != nullptr));
  o.Set("reason", Napi::String::New(env, m ? "Open MPI loaded" : why));
  return o;
}

// dist_init() -> Promise<{rank, size, library}>
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  need_mpi(env);
  check_usable(env, false);
  Comm& c = comm();
  if (!c.teardown_hooked) {
    napi_add_env_cleanup_hook(env, on_env_teardown, nullptr);
    c.teardown_hooked = true;
  }
  auto* op = new CommOp(env);
  op->result_kind = 3;
  op->run = run_init;
  return submit(env, op);
}

// dist_all_to_all_v(data, sendCounts: Int32Array[size], recvCounts?: Int32Array[size])
//   -> Promise<{data, recvCounts}>; counts in elements. Without recvCounts the counts are exchanged
//   first (MPI_Alltoall), in the same call.
Napi::Value AllToAllV(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "dist_all_to_all_v");
  check_usable(env, true);
  const int n = comm().size;
  auto op = std::make_unique<CommOp>(env);
  op->elem = read_array(env, info[0], "data", &op->in);
  op->send_counts = read_counts(env, info[1], "sendCounts", n);
  int64_t total = 0;
  for (int32_t v : op->send_counts) total += v;
  const int64_t len = int64_t(op->in.size() / elem_size(op->elem));
  if (total != len)
    throw_range_error(env, "sendCounts sum to " + std::to_string(total) + " elements, but data has " + std::to_string(len));
  if (info.Length() > 2 && given(info[2])) {
    op->recv_counts = read_counts(env, info[2], "recvCounts", n);
    op->counts_given = true;
  }
  op->result_kind = 2;
  op->run = run_all_to_all_v;
  return submit(env, op.release());
}

// dist_all_reduce(data, op: 'sum' | 'max' | 'min') -> Promise<typed array of the same type>
Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "dist_all_reduce");
  check_usable(env, true);
  auto op = std::make_unique<CommOp>(env);
  op->elem = read_array(env, info[0], "data", &op->in);
  if (op->elem == Elem::kU8 || op->elem == Elem::kU16)
    throw_type_error(env, "data must be an Int32Array, Float32Array or Float64Array for a reduction, got " + describe(info[0]));
  const std::string o = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  if (o != "sum" && o != "max" && o != "min") throw_type_error(env, "op must be 'sum', 'max' or 'min', got " + describe(info[1]));
  op->op = o == "sum" ? 0 : o == "max" ? 1 : 2;
  op->result_kind = 1;
  op->run = [](CommOp& op) {
    const MpiLib& m = *comm().mpi;
    op.out.assign(op.in.size(), 0);
    const int count = int(op.in.size() / elem_size(op.elem));
    MpiHandle mop = op.op == 0 ? m.op_sum : op.op == 1 ? m.op_max : m.op_min;
    mpi_failed(op, m, m.Allreduce(op.in.data(), op.out.data(), count, mpi_type(m, op.elem), mop, m.comm_world), "MPI_Allreduce");
  };
  return submit(env, op.release());
}

// dist_broadcast(data, root) -> Promise<typed array>: root's data on every rank (same length on all).
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 2, "dist_broadcast");
  check_usable(env, true);
  auto op = std::make_unique<CommOp>(env);
  op->elem = read_array(env, info[0], "data", &op->in);
  op->root = int(to_int(info[1], "root", 0, comm().size - 1));
  op->result_kind = 1;
  op->run = [](CommOp& op) {
    const MpiLib& m = *comm().mpi;
    op.out = op.in;
    mpi_failed(op, m, m.Bcast(op.out.data(), int(op.out.size() / elem_size(op.elem)), mpi_type(m, op.elem), op.root, m.comm_world),
               "MPI_Bcast");
  };
  return submit(env, op.release());
}

// dist_barrier() -> Promise<void>
Napi::Value Barrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env, true);
  auto* op = new CommOp(env);
  op->run = [](CommOp& op) {
    const MpiLib& m = *comm().mpi;
    mpi_failed(op, m, m.Barrier(m.comm_world), "MPI_Barrier");
  };
  return submit(env, op);
}

// dist_finalize() -> Promise<void>: MPI_Finalize (collective); the group cannot be used again.
Napi::Value Finalize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env, true);
  auto* op = new CommOp(env);
  op->run = [](CommOp& op) {
    Comm& c = comm();
    const MpiLib& m = *c.mpi;
    {
      std::lock_guard<std::mutex> lk(c.mu);
      c.finalized = true;  // refuse new calls at once
    }
    mpi_failed(op, m, m.Finalize(), "MPI_Finalize");
  };
  return submit(env, op);
}

// dist_abandon(): after a watchdog timeout. The group is broken; the stuck call no longer keeps
// the process alive.
Napi::Value Abandon(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Comm& c = comm();
  if (!c.broken && c.tsfn_made && c.pending > 0) c.tsfn.Unref(env);
  c.broken = true;
  return env.Undefined();
}

// dist_state() -> {initialized, finalized, broken, rank, size, pending}
Napi::Value State(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Comm& c = comm();
  Napi::Object o = Napi::Object::New(env);
  std::lock_guard<std::mutex> lk(c.mu);
  o.Set("initialized", Napi::Boolean::New(env, c.initialized));
  o.Set("finalized", Napi::Boolean::New(env, c.finalized));
  o.Set("broken", Napi::Boolean::New(env, c.broken));
  o.Set("rank", Napi::Number::New(env, c.rank));
  o.Set("size", Napi::Number::New(env, c.size));
  o.Set("pending", Napi::Number::New(env, c.pending));
  return o;
}

// nccl_info() -> {available, reason, version}: whether libnccl.so.2 loads here.
Napi::Value NcclInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string why;
  const moe::dist::NcclLib* n = moe::dist::load_nccl(&why);
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", Napi::Boolean::New(env, n != nullptr));
  o.Set("reason", Napi::String::New(env, n ? "NCCL loaded" : why));
  o.Set("version", Napi::Number::New(env, n ? n->version : 0));
  return o;
}

// nccl_unique_id() -> Uint8Array(128): the id rank 0 makes and the others receive (e.g. by
// ProcessGroup.broadcast) before ncclCommInitRank. ERR_DIST_UNAVAILABLE without NCCL.
Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string why;
  const moe::dist::NcclLib* n = moe::dist::load_nccl(&why);
  if (!n) throw_moe_error(env, "ERR_DIST_UNAVAILABLE", "NCCL is not available: " + why);
  moe::dist::NcclUniqueId id{};
  const int rc = n->GetUniqueId(&id);
  if (rc != 0) throw_moe_error(env, "ERR_DIST", "ncclGetUniqueId failed: " + n->error_string(rc));
  Napi::Uint8Array out = Napi::Uint8Array::New(env, sizeof(id.internal));
  std::memcpy(out.Data(), id.internal, sizeof(id.internal));
  return out;
}

// nccl_comm_init(id: Uint8Array(128), rank, size, {backend}) -> Promise<DeviceComm>: ncclCommInitRank
// as a job of the device backend (its thread and device), which returns once every rank has called
// it with rank 0's id. ERR_DIST_UNAVAILABLE without NCCL.
Napi::Value NcclCommInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 3, "nccl_comm_init");
  Options o(info, 3, "nccl_comm_init", {"backend"});
  moe::Backend* backend = backend_option(o);
  if (backend->capabilities().host_memory)
    throw_type_error(env, std::string("options.backend must be a CUDA backend (NCCL moves device memory), got '") + backend->name() + "'");
  std::string why;
  const moe::dist::NcclLib* lib = moe::dist::load_nccl(&why);
  if (!lib) throw_moe_error(env, "ERR_DIST_UNAVAILABLE", "NCCL is not available: " + why);
  moe::dist::NcclUniqueId id{};
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      info[0].As<Napi::Uint8Array>().ElementLength() != sizeof(id.internal))
    throw_type_error(env, "id must be a Uint8Array of " + std::to_string(sizeof(id.internal)) + " bytes (ncclGetUniqueId), got " + describe(info[0]));
  std::memcpy(id.internal, info[0].As<Napi::Uint8Array>().Data(), sizeof(id.internal));
  const int size = int(to_int(info[2], "size", 1, INT_MAX));
  const int rank = int(to_int(info[1], "rank", 0, size - 1));
  auto job = std::make_unique<Job>(true);  // always async: it waits for every rank
  job->backend = backend;
  return run_make_job<moe::DeviceComm>(
      env, std::move(job),
      [lib, id, size, rank](std::unique_ptr<moe::DeviceComm>* out) {
        std::unique_ptr<moe::dist::NcclComm> c;
        const moe::Status st = moe::dist::NcclComm::create(*lib, id, size, rank, &c);
        *out = std::move(c);
        return st;
      },
      CommHandle::NewInstance);
}

// device_all_to_all(comm, rows: device tensor [R, ...], sendRows: Int32Array[size], recvRows:
// Int32Array[size]) -> Promise<device tensor [sum recvRows, ...]>: rows to and from every rank of the
// communicator's group, as an op of the rows' backend (in order with its other ops).
Napi::Value DeviceAllToAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  expect_args(info, 4, "device_all_to_all");
  CommHandle* h = CommHandle::Get(info[0], "comm");
  auto job = std::make_unique<Job>(true);
  moe::AllToAllArgs a;
  a.comm = h->obj.get();
  job->hold.push_back(h->obj);
  moe::Backend* b = nullptr;
  a.send = device_tensor(*job, info[1], "rows", kAnyFloat | kI32, -1, &b);
  if (a.send.ndim < 1) throw_range_error(env, "rows must have at least one dim, got " + dims_string(a.send));
  const int n = h->obj->size();
  int64_t sent = 0, received = 0;
  for (int32_t v : read_counts(env, info[2], "sendRows", n)) a.send_rows.push_back(v), sent += v;
  for (int32_t v : read_counts(env, info[3], "recvRows", n)) a.recv_rows.push_back(v), received += v;
  if (sent != a.send.dims[0])
    throw_range_error(env, "sendRows sum to " + std::to_string(sent) + " rows, but rows has " + std::to_string(a.send.dims[0]));
  moe::TensorView shape = a.send;
  shape.dims[0] = received;
  Place place;
  place.device = b;
  job->result = Napi::Persistent(new_output(env, *job, a.send.dtype, shape, place, &a.recv));
  job->backend = b;
  job->compute = [b, a]() { return b->all_to_all(a); };
  return run_job(env, std::move(job));
}

// nccl_comm_abort(comm): after a watchdog timeout, ends the communicator's transfers in flight
// (ncclCommAbort), so that the stream and the backend's executor they block drain and the process can
// exit; the communicator cannot be used again.
Napi::Value NcclCommAbort(const Napi::CallbackInfo& info) {
  expect_args(info, 1, "nccl_comm_abort");
  CommHandle* h = CommHandle::Get(info[0], "comm");
  h->obj->abort();
  return info.Env().Undefined();
}

}  // namespace

void InitDistBindings(Napi::Env env, Napi::Object exports) {
  exports.Set("dist_mpi_info", Napi::Function::New(env, MpiInfo, "dist_mpi_info"));
  exports.Set("dist_init", Napi::Function::New(env, Init, "dist_init"));
  exports.Set("dist_all_to_all_v", Napi::Function::New(env, AllToAllV, "dist_all_to_all_v"));
  exports.Set("dist_all_reduce", Napi::Function::New(env, AllReduce, "dist_all_reduce"));
  exports.Set("dist_broadcast", Napi::Function::New(env, Broadcast, "dist_broadcast"));
  exports.Set("dist_barrier", Napi::Function::New(env, Barrier, "dist_barrier"));
  exports.Set("dist_finalize", Napi::Function::New(env, Finalize, "dist_finalize"));
  exports.Set("dist_abandon", Napi::Function::New(env, Abandon, "dist_abandon"));
  exports.Set("dist_state", Napi::Function::New(env, State, "dist_state"));
  exports.Set("nccl_info", Napi::Function::New(env, NcclInfo, "nccl_info"));
  exports.Set("nccl_unique_id", Napi::Function::New(env, NcclUniqueId, "nccl_unique_id"));
  exports.Set("nccl_comm_init", Napi::Function::New(env, NcclCommInit, "nccl_comm_init"));
  exports.Set("device_all_to_all", Napi::Function::New(env, DeviceAllToAll, "device_all_to_all"));
  exports.Set("nccl_comm_abort", Napi::Function::New(env, NcclCommAbort, "nccl_comm_abort"));
}

}  // namespace moe_addon
