/*
 * pdl.cpp: programmatic dependent launch (PDL). On a GPU a kernel launched with
 * CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION may start once every block of the
 * kernel before it executed griddepcontrol.launch_dependents (or exited), and its
 * griddepcontrol.wait returns once the kernels before it completed and their writes are
 * visible. Here launches run one after another, so the wait has nothing to wait for; what
 * is checked is the rule that makes the overlap safe on a GPU (runtime.h, LaunchOptions::
 * programmatic): before its wait a thread of a programmatic launch
 *   - writes no global memory (a kernel before it may still read or write there), and
 *   - reads no allocation written by a kernel of the window: the launches since the last
 *     one without the attribute, that one included, and before this one. A kernel that
 *     triggers before its own wait lets its successor start while its predecessor still
 *     runs, so the hazard is transitive over the whole window.
 * Writes are noted per allocation at every store (note_write, internal.h); the pre-wait
 * checks cost nothing outside programmatic launches (one flag the hooks test).
 */
#include <cstdio>

#include "internal.h"

namespace emu {

namespace {

// The kernel names of the last launches, by sequence number, for reports.
constexpr uint32_t kNames = 4096;
const char* g_names[kNames];

std::string hex(uintptr_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%lx", (unsigned long)v);
    return buf;
}

}  // namespace

void pdl_launch_begin(const char* kernel, bool programmatic) {
    const uint32_t seq = ++g_arena.seq_now;
    g_names[seq % kNames] = kernel;
    // A launch without the attribute starts after everything before it: the window of
    // kernels that may overlap a later programmatic launch starts with it.
    if (!programmatic || g_arena.pdl_window == 0) g_arena.pdl_window = seq;
    g_arena.pdl_guard = programmatic;
}

void pdl_launch_end() { g_arena.pdl_guard = false; }

void pdl_serialize() { g_arena.pdl_window = g_arena.seq_now + 1; }

void pdl_access(uintptr_t a, size_t n, bool write, bool atomic, const void* site) {
    Worker* w = tls_worker;
    if (w == nullptr || w->block.current == nullptr || !w->block.current->pdl_pre_wait) return;
    const uintptr_t off = a - g_arena.base;
    std::string why;
    if (write) {
        why = "before griddepcontrol.wait in a programmatic dependent launch: the kernel before it may "
              "still be running and reading or writing there (a PDL kernel writes global memory only "
              "after its wait)";
    } else {
        const uint32_t wseq = __atomic_load_n(&g_arena.write_seq[g_arena.alloc_id[off >> 8]], __ATOMIC_RELAXED);
        if (wseq < g_arena.pdl_window || wseq >= g_arena.seq_now) return;
        void* base = nullptr;
        size_t size = 0;
        const bool found = dev_lookup(reinterpret_cast<void*>(a), &base, &size);
        const char* by = g_names[wseq % kNames];
        why = "before griddepcontrol.wait in a programmatic dependent launch, of " +
              (found ? "the " + std::to_string(size) + "-byte allocation at " + hex(uintptr_t(base)) +
                           " (offset " + std::to_string(a - uintptr_t(base)) + ")"
                     : std::string("an allocation")) +
              " that kernel " + (by ? by : "?") + " (launch " + std::to_string(g_arena.seq_now - wseq) +
              " before this one) wrote: on a GPU it may still be running";
    }
    char what[128];
    snprintf(what, sizeof what, "%s of %zu byte%s at 0x%lx", atomic ? "atomic access" : (write ? "write" : "read"),
             n, n == 1 ? "" : "s", (unsigned long)a);
    fail_kernel(kCudaErrorIllegalAddress, where_now() + ": " + what + " at " + describe_site(site) + ": " + why);
}

}  // namespace emu

extern "C" void emu_grid_dependency_wait(void) {
    emu::Worker* w = emu::tls_worker;
    if (w != nullptr && w->block.current != nullptr) w->block.current->pdl_pre_wait = false;
}

extern "C" void emu_launch_dependents(void) {}
