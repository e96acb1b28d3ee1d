// Fiber context switches (fiber.h).
#include "emu/fiber.h"

#include <cstdint>

#if defined(__x86_64__)
// fluid_emu_switch(void** save_sp, void* new_sp): push the System V callee-saved registers and the
// SSE/x87 control words, store rsp, load the other fiber's rsp, pop its registers, return into it.
// fluid_emu_trampoline is where a fresh fiber "returns" to first: entry in r12, arg in r13.
asm(R"(
  .text
  .p2align 4
  .globl fluid_emu_switch
  .hidden fluid_emu_switch
  .type fluid_emu_switch, @function
fluid_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fluid_emu_switch, .-fluid_emu_switch

  .p2align 4
  .globl fluid_emu_trampoline
  .hidden fluid_emu_trampoline
  .type fluid_emu_trampoline, @function
fluid_emu_trampoline:
  movq %r13, %rdi
  callq *%r12
  ud2
  .size fluid_emu_trampoline, .-fluid_emu_trampoline
)");

extern "C" void fluid_emu_switch(void** save_sp, void* new_sp);
extern "C" void fluid_emu_trampoline();

namespace fluid_rt {
namespace emu {

void fiber_init(FiberContext* ctx, void* stack, size_t size, FiberEntry entry, void* arg) {
  // Stack top aligned to 16; the trampoline's return slot sits at top - 8 so that rsp is 16-aligned
  // at its call (the ABI's rule at a call instruction).
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~static_cast<uintptr_t>(15);
  uint64_t* s = reinterpret_cast<uint64_t*>(top);
  s[-1] = reinterpret_cast<uint64_t>(&fluid_emu_trampoline);  // return address
  s[-2] = 0;                                                  // rbp
  s[-3] = 0;                                                  // rbx
  s[-4] = reinterpret_cast<uint64_t>(entry);                  // r12
  s[-5] = reinterpret_cast<uint64_t>(arg);                    // r13
  s[-6] = 0;                                                  // r14
  s[-7] = 0;                                                  // r15
  const uint32_t control[2] = {0x1F80u, 0x037Fu};             // default MXCSR, x87 control word
  s[-8] = static_cast<uint64_t>(control[0]) | (static_cast<uint64_t>(control[1]) << 32);
  ctx->sp = &s[-8];
}

void fiber_switch(FiberContext* from, FiberContext* to) { fluid_emu_switch(&from->sp, to->sp); }

}  // namespace emu
}  // namespace fluid_rt

#else  // portable fallback

namespace fluid_rt {
namespace emu {
namespace {
void ucontext_entry(unsigned lo_fn, unsigned hi_fn, unsigned lo_arg, unsigned hi_arg) {
  const auto fn = reinterpret_cast<FiberEntry>((static_cast<uintptr_t>(hi_fn) << 32) | lo_fn);
  void* arg = reinterpret_cast<void*>((static_cast<uintptr_t>(hi_arg) << 32) | lo_arg);
  fn(arg);
}
}  // namespace

void fiber_init(FiberContext* ctx, void* stack, size_t size, FiberEntry entry, void* arg) {
  getcontext(&ctx->uc);
  ctx->uc.uc_stack.ss_sp = stack;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = nullptr;
  const auto fn = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&ctx->uc, reinterpret_cast<void (*)()>(&ucontext_entry), 4, static_cast<unsigned>(fn),
              static_cast<unsigned>(fn >> 32), static_cast<unsigned>(a), static_cast<unsigned>(a >> 32));
}

void fiber_switch(FiberContext* from, FiberContext* to) { swapcontext(&from->uc, &to->uc); }

}  // namespace emu
}  // namespace fluid_rt
#endif
