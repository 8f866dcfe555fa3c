/*
 * module.cpp: what the runtime knows of a kernels library: where it is mapped (its own
 * constants are legal to read), and its TLS block, which holds every __shared__ variable
 * of its kernels (the prelude makes __shared__ `static thread_local`, so each worker
 * thread has its own copy: one block's shared memory).
 */
#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "internal.h"

namespace emu {

namespace {

std::mutex g_mu;
std::map<std::string, std::unique_ptr<Module>> g_by_path;
// Ranges of every module seen, read without the lock by the hooks (append-only array).
constexpr int kMaxModules = 64;
std::atomic<int> g_n_ranges{0};
uintptr_t g_ranges[kMaxModules][2];

struct PhdrQuery {
    uintptr_t want;  // an address inside the module
    uintptr_t lo = 0, hi = 0;
    size_t tls = 0;
    bool found = false;
};

int phdr_cb(dl_phdr_info* info, size_t, void* data) {
    auto* q = static_cast<PhdrQuery*>(data);
    uintptr_t lo = ~uintptr_t(0), hi = 0;
    size_t tls = 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type == PT_LOAD) {
            const uintptr_t s = info->dlpi_addr + ph.p_vaddr;
            lo = std::min(lo, s);
            hi = std::max(hi, uintptr_t(s + ph.p_memsz));
        } else if (ph.p_type == PT_TLS) {
            tls = ph.p_memsz;
        }
    }
    if (q->want >= lo && q->want < hi) {
        q->lo = lo;
        q->hi = hi;
        q->tls = tls;
        q->found = true;
        return 1;
    }
    return 0;
}

}  // namespace

const Module* module_of(const void* fn, std::string* err) {
    Dl_info di;
    if (dladdr(fn, &di) == 0 || di.dli_fname == nullptr) {
        *err = "the kernel's code is in no loaded library";
        return nullptr;
    }
    std::lock_guard<std::mutex> g(g_mu);
    auto it = g_by_path.find(di.dli_fname);
    if (it != g_by_path.end()) return it->second.get();
    auto m = std::make_unique<Module>();
    m->path = di.dli_fname;
    m->handle = dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (m->handle == nullptr) {
        *err = std::string("cannot reopen ") + di.dli_fname + ": " + dlerror();
        return nullptr;
    }
    m->tls_anchor = reinterpret_cast<void* (*)()>(dlsym(m->handle, "tachyon_emu_tls_anchor"));
    PhdrQuery q;
    q.want = reinterpret_cast<uintptr_t>(fn);
    dl_iterate_phdr(phdr_cb, &q);
    if (!q.found) {
        *err = std::string("no program headers for ") + di.dli_fname;
        return nullptr;
    }
    m->lo = q.lo;
    m->hi = q.hi;
    m->tls_size = q.tls;
    if (m->tls_size > 0 && m->tls_anchor == nullptr) {
        *err = m->path + " has __shared__ variables but no tachyon_emu_tls_anchor (not built by emulator/build.sh)";
        return nullptr;
    }
    const int n = g_n_ranges.load();
    if (n < kMaxModules) {
        g_ranges[n][0] = m->lo;
        g_ranges[n][1] = m->hi;
        g_n_ranges.store(n + 1, std::memory_order_release);
    }
    const Module* out = m.get();
    g_by_path.emplace(m->path, std::move(m));
    return out;
}

bool in_any_module(uintptr_t a) {
    const int n = g_n_ranges.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i)
        if (a >= g_ranges[i][0] && a < g_ranges[i][1]) return true;
    return false;
}

// addr2line's "function\nfile:line" for off in lib (reports only: it runs a process).
std::string addr2line(const char* lib, uintptr_t off) {
    if (getenv("TACHYON_EMU_NO_SYMBOLIZE") != nullptr) return "";
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "addr2line -f -C -e '%s' 0x%lx 2>/dev/null", lib, (unsigned long)off);
    FILE* f = popen(cmd, "r");
    if (f == nullptr) return "";
    char fn[512] = {0}, line[512] = {0};
    if (fgets(fn, sizeof fn, f) == nullptr || fgets(line, sizeof line, f) == nullptr) {
        pclose(f);
        return "";
    }
    pclose(f);
    fn[strcspn(fn, "\n")] = 0;
    line[strcspn(line, "\n")] = 0;
    if (strncmp(line, "??", 2) == 0) return "";
    std::string name(fn);
    if (name.size() > 100) name = name.substr(0, 97) + "...";
    const char* base = strrchr(line, '/');
    return std::string(base ? base + 1 : line) + " in " + name;
}

std::string describe_site(const void* pc) {
    if (pc == nullptr) return "?";
    Dl_info di;
    char buf[1024];
    // pc is a return address: the call is just before it.
    const void* at = static_cast<const char*>(pc) - 1;
    if (dladdr(at, &di) == 0 || di.dli_fname == nullptr) {
        snprintf(buf, sizeof buf, "%p", pc);
        return buf;
    }
    const char* lib = strrchr(di.dli_fname, '/');
    lib = lib ? lib + 1 : di.dli_fname;
    const uintptr_t off = reinterpret_cast<uintptr_t>(at) - reinterpret_cast<uintptr_t>(di.dli_fbase);
    const std::string src = addr2line(di.dli_fname, off);
    if (!src.empty()) {
        snprintf(buf, sizeof buf, "%s (%s+0x%lx)", src.c_str(), lib, (unsigned long)off);
    } else {
        snprintf(buf, sizeof buf, "%s+0x%lx", lib, (unsigned long)off);
    }
    return buf;
}

}  // namespace emu
