// moe-kernels CUDA emulator: fiber stacks and context switches (see fiber.h).
#include "fiber.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#if defined(MOE_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

namespace moe_emu {

namespace {
size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}
}  // namespace

bool fiber_alloc_stack(Fiber* f, size_t bytes) {
  const size_t page = page_size();
  const size_t usable = (bytes + page - 1) / page * page;
  const size_t total = usable + page;  // one guard page below the stack, which grows down
  void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) return false;
  if (mprotect(m, page, PROT_NONE) != 0) {
    munmap(m, total);
    return false;
  }
  f->mapping = m;
  f->mapping_size = total;
  f->stack_lo = static_cast<char*>(m) + page;
  f->stack_size = usable;
  return true;
}

void fiber_free_stack(Fiber* f) {
#if defined(MOE_EMU_ASAN)
  // The last frames of finished (or abandoned) fibers leave their redzones marked on the stack, and
  // munmap does not clear them in GCC 12's AddressSanitizer: whoever maps these pages next (V8's
  // heap, in a worker torn down mid-kernel) would be reported for touching "stack" memory.
  if (f->stack_lo) ASAN_UNPOISON_MEMORY_REGION(f->stack_lo, f->stack_size);
#endif
  if (f->mapping) munmap(f->mapping, f->mapping_size);
  f->mapping = nullptr;
  f->stack_lo = nullptr;
  f->stack_size = 0;
}

namespace {
// A finished fiber never returns from its last frames, so the sanitizer's redzones of those frames
// stay marked on the stack; a reused stack starts from a clean slate.
void forget_old_frames(Fiber* f) {
#if defined(MOE_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(f->stack_lo, f->stack_size);
#else
  (void)f;
#endif
}
}  // namespace

#if !defined(MOE_EMU_UCONTEXT)

// moe_emu_fiber_switch(void** save_sp, void* load_sp): pushes the callee-saved registers on the
// current stack, stores the stack pointer, loads the other one and pops the same frame from it.
// It ends in a plain `ret`: the emulator switches directly between threads that wait at the same
// call site, whose return addresses are identical, so the return-stack predictor stays right all
// the way back into the kernel (a pop + jmp would leave it one entry off, and every later `ret`
// would mispredict). The MXCSR and x87 control words, also
// callee-saved in the ABI, are not switched: restoring them costs more than the rest of the switch
// (ldmxcsr / fldcw serialise), and emulated kernels do not change rounding or exception modes, so
// every fiber shares the OS thread's.
//
// moe_emu_fiber_trampoline: where a new fiber starts. fiber_prepare leaves the entry function in
// r13 and its argument in r12; `.cfi_undefined rip` marks the bottom of the fiber's call stack for
// unwinders and debuggers.
asm(R"(
  .text
  .globl moe_emu_fiber_switch
  .hidden moe_emu_fiber_switch
  .type moe_emu_fiber_switch,@function
  .p2align 4
moe_emu_fiber_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size moe_emu_fiber_switch, .-moe_emu_fiber_switch

  .globl moe_emu_fiber_trampoline
  .hidden moe_emu_fiber_trampoline
  .type moe_emu_fiber_trampoline,@function
  .p2align 4
moe_emu_fiber_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size moe_emu_fiber_trampoline, .-moe_emu_fiber_trampoline
)");

extern "C" void moe_emu_fiber_switch(void** save_sp, void* load_sp);
extern "C" void moe_emu_fiber_trampoline();

void fiber_prepare(Fiber* f, void (*entry)(void*), void* arg) {
  forget_old_frames(f);
  // The frame moe_emu_fiber_switch pops, from the lowest address up: r15, r14, r13, r12, rbx, rbp,
  // return address. It is placed so that rsp is 16-byte aligned when the trampoline executes its
  // `call`, as the ABI requires.
  constexpr int kSlots = 6 + 1;
  const uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack_lo) + f->stack_size) & ~uintptr_t(15);
  uint64_t* frame = reinterpret_cast<uint64_t*>(top - 16 - kSlots * sizeof(uint64_t));
  frame[0] = 0;                                        // r15
  frame[1] = 0;                                        // r14
  frame[2] = reinterpret_cast<uint64_t>(entry);        // r13
  frame[3] = reinterpret_cast<uint64_t>(arg);          // r12
  frame[4] = 0;                                        // rbx
  frame[5] = 0;                                        // rbp: ends frame-pointer chains
  frame[6] = reinterpret_cast<uint64_t>(&moe_emu_fiber_trampoline);
  f->sp = frame;
}

static inline void raw_switch(Fiber* from, Fiber* to) { moe_emu_fiber_switch(&from->sp, to->sp); }

#else  // MOE_EMU_UCONTEXT

namespace {
// makecontext passes only int arguments: the entry point and its argument travel as 32-bit halves.
void ucontext_trampoline(unsigned e_hi, unsigned e_lo, unsigned a_hi, unsigned a_lo) {
  auto entry = reinterpret_cast<void (*)(void*)>((uintptr_t(e_hi) << 32) | uintptr_t(e_lo));
  void* arg = reinterpret_cast<void*>((uintptr_t(a_hi) << 32) | uintptr_t(a_lo));
  entry(arg);
}
}  // namespace

void fiber_prepare(Fiber* f, void (*entry)(void*), void* arg) {
  forget_old_frames(f);
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack_lo;
  f->uc.uc_stack.ss_size = f->stack_size;
  f->uc.uc_link = nullptr;
  const uintptr_t e = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&f->uc, reinterpret_cast<void (*)()>(ucontext_trampoline), 4, unsigned(e >> 32),
              unsigned(e & 0xffffffffu), unsigned(a >> 32), unsigned(a & 0xffffffffu));
}

static inline void raw_switch(Fiber* from, Fiber* to) { swapcontext(&from->uc, &to->uc); }

#endif  // MOE_EMU_UCONTEXT

void fiber_switch(Fiber* from, Fiber* to, bool from_finished) {
#if defined(MOE_EMU_ASAN)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &fake_stack, to->stack_lo, to->stack_size);
  raw_switch(from, to);
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(fake_stack, &bottom, &size);
#else
  (void)from_finished;
  raw_switch(from, to);
#endif
}

void fiber_entered() {
#if defined(MOE_EMU_ASAN)
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
#endif
}

void fiber_adopt_thread_stack(Fiber* f) {
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return;
  void* addr = nullptr;
  size_t size = 0;
  if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
    f->stack_lo = addr;
    f->stack_size = size;
  }
  pthread_attr_destroy(&attr);
}

}  // namespace moe_emu
