/*
 * hooks.cpp: the checks on every load and store of kernel code. Kernels are compiled with
 * -fsanitize=kernel-address and outline instrumentation, so each access calls
 * __asan_{load,store}{1,2,4,8,16,N}_noabort(addr) here (no libasan is involved).
 *
 * Fast path (a few ns): the address is in the device arena, aligned, and its shadow byte
 * says addressable. Everything else goes to check_slow: shared memory (race detection),
 * the fiber's own stack, the kernels library's own data; anything else is an error.
 * Also here: atomics (host atomics on checked addresses), misaligned vector accesses,
 * __trap, cp.async.
 */
#include <cstdio>
#include <cstring>

#include "internal.h"

namespace emu {

namespace {

std::string access_text(uintptr_t a, size_t n, bool write, bool atomic) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s of %zu byte%s at 0x%lx", atomic ? "atomic access" : (write ? "write" : "read"), n,
             n == 1 ? "" : "s", (unsigned long)a);
    return buf;
}

[[noreturn]] void fail_access(uintptr_t a, size_t n, bool write, bool atomic, const void* site,
                              const std::string& why, int code = kCudaErrorIllegalAddress) {
    fail_kernel(code, where_now() + ": " + access_text(a, n, write, atomic) + " at " +
                          describe_site(site) + ": " + why);
}

inline bool arena_ok(uintptr_t a, size_t n) {
    const uintptr_t off = a - g_arena.base;
    if (off >= g_arena.size || n > g_arena.size - off) return false;
    const uint8_t* sh = g_arena.shadow;
    const uintptr_t first = off >> 3, last = (off + n - 1) >> 3;
    for (uintptr_t gi = first; gi <= last; ++gi) {
        const uint8_t s = sh[gi];
        if (s == 8) continue;
        if (gi == last && s > 0 && s < 8 && ((off + n - 1) & 7) < s) continue;
        return false;
    }
    return true;
}

// Hooks run on the fiber's own stack, so the stack pointer names the thread's slot.
inline bool same_stack_slot(uintptr_t a) {
    uintptr_t sp;
    __asm__("mov %%rsp, %0" : "=r"(sp));
    return ((a ^ sp) & ~uintptr_t(EMU_STACK_BYTES - 1)) == 0;
}

template <unsigned N, bool W>
inline void check(uintptr_t a, const void* site) {
    if (N > 1 && (a & (N - 1)) != 0) {
        if (tls_worker == nullptr || tls_worker->block.current == nullptr) return;
        fail_access(a, N, W, false, site, "misaligned (a " + std::to_string(N) +
                                              "-byte access must be " + std::to_string(N) + "-byte aligned)",
                    kCudaErrorMisalignedAddress);
    }
    const uintptr_t off = a - g_arena.base;
    if (off < g_arena.size) {
        const uint8_t s = g_arena.shadow[off >> 3];
        if (__builtin_expect(s == 8 && (N <= 8 ? (off & 7) + N <= 8 : true), 1)) {
            if (N <= 8 || g_arena.shadow[(off >> 3) + 1] == 8) {
                if (W) note_write(off);
                if (__builtin_expect(g_arena.pdl_guard, 0) && pdl_pre_wait_now()) pdl_access(a, N, W, false, site);
                return;
            }
        }
    } else if (same_stack_slot(a)) {
        return;  // the running thread's own stack (locals) or fiber record
    }
    check_slow(a, N, W, false, site);
}

}  // namespace

void check_slow(uintptr_t a, size_t n, bool write, bool atomic, const void* site) {
    Worker* w = tls_worker;
    if (w == nullptr || w->block.current == nullptr) return;  // not kernel code on a fiber
    if (n == 0) return;
    const uintptr_t off = a - g_arena.base;
    if (off < g_arena.size) {
        if (!arena_ok(a, n)) fail_access(a, n, write, atomic, site, arena_explain(a, n));
        if (write || atomic) note_write(off);
        if (g_arena.pdl_guard && pdl_pre_wait_now()) pdl_access(a, n, write || atomic, atomic, site);
        return;
    }
    const uintptr_t slo = reinterpret_cast<uintptr_t>(w->smem_lo), shi = reinterpret_cast<uintptr_t>(w->smem_hi);
    const uintptr_t dlo = reinterpret_cast<uintptr_t>(w->dyn), dhi = dlo + w->dyn_size;
    if ((a >= slo && a < shi) || (w->dyn_size > 0 && a >= dlo && a < dhi)) {
        const bool in_static = a >= slo && a < shi;
        const uintptr_t hi = in_static ? shi : dhi;
        if (n > hi - a) {
            fail_access(a, n, write, atomic, site,
                        in_static ? "runs past the end of the block's static shared memory"
                                  : "runs past the end of the launch's dynamic shared memory (" +
                                        std::to_string(w->dyn_size) + " bytes)");
        }
        race_check(*w, a, n, write, atomic, site);
        return;
    }
    if (w->dyn != nullptr && a >= dlo && a < dlo + 232448) {
        fail_access(a, n, write, atomic, site,
                    "past the end of the launch's dynamic shared memory (" + std::to_string(w->dyn_size) +
                        " bytes)");
    }
    const uintptr_t stack_lo = reinterpret_cast<uintptr_t>(w->block.current) & ~uintptr_t(EMU_STACK_BYTES - 1);
    if (a >= stack_lo && a + n <= stack_lo + EMU_STACK_BYTES) {
        if (atomic) fail_access(a, n, write, atomic, site, "atomic on a thread's local memory");
        return;  // the thread's own stack (local variables) and its fiber record (threadIdx...)
    }
    if (in_any_module(a)) {
        if (write) fail_access(a, n, write, atomic, site, "write into the kernels library's own data");
        return;  // constants of the kernels library
    }
    if (a < 65536) fail_access(a, n, write, atomic, site, "null pointer");
    fail_access(a, n, write, atomic, site,
                "not device memory (neither an allocation, shared memory, nor the thread's stack)");
}

}  // namespace emu

using emu::check;

#define EMU_HOOKS(N)                                                                        \
    extern "C" void __asan_load##N##_noabort(uintptr_t a) {                                 \
        check<N, false>(a, __builtin_return_address(0));                                    \
    }                                                                                       \
    extern "C" void __asan_store##N##_noabort(uintptr_t a) {                                \
        check<N, true>(a, __builtin_return_address(0));                                     \
    }                                                                                       \
    extern "C" void __asan_report_load##N##_noabort(uintptr_t a) {                          \
        emu::check_slow(a, N, false, false, __builtin_return_address(0));                   \
    }                                                                                       \
    extern "C" void __asan_report_store##N##_noabort(uintptr_t a) {                         \
        emu::check_slow(a, N, true, false, __builtin_return_address(0));                    \
    }
EMU_HOOKS(1)
EMU_HOOKS(2)
EMU_HOOKS(4)
EMU_HOOKS(8)
EMU_HOOKS(16)

extern "C" void __asan_loadN_noabort(uintptr_t a, size_t n) {
    if (!emu::arena_ok(a, n)) emu::check_slow(a, n, false, false, __builtin_return_address(0));
    else if (emu::g_arena.pdl_guard && emu::pdl_pre_wait_now()) emu::pdl_access(a, n, false, false, __builtin_return_address(0));
}
extern "C" void __asan_storeN_noabort(uintptr_t a, size_t n) {
    if (!emu::arena_ok(a, n)) {
        emu::check_slow(a, n, true, false, __builtin_return_address(0));
    } else if (n > 0) {
        emu::note_write(a - emu::g_arena.base);
        if (emu::g_arena.pdl_guard && emu::pdl_pre_wait_now()) emu::pdl_access(a, n, true, false, __builtin_return_address(0));
    }
}
extern "C" void __asan_handle_no_return(void) {}

// ---- Entry points of the prelude --------------------------------------------------------------

extern "C" void emu_misaligned(const void* p, unsigned n, int is_write) {
    emu::fail_access(reinterpret_cast<uintptr_t>(p), n, is_write != 0, false, __builtin_return_address(0),
                     "misaligned vector access (a " + std::to_string(n) + "-byte vector must be " +
                         std::to_string(n) + "-byte aligned)",
                     emu::kCudaErrorMisalignedAddress);
}

extern "C" void emu_trap(const char* what) {
    emu::fail_kernel(emu::kCudaErrorLaunchFailed, emu::where_now() + ": " + (what ? what : "__trap()") +
                                                      " at " + emu::describe_site(__builtin_return_address(0)));
}

namespace emu {

static void cp_async_do(const Fiber::PendingCopy& c) {
    const uintptr_t s = reinterpret_cast<uintptr_t>(c.src), d = reinterpret_cast<uintptr_t>(c.dst);
    if (!arena_ok(s, c.n)) check_slow(s, c.n, false, false, c.site);
    if (!arena_ok(d, c.n)) check_slow(d, c.n, true, false, c.site);
    memcpy(c.dst, c.src, c.n);
}

void cp_async_land(Fiber* f, uint32_t before) {
    uint32_t keep = 0;
    for (uint32_t i = 0; i < f->n_pending; ++i) {
        if (f->pending[i].group < before) cp_async_do(f->pending[i]);
        else f->pending[keep++] = f->pending[i];
    }
    f->n_pending = keep;
}

}  // namespace emu

extern "C" void emu_cp_async(void* dst, const void* src, unsigned n) {
    const void* site = __builtin_return_address(0);
    const uintptr_t s = reinterpret_cast<uintptr_t>(src), d = reinterpret_cast<uintptr_t>(dst);
    if ((s | d) & (n - 1))
        emu::fail_access((s & (n - 1)) ? s : d, n, (s & (n - 1)) == 0, false, site, "misaligned cp.async",
                         emu::kCudaErrorMisalignedAddress);
    // The copy reads its source once issued: before the thread's wait, that read is held to
    // the PDL rule (a weight tile may be prefetched into shared memory there).
    if (emu::g_arena.pdl_guard && emu::pdl_pre_wait_now() && s - emu::g_arena.base < emu::g_arena.size) emu::pdl_access(s, n, false, false, site);
    emu::Fiber* f = emu::tls_worker->block.current;
    if (f->n_pending == 8) {  // a real copy may land any time before its wait: land the oldest now
        emu::cp_async_do(f->pending[0]);
        memmove(&f->pending[0], &f->pending[1], 7 * sizeof f->pending[0]);
        f->n_pending = 7;
    }
    f->pending[f->n_pending++] = emu::Fiber::PendingCopy{dst, src, site, n, f->cp_group};
}

extern "C" void emu_cp_async_commit(void) { emu::tls_worker->block.current->cp_group++; }

extern "C" void emu_cp_async_wait(int n_pending) {
    emu::Fiber* f = emu::tls_worker->block.current;
    // wait_group N: at most the N most recent committed groups may stay in flight.
    const uint32_t committed = f->cp_group;
    const uint32_t before = n_pending < 0 ? committed : (committed > uint32_t(n_pending) ? committed - n_pending : 0);
    emu::cp_async_land(f, before);
}

namespace {

template <class T>
T rmw(int op, T* p, T a, T b) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T nv;
        switch (op) {
            case EMU_ATOM_ADD: nv = T(old + a); break;
            case EMU_ATOM_SUB: nv = T(old - a); break;
            case EMU_ATOM_MIN: nv = old < a ? old : a; break;
            case EMU_ATOM_MAX: nv = old > a ? old : a; break;
            case EMU_ATOM_EXCH: nv = a; break;
            case EMU_ATOM_CAS: nv = old == a ? b : old; break;
            case EMU_ATOM_AND: nv = T(old & a); break;
            case EMU_ATOM_OR: nv = T(old | a); break;
            case EMU_ATOM_XOR: nv = T(old ^ a); break;
            case EMU_ATOM_INC: nv = old >= a ? T(0) : T(old + 1); break;
            default: nv = (old == 0 || old > a) ? a : T(old - 1); break;  // DEC
        }
        if (__atomic_compare_exchange_n(p, &old, nv, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old;
    }
}

template <class F, class U>
U rmw_float(int op, U* p, F a) {
    U old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        F o;
        memcpy(&o, &old, sizeof o);
        F n = op == EMU_ATOM_ADD ? o + a : op == EMU_ATOM_SUB ? o - a : op == EMU_ATOM_EXCH ? a
              : op == EMU_ATOM_MIN ? (o < a ? o : a) : (o > a ? o : a);
        U nu;
        memcpy(&nu, &n, sizeof nu);
        if (__atomic_compare_exchange_n(p, &old, nu, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old;
    }
}

}  // namespace

extern "C" uint64_t emu_atomic(int op, int ty, void* addr, uint64_t a, uint64_t b) {
    const void* site = __builtin_return_address(0);
    const uintptr_t p = reinterpret_cast<uintptr_t>(addr);
    const unsigned n = (ty == EMU_TY_U64 || ty == EMU_TY_I64 || ty == EMU_TY_F64) ? 8 : ty == EMU_TY_U16 ? 2 : 4;
    if (p & (n - 1))
        emu::fail_access(p, n, true, true, site, "misaligned", emu::kCudaErrorMisalignedAddress);
    if (!emu::arena_ok(p, n)) {
        emu::check_slow(p, n, true, true, site);
    } else {
        emu::note_write(p - emu::g_arena.base);
        if (emu::g_arena.pdl_guard && emu::pdl_pre_wait_now()) emu::pdl_access(p, n, true, true, site);
    }
    switch (ty) {
        case EMU_TY_U32: return rmw<uint32_t>(op, static_cast<uint32_t*>(addr), uint32_t(a), uint32_t(b));
        case EMU_TY_I32: return uint32_t(rmw<int32_t>(op, static_cast<int32_t*>(addr), int32_t(a), int32_t(b)));
        case EMU_TY_U64: return rmw<uint64_t>(op, static_cast<uint64_t*>(addr), a, b);
        case EMU_TY_I64: return uint64_t(rmw<int64_t>(op, static_cast<int64_t*>(addr), int64_t(a), int64_t(b)));
        case EMU_TY_U16: return rmw<uint16_t>(op, static_cast<uint16_t*>(addr), uint16_t(a), uint16_t(b));
        case EMU_TY_F32: {
            float f;
            uint32_t bits = uint32_t(a);
            memcpy(&f, &bits, 4);
            return rmw_float<float, uint32_t>(op, static_cast<uint32_t*>(addr), f);
        }
        default: {
            double d;
            memcpy(&d, &a, 8);
            return rmw_float<double, uint64_t>(op, static_cast<uint64_t*>(addr), d);
        }
    }
}
