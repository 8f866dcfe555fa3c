/*
 * race.cpp: shared-memory race detection. Two threads of a block race when they touch the
 * same byte of shared memory in one barrier interval, at least one writes, not both
 * atomically, and nothing orders them: a __syncthreads orders everything (it starts a new
 * generation); within a warp a warp-level sync (__syncwarp, a shuffle, a vote) whose mask
 * names both lanes orders what came before it (Volta's independent thread scheduling gives
 * no implicit warp-synchronous order).
 *
 * Per byte the shadow keeps the last write and a summary of the reads of the interval:
 * the first reader, and whether there were more (and from more than one warp). Exact for
 * one reader or one writer; with several readers a later write by a thread of the same
 * warp is taken as ordered only after a full-warp sync (a partial-mask sync between the
 * writer and each reader is not tracked for reader sets), and ordering that passes through
 * a third lane (a syncs with c, c with b) is not tracked for partial masks: both can only
 * produce a report where a program relies on such orders, never miss a plain race.
 */
#include <cstdio>

#include "internal.h"

namespace emu {

namespace {

uint32_t site_off(const Worker& w, const void* site) {
    const uintptr_t s = reinterpret_cast<uintptr_t>(site);
    return w.module && s >= w.module->lo ? uint32_t(s - w.module->lo) : 0;
}

const void* site_ptr(const Worker& w, uint32_t off) {
    return w.module ? reinterpret_cast<const void*>(w.module->lo + off) : nullptr;
}

// Has thread b (current, its warp's sync count now) been ordered after an access by thread
// a made when a's warp had sync count s?
bool ordered(const Block& blk, unsigned a, uint32_t s, unsigned b) {
    if (a / 32 != b / 32) return false;
    const WarpState& ws = blk.warps[b / 32];
    if (ws.full_sync > s) return true;
    return ws.pair != nullptr && ws.pair[(a % 32) * 32 + (b % 32)] > s;
}

[[noreturn]] void report(Worker& w, uintptr_t a, const char* kind, unsigned other, uint32_t other_site,
                         bool other_writes, bool write, const void* site, bool many) {
    const Block& b = w.block;
    const bool in_static = a >= reinterpret_cast<uintptr_t>(w.smem_lo) && a < reinterpret_cast<uintptr_t>(w.smem_hi);
    const uintptr_t off = a - reinterpret_cast<uintptr_t>(in_static ? w.smem_lo : w.dyn);
    char buf[160];
    snprintf(buf, sizeof buf, "shared-memory race (%s) on byte 0x%lx (%s shared offset %lu): ", kind,
             (unsigned long)a, in_static ? "static" : "dynamic", (unsigned long)off);
    std::string msg = block_name(b) + ": " + buf + thread_name(b, other) + (many ? " (and others)" : "") +
                      (other_writes ? " wrote it at " : " read it at ") +
                      describe_site(site_ptr(w, other_site)) + ", then " + thread_name(b, b.current->tid) +
                      (write ? " writes it at " : " reads it at ") + describe_site(site) +
                      ", with no __syncthreads (or __syncwarp between lanes of one warp) in between";
    fail_kernel(kCudaErrorLaunchFailed, msg);
}

}  // namespace

void race_block_start(Worker& w) { w.gen++; }

void race_check(Worker& w, uintptr_t a, size_t n, bool write, bool atomic, const void* site) {
    Block& b = w.block;
    const Fiber* f = b.current;
    const unsigned t = f->tid;
    const uint32_t gen = w.gen;
    const uint32_t sync = b.warps[f->warp].sync_count;
    const bool in_static = a >= reinterpret_cast<uintptr_t>(w.smem_lo) && a < reinterpret_cast<uintptr_t>(w.smem_hi);
    SmemCell* cells = in_static ? w.cells_static + (a - reinterpret_cast<uintptr_t>(w.smem_lo))
                                : w.cells_dyn + (a - reinterpret_cast<uintptr_t>(w.dyn));
    const uint32_t so = site_off(w, site);
    for (size_t i = 0; i < n; ++i) {
        SmemCell& c = cells[i];
        // Against the last write.
        if (c.wgen == gen && c.wtid != t && !(c.watomic && atomic) && !ordered(b, c.wtid, c.wsync, t)) {
            report(w, a + i, write ? "write after write" : "read after write", c.wtid, c.wsite, true, write,
                   site, false);
        }
        if (write) {
            // Against the reads of this interval.
            if (c.rgen == gen) {
                bool race;
                if (c.rflags & kReadersMany) {
                    race = (c.rflags & kReadersManyWarps) || c.rtid / 32 != t / 32 ||
                           b.warps[t / 32].full_sync <= c.rsync;
                } else {
                    race = c.rtid != t && !ordered(b, c.rtid, c.rsync, t);
                }
                if (race && !(atomic && (c.rflags & 4)))
                    report(w, a + i, "write after read", c.rtid, c.rsite, false, true, site,
                           (c.rflags & kReadersMany) != 0);
            }
            c.wgen = gen;
            c.wtid = uint16_t(t);
            c.wsync = sync;
            c.watomic = atomic;
            c.wsite = so;
            if (atomic) {
                // An atomic is also a read: later plain writes by others race with it.
                c.rgen = gen;
                c.rtid = uint16_t(t);
                c.rsync = sync;
                c.rsite = so;
                c.rflags = 4;  // atomic readers only
            }
        } else {
            if (c.rgen != gen) {
                c.rgen = gen;
                c.rtid = uint16_t(t);
                c.rsync = sync;
                c.rsite = so;
                c.rflags = 0;
            } else if (c.rtid != t) {
                c.rflags = uint8_t((c.rflags & ~4) | kReadersMany | (c.rtid / 32 != t / 32 ? kReadersManyWarps : 0));
                c.rsync = sync > c.rsync ? sync : c.rsync;
            } else {
                c.rsync = sync;
                c.rflags &= ~4;
            }
        }
    }
}

}  // namespace emu
