/*
 * internal.h: the runtime's own structures, shared by its files (fibers, blocks, workers,
 * the device arena, the checks). Nothing here is seen by kernel code except through
 * emu_abi.h.
 */
#ifndef TACHYON_EMU_RUNTIME_INTERNAL_H
#define TACHYON_EMU_RUNTIME_INTERNAL_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "../include/emu_abi.h"
#include "runtime.h"

namespace emu {

// ---- Fibers (fiber.cpp) ------------------------------------------------------------------
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack,
// stores the stack pointer in *save and continues on the stack `next` (made by fiber_init
// or saved by an earlier switch).
extern "C" void emu_fiber_switch(void** save, void* next);

struct Block;

enum FiberState : uint8_t { kReady, kWaitBarrier, kWaitWarp, kExited };

// One CUDA thread. Lives at the top of its stack slot (emu_abi.h).
struct Fiber {
    emu_fiber_header hdr;  // must stay first: kernel code reads it through emu_self()
    void* sp;              // saved stack pointer while switched out
    Block* block;
    unsigned tid;          // linear thread id in the block
    unsigned lane, warp;
    FiberState state;
    const void* wait_site;  // where it waits (barrier or warp op): a code address
    // The __syncthreads it waits at, as written in the source: the barrier's identity.
    // (The compiler may duplicate one call, so code addresses cannot say "same barrier".)
    const char* bar_file;
    unsigned bar_line;
    uint64_t xfer;          // warp-op result handed over by the lane that completed it
    int pred;               // __syncthreads_count / and / or operand
    unsigned wait_mask;     // mask of the warp op it waits in
    int wait_kind;
    // cp.async copies in flight (oldest first) and the open group's number.
    struct PendingCopy {
        void* dst;
        const void* src;
        const void* site;
        uint32_t n, group;
    } pending[8];
    uint32_t n_pending;
    uint32_t cp_group;
    // In a programmatic dependent launch, until the thread's griddepcontrol.wait: its
    // global accesses are checked against what the kernels that may still run wrote.
    bool pdl_pre_wait;
};
static_assert(sizeof(Fiber) <= EMU_FIBER_HEADER_BYTES, "fiber record outgrows its slot");

// A worker's fiber stacks: aligned EMU_STACK_BYTES slots with a guard page at the bottom.
struct StackPool {
    char* base = nullptr;
    size_t slots = 0;
    void ensure(size_t n);  // grows (remaps) to at least n slots
    Fiber* fiber(size_t i) const {
        return reinterpret_cast<Fiber*>(base + (i + 1) * EMU_STACK_BYTES -
                                        EMU_FIBER_HEADER_BYTES);
    }
    char* stack_lo(size_t i) const { return base + i * EMU_STACK_BYTES; }
};
// Prepares f's stack so that the first switch to it runs the kernel for that thread.
void fiber_init(Fiber* f);
// Lands the thread's cp.async copies of groups older than `before` (all: ~0u).
void cp_async_land(Fiber* f, uint32_t before);

// ---- Modules: the kernels libraries (module.cpp) -----------------------------------------
struct Module {
    std::string path;
    void* handle = nullptr;     // dlopen(RTLD_NOLOAD) handle, for the TLS block
    uintptr_t lo = 0, hi = 0;   // the library's mapped segments (its own data is legal)
    size_t tls_size = 0;        // PT_TLS memsz: all of its __shared__ variables
    void* (*tls_anchor)() = nullptr;
};
// The module holding fn (cached); nullptr and *err when it is not a kernels library.
const Module* module_of(const void* fn, std::string* err);
bool in_any_module(uintptr_t a);
// "symbol+0xoff (library)" for a code address.
std::string describe_site(const void* pc);

// ---- Shared-memory race detection (race.cpp) ---------------------------------------------
// Per byte of shared memory: the last write and the reads in the current barrier interval.
struct SmemCell {
    uint32_t wgen, rgen;    // barrier generation of the access (0: none)
    uint32_t wsync, rsync;  // the accessor's warp sync count at the access
    uint16_t wtid, rtid;    // linear thread ids
    uint8_t watomic, rflags;
    uint16_t pad;
    uint32_t wsite, rsite;  // code offsets in the module
    uint32_t pad2[2];
};
enum : uint8_t { kReadersMany = 1, kReadersManyWarps = 2 };

struct WarpState {
    uint32_t sync_count;  // completed warp-level syncs (any mask)
    uint32_t full_sync;   // sync_count at the last full-mask (0xffffffff) sync
    uint32_t* pair = nullptr;  // [32][32] sync_count of the last partial sync of a pair
    // Pending warp-op groups (disjoint masks may be in flight at once).
    struct Group {
        unsigned mask, arrived;
        int kind;
        const void* site;
        uint64_t val[32];
        int arg[32];
        int width;
    };
    Group groups[4];
    int n_groups;
    unsigned exited_mask;  // lanes that have returned
    unsigned exist_mask;   // lanes the block has (the last warp may be partial)
};

// ---- Blocks and workers (scheduler.cpp) ---------------------------------------------------
struct Launch;

struct Block {
    Launch* launch;
    emu_u3 idx;
    unsigned nthreads, nwarps;
    unsigned live, exited, bar_arrived;
    const void* bar_site;   // code address of the first arrival (for reports)
    const char* bar_file;   // source location of the barrier now filling
    unsigned bar_line;
    int bar_count;  // __syncthreads_count accumulators
    int bar_and, bar_or;
    bool bar_divergent;
    Fiber** fibers;      // nthreads
    WarpState* warps;    // nwarps
    Fiber* current;
    void* sched_sp;      // the worker's own stack while fibers run
    bool failed;
};

struct Worker {
    unsigned index;
    StackPool stacks;
    std::vector<Fiber*> fiber_ptrs;
    std::vector<WarpState> warps;
    Block block;
    // Shared memory of the block now running: the module's TLS block + the dynamic buffer.
    const Module* module = nullptr;
    char* smem_lo = nullptr;
    char* smem_hi = nullptr;
    char* dyn = nullptr;      // dynamic shared memory (227 KiB reserved)
    size_t dyn_size = 0;      // of this launch
    SmemCell* cells_static = nullptr;
    size_t cells_static_n = 0;
    SmemCell* cells_dyn = nullptr;
    uint32_t gen = 1;         // barrier generation (never repeats on this worker)
    std::vector<std::pair<const Module*, char*>> tls_blocks;  // per module, this thread
};

struct Launch {
    const KernelInfo* kernel;
    const Module* module;
    Dim3 grid, block;
    size_t dyn_smem;
    void** params;
    bool programmatic;  // launched with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    uint64_t nblocks;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex error_mu;
    int error = 0;
    std::string report;
};

// The worker this OS thread is (nullptr outside a launch).
extern thread_local Worker* tls_worker __attribute__((tls_model("initial-exec")));

// Fails the running kernel: records (error, report) unless an error was recorded first,
// and leaves the current fiber for good (never returns when called on a fiber).
[[noreturn]] void fail_kernel(int error, const std::string& what);
// "kernel K block (x,y,z) thread (x,y,z)" of the running fiber.
std::string where_now();
std::string thread_name(const Block& b, unsigned tid);
std::string block_name(const Block& b);  // "kernel K block (x,y,z)"
// Compact list of linear thread ids: "0-31, 64 (x,y,z)..."
std::string thread_list(const Block& b, const std::vector<unsigned>& tids);
// Yields the current fiber to the next ready one (state already set by the caller).
void block_yield(Fiber* self);
void warp_sync_completed(Block& b, unsigned warp, unsigned mask);

// ---- Device arena (arena.cpp) ---------------------------------------------------------------
struct Arena {
    uintptr_t base = 0;
    uintptr_t size = 0;       // reserved span (the hooks' fast range check)
    uint8_t* shadow = nullptr;  // one byte per 8: 8 addressable, 1-7 first k, 0 not, 0xFD freed
    // Programmatic dependent launch (PDL) bookkeeping. Allocations never share a 256-byte
    // granule (256-aligned starts, 256-byte red zones), so alloc_id[off >> 8] names the
    // allocation of any address (0: none or past kMaxTrackedAllocs), and write_seq[id] the
    // launch sequence number of the last kernel that wrote into it.
    uint32_t* alloc_id = nullptr;
    uint32_t* write_seq = nullptr;
    uint32_t seq_now = 0;       // the running launch's sequence number (launches are serial)
    uint32_t pdl_window = 0;    // first launch that may still run alongside seq_now (below)
    bool pdl_guard = false;     // the running launch is programmatic: check pre-wait accesses
};
extern Arena g_arena;
constexpr uint32_t kMaxTrackedAllocs = 1u << 24;

// Notes a kernel's write at arena offset off (cheap: a load, and a store once per launch).
inline void note_write(uintptr_t off) {
    uint32_t* s = &g_arena.write_seq[g_arena.alloc_id[off >> 8]];
    const uint32_t now = g_arena.seq_now;
    if (__atomic_load_n(s, __ATOMIC_RELAXED) != now) __atomic_store_n(s, now, __ATOMIC_RELAXED);
}
// Whether the running thread is in a programmatic launch and before its wait (only asked
// while g_arena.pdl_guard is set, i.e. from kernel code on a fiber).
inline bool pdl_pre_wait_now() {
    const Worker* w = tls_worker;
    return w != nullptr && w->block.current != nullptr && w->block.current->pdl_pre_wait;
}
// The PDL rule for an in-arena access of the running programmatic launch (pdl.cpp).
void pdl_access(uintptr_t a, size_t n, bool write, bool atomic, const void* site);
// A launch begins: its sequence number, and whether it may overlap the kernels before it.
void pdl_launch_begin(const char* kernel, bool programmatic);
void pdl_launch_end();
void arena_init();
// Why a global access at a is invalid ("12 bytes past the end of ..."), for reports.
std::string arena_explain(uintptr_t a, size_t n);

// ---- Checks (hooks.cpp, race.cpp) ----------------------------------------------------------
// Checks an n-byte access at a that is not in the arena's addressable fast path.
void check_slow(uintptr_t a, size_t n, bool write, bool atomic, const void* site);
void race_check(Worker& w, uintptr_t a, size_t n, bool write, bool atomic, const void* site);
void race_block_start(Worker& w);

}  // namespace emu

#endif  // TACHYON_EMU_RUNTIME_INTERNAL_H
