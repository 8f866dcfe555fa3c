/*
 * fiber.cpp: the context switch between CUDA threads and their stacks.
 *
 * A switch saves what the SysV x86-64 ABI says a callee must preserve (rbx, rbp, r12-r15,
 * the stack pointer, MXCSR and the x87 control word) and nothing else: no signal mask, so
 * no system call (ucontext's swapcontext makes one per switch).
 */
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "internal.h"

asm(R"(
    .text
    .globl emu_fiber_switch
    .type emu_fiber_switch, @function
    .p2align 4
emu_fiber_switch:
    .cfi_startproc
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
    .cfi_endproc
    .size emu_fiber_switch, .-emu_fiber_switch

    .globl emu_fiber_entry
    .type emu_fiber_entry, @function
    .p2align 4
emu_fiber_entry:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    andq $-16, %rsp
    call emu_fiber_main
    ud2
    .cfi_endproc
    .size emu_fiber_entry, .-emu_fiber_entry
)");

extern "C" void emu_fiber_entry();

namespace emu {

extern "C" [[noreturn]] void emu_fiber_main(Fiber* f);

void fiber_init(Fiber* f) {
    // Below the record: the frame emu_fiber_switch pops (control words, six registers,
    // return address = emu_fiber_entry, which passes the record in r12 to emu_fiber_main).
    uintptr_t top = reinterpret_cast<uintptr_t>(f) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top) - 8;
    const uint32_t mxcsr = 0x1f80;   // round to nearest, all exceptions masked
    const uint16_t fpucw = 0x037f;   // x87 default
    uint64_t ctl = mxcsr | (uint64_t(fpucw) << 32);
    sp[0] = ctl;
    sp[1] = 0;  // r15
    sp[2] = 0;  // r14
    sp[3] = 0;  // r13
    sp[4] = reinterpret_cast<uint64_t>(f);  // r12
    sp[5] = 0;  // rbx
    sp[6] = 0;  // rbp
    sp[7] = reinterpret_cast<uint64_t>(&emu_fiber_entry);
    f->sp = sp;
}

void StackPool::ensure(size_t n) {
    if (n <= slots) return;
    if (base != nullptr) munmap(base, slots * size_t(EMU_STACK_BYTES));
    // One extra slot's worth so the slots can start at an EMU_STACK_BYTES boundary.
    const size_t S = EMU_STACK_BYTES;
    const size_t bytes = (n + 1) * S;
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "emulated-gpu: cannot map %zu fiber stacks\n", n);
        abort();
    }
    char* lo = static_cast<char*>(m);
    char* a = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(m) + S - 1) & ~uintptr_t(S - 1));
    if (a > lo) munmap(lo, a - lo);
    char* keep_hi = a + n * S;
    if (lo + bytes > keep_hi) munmap(keep_hi, lo + bytes - keep_hi);
    base = a;
    slots = n;
    // A guard page at the bottom of each slot turns a stack overflow into a fault.
    for (size_t i = 0; i < n; ++i) mprotect(base + i * S, 4096, PROT_NONE);
}

}  // namespace emu
