/*
 * memory.cpp: device allocations (through the runtime's arena), pinned host memory,
 * copies and memsets (synchronous, asynchronous, and recorded during capture), memory
 * info and pointer attributes.
 *
 * Device pointers are host addresses inside the arena, so a copy is a memmove after the
 * device side of it has been checked to lie inside one live allocation (the real driver
 * returns CUDA_ERROR_INVALID_VALUE for a copy that runs off its allocation).
 */
#include <cstdlib>
#include <cstring>

#include "internal.h"

using namespace emu::drv;

namespace {

std::map<uintptr_t, size_t> g_device;  // live device allocations: start -> bytes
std::map<uintptr_t, size_t> g_host;    // pinned (cuMemHostAlloc) host allocations

std::string hex(const void* p) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(p)));
    return buf;
}

CUresult alloc_device(CUdeviceptr* dptr, size_t bytes, const char* what) {
    if (inject_alloc_failure()) {
        say(std::string(what) + " of " + std::to_string(bytes) +
            " bytes fails: TACHYON_EMU_FAIL_ALLOC=" + std::to_string(faults().fail_alloc));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    void* p = emu::dev_alloc(bytes);
    if (p == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
    g_device[reinterpret_cast<uintptr_t>(p)] = bytes;
    *dptr = reinterpret_cast<CUdeviceptr>(p);
    return CUDA_SUCCESS;
}

CUresult free_device(CUdeviceptr dptr, const char* what) {
    if (dptr == 0) return CUDA_SUCCESS;
    auto it = g_device.find(static_cast<uintptr_t>(dptr));
    void* p = reinterpret_cast<void*>(dptr);
    if (it == g_device.end() || !emu::dev_free(p)) {
        say(std::string(what) + "(" + hex(p) + "): not the start of a live allocation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    size_t bytes = it->second;
    g_device.erase(it);
    buffer_released(p, bytes, what);
    return CUDA_SUCCESS;
}

// The stream work goes to, or the error of using it (unknown handle, implicit join).
CUresult route(CUstream hs, Capture** cap) {
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err = CUDA_SUCCESS;
    *cap = recording(s, &err);
    return err;
}

CUresult copy_async(void* dst, const void* src, size_t bytes, CUmemorytype dk, CUmemorytype sk,
                    CUstream hs) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Capture* c = nullptr;
    if (CUresult e = route(hs, &c)) return e;
    if (c == nullptr) return do_copy(dst, src, bytes, dk, sk);
    // Checked now, as the real driver validates a memcpy node when it is added.
    if ((dk == CU_MEMORYTYPE_DEVICE && !emu::dev_range_ok(dst, bytes)) ||
        (sk == CU_MEMORYTYPE_DEVICE && !emu::dev_range_ok(src, bytes))) {
        say("captured copy of " + std::to_string(bytes) + " bytes " + hex(src) + " -> " + hex(dst) +
            " runs off its device allocation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    Node n;
    n.kind = Node::Copy;
    n.dst = dst;
    n.src = src;
    n.bytes = bytes;
    record(c, n);
    return CUDA_SUCCESS;
}

CUresult copy_sync(void* dst, const void* src, size_t bytes, CUmemorytype dk, CUmemorytype sk,
                   const char* what) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    // A synchronous copy waits for the device: not allowed while a capture could see it.
    if (CUresult e = check_unsafe_call(what)) return e;
    return do_copy(dst, src, bytes, dk, sk);
}

CUresult set_async(CUdeviceptr dst, unsigned value, unsigned elem, size_t count, CUstream hs) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Capture* c = nullptr;
    if (CUresult e = route(hs, &c)) return e;
    if (c == nullptr) return do_set(reinterpret_cast<void*>(dst), value, elem, count);
    if (!emu::dev_range_ok(reinterpret_cast<void*>(dst), count * elem)) {
        say("captured memset of " + std::to_string(count * elem) + " bytes at " +
            hex(reinterpret_cast<void*>(dst)) + " runs off its device allocation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    Node n;
    n.kind = Node::Set;
    n.dst = reinterpret_cast<void*>(dst);
    n.value = value;
    n.elem_size = elem;
    n.count = count;
    record(c, n);
    return CUDA_SUCCESS;
}

CUresult set_sync(CUdeviceptr dst, unsigned value, unsigned elem, size_t count, const char* what) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (CUresult e = check_unsafe_call(what)) return e;
    return do_set(reinterpret_cast<void*>(dst), value, elem, count);
}

CUmemorytype kind_of(const void* p) {
    void* base = nullptr;
    size_t size = 0;
    return emu::dev_lookup(p, &base, &size) ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
}

void* dp(CUdeviceptr p) { return reinterpret_cast<void*>(p); }

}  // namespace

namespace emu::drv {

CUresult do_copy(void* dst, const void* src, size_t bytes, CUmemorytype dk, CUmemorytype sk) {
    if (bytes == 0) return CUDA_SUCCESS;
    if (dst == nullptr || src == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (dk == CU_MEMORYTYPE_DEVICE && !emu::dev_range_ok(dst, bytes)) {
        say("copy of " + std::to_string(bytes) + " bytes to " + hex(dst) +
            " runs off its device allocation (or it is not device memory)");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (sk == CU_MEMORYTYPE_DEVICE && !emu::dev_range_ok(src, bytes)) {
        say("copy of " + std::to_string(bytes) + " bytes from " + hex(src) +
            " runs off its device allocation (or it is not device memory)");
        return CUDA_ERROR_INVALID_VALUE;
    }
    memmove(dst, src, bytes);
    emu::pdl_serialize();  // a copy starts after the kernels before it end (stream order)
    return CUDA_SUCCESS;
}

CUresult do_set(void* dst, unsigned value, unsigned elem, size_t count) {
    if (count == 0) return CUDA_SUCCESS;
    if (!emu::dev_range_ok(dst, count * elem)) {
        say("memset of " + std::to_string(count * elem) + " bytes at " + hex(dst) +
            " runs off its device allocation (or it is not device memory)");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (reinterpret_cast<uintptr_t>(dst) % elem != 0) return CUDA_ERROR_INVALID_VALUE;
    emu::pdl_serialize();
    auto* d = static_cast<unsigned char*>(dst);
    if (elem == 1) {
        memset(d, static_cast<int>(value & 0xFF), count);
    } else if (elem == 2) {
        auto v = static_cast<uint16_t>(value);
        for (size_t i = 0; i < count; ++i) memcpy(d + 2 * i, &v, 2);
    } else {
        for (size_t i = 0; i < count; ++i) memcpy(d + 4 * i, &value, 4);
    }
    return CUDA_SUCCESS;
}

// A context reset: every live device allocation is freed (graphs that still point into one
// learn it, as on any free). Returns the number of allocations and their bytes.
std::pair<size_t, size_t> release_all_device_memory() {
    size_t count = 0, bytes = 0;
    while (!g_device.empty()) {
        auto it = g_device.begin();
        void* p = reinterpret_cast<void*>(it->first);
        size_t n = it->second;
        g_device.erase(it);
        emu::dev_free(p);
        buffer_released(p, n, "a context reset");
        ++count;
        bytes += n;
    }
    return {count, bytes};
}

}  // namespace emu::drv

// ---- Allocation ------------------------------------------------------------------------------

EMU_API CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
    if (dptr == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (CUresult e = check_unsafe_call("cuMemAlloc")) return e;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    return alloc_device(dptr, bytes, "cuMemAlloc");
}

EMU_API CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream hs) {
    if (dptr == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Capture* c = nullptr;
    if (CUresult e = route(hs, &c)) return e;
    if (c != nullptr) {
        // A real capture turns this into a graph memory node; the emulator does not model
        // graph-owned memory, and says so rather than guess.
        invalidate(c, "cuMemAllocAsync during capture (graph memory nodes are not emulated)");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (bytes == 0) {
        *dptr = 0;
        return CUDA_SUCCESS;
    }
    return alloc_device(dptr, bytes, "cuMemAllocAsync");
}

EMU_API CUresult cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytes, CUmemoryPool,
                                         CUstream hs) {
    return cuMemAllocAsync(dptr, bytes, hs);
}

EMU_API CUresult cuMemFree_v2(CUdeviceptr dptr) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (CUresult e = check_unsafe_call("cuMemFree")) return e;
    return free_device(dptr, "cuMemFree");
}

EMU_API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hs) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Capture* c = nullptr;
    if (CUresult e = route(hs, &c)) return e;
    if (c != nullptr) {
        invalidate(c, "cuMemFreeAsync during capture (graph memory nodes are not emulated)");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return free_device(dptr, "cuMemFreeAsync");
}

EMU_API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (free_bytes == nullptr || total == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    *free_bytes = emu::dev_free_bytes();
    *total = emu::dev_total_bytes();
    return CUDA_SUCCESS;
}

EMU_API CUresult cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr dptr) {
    EMU_LOCK;
    void* b = nullptr;
    size_t n = 0;
    if (!emu::dev_lookup(dp(dptr), &b, &n)) return CUDA_ERROR_NOT_FOUND;
    if (base != nullptr) *base = reinterpret_cast<CUdeviceptr>(b);
    if (size != nullptr) *size = n;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuPointerGetAttribute(void* data, CUpointer_attribute attr, CUdeviceptr ptr) {
    if (data == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    void* base = nullptr;
    size_t size = 0;
    bool dev = emu::dev_lookup(dp(ptr), &base, &size);
    bool host = false;
    for (const auto& [start, n] : g_host)
        if (ptr >= start && ptr < start + n) {
            host = true;
            base = reinterpret_cast<void*>(start);
            size = n;
        }
    if (!dev && !host) return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
        case CU_POINTER_ATTRIBUTE_CONTEXT: {
            CUcontext ctx = nullptr;
            cuCtxGetCurrent(&ctx);
            *static_cast<CUcontext*>(data) = ctx;
            return CUDA_SUCCESS;
        }
        case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
            *static_cast<unsigned*>(data) = dev ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
            return CUDA_SUCCESS;
        case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
            *static_cast<CUdeviceptr*>(data) = ptr;
            return CUDA_SUCCESS;
        case CU_POINTER_ATTRIBUTE_HOST_POINTER:
            if (dev) return CUDA_ERROR_INVALID_VALUE;
            *static_cast<void**>(data) = dp(ptr);
            return CUDA_SUCCESS;
        case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
            *static_cast<CUdeviceptr*>(data) = reinterpret_cast<CUdeviceptr>(base);
            return CUDA_SUCCESS;
        case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
            *static_cast<size_t*>(data) = size;
            return CUDA_SUCCESS;
        case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
            *static_cast<int*>(data) = 0;
            return CUDA_SUCCESS;
        case CU_POINTER_ATTRIBUTE_IS_MANAGED:
            *static_cast<unsigned*>(data) = 0;
            return CUDA_SUCCESS;
        case CU_POINTER_ATTRIBUTE_MAPPED:
            *static_cast<unsigned*>(data) = 1;
            return CUDA_SUCCESS;
        default:
            return CUDA_ERROR_NOT_SUPPORTED;
    }
}

// ---- Pinned host memory ------------------------------------------------------------------------

EMU_API CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned int flags) {
    (void)flags;
    if (pp == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (CUresult e = check_unsafe_call("cuMemHostAlloc")) return e;
    void* p = nullptr;
    if (posix_memalign(&p, 4096, bytes == 0 ? 1 : bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    g_host[reinterpret_cast<uintptr_t>(p)] = bytes;
    *pp = p;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuMemAllocHost_v2(void** pp, size_t bytes) { return cuMemHostAlloc(pp, bytes, 0); }

EMU_API CUresult cuMemFreeHost(void* p) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (CUresult e = check_unsafe_call("cuMemFreeHost")) return e;
    auto it = g_host.find(reinterpret_cast<uintptr_t>(p));
    if (it == g_host.end()) return CUDA_ERROR_INVALID_VALUE;
    buffer_released(p, it->second, "cuMemFreeHost");
    g_host.erase(it);
    free(p);
    return CUDA_SUCCESS;
}

EMU_API CUresult cuMemHostGetFlags(unsigned int* flags, void* p) {
    if (flags == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (g_host.count(reinterpret_cast<uintptr_t>(p)) == 0) return CUDA_ERROR_INVALID_VALUE;
    *flags = 0;
    return CUDA_SUCCESS;
}

// ---- Copies ----------------------------------------------------------------------------------------

EMU_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return copy_sync(dp(dst), src, n, CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_HOST, "cuMemcpyHtoD");
}
EMU_API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return copy_sync(dst, dp(src), n, CU_MEMORYTYPE_HOST, CU_MEMORYTYPE_DEVICE, "cuMemcpyDtoH");
}
EMU_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return copy_sync(dp(dst), dp(src), n, CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_DEVICE,
                     "cuMemcpyDtoD");
}
EMU_API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return copy_sync(dp(dst), dp(src), n, kind_of(dp(dst)), kind_of(dp(src)), "cuMemcpy");
}
EMU_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    return copy_async(dp(dst), src, n, CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_HOST, s);
}
EMU_API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_async(dst, dp(src), n, CU_MEMORYTYPE_HOST, CU_MEMORYTYPE_DEVICE, s);
}
EMU_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_async(dp(dst), dp(src), n, CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_DEVICE, s);
}
EMU_API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_async(dp(dst), dp(src), n, kind_of(dp(dst)), kind_of(dp(src)), s);
}
EMU_API CUresult cuMemcpyPeerAsync(CUdeviceptr dst, CUcontext, CUdeviceptr src, CUcontext,
                                   size_t n, CUstream s) {
    return copy_async(dp(dst), dp(src), n, CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_DEVICE, s);
}
EMU_API CUresult cuMemcpyPeer(CUdeviceptr dst, CUcontext, CUdeviceptr src, CUcontext, size_t n) {
    return copy_sync(dp(dst), dp(src), n, CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_DEVICE,
                     "cuMemcpyPeer");
}

// ---- Memsets ----------------------------------------------------------------------------------------

EMU_API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    return set_sync(dst, v, 1, n, "cuMemsetD8");
}
EMU_API CUresult cuMemsetD16_v2(CUdeviceptr dst, unsigned short v, size_t n) {
    return set_sync(dst, v, 2, n, "cuMemsetD16");
}
EMU_API CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int v, size_t n) {
    return set_sync(dst, v, 4, n, "cuMemsetD32");
}
EMU_API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
    return set_async(dst, v, 1, n, s);
}
EMU_API CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short v, size_t n, CUstream s) {
    return set_async(dst, v, 2, n, s);
}
EMU_API CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
    return set_async(dst, v, 4, n, s);
}
