// Minimal stackful fibers for the emulator: a context switch that saves the callee-saved registers
// (x86-64: hand-written, ~10 ns; elsewhere: ucontext, which also saves the signal mask with a system
// call per switch and is ~50x slower). Only runtime.cpp uses them.
#pragma once
#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace fluid_rt {
namespace emu {

struct FiberContext {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

using FiberEntry = void (*)(void* arg);

// Prepares `ctx` so that the first switch into it calls entry(arg) on the stack
// [stack, stack + size). entry must never return (it switches away for good).
void fiber_init(FiberContext* ctx, void* stack, size_t size, FiberEntry entry, void* arg);
// Saves the running context into `from` and resumes `to`.
void fiber_switch(FiberContext* from, FiberContext* to);

}  // namespace emu
}  // namespace fluid_rt
