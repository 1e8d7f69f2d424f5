// Shims for the prebuilt addon (CMake option MOE_PORTABLE): glibc functions newer than 2.28 that
// the statically linked libstdc++.a and libgcc_eh.a of this toolchain (GCC 12, built against glibc
// 2.36) reference, and that have no older version to pin to (native/compat/glibc-2.28.symbols pins
// the rest). Each definition is hidden: references inside the addon bind to it at link time, and
// nothing outside the addon sees it. See scripts/glibc-compat.js for the check that keeps the
// binary at GLIBC_2.28.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MOE_HIDDEN extern "C" __attribute__((visibility("hidden")))

// libstdc++'s reference counts (shared_ptr, locale, COW strings) skip their atomic operations when
// glibc >= 2.32 says the process has one thread. 0 here means "there may be threads": always the
// atomic path, which is correct in every process (and a Node process has threads).
extern "C" {
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}

#ifdef DLFO_STRUCT_HAS_EH_DBASE  // glibc >= 2.35 headers: libgcc_eh then calls _dl_find_object
namespace {

struct FindObject {
  uintptr_t pc;
  dl_find_object* out;
  bool found;
};

// The loaded object whose PT_LOAD segments hold pc, with its PT_GNU_EH_FRAME (.eh_frame_hdr).
int find_object(dl_phdr_info* info, size_t, void* data) {
  auto* f = static_cast<FindObject*>(data);
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  const ElfW(Phdr)* eh = nullptr;
  bool hit = false;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr)& p = info->dlpi_phdr[i];
    if (p.p_type == PT_LOAD) {
      const uintptr_t start = info->dlpi_addr + p.p_vaddr, end = start + p.p_memsz;
      hit = hit || (f->pc >= start && f->pc < end);
      lo = start < lo ? start : lo;
      hi = end > hi ? end : hi;
    } else if (p.p_type == PT_GNU_EH_FRAME) {
      eh = &p;
    }
  }
  if (!hit) return 0;
  f->out->dlfo_flags = 0;
  f->out->dlfo_map_start = reinterpret_cast<void*>(lo);
  f->out->dlfo_map_end = reinterpret_cast<void*>(hi);
  f->out->dlfo_link_map = nullptr;  // libgcc's unwinder reads only the EH frame (x86-64: no dbase)
  f->out->dlfo_eh_frame = eh ? reinterpret_cast<void*>(info->dlpi_addr + eh->p_vaddr) : nullptr;
  f->found = true;
  return 1;
}

}  // namespace

// glibc 2.35's lookup of the object holding a code address, which GCC 12's unwinder calls for every
// frame of a C++ exception, with no fallback when it fails. This is the way libgcc found the object
// before 2.35 (dl_iterate_phdr, GLIBC_2.2.5): slower, and exceptions are rare. Returns 0 and fills
// *out when found, -1 otherwise, as glibc's does.
MOE_HIDDEN int _dl_find_object(void* pc, dl_find_object* out) noexcept {
  FindObject f{reinterpret_cast<uintptr_t>(pc), out, false};
  dl_iterate_phdr(find_object, &f);
  return f.found ? 0 : -1;
}
#endif

// glibc 2.36's arc4random, which std::random_device's default token uses (libstdc++'s random.o is
// linked in through its COW-string instantiations; the addon itself never makes a random_device).
MOE_HIDDEN uint32_t arc4random(void) noexcept {
  uint32_t v = 0;
  for (;;) {
    const ssize_t n = getrandom(&v, sizeof v, 0);  // GLIBC_2.25
    if (n == static_cast<ssize_t>(sizeof v)) return v;
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  const int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    const ssize_t n = read(fd, &v, sizeof v);
    close(fd);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
  }
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint32_t>(t.tv_nsec) ^ static_cast<uint32_t>(t.tv_sec * 2654435761u);
}

// fstat is a function of its own only since glibc 2.33 (before, <sys/stat.h> made it an inline call
// of __fxstat, which newer headers no longer declare); host_memory.cc sizes a file it maps with it.
// The system call takes glibc's struct stat as is on x86-64.
MOE_HIDDEN int fstat(int fd, struct stat* st) noexcept {
  return static_cast<int>(syscall(SYS_fstat, fd, st));
}

// glibc 2.30's pthread_cond_clockwait, which libstdc++'s std::condition_variable calls for waits on
// steady_clock (from the header, so the addon's own timed waits reference it). Before 2.30 the same
// header waits on the system clock: so does this, for the time left on the given clock. Not noexcept:
// it is a cancellation point, declared without __THROW.
MOE_HIDDEN int pthread_cond_clockwait(pthread_cond_t* cond, pthread_mutex_t* mutex, clockid_t clock, const struct timespec* abstime) {
  if (clock == CLOCK_REALTIME) return pthread_cond_timedwait(cond, mutex, abstime);
  timespec now{};
  clock_gettime(clock, &now);
  int64_t left = (int64_t(abstime->tv_sec) - now.tv_sec) * 1000000000LL + (abstime->tv_nsec - now.tv_nsec);
  if (left < 0) left = 0;
  timespec real{};
  clock_gettime(CLOCK_REALTIME, &real);
  const int64_t ns = real.tv_nsec + left % 1000000000LL;
  timespec until{};
  until.tv_sec = real.tv_sec + time_t(left / 1000000000LL + ns / 1000000000LL);
  until.tv_nsec = long(ns % 1000000000LL);
  return pthread_cond_timedwait(cond, mutex, &until);
}
