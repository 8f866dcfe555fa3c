/*
 * sync.cpp: what makes a CUDA thread wait: the block barrier, warp operations (value
 * exchange among the lanes of a mask), spin waits, and thread exit; and the reports when
 * the threads of a block cannot all make progress (a divergent barrier, a lane that a warp
 * operation waits for but that exited or waits elsewhere).
 */
#include <sched.h>

#include <cstdio>
#include <cstring>

#include "internal.h"

namespace emu {

namespace {

const char* kind_name(int kind) {
    static const char* const names[EMU_WARP_KINDS] = {
        "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
        "__any_sync", "__all_sync", "__syncwarp", "__reduce_add_sync", "__reduce_add_sync",
        "__reduce_min_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_max_sync",
        "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync", "__match_any_sync",
        "warp-wide matrix operation (mma / ldmatrix)"};
    return kind >= 0 && kind < EMU_WARP_KINDS ? names[kind] : "warp operation";
}

std::string hex(unsigned v) {
    char b[16];
    snprintf(b, sizeof b, "0x%08x", v);
    return b;
}

std::vector<unsigned> lanes_to_tids(unsigned warp, unsigned mask) {
    std::vector<unsigned> v;
    for (unsigned l = 0; l < 32; ++l)
        if (mask & (1u << l)) v.push_back(warp * 32 + l);
    return v;
}

// A barrier's source location by its last two path components, "kernels/gemv.cu:120".
std::string barrier_site(const char* file, unsigned line) {
    if (file == nullptr) return "?";
    const char* start = file;
    int slashes = 0;
    for (const char* p = file + strlen(file); p > file; --p)
        if (p[-1] == '/' && ++slashes == 2) {
            start = p;
            break;
        }
    return std::string(start) + ":" + std::to_string(line);
}

bool same_barrier(const char* fa, unsigned la, const char* fb, unsigned lb) {
    return la == lb && (fa == fb || (fa != nullptr && fb != nullptr && strcmp(fa, fb) == 0));
}

// What thread t is doing, for a deadlock report.
std::string doing(const Block& b, unsigned t) {
    const Fiber* f = b.fibers[t];
    switch (f->state) {
        case kExited: return "exited";
        case kWaitBarrier: return "waits at __syncthreads at " + barrier_site(f->bar_file, f->bar_line);
        case kWaitWarp:
            return std::string("waits in ") + kind_name(f->wait_kind) + "(mask " + hex(f->wait_mask) +
                   ") at " + describe_site(f->wait_site);
        default: return "are running";
    }
}

// Groups the block's threads by what they do: "threads [..] <doing>; threads [..] ...".
std::string block_state(const Block& b) {
    std::vector<std::pair<std::string, std::vector<unsigned>>> groups;
    for (unsigned t = 0; t < b.nthreads; ++t) {
        const std::string d = doing(b, t);
        bool placed = false;
        for (auto& g : groups)
            if (g.first == d) {
                g.second.push_back(t);
                placed = true;
                break;
            }
        if (!placed) groups.push_back({d, {t}});
    }
    std::string out;
    for (auto& g : groups) {
        if (!out.empty()) out += "; ";
        out += "threads " + thread_list(b, g.second) + " " + g.first;
    }
    return out;
}

[[noreturn]] void deadlock(Block& b) {
    std::string why;
    // A warp operation whose lanes cannot all arrive.
    for (unsigned w = 0; w < b.nwarps && why.empty(); ++w) {
        const WarpState& ws = b.warps[w];
        for (int i = 0; i < ws.n_groups; ++i) {
            const WarpState::Group& g = ws.groups[i];
            const unsigned missing = g.mask & ~g.arrived;
            why = std::string(kind_name(g.kind)) + "(mask " + hex(g.mask) + ") at " +
                  describe_site(g.site) + ": threads " + thread_list(b, lanes_to_tids(w, g.arrived)) +
                  " wait for threads " + thread_list(b, lanes_to_tids(w, missing)) + ", which never arrive";
            break;
        }
    }
    if (why.empty()) why = "threads wait for each other";
    fail_kernel(kCudaErrorLaunchFailed,
                block_name(b) + ": deadlock: " + why + " (" + block_state(b) + ")");
}

// Everything at a completed barrier: checks the sites agree, then releases the block.
void barrier_complete(Block& b, Fiber* self) {
    if (b.bar_divergent) {
        fail_kernel(kCudaErrorLaunchFailed,
                    block_name(b) + ": divergent barrier: the threads reach different __syncthreads (" +
                        block_state(b) + "; " + thread_name(b, self->tid) + " at " +
                        barrier_site(self->bar_file, self->bar_line) + ")");
    }
    for (unsigned t = 0; t < b.nthreads; ++t) b.fibers[t]->state = kReady;
    b.bar_arrived = 0;
    tls_worker->gen++;  // a new barrier interval: earlier shared accesses are ordered
}

}  // namespace

void block_yield(Fiber* self) {
    Block& b = *self->block;
    const unsigned n = b.nthreads;
    unsigned i = self->tid;
    for (unsigned k = 0; k < n; ++k) {
        i = i + 1 == n ? 0 : i + 1;
        Fiber* f = b.fibers[i];
        if (f->state == kReady) {
            if (f == self) return;
            b.current = f;
            emu_fiber_switch(&self->sp, f->sp);
            b.current = self;
            return;
        }
    }
    deadlock(b);
}

void warp_sync_completed(Block& b, unsigned warp, unsigned mask) {
    WarpState& ws = b.warps[warp];
    ws.sync_count++;
    if ((mask & ws.exist_mask) == ws.exist_mask) {
        ws.full_sync = ws.sync_count;
        return;
    }
    if (ws.pair == nullptr) ws.pair = static_cast<uint32_t*>(calloc(32 * 32, sizeof(uint32_t)));
    for (unsigned a = 0; a < 32; ++a) {
        if (!(mask & (1u << a))) continue;
        for (unsigned c = 0; c < 32; ++c)
            if (mask & (1u << c)) ws.pair[a * 32 + c] = ws.sync_count;
    }
}

extern "C" [[noreturn]] void emu_fiber_main(Fiber* f) {
    Block& b = *f->block;
    const KernelInfo* k = b.launch->kernel;
    k->call(k->fn, b.launch->params);
    // The thread returned; its copies in flight still land.
    cp_async_land(f, ~0u);
    f->state = kExited;
    b.live--;
    b.exited++;
    WarpState& ws = b.warps[f->warp];
    ws.exited_mask |= 1u << f->lane;
    if (b.bar_arrived > 0) {
        fail_kernel(kCudaErrorLaunchFailed,
                    block_name(b) + ": divergent barrier: " + thread_name(b, f->tid) +
                        " exited while others wait at a barrier (" + block_state(b) + ")");
    }
    for (int i = 0; i < ws.n_groups; ++i) {
        const WarpState::Group& g = ws.groups[i];
        if (g.mask & (1u << f->lane)) {
            fail_kernel(kCudaErrorLaunchFailed,
                        block_name(b) + ": " + thread_name(b, f->tid) + " exited, but threads " +
                            thread_list(b, lanes_to_tids(f->warp, g.arrived)) + " wait for it in " +
                            kind_name(g.kind) + "(mask " + hex(g.mask) + ") at " + describe_site(g.site));
        }
    }
    if (b.live == 0) {
        emu_fiber_switch(&f->sp, b.sched_sp);  // the block is done
        __builtin_unreachable();
    }
    block_yield(f);  // f is not ready: never comes back
    __builtin_unreachable();
}

static int barrier(const char* file, unsigned line, const void* site, int pred, int how) {
    Worker* w = tls_worker;
    Block& b = w->block;
    Fiber* f = b.current;
    if (b.exited > 0) {
        fail_kernel(kCudaErrorLaunchFailed,
                    block_name(b) + ": divergent barrier: __syncthreads at " + barrier_site(file, line) +
                        " reached by " + thread_name(b, f->tid) + " but some threads exited (" +
                        block_state(b) + ")");
    }
    if (b.bar_arrived == 0) {
        b.bar_site = site;
        b.bar_file = file;
        b.bar_line = line;
        b.bar_count = 0;
        b.bar_and = 1;
        b.bar_or = 0;
    } else if (!same_barrier(file, line, b.bar_file, b.bar_line)) {
        b.bar_divergent = true;
    }
    f->wait_site = site;
    f->bar_file = file;
    f->bar_line = line;
    b.bar_count += pred != 0;
    b.bar_and &= pred != 0;
    b.bar_or |= pred != 0;
    f->state = kWaitBarrier;
    if (++b.bar_arrived == b.nthreads) {
        barrier_complete(b, f);
    } else {
        block_yield(f);
    }
    return how == 0 ? b.bar_count : how == 1 ? b.bar_and : b.bar_or;
}

extern "C" void emu_syncthreads_at(const char* file, unsigned line) {
    barrier(file, line, __builtin_return_address(0), 0, 0);
}

extern "C" int emu_syncthreads_pred_at(int pred, int how, const char* file, unsigned line) {
    return barrier(file, line, __builtin_return_address(0), pred, how);
}

extern "C" unsigned emu_activemask(void) {
    Worker* w = tls_worker;
    Block& b = w->block;
    const WarpState& ws = b.warps[b.current->warp];
    return ws.exist_mask & ~ws.exited_mask;
}

extern "C" void emu_yield(void) {
    Worker* w = tls_worker;
    if (w == nullptr || w->block.current == nullptr) return;
    Fiber* f = w->block.current;
    f->state = kReady;
    Block& b = w->block;
    // Another ready fiber of this block runs first; if there is none, let other blocks'
    // threads (cooperative launches) have the CPU.
    const unsigned n = b.nthreads;
    unsigned i = f->tid;
    for (unsigned k = 0; k + 1 < n; ++k) {
        i = i + 1 == n ? 0 : i + 1;
        if (b.fibers[i]->state == kReady) {
            block_yield(f);
            return;
        }
    }
    sched_yield();
}

// One lane's result of a completed group.
static uint64_t lane_result(Block& b, unsigned warp, const WarpState::Group& g, unsigned lane) {
    const unsigned w = g.width;
    const unsigned base = lane & ~(w - 1);
    const int arg = g.arg[lane];
    unsigned src = lane;
    switch (g.kind) {
        case EMU_WARP_SHFL_IDX: src = base + (unsigned(arg) & (w - 1)); break;
        case EMU_WARP_SHFL_UP: src = lane - unsigned(arg) < base || unsigned(arg) > lane ? lane : lane - arg; break;
        case EMU_WARP_SHFL_DOWN: src = lane + unsigned(arg) >= base + w ? lane : lane + arg; break;
        case EMU_WARP_SHFL_XOR: src = (lane ^ unsigned(arg)) & 31; if (src >= base + w) src = lane; break;
        case EMU_WARP_BALLOT:
        case EMU_WARP_ANY:
        case EMU_WARP_ALL: {
            unsigned bits = 0;
            for (unsigned l = 0; l < 32; ++l)
                if ((g.mask & (1u << l)) && g.val[l] != 0) bits |= 1u << l;
            if (g.kind == EMU_WARP_BALLOT) return bits;
            if (g.kind == EMU_WARP_ANY) return bits != 0;
            return bits == g.mask;
        }
        case EMU_WARP_SYNC:
        case EMU_WARP_EXCHANGE: return 0;
        case EMU_WARP_MATCH_ANY: {
            unsigned bits = 0;
            for (unsigned l = 0; l < 32; ++l)
                if ((g.mask & (1u << l)) && g.val[l] == g.val[lane]) bits |= 1u << l;
            return bits;
        }
        default: {  // reductions over the mask
            uint64_t acc = 0;
            bool first = true;
            for (unsigned l = 0; l < 32; ++l) {
                if (!(g.mask & (1u << l))) continue;
                const uint32_t v = uint32_t(g.val[l]);
                if (first) {
                    acc = v;
                    first = false;
                    continue;
                }
                switch (g.kind) {
                    case EMU_WARP_REDUCE_ADD_U32:
                    case EMU_WARP_REDUCE_ADD_I32: acc = uint32_t(acc + v); break;
                    case EMU_WARP_REDUCE_MIN_U32: acc = std::min<uint32_t>(acc, v); break;
                    case EMU_WARP_REDUCE_MAX_U32: acc = std::max<uint32_t>(acc, v); break;
                    case EMU_WARP_REDUCE_MIN_I32: acc = uint32_t(std::min<int32_t>(int32_t(acc), int32_t(v))); break;
                    case EMU_WARP_REDUCE_MAX_I32: acc = uint32_t(std::max<int32_t>(int32_t(acc), int32_t(v))); break;
                    case EMU_WARP_REDUCE_AND: acc &= v; break;
                    case EMU_WARP_REDUCE_OR: acc |= v; break;
                    default: acc ^= v; break;
                }
            }
            return acc;
        }
    }
    if (!(g.mask & (1u << src))) {
        fail_kernel(kCudaErrorLaunchFailed,
                    block_name(b) + ": " + thread_name(b, warp * 32 + lane) + " in " + kind_name(g.kind) +
                        "(mask " + hex(g.mask) + ") at " + describe_site(g.site) + " reads lane " +
                        std::to_string(src) + ", which is not in the mask");
    }
    return g.val[src];
}

extern "C" uint64_t emu_warp_op(int kind, unsigned mask, uint64_t val, int arg, int width) {
    const void* site = __builtin_return_address(0);
    Worker* w = tls_worker;
    Block& b = w->block;
    Fiber* f = b.current;
    WarpState& ws = b.warps[f->warp];
    const unsigned bit = 1u << f->lane;
    if (!(mask & bit)) {
        fail_kernel(kCudaErrorLaunchFailed,
                    where_now() + ": " + kind_name(kind) + " at " + describe_site(site) + " with mask " +
                        hex(mask) + ", which does not name the calling lane " + std::to_string(f->lane));
    }
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
        fail_kernel(kCudaErrorLaunchFailed, where_now() + ": " + kind_name(kind) + " at " +
                                                describe_site(site) + " with width " +
                                                std::to_string(width) + " (not a power of two <= 32)");
    }
    mask &= ws.exist_mask;  // lanes past the block's last thread do not exist
    if (mask & ws.exited_mask) {
        fail_kernel(kCudaErrorLaunchFailed,
                    where_now() + ": " + kind_name(kind) + "(mask " + hex(mask) + ") at " +
                        describe_site(site) + " names threads " +
                        thread_list(b, lanes_to_tids(f->warp, mask & ws.exited_mask)) + ", which exited");
    }
    WarpState::Group* g = nullptr;
    for (int i = 0; i < ws.n_groups; ++i) {
        WarpState::Group& c = ws.groups[i];
        if (c.mask == mask) {
            g = &c;
            break;
        }
        if (c.mask & mask) {
            fail_kernel(kCudaErrorLaunchFailed,
                        where_now() + ": warp masks disagree: " + kind_name(kind) + " at " +
                            describe_site(site) + " with mask " + hex(mask) + " while threads " +
                            thread_list(b, lanes_to_tids(f->warp, c.arrived)) + " wait in " +
                            kind_name(c.kind) + " at " + describe_site(c.site) + " with mask " + hex(c.mask));
        }
    }
    if (g == nullptr) {
        if (ws.n_groups == 4) {
            fail_kernel(kCudaErrorLaunchFailed, where_now() + ": more than 4 warp operations with disjoint masks in flight");
        }
        g = &ws.groups[ws.n_groups++];
        g->mask = mask;
        g->arrived = 0;
        g->kind = kind;
        g->site = site;
        g->width = width;
    } else if (g->kind != kind) {
        fail_kernel(kCudaErrorLaunchFailed,
                    where_now() + ": lanes of mask " + hex(mask) + " are at different warp operations: " +
                        kind_name(kind) + " at " + describe_site(site) + " and " + kind_name(g->kind) +
                        " at " + describe_site(g->site));
    }
    g->val[f->lane] = val;
    g->arg[f->lane] = arg;
    g->arrived |= bit;
    if (g->arrived == g->mask) {
        // Complete: every lane's result (computed in place), then the group is gone.
        WarpState::Group& done = *g;
        uint64_t mine = 0;
        if (done.kind == EMU_WARP_EXCHANGE) {
            for (unsigned l = 0; l < 32; ++l) {
                if (!(done.mask & (1u << l))) continue;
                const emu_exchange* dst = reinterpret_cast<const emu_exchange*>(done.val[l]);
                for (unsigned k = 0; k < 32; ++k) {
                    if (!(done.mask & (1u << k))) continue;
                    const emu_exchange* src = reinterpret_cast<const emu_exchange*>(done.val[k]);
                    memcpy(static_cast<char*>(dst->out) + size_t(k) * dst->bytes, src->in, dst->bytes);
                }
            }
        }
        Fiber** lanes = b.fibers + f->warp * 32;
        for (unsigned l = 0; l < 32; ++l) {
            if (!(done.mask & (1u << l))) continue;
            const uint64_t r = lane_result(b, f->warp, done, l);
            Fiber* o = lanes[l];
            if (o == f) {
                mine = r;
            } else {
                o->xfer = r;
                o->state = kReady;
            }
        }
        const unsigned done_mask = done.mask;
        if (g != &ws.groups[ws.n_groups - 1]) *g = ws.groups[ws.n_groups - 1];
        ws.n_groups--;
        warp_sync_completed(b, f->warp, done_mask);
        return mine;
    }
    f->state = kWaitWarp;
    f->wait_site = site;
    f->wait_mask = mask;
    f->wait_kind = kind;
    block_yield(f);
    return f->xfer;
}

}  // namespace emu
