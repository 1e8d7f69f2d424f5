// moe-kernels CUDA emulator: the execution model behind native/emu/emu.h.
//
//   launch()            validates the configuration, then runs the grid's blocks on the calling
//                       thread or on a pool of OS threads (Worker::run_block for each block);
//   Worker::run_block   runs one block: one fiber per thread, swept by a scheduler in the order the
//                       schedule dictates; a fiber runs until it exits or waits (barrier, warp
//                       collective), and the last arrival of a rendezvous does its work;
//   errors              a failed check records the first error of the block and unwinds the
//                       calling fiber with a FiberAbort exception; the scheduler then resumes every
//                       other live fiber with `abort` set, so each unwinds too and nothing leaks;
//   host shims          the cuda_runtime_api.h functions the launchers use: emu_shims.cc.
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"
#include "emu_state.h"
#include "fiber.h"
#include "racecheck.h"

#if defined(MOE_EMU_ASAN)  // from fiber.h
#define MOE_EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define MOE_EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define MOE_EMU_POISON(p, n) ((void)(p), (void)(n))
#define MOE_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

__thread moe_emu::ThreadCtx* moe_emu_current __attribute__((tls_model("initial-exec"))) = nullptr;

// The race detector's window on this OS thread: the arena bytes [base, base + span) of the block
// running here, span 0 when none runs or the detector is off. The access hooks at the end of this
// file compare every instrumented load and store against it first.
static __thread uintptr_t t_race_base __attribute__((tls_model("initial-exec"))) = 0;
static __thread size_t t_race_span __attribute__((tls_model("initial-exec"))) = 0;
static std::atomic<bool> g_race_instrumented{false};

namespace moe_emu {

// ---- shared with emu_shims.cc (emu_state.h) ----------------------------------------------------------

std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

Config& config() {
  static Config* c = new Config;  // never destroyed: pool threads may outlive static destructors
  std::call_once(c->env_once, [] {
    Config& k = *c;
    if (const char* s = std::getenv("MOE_EMU_SCHEDULE")) {
      const std::string v = s;
      if (v.rfind("reverse", 0) == 0) k.schedule = int(Schedule::kReverse);
      else if (v.rfind("random", 0) == 0) k.schedule = int(Schedule::kRandom);
      else if (v.rfind("drift", 0) == 0) k.schedule = int(Schedule::kDrift);
      else k.schedule = int(Schedule::kRoundRobin);
      const size_t colon = v.find(':');
      if (colon != std::string::npos) k.seed = std::strtoull(v.c_str() + colon + 1, nullptr, 10);
    }
    if (const char* s = std::getenv("MOE_EMU_THREADS")) k.threads = std::max(1, std::atoi(s));
    if (const char* s = std::getenv("MOE_EMU_RACECHECK")) k.racecheck = s[0] != 0 && std::strcmp(s, "0") != 0;
    if (const char* s = std::getenv("MOE_EMU_STACK_KB")) {
      const long kb = std::atol(s);
      if (kb >= 16) k.stack_bytes = size_t(kb) * 1024;
    }
    if (const char* s = std::getenv("MOE_EMU_SMEM_OPTIN")) {
      const long b = std::atol(s);
      if (b >= long(kDefaultSharedLimit) && size_t(b) <= kMaxSharedOptin) k.smem_optin = size_t(b);
    }
  });
  return *c;
}

std::mutex g_attr_mu;
std::map<const void*, int>& max_dynamic_smem_attr() {
  static auto* m = new std::map<const void*, int>;
  return *m;
}


// The last error seen on this host thread: code for cudaGetLastError, message for error_string.
thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaError_t t_message_code = cudaSuccess;
thread_local std::string t_message;

void set_message(cudaError_t code, std::string msg) {
  t_message_code = code;
  t_message = std::move(msg);
}

cudaError_t host_error(cudaError_t code, std::string msg) {  // a failed host call
  t_last_error = code;
  set_message(code, std::move(msg));
  return code;
}

namespace {

// ---- small helpers -----------------------------------------------------------------------------

std::string dim_str(uint3 d) { return fmt("(%u,%u,%u)", d.x, d.y, d.z); }
std::string dim_str(dim3 d) { return fmt("(%u,%u,%u)", d.x, d.y, d.z); }

bool same_site(const char* f1, int l1, const char* f2, int l2) {
  return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t gcd(uint64_t a, uint64_t b) {
  while (b) {
    const uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float f16_to_float(uint16_t h) {  // exact: every f16 is representable in f32
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | (uint32_t(127 - 15 - e) << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kSyncWarp: return "__syncwarp";
    case WarpOp::kLdmatrix: return "ldmatrix";
    case WarpOp::kMma: return "mma.sync";
  }
  return "warp collective";
}

const char* barrier_op_name(BarrierOp op) {
  switch (op) {
    case BarrierOp::kSync: return "__syncthreads";
    case BarrierOp::kCount: return "__syncthreads_count";
    case BarrierOp::kAnd: return "__syncthreads_and";
    case BarrierOp::kOr: return "__syncthreads_or";
  }
  return "__syncthreads";
}

std::mutex g_site_mu;
int g_next_site_id = 0;

// A source path without the directories above the repository's (native/..., test/...).
const char* short_path(const char* path) {
  if (!path) return "?";
  const char* best = path;
  for (const char* key : {"/native/", "/test/"}) {
    const char* p = std::strstr(path, key);
    if (p && p + 1 > best) best = p + 1;
  }
  return best;
}

// addr2line on the module (executable or addon) that holds code address `addr`: its output lines,
// without "??" ones and discriminators; `fallback` gets "module+0xoffset". Only called to write a
// report (it starts a process).
std::vector<std::string> addr2line(const void* addr, const char* options, std::string* fallback) {
  std::vector<std::string> lines;
  Dl_info info;
  *fallback = fmt("%p", addr);
  if (!dladdr(addr, &info) || !info.dli_fname || !info.dli_fbase) return lines;
  // A shared object or PIE is addressed from its load base, a fixed-address executable absolutely.
  const auto* ehdr = static_cast<const ElfW(Ehdr)*>(info.dli_fbase);
  const uintptr_t rel = uintptr_t(addr) - (ehdr->e_type == ET_EXEC ? 0 : uintptr_t(info.dli_fbase));
  const std::string module = info.dli_fname[0] ? info.dli_fname : "/proc/self/exe";
  *fallback = fmt("%s+0x%zx", short_path(module.c_str()), size_t(rel));
  const std::string cmd = fmt("addr2line %s -e '%s' 0x%zx 2>/dev/null", options, module.c_str(), size_t(rel));
  if (FILE* f = popen(cmd.c_str(), "r")) {
    char buf[2048];
    while (std::fgets(buf, sizeof buf, f)) {
      std::string l = buf;
      while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
      const size_t disc = l.find(" (discriminator");
      if (disc != std::string::npos) l.resize(disc);
      if (l.empty() || l[0] == '?') continue;
      lines.push_back(l);
    }
    pclose(f);
  }
  return lines;
}

// The source line of a code address in an instrumented translation unit, innermost inlined frame
// first ("a.cuh:12 <- kernel.cu:340"). Cached.
std::string code_site(const void* pc) {
  static std::mutex mu;
  static std::map<const void*, std::string>* cache = new std::map<const void*, std::string>;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(pc);
  if (it != cache->end()) return it->second;
  std::string out, fallback;
  // pc is a return address: the call is the byte before it.
  for (const std::string& l : addr2line(static_cast<const char*>(pc) - 1, "-i", &fallback)) {
    if (!out.empty()) out += " <- ";
    out += short_path(l.c_str());
  }
  if (out.empty()) out = fallback;
  cache->emplace(pc, out);
  return out;
}

// A kernel's name: its symbol (demangled) when the module exports it, else from the debug
// information (kernels of an executable or of a -fvisibility=hidden addon), else its address.
std::string kernel_name(const void* kernel, bool expensive) {
  Dl_info info;
  if (dladdr(kernel, &info) && info.dli_sname) {
    int status = 0;
    char* d = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string s = (status == 0 && d) ? d : info.dli_sname;
    std::free(d);
    return s;
  }
  if (expensive) {
    static std::mutex mu;
    static std::map<const void*, std::string>* cache = new std::map<const void*, std::string>;
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache->find(kernel);
    if (it != cache->end()) return it->second;
    std::string fallback;
    const std::vector<std::string> l = addr2line(kernel, "-f -C", &fallback);
    const std::string name = l.empty() ? fmt("kernel@%p", kernel) : l[0];
    cache->emplace(kernel, name);
    return name;
  }
  return fmt("kernel@%p", kernel);
}

std::string access_site(const Access& a) {
  if (a.line >= 0) return fmt("%s:%d", short_path(static_cast<const char*>(a.where)), a.line);
  return code_site(a.where);
}

// Thrown into a fiber to unwind it: deliberately not a std::exception, so that no kernel-side
// `catch (const std::exception&)` swallows it.
struct FiberAbort {};

// ---- a launch, shared by the workers that run its blocks -------------------------------------------

struct LaunchState {
  const LaunchSpec* spec = nullptr;
  uint64_t nblocks = 0;
  Schedule schedule = Schedule::kRoundRobin;
  uint64_t seed = 1;
  uint64_t serial = 0;      // launch counter, so random schedules differ between launches
  size_t smem_limit = 0;    // static + dynamic bytes allowed per block
  uint64_t perm_a = 1, perm_c = 0;  // random block order: i -> (a*i + c) mod n, gcd(a, n) == 1

  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  cudaError_t err = cudaSuccess;
  std::string msg;

  uint64_t block_at(uint64_t i) const {
    switch (schedule) {
      case Schedule::kReverse: return nblocks - 1 - i;
      case Schedule::kRandom:
        return uint64_t((unsigned __int128)(perm_a) * i % nblocks + perm_c) % nblocks;
      default: return i;
    }
  }
  void report(cudaError_t code, const std::string& m) {
    std::lock_guard<std::mutex> lock(mu);
    if (err == cudaSuccess) {
      err = code;
      msg = m;
    }
    failed = true;
  }
};

// ---- one worker: runs blocks, one at a time, on one OS thread -----------------------------------------

enum class RunState : uint8_t { kReady, kBlocked, kDone };

struct PendingCopy {
  void* dst;
  const void* src;
  int src_bytes;
  const char* file;  // the cp.async, for the race detector
  int line;
};

class Worker;

struct EmuThread {
  ThreadCtx ctx;
  Fiber fiber;
  Worker* worker = nullptr;
  int linear = 0, lane = 0, warp = 0;
  RunState state = RunState::kDone;
  bool started = false;
  bool abort = false;
  // What the thread waits on, for deadlock reports.
  const char* wait_what = nullptr;
  const char* wait_file = nullptr;
  int wait_line = 0;
  unsigned wait_mask = 0;
  // This lane's operands in a warp collective, and the barrier reduction it receives.
  const void* in = nullptr;
  void* out = nullptr;
  int param = 0;
  int result = 0;
  // cp.async copies issued and not yet waited for; group_ends[i] = copies.size() at commit i.
  std::vector<PendingCopy> copies;
  std::vector<size_t> group_ends;
};

struct WarpGroup {  // a warp collective some lanes of the mask have reached
  WarpOp op;
  unsigned mask, arrived;
  int width, bytes;
  const char* file;
  int line;
};

struct WarpState {
  unsigned exists = 0;  // lanes that are threads of the block (a last warp may be partial)
  unsigned exited = 0;
  int ngroups = 0;
  WarpGroup groups[kWarpSize];
};

struct SharedAlloc {
  size_t offset, bytes;
  const char* name;
  const char* file;
  int line;
};

struct SiteSlot {
  uint64_t block_serial = 0;
  size_t offset = 0;
};

__thread Worker* t_worker = nullptr;  // the worker whose block runs on this OS thread

class Worker {
 public:
  Worker() {
    arena_ = static_cast<unsigned char*>(std::aligned_alloc(4096, kArenaBytes));
    fiber_adopt_thread_stack(&sched_);  // a worker lives and dies on the OS thread that made it
  }
  ~Worker() {
    for (auto& t : threads_) fiber_free_stack(&t->fiber);
    MOE_EMU_UNPOISON(arena_, kArenaBytes);
    std::free(arena_);
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs the launch's blocks until none is left or one fails.
  void run(LaunchState& L) {
    for (;;) {
      if (L.failed.load(std::memory_order_relaxed)) return;
      const uint64_t i = L.next.fetch_add(1);
      if (i >= L.nblocks) return;
      const uint64_t b = L.block_at(i);
      if (!run_block(L, b)) {
        L.report(err_, fmt("%s <<<%s, %s, %zu>>>: block %s: %s", kernel_name(L.spec->kernel, true).c_str(),
                           dim_str(L.spec->grid).c_str(), dim_str(L.spec->block).c_str(),
                           L.spec->dynamic_smem, dim_str(block_idx_).c_str(), msg_.c_str()));
        return;
      }
    }
  }

  // ---- called from inside the running fiber (through the free functions at the end) ----

  int barrier(BarrierOp op, int pred, const char* file, int line) {
    EmuThread& t = *cur_;
    if (exited_count_ > 0)
      fail(cudaErrorIllegalInstruction,
           fmt("%s at %s:%d reached by thread %s after thread %s exited (at the end of the kernel "
               "or by `return`): the barrier can never be completed by all %d threads",
               barrier_op_name(op), file, line, dim_str(t.ctx.thread_idx).c_str(),
               dim_str(first_exited_).c_str(), nthreads_));
    if (bar_arrived_ == 0) {
      bar_op_ = op;
      bar_file_ = file;
      bar_line_ = line;
      bar_thread_ = t.ctx.thread_idx;
      bar_acc_ = op == BarrierOp::kAnd ? 1 : 0;
    } else if (op != bar_op_ || !same_site(file, line, bar_file_, bar_line_)) {
      fail(cudaErrorIllegalInstruction,
           fmt("threads wait at different barriers: thread %s at %s (%s:%d), thread %s at %s "
               "(%s:%d)",
               dim_str(bar_thread_).c_str(), barrier_op_name(bar_op_), bar_file_, bar_line_,
               dim_str(t.ctx.thread_idx).c_str(), barrier_op_name(op), file, line));
    }
    switch (op) {
      case BarrierOp::kCount: bar_acc_ += pred != 0; break;
      case BarrierOp::kAnd: bar_acc_ &= pred != 0; break;
      case BarrierOp::kOr: bar_acc_ |= pred != 0; break;
      case BarrierOp::kSync: break;
    }
    if (++bar_arrived_ == nthreads_) {  // the last arrival releases everybody
      bar_arrived_ = 0;
      if (race_on_) race_.barrier();
      for (int i = 0; i < nthreads_; ++i) {
        EmuThread& o = *threads_[i];
        if (&o == &t) continue;
        o.result = bar_acc_;
        o.state = RunState::kReady;
      }
      return bar_acc_;
    }
    t.wait_what = barrier_op_name(op);
    t.wait_file = file;
    t.wait_line = line;
    t.wait_mask = 0;
    suspend(t);
    return t.result;
  }

  void collective(WarpOp op, unsigned mask, const void* in, void* out, int param, int width,
                  int bytes, const char* file, int line) {
    EmuThread& t = *cur_;
    WarpState& w = warps_[t.warp];
    const unsigned bit = 1u << t.lane;
    const char* name = warp_op_name(op);
    const bool aligned = op == WarpOp::kLdmatrix || op == WarpOp::kMma;
    if (!(mask & bit))
      fail(cudaErrorIllegalInstruction,
           fmt("%s at %s:%d: thread %s (lane %d of warp %d) passes mask 0x%08x, which does not "
               "include its own lane",
               name, file, line, dim_str(t.ctx.thread_idx).c_str(), t.lane, t.warp, mask));
    if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0)
      fail(cudaErrorIllegalInstruction,
           fmt("%s at %s:%d: width %d is not a power of two in [1, 32]", name, file, line, width));
    if (aligned && w.exists != kFullMask)
      fail(cudaErrorIllegalInstruction,
           fmt("%s at %s:%d needs all 32 lanes of the warp, but warp %d has only lanes 0x%08x "
               "(blockDim is not a multiple of 32)",
               name, file, line, t.warp, w.exists));
    // Lanes that are not threads of the block never take part; lanes that exited cannot.
    const unsigned eff = mask & w.exists;
    if (eff & w.exited)
      fail(cudaErrorIllegalInstruction,
           fmt("%s at %s:%d: mask 0x%08x names lane(s) 0x%08x of warp %d that already exited", name,
               file, line, mask, eff & w.exited, t.warp));
    t.in = in;
    t.out = out;
    t.param = param;
    WarpGroup* g = nullptr;
    for (int i = 0; i < w.ngroups; ++i)
      if (w.groups[i].mask & bit) {
        g = &w.groups[i];
        break;
      }
    if (g) {
      // On sm_70+ lanes may meet at different instructions of the same kind (independent thread
      // scheduling); the .aligned ones (ldmatrix, mma) must be the very same instruction.
      if (g->op != op || g->mask != eff || g->width != width || g->bytes != bytes ||
          (aligned && !same_site(file, line, g->file, g->line)))
        fail(cudaErrorIllegalInstruction,
             fmt("warp %d diverged: lane %d reached %s (%s:%d, mask 0x%08x, width %d) while lane(s) "
                 "0x%08x wait at %s (%s:%d, mask 0x%08x, width %d)",
                 t.warp, t.lane, name, file, line, eff, width, g->arrived, warp_op_name(g->op),
                 g->file, g->line, g->mask, g->width));
    } else {
      g = &w.groups[w.ngroups++];
      *g = WarpGroup{op, eff, 0u, width, bytes, file, line};
    }
    g->arrived |= bit;
    if (g->arrived == g->mask) {  // the last lane to arrive does the work for all of them
      const WarpGroup done = *g;
      *g = w.groups[--w.ngroups];
      complete(w, t.warp, done);
      for (unsigned m = done.mask & ~bit; m; m &= m - 1) lane_thread(t.warp, __builtin_ctz(m)).state = RunState::kReady;
      return;
    }
    t.wait_what = name;
    t.wait_file = file;
    t.wait_line = line;
    t.wait_mask = eff;
    suspend(t);
  }

  unsigned active_mask() const {
    const WarpState& w = warps_[cur_->warp];
    return w.exists & ~w.exited;
  }

  [[noreturn]] void trap(const char* file, int line) {
    fail(cudaErrorLaunchFailure,
         fmt("__trap() at %s:%d by thread %s", file, line, dim_str(cur_->ctx.thread_idx).c_str()));
  }

  void* shared_static(SharedSite* site) {
    int id = __atomic_load_n(&site->id, __ATOMIC_ACQUIRE);
    if (id < 0) {
      std::lock_guard<std::mutex> lock(g_site_mu);
      id = site->id;
      if (id < 0) {
        id = g_next_site_id++;
        __atomic_store_n(&site->id, id, __ATOMIC_RELEASE);
      }
    }
    if (size_t(id) >= site_slots_.size()) site_slots_.resize(size_t(id) + 1);
    SiteSlot& s = site_slots_[size_t(id)];
    if (s.block_serial == block_serial_) return arena_ + s.offset;
    // The first thread of this block to reach the declaration places the array.
    static_bytes_ += site->bytes;
    if (static_bytes_ > kStaticSharedLimit)
      fail(cudaErrorLaunchOutOfResources,
           fmt("static shared memory exceeds %zu bytes per block: '%s' (%zu bytes, %s:%d) brings "
               "it to %zu bytes (nvcc would reject this kernel)",
               kStaticSharedLimit, site->name, site->bytes, site->file, site->line, static_bytes_));
    if (static_bytes_ + launch_->spec->dynamic_smem > launch_->smem_limit)
      fail(cudaErrorLaunchOutOfResources,
           fmt("static (%zu) + dynamic (%zu) shared memory exceeds the %zu bytes allowed per block "
               "(at '%s', %s:%d)",
               static_bytes_, launch_->spec->dynamic_smem, launch_->smem_limit, site->name,
               site->file, site->line));
    s.offset = place(site->bytes, std::max(site->align, kMinSharedAlign), site->name, site->file,
                     site->line);
    s.block_serial = block_serial_;
    return arena_ + s.offset;
  }

  void* shared_dynamic() { return arena_ + dynamic_offset_; }

  void ldmatrix_row_check(const void* p, const char* file, int line, int lane) {
    if (!in_shared(p, kLdmatrixRowBytes))
      fail(cudaErrorIllegalAddress,
           fmt("ldmatrix at %s:%d: lane %d's row address %p is not 16 bytes inside a shared array",
               file, line, lane, p));
    if (reinterpret_cast<uintptr_t>(p) % kLdmatrixRowBytes != 0)
      fail(cudaErrorMisalignedAddress,
           fmt("ldmatrix at %s:%d: lane %d's row address %p is not 16-byte aligned", file, line,
               lane, p));
  }

  void cp_async(void* dst, const void* src, int src_bytes, const char* file, int line) {
    EmuThread& t = *cur_;
    if (!in_shared(dst, kCpAsyncBytes))
      fail(cudaErrorIllegalAddress,
           fmt("cp.async at %s:%d: destination %p is not 16 bytes inside a shared array", file,
               line, dst));
    if (reinterpret_cast<uintptr_t>(dst) % kCpAsyncBytes || reinterpret_cast<uintptr_t>(src) % kCpAsyncBytes)
      fail(cudaErrorMisalignedAddress,
           fmt("cp.async at %s:%d: addresses must be 16-byte aligned (dst %p, src %p)", file, line,
               dst, src));
    if (src_bytes < 0 || src_bytes > kCpAsyncBytes)
      fail(cudaErrorIllegalInstruction,
           fmt("cp.async at %s:%d: src-size %d is not in [0, 16]", file, line, src_bytes));
    // Poison now, copy at wait_group: a read before the wait sees NaNs.
    if (race_on_) race_at(t.linear, arena_offset(dst), kCpAsyncBytes, AccessKind::kCpAsyncIssue, file, line);
    std::memset(dst, kPoisonByte, kCpAsyncBytes);
    t.copies.push_back(PendingCopy{dst, src, src_bytes, file, line});
  }

  void cp_async_commit() {
    EmuThread& t = *cur_;
    t.group_ends.push_back(t.copies.size());
  }

  void cp_async_wait(int allowed) {
    EmuThread& t = *cur_;
    const int groups = int(t.group_ends.size());
    const int finish = groups - std::max(allowed, 0);
    if (finish <= 0) return;
    const size_t ncopies = t.group_ends[size_t(finish - 1)];
    for (size_t i = 0; i < ncopies; ++i) {
      const PendingCopy& c = t.copies[i];
      if (race_on_) race_at(t.linear, arena_offset(c.dst), kCpAsyncBytes, AccessKind::kCpAsyncLand, c.file, c.line);
      if (c.src_bytes > 0) std::memcpy(c.dst, c.src, size_t(c.src_bytes));
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, size_t(kCpAsyncBytes - c.src_bytes));
    }
    t.copies.erase(t.copies.begin(), t.copies.begin() + long(ncopies));
    t.group_ends.erase(t.group_ends.begin(), t.group_ends.begin() + finish);
    for (size_t& e : t.group_ends) e -= ncopies;
  }

  EmuThread& current() { return *cur_; }

  // ---- the race detector (racecheck.h) ----

  // An instrumented load or store of the running thread at arena offset `off` (the hooks have
  // checked that it is inside the block's shared memory).
  void race_access(size_t off, size_t n, AccessKind kind, const void* pc) {
    race_at(cur_->linear, off, n, kind, pc, -1);
  }

  void race_at(int tid, size_t off, size_t n, AccessKind kind, const void* where, int line) {
    if (race_found_ || err_ != cudaSuccess) return;
    if (race_.access(off, n, kind, tid, where, line, &race_info_)) {
      race_found_ = true;
      t_race_span = 0;  // one report per block; the message is written when the block ends
      record(cudaErrorLaunchFailure, "shared-memory race");
    }
  }
  EmuThread& lane_thread(int warp, int lane) { return *thread_ptrs_[size_t(warp * kWarpSize + lane)]; }

 private:
  // ---- one block ----

  bool run_block(LaunchState& L, uint64_t b) {
    const LaunchSpec& spec = *L.spec;
    launch_ = &L;
    const dim3 g = spec.grid, bd = spec.block;
    block_idx_ = uint3{unsigned(b % g.x), unsigned(b / g.x % g.y), unsigned(b / g.x / g.y)};
    nthreads_ = int(bd.x * bd.y * bd.z);
    err_ = cudaSuccess;
    msg_.clear();
    if (!ensure_threads(nthreads_)) {
      err_ = cudaErrorMemoryAllocation;
      msg_ = fmt("cannot map %d fiber stacks of %zu bytes", nthreads_, config().stack_bytes);
      return false;
    }
    const int nwarps = (nthreads_ + kWarpSize - 1) / kWarpSize;
    warps_.assign(size_t(nwarps), WarpState{});
    for (int i = 0; i < nthreads_; ++i) {
      EmuThread& t = *threads_[size_t(i)];
      t.ctx.thread_idx = uint3{unsigned(i % bd.x), unsigned(i / bd.x % bd.y), unsigned(i / bd.x / bd.y)};
      t.ctx.block_idx = block_idx_;
      t.ctx.block_dim = bd;
      t.ctx.grid_dim = g;
      t.linear = i;
      t.lane = i % kWarpSize;
      t.warp = i / kWarpSize;
      t.state = RunState::kReady;
      t.started = false;
      t.abort = false;
      t.copies.clear();
      t.group_ends.clear();
      warps_[size_t(t.warp)].exists |= 1u << t.lane;
      fiber_prepare(&t.fiber, &Worker::thread_main, &t);
    }
    bar_arrived_ = 0;
    exited_count_ = 0;
    done_count_ = 0;

    // Shared memory: a fresh arena layout, the dynamic region first.
    ++block_serial_;
    static_bytes_ = 0;
    allocs_.clear();
    cursor_ = 0;
    MOE_EMU_POISON(arena_, kArenaBytes);
    race_on_ = config().racecheck.load(std::memory_order_relaxed);
    race_found_ = false;
    if (race_on_) race_.begin_block(nwarps);
    dynamic_offset_ = place(spec.dynamic_smem, kMinSharedAlign, "dynamic shared memory", "launch", 0);

    // The sweep order of this block (drift: of its warps).
    drift_ = L.schedule == Schedule::kDrift;
    order_.resize(size_t(drift_ ? nwarps : nthreads_));
    for (int i = 0; i < int(order_.size()); ++i)
      order_[size_t(i)] = L.schedule == Schedule::kReverse ? nthreads_ - 1 - i : i;
    rng_ = L.seed * 0x9E3779B97F4A7C15ull ^ (L.serial << 32) ^ b;
    if (L.schedule == Schedule::kRandom || drift_) shuffle_order();

    t_worker = this;
    // Sweeps: the ready threads run in order_; a thread that waits or exits switches straight to
    // the next ready one (fiber to fiber, not through this loop), and the last of the sweep comes
    // back here.
    for (;;) {
      sweep_pos_ = 0;
      EmuThread* first = next_ready();
      if (first) resume(*first);
      if (err_ != cudaSuccess || done_count_ == nthreads_) break;
      if (!first) {
        err_ = cudaErrorIllegalInstruction;
        msg_ = deadlock_report();
        break;
      }
      if (L.schedule == Schedule::kRandom || drift_) shuffle_order();
    }
    t_race_span = 0;
    if (err_ != cudaSuccess) abort_all();
    else check_redzones();
    if (race_found_) msg_ = describe_race(race_info_);
    t_worker = nullptr;
    MOE_EMU_UNPOISON(arena_, kArenaBytes);
    return err_ == cudaSuccess;
  }

  static void thread_main(void* p) {
    EmuThread& t = *static_cast<EmuThread*>(p);
    Worker& w = *t.worker;
    fiber_entered();
    try {
      w.launch_->spec->body(w.launch_->spec->arg);
      w.on_exit(t);
    } catch (const FiberAbort&) {
      // unwound after an error; the error is already recorded
    } catch (const std::exception& e) {
      w.record(cudaErrorLaunchFailure, fmt("thread %s threw a C++ exception: %s",
                                           dim_str(t.ctx.thread_idx).c_str(), e.what()));
    } catch (...) {
      w.record(cudaErrorLaunchFailure,
               fmt("thread %s threw a C++ exception", dim_str(t.ctx.thread_idx).c_str()));
    }
    t.state = RunState::kDone;
    ++w.done_count_;
    w.switch_away(t, /*finished=*/true);
    __builtin_unreachable();
  }

  void on_exit(EmuThread& t) {
    if (bar_arrived_ > 0)
      record(cudaErrorIllegalInstruction,
             fmt("thread %s exited while %d thread(s) wait at %s (%s:%d): every thread of the "
                 "block must reach every barrier",
                 dim_str(t.ctx.thread_idx).c_str(), bar_arrived_, barrier_op_name(bar_op_),
                 bar_file_, bar_line_));
    WarpState& w = warps_[size_t(t.warp)];
    const unsigned bit = 1u << t.lane;
    for (int i = 0; i < w.ngroups; ++i)
      if (w.groups[i].mask & bit)
        record(cudaErrorIllegalInstruction,
               fmt("lane %d of warp %d exited while lane(s) 0x%08x wait for it at %s (%s:%d, mask "
                   "0x%08x)",
                   t.lane, t.warp, w.groups[i].arrived, warp_op_name(w.groups[i].op),
                   w.groups[i].file, w.groups[i].line, w.groups[i].mask));
    w.exited |= bit;
    if (exited_count_++ == 0) first_exited_ = t.ctx.thread_idx;
  }

  // From the scheduler: runs `t` (and, chained, the rest of the sweep) until control comes back.
  void resume(EmuThread& t) {
    enter(t);
    fiber_switch(&sched_, &t.fiber);
    moe_emu_current = nullptr;
    cur_ = nullptr;
  }

  void enter(EmuThread& t) {
    t.started = true;
    cur_ = &t;
    moe_emu_current = &t.ctx;
  }

  // The next ready thread of the current sweep, or null when the sweep is over.
  EmuThread* next_ready() {
    if (drift_) {  // the lanes of the current warp first, in lane order, until all of them wait
      while (sweep_pos_ < order_.size()) {
        const int first = order_[sweep_pos_] * kWarpSize, end = std::min(first + kWarpSize, nthreads_);
        for (int i = first; i < end; ++i)
          if (thread_ptrs_[size_t(i)]->state == RunState::kReady) return thread_ptrs_[size_t(i)];
        ++sweep_pos_;
      }
      return nullptr;
    }
    while (sweep_pos_ < order_.size()) {
      EmuThread* t = thread_ptrs_[size_t(order_[sweep_pos_++])];
      if (t->state == RunState::kReady) return t;
    }
    return nullptr;
  }

  // Leaves the running thread `t` for the next ready thread of the sweep, or for the scheduler at
  // the end of the sweep or after an error. Returns when `t` is resumed.
  void switch_away(EmuThread& t, bool finished) {
    EmuThread* next = err_ == cudaSuccess ? next_ready() : nullptr;
    if (next) {
      enter(*next);
      fiber_switch(&t.fiber, &next->fiber, finished);
    } else {
      fiber_switch(&t.fiber, &sched_, finished);
    }
  }

  void suspend(EmuThread& t) {
    t.state = RunState::kBlocked;
    switch_away(t, false);
    if (t.abort) throw FiberAbort{};
  }

  // Unwinds every fiber that is still alive, so that their destructors run.
  void abort_all() {
    for (int i = 0; i < nthreads_; ++i) {
      EmuThread& t = *threads_[size_t(i)];
      if (t.state == RunState::kDone) continue;
      if (!t.started) {
        t.state = RunState::kDone;
        continue;
      }
      t.abort = true;
      resume(t);
    }
  }

  void record(cudaError_t code, std::string msg) {
    if (err_ != cudaSuccess) return;  // the first error is the one worth reading
    err_ = code;
    msg_ = std::move(msg);
  }

  [[noreturn]] void fail(cudaError_t code, std::string msg) {
    record(code, std::move(msg));
    throw FiberAbort{};
  }

  std::string deadlock_report() {
    std::string s = "deadlock: no thread can make progress;";
    int shown = 0;
    constexpr int kMaxShown = 6;
    for (int i = 0; i < nthreads_ && shown < kMaxShown; ++i) {
      const EmuThread& t = *threads_[size_t(i)];
      if (t.state != RunState::kBlocked) continue;
      // One line per distinct wait, with the first thread found at it.
      bool seen = false;
      for (int j = 0; j < i && !seen; ++j) {
        const EmuThread& o = *threads_[size_t(j)];
        seen = o.state == RunState::kBlocked && o.wait_what == t.wait_what &&
               o.wait_line == t.wait_line && o.wait_mask == t.wait_mask && o.warp == t.warp;
      }
      if (seen) continue;
      s += fmt(" thread %s waits at %s (%s:%d)", dim_str(t.ctx.thread_idx).c_str(), t.wait_what,
               t.wait_file, t.wait_line);
      if (t.wait_mask) s += fmt(" with mask 0x%08x", t.wait_mask);
      s += ";";
      ++shown;
    }
    if (exited_count_) s += fmt(" %d thread(s) exited, first %s", exited_count_, dim_str(first_exited_).c_str());
    return s;
  }

  void shuffle_order() {
    for (size_t i = order_.size(); i > 1; --i) {
      const size_t j = size_t(splitmix64(rng_) % i);
      std::swap(order_[i - 1], order_[j]);
    }
  }

  bool ensure_threads(int n) {
    while (threads_.size() < size_t(n)) {
      auto t = std::make_unique<EmuThread>();
      if (!fiber_alloc_stack(&t->fiber, config().stack_bytes)) return false;
      t->worker = this;
      thread_ptrs_.push_back(t.get());
      threads_.push_back(std::move(t));
    }
    return true;
  }

  // ---- shared-memory arena ----

  static unsigned char canary_at(size_t offset) { return (offset & 1) ? kCanaryHi : kCanaryLo; }

  void fill_canary(size_t from, size_t to) {
    MOE_EMU_UNPOISON(arena_ + from, to - from);
    for (size_t i = from; i < to; ++i) arena_[i] = canary_at(i);
    MOE_EMU_POISON(arena_ + from, to - from);
  }

  // Places `bytes` after a canary redzone; returns the offset. The bytes are poisoned (0xFF).
  size_t place(size_t bytes, size_t align, const char* name, const char* file, int line) {
    const size_t offset = (cursor_ + kRedzoneBytes + align - 1) / align * align;
    const size_t end = offset + bytes;
    if (end + kRedzoneBytes > kArenaBytes)
      fail(cudaErrorLaunchOutOfResources,
           fmt("shared arena of the emulator exhausted placing '%s' (%s:%d)", name, file, line));
    fill_canary(cursor_, offset);
    MOE_EMU_UNPOISON(arena_ + offset, bytes);
    std::memset(arena_ + offset, kPoisonByte, bytes);
    fill_canary(end, end + kRedzoneBytes);
    allocs_.push_back(SharedAlloc{offset, bytes, name, file, line});
    cursor_ = end;
    if (race_on_) {
      race_.cover(end);
      t_race_base = reinterpret_cast<uintptr_t>(arena_);
      if (!race_found_) t_race_span = end;
    }
    return offset;
  }

  size_t arena_offset(const void* p) const { return size_t(static_cast<const unsigned char*>(p) - arena_); }

  bool in_shared(const void* p, size_t n) const {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    if (c < arena_ || c + n > arena_ + kArenaBytes) return false;
    const size_t off = size_t(c - arena_);
    for (const SharedAlloc& a : allocs_)
      if (off >= a.offset && off + n <= a.offset + a.bytes) return true;
    return false;
  }

  // The report of a race: the shared array and byte, then the later and the earlier access.
  std::string describe_race(const Race& r) {
    std::string where = fmt("byte %zu of the block's shared memory", r.offset);
    for (const SharedAlloc& a : allocs_)
      if (r.offset >= a.offset && r.offset < a.offset + a.bytes) {
        where = a.line > 0 ? fmt("'%s' (%s:%d), byte %zu of %zu", a.name, short_path(a.file), a.line,
                                 r.offset - a.offset, a.bytes)
                           : fmt("%s, byte %zu of %zu", a.name, r.offset - a.offset, a.bytes);
        break;
      }
    auto who = [&](const Access& x) {
      const EmuThread& t = *threads_[x.tid];
      return fmt("thread %s (warp %d, lane %d) %s at %s", dim_str(t.ctx.thread_idx).c_str(), t.warp,
                 t.lane, access_name(x.kind), access_site(x).c_str());
    };
    const bool same_warp = r.earlier.tid / kWarpSize == r.later.tid / kWarpSize;
    return fmt("shared-memory race on %s: %s; earlier, %s; no %s between them", where.c_str(),
               who(r.later).c_str(), who(r.earlier).c_str(),
               same_warp ? "__syncwarp naming both lanes, nor __syncthreads," : "__syncthreads");
  }

  // A write past the end (or before the start) of a shared array lands in a redzone.
  void check_redzones() {
    MOE_EMU_UNPOISON(arena_, kArenaBytes);
    size_t prev_end = 0;
    const SharedAlloc* prev = nullptr;
    auto check = [&](size_t from, size_t to, const SharedAlloc* before, const SharedAlloc* after) {
      for (size_t i = from; i < to; ++i)
        if (arena_[i] != canary_at(i)) {
          const SharedAlloc* a = before ? before : after;
          record(cudaErrorIllegalAddress,
                 fmt("shared memory written out of bounds: byte %zd %s '%s' (%zu bytes, %s:%d) "
                     "was overwritten",
                     before ? ssize_t(i - (before->offset + before->bytes)) : ssize_t(after->offset - i),
                     before ? "past the end of" : "before the start of", a->name, a->bytes, a->file,
                     a->line));
          return;
        }
    };
    for (const SharedAlloc& a : allocs_) {
      // The gap before `a`: its first redzone bytes belong to the previous array's overrun, the
      // rest to an underrun of `a`; reporting the previous array is the likelier story.
      check(prev_end, a.offset, prev, &a);
      prev_end = a.offset + a.bytes;
      prev = &a;
    }
    if (prev) check(prev_end, prev_end + kRedzoneBytes, prev, nullptr);
  }

  // ---- the work of a completed warp collective ----

  void complete(WarpState& w, int warp, const WarpGroup& g) {
    (void)w;
    switch (g.op) {
      case WarpOp::kShflIdx:
      case WarpOp::kShflUp:
      case WarpOp::kShflDown:
      case WarpOp::kShflXor: {
        for (unsigned m = g.mask; m; m &= m - 1) {
          const int lane = __builtin_ctz(m);
          EmuThread& dst = lane_thread(warp, lane);
          const int src = shuffle_source(g.op, lane, dst.param, g.width);
          if (g.mask & (1u << src)) copy_value(dst.out, lane_thread(warp, src).in, g.bytes);
          else std::memset(dst.out, kPoisonByte, size_t(g.bytes));  // undefined on a GPU
        }
        break;
      }
      case WarpOp::kBallot:
      case WarpOp::kAny:
      case WarpOp::kAll: {
        unsigned ballot = 0;
        for (unsigned m = g.mask; m; m &= m - 1) {
          const int lane = __builtin_ctz(m);
          if (*static_cast<const int*>(lane_thread(warp, lane).in)) ballot |= 1u << lane;
        }
        for (unsigned m = g.mask; m; m &= m - 1) {
          EmuThread& t = lane_thread(warp, __builtin_ctz(m));
          if (g.op == WarpOp::kBallot) *static_cast<unsigned*>(t.out) = ballot;
          else if (g.op == WarpOp::kAny) *static_cast<int*>(t.out) = ballot != 0;
          else *static_cast<int*>(t.out) = ballot == g.mask;
        }
        break;
      }
      case WarpOp::kSyncWarp:
        if (race_on_) race_.syncwarp(warp, g.mask);
        break;
      case WarpOp::kLdmatrix: do_ldmatrix(warp, g); break;
      case WarpOp::kMma: do_mma(warp, g); break;
    }
  }

  // Shuffled values are 1, 2, 4 or 8 bytes: fixed-size copies, not a memcpy call per lane.
  static void copy_value(void* dst, const void* src, int bytes) {
    switch (bytes) {
      case 4: std::memcpy(dst, src, 4); break;
      case 8: std::memcpy(dst, src, 8); break;
      case 2: std::memcpy(dst, src, 2); break;
      default: std::memcpy(dst, src, size_t(bytes)); break;
    }
  }

  // The source lane of a shuffle, as the PTX ISA defines shfl.sync: `width` splits the warp into
  // segments; idx wraps inside the segment, up/down/bfly that leave it (upwards, for bfly: to a
  // later segment) read the lane's own value. Only the low 5 bits of the lane operand count.
  static int shuffle_source(WarpOp op, int lane, int b, int width) {
    const int segmask = (kWarpSize - width) & (kWarpSize - 1);
    const int clamp = op == WarpOp::kShflUp ? 0 : kWarpSize - 1;
    const int max_lane = (lane & segmask) | (clamp & ~segmask);
    const int min_lane = lane & segmask;
    const int bval = b & (kWarpSize - 1);
    int j = lane;
    bool in_range = true;
    switch (op) {
      case WarpOp::kShflUp: j = lane - bval; in_range = j >= max_lane; break;
      case WarpOp::kShflDown: j = lane + bval; in_range = j <= max_lane; break;
      case WarpOp::kShflXor: j = lane ^ bval; in_range = j <= max_lane; break;
      default: j = min_lane | (bval & ~segmask); in_range = j <= max_lane; break;
    }
    return in_range ? j : lane;
  }

  // ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16: lane 8*i + r gives the address of row r
  // of matrix i; lane l receives, in register i, elements (l/4, 2*(l%4)) and (l/4, 2*(l%4)+1) of
  // matrix i (low half first), or with .trans elements (2*(l%4), l/4) and (2*(l%4)+1, l/4).
  void do_ldmatrix(int warp, const WarpGroup& g) {
    const EmuThread& first = lane_thread(warp, 0);
    const int num = first.param & 0xFF;
    const bool trans = (first.param >> 8) & 1;
    for (int l = 1; l < kWarpSize; ++l)
      if (lane_thread(warp, l).param != first.param)
        fail(cudaErrorIllegalInstruction,
             fmt("ldmatrix at %s:%d: lanes of warp %d use different shapes (.x%d%s vs .x%d%s)",
                 g.file, g.line, warp, num, trans ? ".trans" : "", lane_thread(warp, l).param & 0xFF,
                 (lane_thread(warp, l).param >> 8) & 1 ? ".trans" : ""));
    uint16_t m[4][kLdmatrixRows][kLdmatrixRows];
    for (int i = 0; i < num; ++i)
      for (int r = 0; r < kLdmatrixRows; ++r) {
        const int lane = i * kLdmatrixRows + r;
        const void* row = *static_cast<const void* const*>(lane_thread(warp, lane).in);
        ldmatrix_row_check(row, g.file, g.line, lane);
        if (race_on_)
          race_at(lane_thread(warp, lane).linear, arena_offset(row), kLdmatrixRows * 2, AccessKind::kLdmatrix,
                  g.file, g.line);
        std::memcpy(m[i][r], row, kLdmatrixRowBytes);
      }
    for (int l = 0; l < kWarpSize; ++l) {
      uint32_t* out = static_cast<uint32_t*>(lane_thread(warp, l).out);
      const int a = l / 4, b = 2 * (l % 4);
      for (int i = 0; i < num; ++i) {
        const uint16_t lo = trans ? m[i][b][a] : m[i][a][b];
        const uint16_t hi = trans ? m[i][b + 1][a] : m[i][a][b + 1];
        out[i] = uint32_t(lo) | (uint32_t(hi) << 16);
      }
    }
  }

 public:
  struct MmaOperands {
    const uint32_t* a;
    const uint32_t* b;
    const float* c;
  };

 private:
  // mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, fragments per the PTX ISA
  // ("Matrix Fragments for mma.m16n8k16 with floating point type"), with g = lane/4, t = lane%4:
  //   A (16x16): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
  //   B (16x8):  b[0] = (2t..2t+1, g), b[1] = (2t+8..2t+9, g)            (k rows, n column)
  //   C/D (16x8): c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
  // D = A*B + C in f32: products of 16-bit floats are exact in f32, summed in k order onto C.
  void do_mma(int warp, const WarpGroup& g) {
    (void)g;
    const MmaType type = MmaType(lane_thread(warp, 0).param);
    auto cvt = [type](uint16_t h) { return type == MmaType::kBF16 ? bf16_to_float(h) : f16_to_float(h); };
    float A[kMmaM][kMmaK], B[kMmaK][kMmaN], C[kMmaM][kMmaN];
    for (int l = 0; l < kWarpSize; ++l) {
      const MmaOperands& op = *static_cast<const MmaOperands*>(lane_thread(warp, l).in);
      const int gid = l / 4, t = l % 4;
      for (int r = 0; r < 4; ++r) {
        const int row = gid + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
        A[row][col] = cvt(uint16_t(op.a[r] & 0xFFFF));
        A[row][col + 1] = cvt(uint16_t(op.a[r] >> 16));
      }
      for (int r = 0; r < 2; ++r) {
        const int k = 2 * t + r * 8;
        B[k][gid] = cvt(uint16_t(op.b[r] & 0xFFFF));
        B[k + 1][gid] = cvt(uint16_t(op.b[r] >> 16));
      }
      for (int r = 0; r < 4; ++r) C[gid + (r >> 1) * 8][2 * t + (r & 1)] = op.c[r];
    }
    float D[kMmaM][kMmaN];
    for (int i = 0; i < kMmaM; ++i)
      for (int j = 0; j < kMmaN; ++j) {
        float acc = C[i][j];
        for (int k = 0; k < kMmaK; ++k) acc += A[i][k] * B[k][j];
        D[i][j] = acc;
      }
    for (int l = 0; l < kWarpSize; ++l) {
      float* d = static_cast<float*>(lane_thread(warp, l).out);
      const int gid = l / 4, t = l % 4;
      for (int r = 0; r < 4; ++r) d[r] = D[gid + (r >> 1) * 8][2 * t + (r & 1)];
    }
  }

  // ---- state ----
  Fiber sched_;  // the scheduler's own context (this OS thread's stack)
  std::vector<std::unique_ptr<EmuThread>> threads_;
  std::vector<EmuThread*> thread_ptrs_;  // the same, without the indirection, for the hot paths
  size_t sweep_pos_ = 0;
  std::vector<WarpState> warps_;
  std::vector<int> order_;
  uint64_t rng_ = 0;
  LaunchState* launch_ = nullptr;
  EmuThread* cur_ = nullptr;
  uint3 block_idx_{0, 0, 0};
  int nthreads_ = 0;
  int done_count_ = 0;
  int exited_count_ = 0;
  uint3 first_exited_{0, 0, 0};
  // barrier
  int bar_arrived_ = 0;
  BarrierOp bar_op_ = BarrierOp::kSync;
  const char* bar_file_ = nullptr;
  int bar_line_ = 0;
  uint3 bar_thread_{0, 0, 0};
  int bar_acc_ = 0;
  // shared memory
  unsigned char* arena_ = nullptr;
  size_t cursor_ = 0;
  size_t dynamic_offset_ = 0;
  size_t static_bytes_ = 0;
  uint64_t block_serial_ = 0;
  std::vector<SharedAlloc> allocs_;
  std::vector<SiteSlot> site_slots_;
  // race detector
  bool race_on_ = false;
  bool race_found_ = false;
  RaceShadow race_;
  Race race_info_;
  // drift schedule: order_ holds warps
  bool drift_ = false;
  // first error of the block
  cudaError_t err_ = cudaSuccess;
  std::string msg_;
};

Worker& caller_worker() {
  thread_local std::unique_ptr<Worker> w;
  if (!w) w = std::make_unique<Worker>();
  return *w;
}

Worker& running_worker(const char* what) {
  Worker* w = t_worker;
  if (!w) no_kernel_context(what);
  return *w;
}

// ---- a pool of OS threads for grids with many blocks ---------------------------------------------

class Pool {
 public:
  // Runs L with `n` threads in all: the caller and n - 1 helpers.
  void run(LaunchState& L, int n) {
    std::lock_guard<std::mutex> serial(launch_mu_);  // one pooled launch at a time
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (int(helpers_.size()) < n - 1) helpers_.emplace_back([this] { helper_loop(); });
      job_ = &L;
      wanted_ = n - 1;
      running_ = 0;
      ++generation_;
    }
    cv_.notify_all();
    caller_worker().run(L);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return wanted_ == 0 && running_ == 0; });
    job_ = nullptr;
  }

 private:
  void helper_loop() {
    Worker worker;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return generation_ != seen && wanted_ > 0; });
      seen = generation_;
      --wanted_;
      ++running_;
      LaunchState* job = job_;
      lock.unlock();
      worker.run(*job);
      lock.lock();
      --running_;
      done_cv_.notify_all();
    }
  }

  std::mutex launch_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> helpers_;  // detached in effect: the pool is never destroyed
  LaunchState* job_ = nullptr;
  int wanted_ = 0, running_ = 0;
  uint64_t generation_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: its threads wait forever
  return *p;
}

std::atomic<uint64_t> g_launch_serial{0};

}  // namespace

// ---- public API (emu.h) -----------------------------------------------------------------------------

void set_schedule(Schedule s, uint64_t seed) {
  config().schedule = int(s);
  config().seed = seed;
}
Schedule schedule() { return Schedule(config().schedule.load()); }
uint64_t schedule_seed() { return config().seed.load(); }
void set_worker_threads(int n) { config().threads = std::max(1, n); }
void set_smem_optin(size_t bytes) { config().smem_optin = std::min(std::max(bytes, kDefaultSharedLimit), kMaxSharedOptin); }
size_t smem_optin() { return config().smem_optin; }
int worker_threads() { return config().threads.load(); }
const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::kRoundRobin: return "round-robin";
    case Schedule::kReverse: return "reverse";
    case Schedule::kRandom: return "random";
    case Schedule::kDrift: return "drift";
  }
  return "?";
}

void set_racecheck(bool on) { config().racecheck = on; }
bool racecheck() { return config().racecheck.load(); }
bool racecheck_instrumented() { return g_race_instrumented.load(); }

const char* last_error_message() { return t_message.c_str(); }

const char* error_string(cudaError_t err) {
  if (err != cudaSuccess && err == t_message_code && !t_message.empty()) return t_message.c_str();
  return cudaGetErrorString(err);
}

void no_kernel_context(const char* what) {
  std::fprintf(stderr, "moe_emu: %s used outside an emulated kernel\n", what);
  std::abort();  // a host-code bug, not a kernel error: there is no launch to fail
}

int block_barrier(BarrierOp op, int pred, const char* file, int line) {
  return running_worker("__syncthreads").barrier(op, pred, file, line);
}

void warp_collective(WarpOp op, unsigned mask, const void* in, void* out, int param, int width,
                     int bytes, const char* file, int line) {
  running_worker(warp_op_name(op)).collective(op, mask, in, out, param, width, bytes, file, line);
}

unsigned active_mask() { return running_worker("__activemask").active_mask(); }

void trap(const char* file, int line) { running_worker("__trap").trap(file, line); }

void* shared_static(SharedSite* site) { return running_worker("MOE_SHARED").shared_static(site); }

void* shared_dynamic(const char*, int) { return running_worker("MOE_DYNAMIC_SHARED").shared_dynamic(); }

void ldmatrix(int num, bool trans, const void* row_addr, uint32_t* out, const char* file, int line) {
  const void* addr = row_addr;
  running_worker("ldmatrix").collective(WarpOp::kLdmatrix, kFullMask, &addr, out,
                                        num | (trans ? 1 << 8 : 0), kWarpSize, 0, file, line);
}

void mma_m16n8k16(MmaType t, float* d, const uint32_t* a, const uint32_t* b, const float* c,
                  const char* file, int line) {
  const Worker::MmaOperands ops{a, b, c};
  running_worker("mma.sync").collective(WarpOp::kMma, kFullMask, &ops, d, int(t), kWarpSize, 0, file, line);
}

void cp_async_16(void* dst, const void* src, int src_bytes, const char* file, int line) {
  running_worker("cp.async").cp_async(dst, src, src_bytes, file, line);
}
void cp_async_commit() { running_worker("cp.async.commit_group").cp_async_commit(); }
void cp_async_wait(int n, const char*, int) { running_worker("cp.async.wait_group").cp_async_wait(n); }

std::atomic<uint64_t> g_launches{0};
uint64_t launch_count() { return g_launches.load(); }

cudaError_t launch(const LaunchSpec& spec) {
  g_launches.fetch_add(1, std::memory_order_relaxed);
  Config& cfg = config();
  auto fail = [&](cudaError_t code, std::string m) {
    set_message(code, "emulated launch of " + kernel_name(spec.kernel, true) + ": " + m);
    return code;
  };
  if (moe_emu_current != nullptr)
    return fail(cudaErrorNotSupported, "launch from inside a kernel (dynamic parallelism is not emulated)");
  const dim3 g = spec.grid, b = spec.block;
  const uint64_t nthreads = uint64_t(b.x) * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > kMaxGridDimX || g.y > kMaxGridDimYZ || g.z > kMaxGridDimYZ)
    return fail(cudaErrorInvalidConfiguration,
                fmt("grid %s is invalid: each dimension must be >= 1, x <= %u, y and z <= %u",
                    dim_str(g).c_str(), kMaxGridDimX, kMaxGridDimYZ));
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > kMaxBlockDimXY || b.y > kMaxBlockDimXY ||
      b.z > kMaxBlockDimZ || nthreads > kMaxThreadsPerBlock)
    return fail(cudaErrorInvalidConfiguration,
                fmt("block %s is invalid: each dimension >= 1, x and y <= %u, z <= %u, at most %u "
                    "threads",
                    dim_str(b).c_str(), kMaxBlockDimXY, kMaxBlockDimZ, kMaxThreadsPerBlock));
  int attr = 0;
  {
    std::lock_guard<std::mutex> lock(g_attr_mu);
    auto it = max_dynamic_smem_attr().find(spec.kernel);
    if (it != max_dynamic_smem_attr().end()) attr = it->second;
  }
  if (spec.dynamic_smem > cfg.smem_optin)
    return fail(cudaErrorInvalidValue,
                fmt("%zu bytes of dynamic shared memory exceed the device maximum of %zu per block",
                    spec.dynamic_smem, cfg.smem_optin));
  if (spec.dynamic_smem > kDefaultSharedLimit && spec.dynamic_smem > size_t(attr))
    return fail(cudaErrorInvalidValue,
                fmt("%zu bytes of dynamic shared memory need the opt-in "
                    "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n) "
                    "with n >= the request (it is %d)",
                    spec.dynamic_smem, attr));

  LaunchState L;
  L.spec = &spec;
  L.nblocks = uint64_t(g.x) * g.y * g.z;
  L.schedule = Schedule(cfg.schedule.load());
  L.seed = cfg.seed.load();
  L.serial = g_launch_serial.fetch_add(1);
  L.smem_limit = attr > 0 ? cfg.smem_optin : kDefaultSharedLimit;
  if (L.schedule == Schedule::kRandom && L.nblocks > 1) {
    uint64_t s = L.seed ^ (L.serial * 0xD1B54A32D192ED03ull);
    do L.perm_a = splitmix64(s) % L.nblocks;
    while (L.perm_a == 0 || gcd(L.perm_a, L.nblocks) != 1);
    L.perm_c = splitmix64(s) % L.nblocks;
  }
  const int threads = int(std::min<uint64_t>(uint64_t(cfg.threads.load()), L.nblocks));
  if (threads <= 1) caller_worker().run(L);
  else pool().run(L, threads);
  if (L.err != cudaSuccess) {
    set_message(L.err, "emulated launch of " + L.msg);
    return L.err;
  }
  return cudaSuccess;
}

}  // namespace moe_emu

// ---- the race detector's access hooks ------------------------------------------------------------
// A translation unit compiled with `-fsanitize=thread --param tsan-instrument-func-entry-exit=0`
// (GCC; Clang: `-fsanitize=thread`, its function entry/exit hooks are no-ops here) calls these around
// its loads, stores and atomics (the ThreadSanitizer ABI). No TSan
// runtime is linked: the emulator defines them, and looks only at accesses inside the shared memory
// of the block running on this OS thread (t_race_base/t_race_span). Atomics are performed here, as
// sequentially consistent operations (the strongest of the orders a caller may ask for).
namespace {

using moe_emu::AccessKind;

__attribute__((always_inline)) inline void race_hook(const void* p, size_t n, AccessKind kind, const void* pc) {
  const uintptr_t off = reinterpret_cast<uintptr_t>(p) - t_race_base;
  if (__builtin_expect(off >= t_race_span, 1)) return;
  moe_emu::t_worker->race_access(size_t(off), n, kind, pc);
}

}  // namespace

#define MOE_RACE_PC __builtin_extract_return_addr(__builtin_return_address(0))

// Hidden: the hooks serve the kernels linked into the same binary (the test executable or the
// addon) and must not interpose on another library's TSan, nor be interposed.
#pragma GCC visibility push(hidden)
extern "C" {

void __tsan_init() { g_race_instrumented = true; }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

#define MOE_RACE_RW(n)                                                                                   \
  void __tsan_read##n(void* p) { race_hook(p, n, AccessKind::kRead, MOE_RACE_PC); }                      \
  void __tsan_write##n(void* p) { race_hook(p, n, AccessKind::kWrite, MOE_RACE_PC); }                    \
  void __tsan_unaligned_read##n(void* p) { race_hook(p, n, AccessKind::kRead, MOE_RACE_PC); }            \
  void __tsan_unaligned_write##n(void* p) { race_hook(p, n, AccessKind::kWrite, MOE_RACE_PC); }          \
  void __tsan_volatile_read##n(void* p) { race_hook(p, n, AccessKind::kRead, MOE_RACE_PC); }             \
  void __tsan_volatile_write##n(void* p) { race_hook(p, n, AccessKind::kWrite, MOE_RACE_PC); }
MOE_RACE_RW(1)
MOE_RACE_RW(2)
MOE_RACE_RW(4)
MOE_RACE_RW(8)
MOE_RACE_RW(16)
#undef MOE_RACE_RW

void __tsan_read_range(void* p, size_t n) { race_hook(p, n, AccessKind::kRead, MOE_RACE_PC); }
void __tsan_write_range(void* p, size_t n) { race_hook(p, n, AccessKind::kWrite, MOE_RACE_PC); }
// Clang calls these for memcpy, memmove and memset (GCC checks ranges with the two above).
void* __tsan_memcpy(void* d, const void* s, size_t n) {
  race_hook(s, n, AccessKind::kRead, MOE_RACE_PC);
  race_hook(d, n, AccessKind::kWrite, MOE_RACE_PC);
  return std::memcpy(d, s, n);
}
void* __tsan_memmove(void* d, const void* s, size_t n) {
  race_hook(s, n, AccessKind::kRead, MOE_RACE_PC);
  race_hook(d, n, AccessKind::kWrite, MOE_RACE_PC);
  return std::memmove(d, s, n);
}
void* __tsan_memset(void* d, int c, size_t n) {
  race_hook(d, n, AccessKind::kWrite, MOE_RACE_PC);
  return std::memset(d, c, n);
}

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#define MOE_RACE_ATOMIC(bits, T)                                                                         \
  T __tsan_atomic##bits##_load(const volatile T* a, int) {                                               \
    race_hook(const_cast<const T*>(a), sizeof(T), AccessKind::kAtomicRead, MOE_RACE_PC);                 \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                         \
  }                                                                                                      \
  void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                                            \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                      \
  T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                            \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                  \
  }                                                                                                      \
  T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) {                                           \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                                      \
  T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) {                                           \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                                      \
  T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) {                                           \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                                      \
  T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) {                                            \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                    \
  }                                                                                                      \
  T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) {                                           \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                                      \
  T __tsan_atomic##bits##_fetch_nand(volatile T* a, T v, int) {                                          \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                  \
  }                                                                                                      \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);              \
  }                                                                                                      \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                  \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
  }                                                                                                      \
  T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                      \
    race_hook(const_cast<T*>(a), sizeof(T), AccessKind::kAtomic, MOE_RACE_PC);                           \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                    \
    return c;                                                                                            \
  }
MOE_RACE_ATOMIC(8, uint8_t)
MOE_RACE_ATOMIC(16, uint16_t)
MOE_RACE_ATOMIC(32, uint32_t)
MOE_RACE_ATOMIC(64, uint64_t)
#undef MOE_RACE_ATOMIC

}  // extern "C"
#pragma GCC visibility pop
