/*
 * report.cpp: names of threads and sets of threads in reports, and failing a kernel.
 */
#include <cstdio>
#include <cstdlib>

#include "internal.h"

namespace emu {

static std::string u3(emu_u3 v) {
    char buf[64];
    snprintf(buf, sizeof buf, "(%u,%u,%u)", v.x, v.y, v.z);
    return buf;
}

static emu_u3 thread_xyz(const Block& b, unsigned tid) {
    const Dim3 d = b.launch->block;
    return emu_u3{tid % d.x, (tid / d.x) % d.y, tid / (d.x * d.y)};
}

std::string thread_name(const Block& b, unsigned tid) {
    return "thread " + u3(thread_xyz(b, tid));
}

std::string block_name(const Block& b) {
    return "kernel " + std::string(b.launch->kernel->name) + " block " + u3(b.idx);
}

std::string thread_list(const Block& b, const std::vector<unsigned>& tids) {
    // Linear ids as ranges; a single thread also as (x,y,z) when the block is not 1-D.
    std::string out;
    size_t i = 0;
    int shown = 0;
    while (i < tids.size()) {
        size_t j = i;
        while (j + 1 < tids.size() && tids[j + 1] == tids[j] + 1) ++j;
        if (!out.empty()) out += ", ";
        char buf[64];
        if (j == i) snprintf(buf, sizeof buf, "%u", tids[i]);
        else snprintf(buf, sizeof buf, "%u-%u", tids[i], tids[j]);
        out += buf;
        if (++shown == 12 && j + 1 < tids.size()) {
            out += ", ...";
            break;
        }
        i = j + 1;
    }
    const Dim3 d = b.launch->block;
    if (tids.size() == 1 && (d.y > 1 || d.z > 1)) out += " " + u3(thread_xyz(b, tids[0]));
    return "[" + out + "]";
}

std::string where_now() {
    Worker* w = tls_worker;
    if (w == nullptr || w->block.current == nullptr) return "outside any kernel";
    const Block& b = w->block;
    return block_name(b) + " " + thread_name(b, b.current->tid);
}

void fail_kernel(int error, const std::string& what) {
    Worker* w = tls_worker;
    if (w == nullptr || w->block.launch == nullptr) {
        fprintf(stderr, "emulated-gpu: %s (outside a kernel)\n", what.c_str());
        abort();
    }
    Block& b = w->block;
    Launch* L = b.launch;
    {
        std::lock_guard<std::mutex> g(L->error_mu);
        if (L->error == 0) {
            L->error = error;
            L->report = what;
        }
    }
    L->failed.store(true);
    b.failed = true;
    Fiber* self = b.current;
    // Leave this fiber for good: the block's other fibers are abandoned with it.
    void* dead;
    emu_fiber_switch(self != nullptr ? &self->sp : &dead, b.sched_sp);
    abort();  // never resumed
}

}  // namespace emu
