/*
 * planted.cu: kernels with one planted bug each, and a correct twin of each pattern, for
 * the emulated GPU's self test (emulator/tests/runtime_selftest.cpp). Never part of
 * kernels/: they exist to prove that each check fires, and names the right thread.
 */

// Out-of-bounds global write: the thread with i == n writes one float past the end.
extern "C" __global__ void __launch_bounds__(256) planted_oob_write(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}
extern "C" __global__ void __launch_bounds__(256) ok_write(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 1.0f;
}

// Read after write without a barrier: thread t reads what thread t-1 wrote.
extern "C" __global__ void __launch_bounds__(256) planted_raw_race(float* out) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = float(t);
    out[t] = s[(t + 255) % 256];
}
extern "C" __global__ void __launch_bounds__(256) ok_raw(float* out) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = float(t);
    __syncthreads();
    out[t] = s[(t + 255) % 256];
}

// Write after read without a barrier: thread t overwrites s[t] that thread t-1 just read.
extern "C" __global__ void __launch_bounds__(256) planted_war_race(float* out) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = float(t);
    __syncthreads();
    const float v = s[(t + 1) % 256];
    s[t] = v * 2.0f;
    out[t] = v;
}
extern "C" __global__ void __launch_bounds__(256) ok_war(float* out) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = float(t);
    __syncthreads();
    const float v = s[(t + 1) % 256];
    __syncthreads();
    s[t] = v * 2.0f;
    out[t] = v;
}

// A 16-byte load from an address that is 4-byte aligned only.
extern "C" __global__ void planted_misaligned_float4(const float* p, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(p + 1);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}
extern "C" __global__ void ok_aligned_float4(const float* p, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(p + 4);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// Divergent barrier: the first 16 threads leave, the others wait at __syncthreads.
extern "C" __global__ void planted_divergent_barrier(float* out) {
    if (threadIdx.x < 16) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
// Divergent barrier: the two halves of the block wait at two different __syncthreads.
extern "C" __global__ void planted_barrier_sites(float* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        out[threadIdx.x] = 2.0f;
        __syncthreads();
    }
}
extern "C" __global__ void ok_barrier(float* out) {
    if (threadIdx.x >= 16) out[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] += 1.0f;
}

// A shuffle whose mask leaves out lane 31, which calls it anyway.
extern "C" __global__ void planted_shfl_mask_missing(float* out) {
    float v = float(threadIdx.x);
    v += __shfl_xor_sync(0x7fffffffu, v, 1);
    out[threadIdx.x] = v;
}
// Lanes 0-30 broadcast lane 0 among themselves; lane 31 joins with a mask without itself.
extern "C" __global__ void planted_shfl_self_missing(float* out) {
    float v = float(threadIdx.x);
    v = __shfl_sync(0x7fffffffu, v, 0);
    out[threadIdx.x] = v;
}
// A shuffle over the full warp that lane 5 never reaches (it returns first).
extern "C" __global__ void planted_shfl_lane_absent(float* out) {
    if (threadIdx.x % 32 == 5) return;
    float v = float(threadIdx.x);
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
// Correct: butterfly sum, so every lane holds the warp's sum (0 + ... + 31 = 496).
extern "C" __global__ void ok_shfl(float* out) {
    float v = float(threadIdx.x % 32);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

// A pointer that is not device memory (the host's own).
extern "C" __global__ void planted_host_pointer(const float* host, float* out) {
    out[threadIdx.x] = host[threadIdx.x];
}

// Read of memory freed before the launch.
extern "C" __global__ void planted_use_after_free(const float* freed, float* out) {
    out[threadIdx.x] = freed[threadIdx.x];
}

// Shared atomics (no race among atomics), a vote and a cross-warp reduction.
extern "C" __global__ void ok_atomics(unsigned* out) {
    __shared__ unsigned hist[4];
    if (threadIdx.x < 4) hist[threadIdx.x] = 0;
    __syncthreads();
    atomicAdd(&hist[threadIdx.x % 4], 1u);
    __syncthreads();
    if (threadIdx.x < 4) atomicAdd(&out[threadIdx.x], hist[threadIdx.x]);
    const unsigned b = __ballot_sync(0xffffffffu, threadIdx.x % 2 == 0);
    if (threadIdx.x == 0) out[4] = b;
}

// Warp-synchronous exchange through shared memory, ordered by __syncwarp.
extern "C" __global__ void ok_syncwarp(float* out) {
    __shared__ float s[32];
    s[threadIdx.x] = float(threadIdx.x);
    __syncwarp();
    out[threadIdx.x] = s[31 - threadIdx.x];
}
extern "C" __global__ void planted_no_syncwarp(float* out) {
    __shared__ float s[32];
    s[threadIdx.x] = float(threadIdx.x);
    out[threadIdx.x] = s[(threadIdx.x + 31) % 32];
}

// Dynamic shared memory through the project's macro.
#ifndef TACHYON_DYNAMIC_SMEM
#define TACHYON_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#endif
extern "C" __global__ void ok_dynamic_smem(float* out, int n) {
    TACHYON_DYNAMIC_SMEM(float, dyn);
    for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = float(i);
    __syncthreads();
    out[threadIdx.x] = dyn[n - 1 - threadIdx.x];
}
extern "C" __global__ void planted_dynamic_smem_oob(float* out, int n) {
    TACHYON_DYNAMIC_SMEM(float, dyn);
    dyn[n + threadIdx.x] = 1.0f;  // thread 0 writes one past the end
    out[threadIdx.x] = 0.0f;
}

// Reads unwritten device memory: the result is the 0xFF fill (a NaN).
extern "C" __global__ void ok_read_fill(const float* fresh, float* out) { out[0] = fresh[0]; }

// Spin wait on a flag another block sets (needs a cooperative launch).
extern "C" __global__ void ok_cross_block_flag(volatile int* flag, int* out) {
    if (blockIdx.x == 1) {
        if (threadIdx.x == 0) {
            out[1] = 7;
            __threadfence();
            *flag = 1;
        }
        return;
    }
    if (threadIdx.x == 0) {
        while (*flag == 0) __nanosleep(100);
        out[0] = out[1] + 1;
    }
}

// Timing kernels for the self test (not bugs): one thread streams n floats; two threads
// meet at a barrier iters times.
extern "C" __global__ void bench_loads(const float* p, int n, float* out) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += p[i];
    out[0] = s;
}
extern "C" __global__ void bench_barrier(int iters, float* out) {
    for (int i = 0; i < iters; ++i) __syncthreads();
    if (threadIdx.x == 0) out[0] = 1.0f;
}
