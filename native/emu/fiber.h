// moe-kernels CUDA emulator: fibers, the user-space threads that each emulated GPU thread runs on.
//
// A fiber owns a stack (mmap'ed, with a PROT_NONE guard page below it so an overflow faults at once
// instead of corrupting the neighbouring fiber) and a saved context. Switching between fibers is the
// emulator's hottest operation: every __syncthreads and every warp collective suspends the calling
// thread. On x86-64 the switch is a few lines of assembly that save only the callee-saved registers
// (~4 ns, EMULATION.md); elsewhere, or with -DMOE_EMU_UCONTEXT, glibc's ucontext is used (~100x
// slower: swapcontext makes a sigprocmask system call on every switch).
//
// AddressSanitizer is told about every switch, so it neither reports false stack-buffer errors nor
// loses track of the stack it is on.
#pragma once
#include <cstddef>

// MOE_EMU_ASAN: this translation unit is built with AddressSanitizer (GCC or Clang spelling).
#if defined(__SANITIZE_ADDRESS__)
#define MOE_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOE_EMU_ASAN 1
#endif
#endif
#if defined(MOE_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#endif

#if !defined(__x86_64__) && !defined(MOE_EMU_UCONTEXT)
#define MOE_EMU_UCONTEXT 1
#endif
#if defined(MOE_EMU_UCONTEXT)
#include <ucontext.h>
#endif

namespace moe_emu {

struct Fiber {
#if defined(MOE_EMU_UCONTEXT)
  ucontext_t uc;
#else
  void* sp = nullptr;  // saved stack pointer; the saved registers sit on the stack below it
#endif
  void* stack_lo = nullptr;  // lowest usable byte of the stack (just above the guard page)
  size_t stack_size = 0;     // usable bytes
  void* mapping = nullptr;   // the whole mmap'ed region, guard page included
  size_t mapping_size = 0;
};

// Maps a stack of `bytes` (rounded up to pages) plus a guard page. Returns false when mmap fails.
bool fiber_alloc_stack(Fiber* f, size_t bytes);
void fiber_free_stack(Fiber* f);

// Prepares `f` so that the first switch to it calls entry(arg) on its own stack. entry must never
// return: it ends by switching away for good (fiber_switch with `from_finished` true).
void fiber_prepare(Fiber* f, void (*entry)(void*), void* arg);

// Saves the running context into `from` and resumes `to`. `from_finished` tells the sanitizer that
// `from` will never be resumed (so its fake stack can be released).
void fiber_switch(Fiber* from, Fiber* to, bool from_finished = false);

// To be called first thing in a fiber's entry function: completes the sanitizer hand-over of the
// first switch into it.
void fiber_entered();

// Describes the calling OS thread's own stack in `f` (for the sanitizer, when `f` is switched to).
void fiber_adopt_thread_stack(Fiber* f);

}  // namespace moe_emu
