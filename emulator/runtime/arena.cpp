/*
 * arena.cpp: device memory. One reserved span of virtual memory (pages are committed by
 * the kernel on first touch), a bump allocator that never hands an address out twice (so
 * a stale pointer into freed memory is always caught, never silently aliased), 256-byte
 * red zones on both sides of each allocation, 0xFF fill (NaN in f32) of new memory, and a
 * shadow byte per 8 bytes that the access hooks read:
 *   8 = all 8 bytes addressable, 1..7 = the first k, 0 = red zone / never allocated,
 *   0xFD = freed.
 * Freed memory is handed back to the system (MADV_DONTNEED) but its addresses stay dead.
 */
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>

#include "internal.h"

namespace emu {

Arena g_arena;

namespace {

constexpr uintptr_t kAlign = 256;
constexpr uintptr_t kRedZone = 256;
constexpr uint64_t kDefaultTotal = 141ull * 1000 * 1000 * 1000;  // H200: 141 GB
constexpr uint8_t kShadowFreed = 0xFD;

struct Allocation {
    size_t size;
    bool live;
};

struct State {
    std::mutex mu;
    bool ready = false;
    uint64_t total = kDefaultTotal;
    uint64_t used = 0;     // live bytes (rounded to kAlign)
    uintptr_t bump = 0;    // next free offset in the span
    std::map<uintptr_t, Allocation> allocs;  // start address -> allocation (live or freed)
    uint32_t next_id = 1;  // PDL tracking ids (0: untracked)
};

State& st() {
    static State s;
    return s;
}

uintptr_t round_up(uintptr_t v, uintptr_t a) { return (v + a - 1) & ~(a - 1); }

void init_locked(State& s) {
    if (s.ready) return;
    s.ready = true;
    if (const char* e = getenv("TACHYON_EMU_MEMORY_BYTES")) {
        char* end = nullptr;
        unsigned long long v = strtoull(e, &end, 10);
        if (end != e && *end == '\0' && v > 0) s.total = v;
        else fprintf(stderr, "emulated-gpu: ignoring TACHYON_EMU_MEMORY_BYTES=%s (not a byte count)\n", e);
    }
    // The span: 4x the reported size (addresses are never reused), at least 1 TiB.
    uint64_t span = s.total * 4;
    if (span < (1ull << 40)) span = 1ull << 40;
    void* m = MAP_FAILED;
    for (; span >= (1ull << 32); span /= 2) {
        m = mmap(nullptr, span, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m != MAP_FAILED) break;
    }
    void* sh = m == MAP_FAILED ? MAP_FAILED
                               : mmap(nullptr, span / 8, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    // One id per 256-byte granule, one write sequence number per id (internal.h).
    void* ids = sh == MAP_FAILED ? MAP_FAILED
                                 : mmap(nullptr, span / 64, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void* seqs = ids == MAP_FAILED ? MAP_FAILED
                                   : mmap(nullptr, size_t(kMaxTrackedAllocs) * 4, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED || sh == MAP_FAILED || ids == MAP_FAILED || seqs == MAP_FAILED) {
        fprintf(stderr, "emulated-gpu: cannot reserve the device memory span\n");
        abort();
    }
    g_arena.shadow = static_cast<uint8_t*>(sh);
    g_arena.alloc_id = static_cast<uint32_t*>(ids);
    g_arena.write_seq = static_cast<uint32_t*>(seqs);
    g_arena.size = span;
    g_arena.base = reinterpret_cast<uintptr_t>(m);
    s.bump = kRedZone;
}

void shadow_set(uintptr_t off, size_t bytes, uint8_t v) {
    memset(g_arena.shadow + (off >> 3), v, (bytes + 7) >> 3);
}

}  // namespace

void arena_init() {
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    init_locked(s);
}

void* dev_alloc(size_t bytes) {
    if (bytes == 0) return nullptr;
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    init_locked(s);
    const uint64_t rounded = round_up(bytes, kAlign);
    if (rounded < bytes || rounded > s.total - s.used) return nullptr;
    const uintptr_t off = round_up(s.bump, kAlign);
    if (off + rounded + kRedZone > g_arena.size) return nullptr;  // span used up
    s.bump = off + rounded + kRedZone;
    s.used += rounded;
    const uintptr_t a = g_arena.base + off;
    memset(reinterpret_cast<void*>(a), 0xFF, bytes);
    shadow_set(off, bytes & ~size_t(7), 8);
    if (bytes & 7) g_arena.shadow[(off + bytes) >> 3] = uint8_t(bytes & 7);
    s.allocs[a] = Allocation{bytes, true};
    // A fresh id per allocation (addresses are never reused, so neither are ids); past
    // kMaxTrackedAllocs the allocation is untracked (id 0: never reported by the PDL rule).
    const uint32_t id = s.next_id < kMaxTrackedAllocs ? s.next_id++ : 0;
    if (id != 0) {
        uint32_t* ids = g_arena.alloc_id + (off >> 8);
        for (size_t i = 0, n = (bytes + 255) >> 8; i < n; ++i) ids[i] = id;
        g_arena.write_seq[id] = 0;
    }
    return reinterpret_cast<void*>(a);
}

bool dev_free(void* p) {
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    auto it = s.allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == s.allocs.end() || !it->second.live) return false;
    const uintptr_t a = it->first;
    const size_t bytes = it->second.size;
    it->second.live = false;
    s.used -= round_up(bytes, kAlign);
    shadow_set(a - g_arena.base, bytes, kShadowFreed);
    // Give whole pages back; their addresses stay dead (the shadow says freed).
    const uintptr_t plo = round_up(a, 4096), phi = (a + bytes) & ~uintptr_t(4095);
    if (phi > plo) madvise(reinterpret_cast<void*>(plo), phi - plo, MADV_DONTNEED);
    return true;
}

size_t dev_total_bytes() {
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    init_locked(s);
    return s.total;
}

size_t dev_free_bytes() {
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    init_locked(s);
    return s.total - s.used;
}

bool dev_lookup(const void* p, void** base, size_t* size) {
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = s.allocs.upper_bound(a);
    if (it == s.allocs.begin()) return false;
    --it;
    if (!it->second.live || a >= it->first + it->second.size) return false;
    if (base) *base = reinterpret_cast<void*>(it->first);
    if (size) *size = it->second.size;
    return true;
}

bool dev_range_ok(const void* p, size_t n) {
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = s.allocs.upper_bound(a);
    if (it == s.allocs.begin()) return false;
    --it;
    if (!it->second.live) return false;
    const uintptr_t lo = it->first, hi = it->first + it->second.size;
    if (a < lo || a > hi) return false;
    return n <= hi - a;
}

std::string arena_explain(uintptr_t a, size_t n) {
    State& s = st();
    std::lock_guard<std::mutex> g(s.mu);
    char buf[256];
    auto it = s.allocs.upper_bound(a);
    // The allocation at or below a, and the one above: name the nearer.
    const bool has_below = it != s.allocs.begin();
    auto below = has_below ? std::prev(it) : s.allocs.end();
    if (has_below && a < below->first + below->second.size) {
        if (below->second.live)
            snprintf(buf, sizeof buf, "%zu bytes at offset %zu run past the end of a %zu-byte allocation at 0x%lx",
                     n, size_t(a - below->first), below->second.size, (unsigned long)below->first);
        else
            snprintf(buf, sizeof buf, "use after free: offset %zu of a %zu-byte allocation at 0x%lx that was freed",
                     size_t(a - below->first), below->second.size, (unsigned long)below->first);
        return buf;
    }
    uintptr_t dist_below = has_below ? a - (below->first + below->second.size) : ~uintptr_t(0);
    uintptr_t dist_above = it != s.allocs.end() ? it->first - a : ~uintptr_t(0);
    if (dist_below == ~uintptr_t(0) && dist_above == ~uintptr_t(0))
        return "no device memory is allocated";
    if (dist_below <= dist_above) {
        snprintf(buf, sizeof buf, "%zu bytes past the end of a %zu-byte %sallocation at 0x%lx",
                 size_t(dist_below), below->second.size, below->second.live ? "" : "freed ",
                 (unsigned long)below->first);
    } else {
        snprintf(buf, sizeof buf, "%zu bytes before a %zu-byte %sallocation at 0x%lx",
                 size_t(dist_above), it->second.size, it->second.live ? "" : "freed ",
                 (unsigned long)it->first);
    }
    return buf;
}

}  // namespace emu
