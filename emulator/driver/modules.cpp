/*
 * modules.cpp: modules (kernels libraries), functions and their attributes, and kernel
 * launches: validation, fault injection, recording during capture, emu::launch.
 *
 * cuModuleLoadData ignores the image's bytes (tachyon embeds an nvcc fatbin; the emulator
 * runs the host-compiled kernels instead) and loads $TACHYON_EMU_KERNELS, refusing it when
 * the library's stamp differs from the stamp of the sources in $TACHYON_EMU_SOURCE_DIR, so
 * a stale build never runs. cuModuleLoad loads the library at the given path (test kernels
 * such as the planted bugs); it has no source directory to compare with.
 *
 * A module is never dlclose'd: graphs and functions may still point into it, and the
 * lifetime check (capture.cpp) reports that instead of crashing on it.
 */
#include <dlfcn.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <set>

#include "internal.h"

using namespace emu::drv;
using emu::Dim3;

namespace {

std::set<Module*> g_modules;
std::set<Function*> g_functions;

constexpr size_t kMaxOptInSmem = 232448;  // 227 KiB: the H200's opt-in limit per block
// Kernel parameter space of one launch (CUDA 12.1+ on Volta and newer).
constexpr size_t kMaxParamBytes = 32764;
// Bytes copied from a parameter whose size the registry does not say.
constexpr size_t kUnknownParamSnapshot = 4096;

// Each parameter's size from the registry; 0 when a (hand-written) entry does not say.
size_t registry_param_size(const emu::KernelInfo& k, unsigned i) {
    return k.param_sizes == nullptr ? 0 : static_cast<size_t>(k.param_sizes[i]);
}

CUresult load_library(const std::string& path, const char* expected_stamp, CUmodule* out) {
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
        const char* why = dlerror();
        say("cannot load kernels library " + path + ": " + (why ? why : "dlopen failed"));
        return access(path.c_str(), F_OK) == 0 ? CUDA_ERROR_SHARED_OBJECT_INIT_FAILED
                                               : CUDA_ERROR_FILE_NOT_FOUND;
    }
    using RegistryFn = const emu::KernelInfo* (*)(size_t*, const char**);
    auto reg = reinterpret_cast<RegistryFn>(dlsym(h, "tachyon_emu_registry"));
    if (reg == nullptr) {
        say(path + " is not an emulated kernels library (no tachyon_emu_registry)");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    size_t n = 0;
    const char* stamp = nullptr;
    const emu::KernelInfo* infos = reg(&n, &stamp);
    if (expected_stamp != nullptr && (stamp == nullptr || strcmp(stamp, expected_stamp) != 0)) {
        say("refusing stale kernels library " + path + ": built from sources with stamp " +
            (stamp ? stamp : "(none)") + ", the sources now have stamp " + expected_stamp +
            "; rebuild it (scripts/emulated-gpu.sh does)");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    auto* m = new Module;
    m->path = path;
    m->handle = h;
    for (size_t i = 0; i < n; ++i) {
        auto f = std::make_unique<Function>();
        f->info = &infos[i];
        f->module = m;
        for (unsigned p = 0; p < infos[i].num_params; ++p)
            f->param_sizes.push_back(registry_param_size(infos[i], p));
        g_functions.insert(f.get());
        m->functions[infos[i].name] = std::move(f);
    }
    g_modules.insert(m);
    *out = reinterpret_cast<CUmodule>(m);
    return CUDA_SUCCESS;
}

Module* module_of(CUmodule h) {
    auto* m = reinterpret_cast<Module*>(h);
    return g_modules.count(m) != 0 ? m : nullptr;
}

// Copies as many of the n bytes at p as are readable (process_vm_readv stops at the first
// unmapped page instead of faulting).
std::vector<unsigned char> snapshot(const void* p, size_t n) {
    std::vector<unsigned char> out(n, 0);
    iovec local{out.data(), n};
    iovec remote{const_cast<void*>(p), n};
    ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    if (got <= 0) {
        // Fall back to the page the parameter starts in, which must be readable.
        size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        size_t room = page - (reinterpret_cast<uintptr_t>(p) % page);
        got = static_cast<ssize_t>(room < n ? room : n);
        memcpy(out.data(), p, static_cast<size_t>(got));
    }
    out.resize(static_cast<size_t>(got));
    return out;
}

std::string dims(Dim3 d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

CUresult refuse(const Function& f, const std::string& why) {
    say("launch of " + std::string(f.info->name) + " refused: " + why);
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult launch(CUfunction hf, Dim3 grid, Dim3 block, size_t smem, CUstream hs, void** params,
                void** extra, bool cooperative, bool programmatic = false) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Function* f = function_of(hf);
    if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (f->module->unloaded) return CUDA_ERROR_INVALID_HANDLE;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (extra != nullptr && extra[0] != CU_LAUNCH_PARAM_END) {
        say("launch of " + std::string(f->info->name) +
            ": parameters through `extra` are not emulated (pass kernelParams)");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (params == nullptr && f->info->num_params > 0) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult e = check_launch(*f, grid, block, smem)) return e;

    CUresult err = CUDA_SUCCESS;
    Capture* c = recording(s, &err);
    if (err != CUDA_SUCCESS) return err;

    Node n;
    n.kind = Node::Kernel;
    n.fn = f;
    n.grid = grid;
    n.block = block;
    n.dyn_smem = smem;
    n.cooperative = cooperative;
    n.programmatic = programmatic;
    if (c == nullptr) {
        // Run now from the caller's parameters.
        std::vector<void*> ptrs(params, params + f->info->num_params);
        return do_kernel(n, ptrs.data());
    }
    // Recorded: the parameters are copied now, the caller's may be gone at replay.
    size_t total = 0;
    for (unsigned i = 0; i < f->info->num_params; ++i) {
        size_t sz = f->param_sizes[i];
        n.param_size_known.push_back(sz != 0);
        n.params.push_back(sz != 0 ? std::vector<unsigned char>(
                                         static_cast<unsigned char*>(params[i]),
                                         static_cast<unsigned char*>(params[i]) + sz)
                                   : snapshot(params[i], kUnknownParamSnapshot));
        total += sz;
    }
    if (total > kMaxParamBytes) return refuse(*f, "parameters over 32764 bytes");
    record(c, std::move(n));
    return CUDA_SUCCESS;
}

}  // namespace

namespace emu::drv {

Function* function_of(CUfunction h) {
    auto* f = reinterpret_cast<Function*>(h);
    return g_functions.count(f) != 0 ? f : nullptr;
}

CUresult check_launch(const Function& f, Dim3 g, Dim3 b, size_t smem) {
    const unsigned bounds = f.info->max_threads == 0 ? 1024 : f.info->max_threads;
    const unsigned long long threads = 1ull * b.x * b.y * b.z;
    if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0)
        return refuse(f, "grid " + dims(g) + " / block " + dims(b) + " has a zero dimension");
    if (b.x > 1024 || b.y > 1024 || b.z > 64)
        return refuse(f, "block " + dims(b) + " is over the device's (1024,1024,64)");
    if (threads > 1024)
        return refuse(f, "block " + dims(b) + " has " + std::to_string(threads) +
                             " threads, over the device's 1024 per block");
    if (threads > bounds)
        return refuse(f, "block " + dims(b) + " has " + std::to_string(threads) +
                             " threads, over the kernel's __launch_bounds__ of " +
                             std::to_string(bounds));
    if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
        return refuse(f, "grid " + dims(g) + " is over the device's (2147483647,65535,65535)");
    // KernelInfo::static_smem is the whole library's __shared__ total (an upper bound for
    // each kernel), so a static-only limit would refuse good kernels: the 48 KiB static
    // limit is nvcc's to enforce (ptxas fails the build), and only the sum with the dynamic
    // part is checked here.
    if (smem > static_cast<size_t>(f.max_dynamic_smem))
        return refuse(f, "dynamic shared memory of " + std::to_string(smem) +
                             " bytes is over the function's limit of " +
                             std::to_string(f.max_dynamic_smem) +
                             (f.max_dynamic_smem == 48 * 1024
                                  ? " (48 KiB without cuFuncSetAttribute("
                                    "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES))"
                                  : ""));
    if (f.info->static_smem + smem > kMaxOptInSmem)
        return refuse(f, "static + dynamic shared memory of " +
                             std::to_string(f.info->static_smem + smem) +
                             " bytes is over the 232448 bytes (227 KiB) of a block");
    return CUDA_SUCCESS;
}

CUresult do_kernel(const Node& n, void** params) {
    const KernelInfo& k = *n.fn->info;
    if (inject_launch_failure()) {
        say("kernel " + std::string(k.name) + " grid " + dims(n.grid) + " block " + dims(n.block) +
            ": launch fails (TACHYON_EMU_FAIL_LAUNCH=" + std::to_string(faults().fail_launch) +
            ")");
        set_sticky(CUDA_ERROR_LAUNCH_FAILED);
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    std::vector<void*> ptrs;
    if (params == nullptr) {
        for (const auto& blob : n.params) ptrs.push_back(const_cast<unsigned char*>(blob.data()));
        params = ptrs.data();
    }
    emu::LaunchOptions opt;
    opt.max_dynamic_smem = static_cast<size_t>(n.fn->max_dynamic_smem);
    opt.cooperative = n.cooperative;
    opt.programmatic = n.programmatic;
    emu::LaunchResult r = emu::launch(k, n.grid, n.block, n.dyn_smem, params, opt);
    if (r.cuda_error == 0) return CUDA_SUCCESS;
    if (!r.report.empty()) say(r.report);
    auto e = static_cast<CUresult>(r.cuda_error);
    if (e != CUDA_ERROR_INVALID_VALUE) set_sticky(e);
    return e;
}

}  // namespace emu::drv

// ---- Modules --------------------------------------------------------------------------------

EMU_API CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    if (module == nullptr || image == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (faults().fail_module) {
        say("module load fails: TACHYON_EMU_FAIL_MODULE is set");
        return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    unsigned char head[4];
    memcpy(head, image, 4);
    if ((head[0] | head[1] | head[2] | head[3]) == 0) return CUDA_ERROR_INVALID_IMAGE;
    const char* lib = getenv("TACHYON_EMU_KERNELS");
    if (lib == nullptr || *lib == '\0') {
        say("TACHYON_EMU_KERNELS is not set: it names the host-compiled kernels library "
            "(run through scripts/emulated-gpu.sh)");
        return CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    const char* src = getenv("TACHYON_EMU_SOURCE_DIR");
    if (src == nullptr || *src == '\0') {
        say("TACHYON_EMU_SOURCE_DIR is not set: it names the kernels/ directory whose stamp "
            "the kernels library must match (run through scripts/emulated-gpu.sh)");
        return CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    std::string err;
    std::string stamp = emu::source_stamp(src, &err);
    if (stamp.empty()) {
        say("cannot read the kernel sources in " + std::string(src) + ": " + err);
        return CUDA_ERROR_FILE_NOT_FOUND;
    }
    return load_library(lib, stamp.c_str(), module);
}

EMU_API CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int,
                                    CUjit_option*, void**) {
    return cuModuleLoadData(module, image);
}

EMU_API CUresult cuModuleLoadFatBinary(CUmodule* module, const void* image) {
    return cuModuleLoadData(module, image);
}

EMU_API CUresult cuModuleLoad(CUmodule* module, const char* fname) {
    if (module == nullptr || fname == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (faults().fail_module) {
        say(std::string("module load of ") + fname + " fails: TACHYON_EMU_FAIL_MODULE is set");
        return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    return load_library(fname, nullptr, module);
}

EMU_API CUresult cuModuleUnload(CUmodule hm) {
    EMU_LOCK;
    Module* m = module_of(hm);
    if (m == nullptr || m->unloaded) return CUDA_ERROR_INVALID_HANDLE;
    module_released(m);
    m->unloaded = true;
    g_modules.erase(m);
    return CUDA_SUCCESS;
}

EMU_API CUresult cuModuleGetFunction(CUfunction* hfunc, CUmodule hm, const char* name) {
    if (hfunc == nullptr || name == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Module* m = module_of(hm);
    if (m == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    auto it = m->functions.find(name);
    if (it == m->functions.end()) return CUDA_ERROR_NOT_FOUND;
    *hfunc = reinterpret_cast<CUfunction>(it->second.get());
    return CUDA_SUCCESS;
}

// ---- Function attributes ----------------------------------------------------------------------

EMU_API CUresult cuFuncGetAttribute(int* pi, CUfunction_attribute attrib, CUfunction hf) {
    if (pi == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Function* f = function_of(hf);
    if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK:
            *pi = f->info->max_threads == 0 ? 1024 : static_cast<int>(f->info->max_threads);
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES:
            *pi = static_cast<int>(f->info->static_smem);
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES:
        case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES:
        case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA:
            *pi = 0;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_NUM_REGS:
            *pi = 32;  // not known on the host: register pressure is not emulated
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_PTX_VERSION:
        case CU_FUNC_ATTRIBUTE_BINARY_VERSION:
            *pi = 90;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
            *pi = f->max_dynamic_smem;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
            *pi = f->preferred_carveout;
            return CUDA_SUCCESS;
        default:
            *pi = 0;
            return CUDA_SUCCESS;
    }
}

EMU_API CUresult cuFuncSetAttribute(CUfunction hf, CUfunction_attribute attrib, int value) {
    EMU_LOCK;
    Function* f = function_of(hf);
    if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
            if (value < 0 || static_cast<size_t>(value) + f->info->static_smem > kMaxOptInSmem) {
                say("cuFuncSetAttribute(" + std::string(f->info->name) +
                    ", MAX_DYNAMIC_SHARED_SIZE_BYTES, " + std::to_string(value) +
                    "): over the 232448 bytes of a block (static " +
                    std::to_string(f->info->static_smem) + ")");
                return CUDA_ERROR_INVALID_VALUE;
            }
            f->max_dynamic_smem = value;
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
            if (value < -1 || value > 100) return CUDA_ERROR_INVALID_VALUE;
            f->preferred_carveout = value;
            return CUDA_SUCCESS;
        default:
            return CUDA_SUCCESS;  // cluster and scheduling hints: accepted, no effect here
    }
}

EMU_API CUresult cuFuncSetCacheConfig(CUfunction hf, CUfunc_cache) {
    EMU_LOCK;
    return function_of(hf) == nullptr ? CUDA_ERROR_INVALID_HANDLE : CUDA_SUCCESS;
}

EMU_API CUresult cuFuncGetName(const char** name, CUfunction hf) {
    if (name == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Function* f = function_of(hf);
    if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    *name = f->info->name;
    return CUDA_SUCCESS;
}

// ---- Launch -------------------------------------------------------------------------------------

EMU_API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                unsigned by, unsigned bz, unsigned smem, CUstream s,
                                void** params, void** extra) {
    return launch(f, Dim3{gx, gy, gz}, Dim3{bx, by, bz}, smem, s, params, extra, false);
}

EMU_API CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                           unsigned bx, unsigned by, unsigned bz, unsigned smem,
                                           CUstream s, void** params) {
    return launch(f, Dim3{gx, gy, gz}, Dim3{bx, by, bz}, smem, s, params, nullptr, true);
}

EMU_API CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f, void** params,
                                  void** extra) {
    if (config == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (config->numAttrs > 0 && config->attrs == nullptr) return CUDA_ERROR_INVALID_VALUE;
    bool cooperative = false, programmatic = false;
    for (unsigned i = 0; i < config->numAttrs; ++i) {
        const CUlaunchAttribute& a = config->attrs[i];
        if (a.id == CU_LAUNCH_ATTRIBUTE_COOPERATIVE && a.value.cooperative != 0) cooperative = true;
        // Programmatic dependent launch: launches still run one after another, but the
        // kernel's accesses before its griddepcontrol.wait are held to the rule that makes
        // the overlap on a GPU safe (emu::LaunchOptions::programmatic). ..._PROGRAMMATIC_EVENT
        // is accepted and not checked.
        if (a.id == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION &&
            a.value.programmaticStreamSerializationAllowed != 0)
            programmatic = true;
    }
    return launch(f, Dim3{config->gridDimX, config->gridDimY, config->gridDimZ},
                  Dim3{config->blockDimX, config->blockDimY, config->blockDimZ},
                  config->sharedMemBytes, config->hStream, params, extra, cooperative, programmatic);
}

EMU_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, CUfunction hf,
                                                                      int block_size,
                                                                      size_t smem, unsigned) {
    if (blocks == nullptr || block_size <= 0) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Function* f = function_of(hf);
    if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    // Threads and shared memory only (registers are not known on the host).
    int by_threads = 2048 / block_size;
    size_t per_block = f->info->static_smem + smem + 1024;
    int by_smem = static_cast<int>(233472 / per_block);
    int n = by_threads < by_smem ? by_threads : by_smem;
    *blocks = n > 32 ? 32 : n;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, CUfunction f,
                                                             int block_size, size_t smem) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, f, block_size, smem, 0);
}
