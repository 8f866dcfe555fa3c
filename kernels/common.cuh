/*
 * common.cuh: small device helpers shared by the kernel files (included by each; every
 * helper is inline and file-local, so the one-translation-unit build sees no duplicates).
 */
#ifndef TACHYON_COMMON_CUH
#define TACHYON_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "tachyon_kernels.h"
// One wrapper per inline-PTX instruction (griddepcontrol, prefetch, mma, ...), with the
// emulated GPU's host versions.
#include "../emulator/include/ptx_emu.h"

// Dynamic shared memory (the launch's sharedMemBytes): `extern __shared__` under nvcc; the
// emulated GPU's prelude defines it first as a pointer to the running block's buffer.
#ifndef TACHYON_DYNAMIC_SMEM
#define TACHYON_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#endif

namespace tachyon {

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum_f(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One weight element as f32; dtype is a TACHYON_DTYPE_* value.
__device__ __forceinline__ float load_elem(const void* base, size_t i, int dtype) {
    if (dtype == TACHYON_DTYPE_BF16) {
        return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    } else if (dtype == TACHYON_DTYPE_F16) {
        return __half2float(static_cast<const __half*>(base)[i]);
    }
    return static_cast<const float*>(base)[i];
}

// Programmatic dependent launch (kernels/README.md): lets the next kernel of the stream be
// scheduled, then waits until every kernel before this one completed and its writes are
// visible. A decode-step kernel calls it before its first read of anything a kernel writes
// (activations, the KV cache, scratch, the token and position) and before its first global
// write; what comes before may read only memory no kernel writes (weights, constants).
// Triggering first is safe: the dependent does this same wait, which returns only once
// this grid completed and its memory is flushed; and the trigger fires only when every
// block of this grid executed it (or exited), so the dependent's blocks start once this
// grid's last blocks are running and take only the room those leave. Without the launch
// attribute, on sm_80 and in the compute_80 PTX both are no-ops.
__device__ __forceinline__ void pdl_trigger_then_wait() {
    tachyon_launch_dependents();
    tachyon_grid_dependency_wait();
}

// The position a kernel runs at: read from device memory when given (graph replay).
__device__ __forceinline__ int read_pos(const int* pos_dev, int pos) {
    return pos_dev != nullptr ? *pos_dev : pos;
}

// After a decode step's pick `next` is written: the next step's inputs (see StepAdvance in
// tachyon_kernels.h). One thread calls it, after its own write of the pick.
__device__ __forceinline__ void advance_step(const StepAdvance& a, unsigned int next) {
    if (a.token == nullptr) return;
    if (next != TACHYON_NO_TOKEN) *a.token = next;
    const int pos = *a.pos + 1;
    *a.pos = pos;
    *a.rng_state = a.cfg->seed ^ (static_cast<unsigned long long>(pos) * 0x9E3779B97F4A7C15ull);
}

}  // namespace tachyon

#endif  // TACHYON_COMMON_CUH
