/*
 * emu_abi.h: what host-compiled kernel code and the emulated GPU's runtime agree on.
 *
 * Every CUDA thread is a fiber whose stack is an aligned kEmuStackBytes slot; the fiber's
 * header sits at the top of the slot, so kernel code finds "its" threadIdx from the stack
 * pointer alone (three instructions, no thread-local lookup, no call).
 *
 * The functions declared here are exported by the runtime (libcuda.so.1, which every
 * kernels library names as a dependency) and called by the prelude (cuda_emu.h).
 */
#ifndef TACHYON_EMU_ABI_H
#define TACHYON_EMU_ABI_H

#include <stddef.h>
#include <stdint.h>

#define EMU_STACK_BYTES (64u * 1024u)
#define EMU_FIBER_HEADER_BYTES 512u

struct emu_u3 {
    unsigned x, y, z;
};

// The first bytes of the runtime's fiber record (the rest is private to the runtime).
struct emu_fiber_header {
    emu_u3 thread_idx;
    emu_u3 block_idx;
    emu_u3 block_dim;
    emu_u3 grid_dim;
    void* dyn_smem;  // this block's dynamic shared memory (extern __shared__)
};

static inline __attribute__((always_inline)) emu_fiber_header* emu_self(void) {
    uintptr_t sp;
    __asm__("mov %%rsp, %0" : "=r"(sp));
    return (emu_fiber_header*)((sp | (uintptr_t)(EMU_STACK_BYTES - 1)) + 1 -
                               EMU_FIBER_HEADER_BYTES);
}

// Warp operations (emu_warp_op's kind).
enum {
    EMU_WARP_SHFL_IDX = 0,
    EMU_WARP_SHFL_UP = 1,
    EMU_WARP_SHFL_DOWN = 2,
    EMU_WARP_SHFL_XOR = 3,
    EMU_WARP_BALLOT = 4,
    EMU_WARP_ANY = 5,
    EMU_WARP_ALL = 6,
    EMU_WARP_SYNC = 7,
    EMU_WARP_REDUCE_ADD_U32 = 8,
    EMU_WARP_REDUCE_ADD_I32 = 9,
    EMU_WARP_REDUCE_MIN_U32 = 10,
    EMU_WARP_REDUCE_MIN_I32 = 11,
    EMU_WARP_REDUCE_MAX_U32 = 12,
    EMU_WARP_REDUCE_MAX_I32 = 13,
    EMU_WARP_REDUCE_AND = 14,
    EMU_WARP_REDUCE_OR = 15,
    EMU_WARP_REDUCE_XOR = 16,
    EMU_WARP_MATCH_ANY = 17,
    // val points to an emu_exchange: every lane's `bytes` at `in` are copied to every lane's
    // out[lane * bytes] (the host versions of warp-wide matrix instructions use it).
    EMU_WARP_EXCHANGE = 18,
    EMU_WARP_KINDS = 19
};

// Atomic operations (emu_atomic's op) and operand types (ty).
enum {
    EMU_ATOM_ADD = 0,
    EMU_ATOM_SUB = 1,
    EMU_ATOM_MIN = 2,
    EMU_ATOM_MAX = 3,
    EMU_ATOM_EXCH = 4,
    EMU_ATOM_CAS = 5,
    EMU_ATOM_AND = 6,
    EMU_ATOM_OR = 7,
    EMU_ATOM_XOR = 8,
    EMU_ATOM_INC = 9,
    EMU_ATOM_DEC = 10
};
enum {
    EMU_TY_U32 = 0,
    EMU_TY_I32 = 1,
    EMU_TY_U64 = 2,
    EMU_TY_I64 = 3,
    EMU_TY_F32 = 4,
    EMU_TY_F64 = 5,
    EMU_TY_U16 = 6
};

struct emu_exchange {
    const void* in;
    void* out;
    unsigned bytes;
};

#ifdef __cplusplus
extern "C" {
#endif
// Block barrier (__syncthreads) at a source location, which identifies the barrier: the
// threads of a block must all wait at the same file:line (the compiler may duplicate one
// call, so its code address would not do). The _pred form returns count / and / or of pred
// over the block (how: 0 count, 1 and, 2 or).
void emu_syncthreads_at(const char* file, unsigned line);
int emu_syncthreads_pred_at(int pred, int how, const char* file, unsigned line);
// A warp operation among the lanes of mask; val and the result carry up to 8 bytes.
uint64_t emu_warp_op(int kind, unsigned mask, uint64_t val, int arg, int width);
unsigned emu_activemask(void);
// Lets every other thread run (spin waits, __nanosleep): a flag another block sets.
void emu_yield(void);
// Atomic read-modify-write at addr (checked like any access); returns the old value.
uint64_t emu_atomic(int op, int ty, void* addr, uint64_t a, uint64_t b);
// An n-byte vector access at p that is not n-aligned: fails the kernel (716).
void emu_misaligned(const void* p, unsigned n, int is_write);
// __trap(), a failed assert(): fails the kernel (719) with the message.
__attribute__((noreturn)) void emu_trap(const char* what);
// cp.async: an n-byte copy, queued; it lands (checked) when a wait_group covering its
// group runs, or when the thread exits. commit closes the current group.
void emu_cp_async(void* dst, const void* src, unsigned n);
void emu_cp_async_commit(void);
void emu_cp_async_wait(int n_pending);  // -1: wait_all
// griddepcontrol.wait: from here on the thread may touch what earlier kernels wrote (in a
// launch with the programmatic stream serialization attribute; a no-op otherwise).
void emu_grid_dependency_wait(void);
// griddepcontrol.launch_dependents: nothing to do where launches run one at a time.
void emu_launch_dependents(void);
#ifdef __cplusplus
}
#endif

#endif  // TACHYON_EMU_ABI_H
