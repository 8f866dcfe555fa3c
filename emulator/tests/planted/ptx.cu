/*
 * ptx.cu: the PTX wrappers of emulator/include/ptx_emu.h, exercised by the self test
 * against a plain matrix product and a plain copy.
 */
#include "../../include/ptx_emu.h"

// D = A (16x16 bf16, row-major) x B (16x8 bf16, stored k-major: b[k * 8 + n]) + C (f32).
// A comes through ldmatrix.x4 from shared memory (the usual recipe: lane l gives row
// l % 16, column half l / 16); B is gathered by the PTX table's formula.
extern "C" __global__ void ok_mma_bf16(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
    __shared__ __align__(16) uint16_t as[16 * 16];
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) as[i] = a[i];
    __syncthreads();
    uint32_t af[4];
    tachyon_ldmatrix_x4(af, &as[(lane % 16) * 16 + (lane / 16) * 8]);
    const int g = lane / 4, t = lane % 4;
    uint32_t bf[2];
    for (int r = 0; r < 2; ++r) {
        const int k0 = t * 2 + r * 8;
        bf[r] = uint32_t(b[k0 * 8 + g]) | (uint32_t(b[(k0 + 1) * 8 + g]) << 16);
    }
    float cf[4], df[4];
    for (int i = 0; i < 4; ++i) cf[i] = c[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)];
    tachyon_mma_bf16_16816(df, af, bf, cf);
    for (int i = 0; i < 4; ++i) d[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)] = df[i];
}

// The same product with B through ldmatrix.x4.trans from its k-major (row-major k x n)
// layout in shared memory: matrices 0, 1 are k 0-7 and 8-15 (one 16-byte row of 8 n per
// k), matrices 2, 3 repeat them; r[0], r[1] are then the B fragment.
extern "C" __global__ void ok_mma_bf16_btrans(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
    __shared__ __align__(16) uint16_t as[16 * 16];
    __shared__ __align__(16) uint16_t bs[16 * 8];
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) as[i] = a[i];
    for (int i = lane; i < 128; i += 32) bs[i] = b[i];
    __syncthreads();
    uint32_t af[4], bt[4];
    tachyon_ldmatrix_x4(af, &as[(lane % 16) * 16 + (lane / 16) * 8]);
    tachyon_ldmatrix_x4_trans(bt, &bs[(((lane / 8) & 1) * 8 + lane % 8) * 8]);
    const int g = lane / 4, t = lane % 4;
    const uint32_t bf[2] = {bt[0], bt[1]};
    float cf[4], df[4];
    for (int i = 0; i < 4; ++i) cf[i] = c[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)];
    tachyon_mma_bf16_16816(df, af, bf, cf);
    for (int i = 0; i < 4; ++i) d[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)] = df[i];
    // Matrices 2, 3 must repeat 0, 1.
    if (bt[2] != bt[0] || bt[3] != bt[1]) d[0] = __int_as_float(0x7fc00000);
}

// 16-byte cp.async copies of n floats through shared memory, two groups; `early` records
// what shared memory held before the wait (the copies have not landed yet).
extern "C" __global__ void ok_cp_async(const float* src, float* dst, float* early, int n) {
    __shared__ __align__(16) float s[256];
    const int t = threadIdx.x;
    tachyon_cp_async_16(&s[t * 4], &src[t * 4]);
    tachyon_cp_async_commit();
    tachyon_cp_async_16(&s[128 + t * 4], &src[128 + t * 4]);
    tachyon_cp_async_commit();
    early[t] = s[t * 4];
    tachyon_cp_async_wait<1>();  // the first group has landed, the second may not have
    early[32 + t] = s[128 + t * 4];
    tachyon_cp_async_wait<0>();
    __syncthreads();
    for (int i = t; i < n; i += 32) dst[i] = s[i];
}

// Programmatic dependent launch (emulator/runtime/pdl.cpp). ok_pdl_produce writes `out`;
// the consumers read `w` (memory no kernel writes: weights) before their wait, which is
// allowed, and `in` (what the producer wrote) before or after it.
extern "C" __global__ void ok_pdl_produce(float* out, int n) {
    tachyon_launch_dependents();
    tachyon_grid_dependency_wait();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = float(i);
}

extern "C" __global__ void planted_pdl_read_before_wait(const float* w, const float* in, float* out) {
    const int t = threadIdx.x;
    tachyon_prefetch_l2(w + t);
    const float wt = w[t];
    const float v = in[t];  // the kernel before may still be writing it
    tachyon_launch_dependents();
    tachyon_grid_dependency_wait();
    out[t] = v + wt;
}

extern "C" __global__ void ok_pdl_read_after_wait(const float* w, const float* in, float* out) {
    const int t = threadIdx.x;
    tachyon_prefetch_l2(w + t);
    const float wt = w[t];
    tachyon_launch_dependents();
    tachyon_grid_dependency_wait();
    out[t] = in[t] + wt;
}

extern "C" __global__ void planted_pdl_write_before_wait(float* out) {
    out[threadIdx.x] = 1.0f;  // the kernel before may still be reading it
    tachyon_grid_dependency_wait();
}

extern "C" __global__ void planted_pdl_prefetch_before_wait(const float* in, float* out) {
    tachyon_prefetch_l2(in + threadIdx.x);
    tachyon_grid_dependency_wait();
    out[threadIdx.x] = in[threadIdx.x];
}

// bench_loads in a programmatic launch: the loads follow the wait (the checks' cost there).
extern "C" __global__ void bench_loads_pdl(const float* p, int n, float* out) {
    tachyon_grid_dependency_wait();
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += p[i];
    out[0] = s;
}
