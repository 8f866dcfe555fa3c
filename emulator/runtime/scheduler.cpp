/*
 * scheduler.cpp: a launch. Checks the configuration as the driver would, then runs the
 * grid's blocks on a pool of worker threads (the calling thread is one of them); each
 * worker runs one block at a time, one fiber per CUDA thread, switching fibers only where
 * a thread must wait (a barrier, a warp operation, a spin wait) or exits.
 * A cooperative launch (blocks that wait on each other) gets one OS thread per block so
 * that every block is resident at once.
 */
#include <dlfcn.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include "internal.h"

namespace emu {

thread_local Worker* tls_worker __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

constexpr size_t kStaticSmemMax = 48 * 1024;
constexpr size_t kSmemOptInMax = 232448;  // 227 KiB
constexpr size_t kDynReserve = 232448;

// The worker record of this OS thread (made on first use, kept for the thread's life).
Worker& this_worker() {
    static thread_local std::unique_ptr<Worker> w;
    if (!w) {
        w = std::make_unique<Worker>();
        static std::atomic<unsigned> n{0};
        w->index = n++;
    }
    return *w;
}

std::string u3s(unsigned x, unsigned y, unsigned z) {
    char b[80];
    snprintf(b, sizeof b, "(%u,%u,%u)", x, y, z);
    return b;
}

// Points the worker's shared-memory view at launch L's module and sizes its buffers.
bool worker_begin(Worker& w, Launch& L, std::string* err) {
    w.module = L.module;
    char* tls = nullptr;
    for (auto& e : w.tls_blocks)
        if (e.first == L.module) tls = e.second;
    if (tls == nullptr && L.module->tls_size > 0) {
        L.module->tls_anchor();  // makes this thread's TLS block exist
        void* p = nullptr;
        if (dlinfo(L.module->handle, RTLD_DI_TLS_DATA, &p) != 0 || p == nullptr) {
            *err = "cannot find the shared memory (TLS block) of " + L.module->path;
            return false;
        }
        tls = static_cast<char*>(p);
        w.tls_blocks.emplace_back(L.module, tls);
    }
    w.smem_lo = tls;
    w.smem_hi = tls + L.module->tls_size;
    if (w.cells_static_n < L.module->tls_size) {
        if (w.cells_static) munmap(w.cells_static, w.cells_static_n * sizeof(SmemCell));
        w.cells_static_n = L.module->tls_size;
        w.cells_static = static_cast<SmemCell*>(mmap(nullptr, w.cells_static_n * sizeof(SmemCell),
                                                     PROT_READ | PROT_WRITE,
                                                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    }
    w.dyn_size = L.dyn_smem;
    if (L.dyn_smem > 0 && w.dyn == nullptr) {
        w.dyn = static_cast<char*>(mmap(nullptr, kDynReserve, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
        w.cells_dyn = static_cast<SmemCell*>(mmap(nullptr, kDynReserve * sizeof(SmemCell),
                                                  PROT_READ | PROT_WRITE,
                                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    }
    const unsigned nthreads = L.block.x * L.block.y * L.block.z;
    if (w.stacks.slots < nthreads) w.stacks.ensure(std::max(nthreads, 256u));
    w.fiber_ptrs.resize(std::max<size_t>(w.fiber_ptrs.size(), nthreads));
    const unsigned nwarps = (nthreads + 31) / 32;
    if (w.warps.size() < nwarps) w.warps.resize(nwarps);
    return true;
}

// Runs block `linear` of L on worker w; returns when it finished or failed.
void run_block(Worker& w, Launch& L, uint64_t linear) {
    Block& b = w.block;
    b.launch = &L;
    const Dim3 g = L.grid;
    b.idx = emu_u3{unsigned(linear % g.x), unsigned((linear / g.x) % g.y),
                   unsigned(linear / (uint64_t(g.x) * g.y))};
    b.nthreads = L.block.x * L.block.y * L.block.z;
    b.nwarps = (b.nthreads + 31) / 32;
    b.live = b.nthreads;
    b.exited = 0;
    b.bar_arrived = 0;
    b.bar_divergent = false;
    b.failed = false;
    b.fibers = w.fiber_ptrs.data();
    b.warps = w.warps.data();
    const emu_u3 bdim{L.block.x, L.block.y, L.block.z}, gdim{g.x, g.y, g.z};
    for (unsigned t = 0; t < b.nthreads; ++t) {
        Fiber* f = w.stacks.fiber(t);
        f->hdr.thread_idx = emu_u3{t % bdim.x, (t / bdim.x) % bdim.y, t / (bdim.x * bdim.y)};
        f->hdr.block_idx = b.idx;
        f->hdr.block_dim = bdim;
        f->hdr.grid_dim = gdim;
        f->hdr.dyn_smem = w.dyn;
        f->block = &b;
        f->tid = t;
        f->lane = t % 32;
        f->warp = t / 32;
        f->state = kReady;
        f->wait_site = nullptr;
        f->n_pending = 0;
        f->cp_group = 0;
        f->pdl_pre_wait = L.programmatic;
        fiber_init(f);
        b.fibers[t] = f;
    }
    for (unsigned i = 0; i < b.nwarps; ++i) {
        WarpState& ws = b.warps[i];
        ws.sync_count = 1;
        ws.full_sync = 0;
        ws.n_groups = 0;
        ws.exited_mask = 0;
        const unsigned in_warp = std::min(32u, b.nthreads - i * 32);
        ws.exist_mask = in_warp == 32 ? 0xffffffffu : ((1u << in_warp) - 1);
        if (ws.pair) memset(ws.pair, 0, 32 * 32 * sizeof(uint32_t));
    }
    if (w.smem_hi > w.smem_lo) memset(w.smem_lo, 0xFF, w.smem_hi - w.smem_lo);
    if (w.dyn_size > 0) memset(w.dyn, 0xFF, w.dyn_size);
    race_block_start(w);
    b.current = b.fibers[0];
    emu_fiber_switch(&b.sched_sp, b.fibers[0]->sp);
    b.current = nullptr;
}

void run_blocks(Worker& w, Launch& L) {
    std::string err;
    Worker* saved = tls_worker;
    tls_worker = &w;
    if (!worker_begin(w, L, &err)) {
        std::lock_guard<std::mutex> g(L.error_mu);
        if (L.error == 0) {
            L.error = kCudaErrorLaunchFailed;
            L.report = "kernel " + std::string(L.kernel->name) + ": " + err;
        }
        L.failed = true;
    } else {
        for (;;) {
            if (L.failed.load(std::memory_order_relaxed)) break;
            const uint64_t i = L.next.fetch_add(1);
            if (i >= L.nblocks) break;
            run_block(w, L, i);
        }
    }
    w.block.launch = nullptr;
    tls_worker = saved;
}

// The pool of helper threads (worker_count() - 1 of them; the caller is the last worker).
struct Pool {
    std::mutex mu;
    std::condition_variable wake, done;
    Launch* job = nullptr;
    uint64_t job_id = 0;
    unsigned busy = 0;
    std::vector<std::thread> threads;
};

Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: helpers may outlive static destructors
    return *p;
}

void helper_main() {
    Pool& p = pool();
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(p.mu);
    for (;;) {
        p.wake.wait(lk, [&] { return p.job_id != seen; });
        seen = p.job_id;
        Launch* L = p.job;
        lk.unlock();
        run_blocks(this_worker(), *L);
        lk.lock();
        if (--p.busy == 0) p.done.notify_all();
    }
}

std::mutex g_launch_mu;  // one grid at a time (the pool runs one job)

std::string validate(const KernelInfo& k, Dim3 grid, Dim3 block, size_t dyn,
                     const LaunchOptions& opt) {
    char buf[256];
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
        return "a grid or block dimension is zero: grid " + u3s(grid.x, grid.y, grid.z) +
               " block " + u3s(block.x, block.y, block.z);
    if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        return "grid " + u3s(grid.x, grid.y, grid.z) + " exceeds (2147483647,65535,65535)";
    if (block.x > 1024 || block.y > 1024 || block.z > 64)
        return "block " + u3s(block.x, block.y, block.z) + " exceeds (1024,1024,64)";
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    const unsigned limit = k.max_threads == 0 ? 1024 : std::min(1024u, k.max_threads);
    if (threads > limit) {
        snprintf(buf, sizeof buf, "block of %llu threads exceeds %s%u", (unsigned long long)threads,
                 k.max_threads ? "the kernel's __launch_bounds__ " : "", limit);
        return buf;
    }
    if (k.static_smem > kStaticSmemMax) {
        snprintf(buf, sizeof buf, "static shared memory %zu bytes exceeds 48 KiB", k.static_smem);
        return buf;
    }
    const size_t dyn_limit = std::min(opt.max_dynamic_smem, kSmemOptInMax);
    if (dyn > dyn_limit) {
        snprintf(buf, sizeof buf,
                 "dynamic shared memory %zu bytes exceeds %zu (%s)", dyn, dyn_limit,
                 opt.max_dynamic_smem <= 48 * 1024
                     ? "48 KiB without CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES"
                     : "the function's MAX_DYNAMIC_SHARED_SIZE_BYTES");
        return buf;
    }
    if (dyn + k.static_smem > kSmemOptInMax) {
        snprintf(buf, sizeof buf, "static %zu + dynamic %zu bytes of shared memory exceed 227 KiB",
                 k.static_smem, dyn);
        return buf;
    }
    return "";
}

}  // namespace

unsigned worker_count() {
    static unsigned n = [] {
        if (const char* e = getenv("TACHYON_EMU_WORKERS")) {
            const int v = atoi(e);
            if (v >= 1 && v <= 256) return unsigned(v);
        }
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0) return unsigned(std::max(1, CPU_COUNT(&set)));
        return std::max(1u, std::thread::hardware_concurrency());
    }();
    return n;
}

LaunchResult launch(const KernelInfo& k, Dim3 grid, Dim3 block, size_t dyn_smem, void** params,
                    const LaunchOptions& opt) {
    const std::string bad = validate(k, grid, block, dyn_smem, opt);
    if (!bad.empty()) return {kCudaErrorInvalidValue, "kernel " + std::string(k.name) + ": launch refused: " + bad};
    std::string err;
    const Module* m = module_of(k.fn, &err);
    if (m == nullptr) return {kCudaErrorInvalidValue, "kernel " + std::string(k.name) + ": " + err};
    arena_init();

    std::lock_guard<std::mutex> serial(g_launch_mu);
    Launch L;
    L.kernel = &k;
    L.module = m;
    L.grid = grid;
    L.block = block;
    L.dyn_smem = dyn_smem;
    L.params = params;
    L.programmatic = opt.programmatic;
    L.nblocks = uint64_t(grid.x) * grid.y * grid.z;
    const bool coop = opt.cooperative || (k.flags & kKernelCooperative);
    if (coop && L.nblocks > 2048)
        return {kCudaErrorInvalidValue, "kernel " + std::string(k.name) +
                                            ": cooperative grid of more than 2048 blocks cannot be co-resident"};
    pdl_launch_begin(k.name, opt.programmatic);

    if (coop && L.nblocks > 1) {
        // One OS thread per block, all resident: spin waits yield the CPU to the others.
        std::vector<std::thread> ts;
        ts.reserve(L.nblocks);
        for (uint64_t i = 0; i < L.nblocks; ++i) ts.emplace_back([&L] { run_blocks(this_worker(), L); });
        for (auto& t : ts) t.join();
    } else {
        const unsigned want = unsigned(std::min<uint64_t>(worker_count(), L.nblocks));
        Pool& p = pool();
        unsigned helpers = 0;
        if (want > 1) {
            std::lock_guard<std::mutex> g(p.mu);
            while (p.threads.size() < worker_count() - 1) {
                p.threads.emplace_back(helper_main);
                p.threads.back().detach();
            }
            helpers = want - 1;
            p.job = &L;
            p.busy = unsigned(p.threads.size());
            p.job_id++;
            p.wake.notify_all();
        }
        run_blocks(this_worker(), L);
        if (want > 1) {
            std::unique_lock<std::mutex> lk(p.mu);
            p.done.wait(lk, [&] { return p.busy == 0; });
        }
        (void)helpers;
    }
    pdl_launch_end();
    if (L.error != 0) return {L.error, L.report};
    return {kCudaSuccess, ""};
}

}  // namespace emu
