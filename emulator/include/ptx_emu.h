/*
 * ptx_emu.h: one wrapper per inline-PTX instruction a kernel uses, with a host version
 * (under the emulator) that follows the PTX ISA's documented register fragments exactly.
 * A kernel calls the wrapper; under nvcc the wrapper is the asm statement.
 *
 *   tachyon_mma_bf16_16816(d, a, b, c)   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
 *   tachyon_ldmatrix_x4(r, smem_row)     ldmatrix.sync.aligned.m8n8.x4.shared.b16
 *   tachyon_ldmatrix_x4_trans(r, row)    ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
 *   tachyon_cp_async_16(smem, gmem)      cp.async.cg.shared.global [smem], [gmem], 16
 *   tachyon_cp_async_commit()            cp.async.commit_group
 *   tachyon_cp_async_wait<N>()           cp.async.wait_group N
 *   tachyon_grid_dependency_wait()       griddepcontrol.wait               (sm_90+; else nothing)
 *   tachyon_launch_dependents()          griddepcontrol.launch_dependents  (sm_90+; else nothing)
 *   tachyon_prefetch_l2(p)               prefetch.global.L2 [p]
 *
 * Programmatic dependent launch (kernels/README.md): a kernel launched with the
 * programmatic stream serialization attribute may start while the kernel before it still
 * runs. Until its griddepcontrol.wait it may only read what no kernel of the step writes
 * (weights, constants) and write nothing; the wait returns once every kernel before it
 * completed and its writes are visible. launch_dependents lets the next kernel's blocks be
 * scheduled before this grid ends. Both are no-ops without the attribute, on sm_80 and in
 * the compute_80 PTX (which is why the launcher sets the attribute on compute capability 9.x
 * only). Under the emulator the wait ends the thread's checked pre-wait phase
 * (emulator/runtime/pdl.cpp) and a prefetch is a checked one-byte read, so a prefetch of
 * what the previous kernel writes is reported before the wait like a load would be.
 *
 * Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .bf16; groupID =
 * lane / 4, tig = lane % 4; the lower-numbered element of a pair sits in the low 16 bits):
 *   A (16x16, row): a[r] holds elements 2r, 2r+1; element i is at row groupID (+8 when
 *     i is 2,3,6,7), column tig*2 + (i & 1) (+8 when i >= 4).
 *   B (16x8, col): b[r] holds elements 2r, 2r+1; element i is at row tig*2 + (i & 1)
 *     (+8 when i >= 2), column groupID.
 *   C, D (16x8 f32): element i is at row groupID (+8 when i >= 2), column tig*2 + (i & 1).
 * ldmatrix .x4: lanes 8j..8j+7 give the row addresses (16 bytes each) of matrix j; lane l
 *   receives in r[j] the two b16 at row l / 4, columns 2 (l % 4), +1 of matrix j.
 *   With .trans each matrix is read transposed: lane l receives the b16 at rows 2 (l % 4)
 *   and 2 (l % 4) + 1 (low, high half), column l / 4 (a B fragment from a row-major k x n
 *   tile, e.g. V in attention).
 * The host mma accumulates in f32 in k order; the GPU's internal order and rounding of the
 * products are unspecified, so results may differ in the last bits.
 */
#ifndef TACHYON_PTX_EMU_H
#define TACHYON_PTX_EMU_H

#include <stdint.h>

#ifdef TACHYON_EMU

static __forceinline__ float emu_bf16_bits_to_float(uint32_t h) { return __uint_as_float(h << 16); }

static __forceinline__ void emu_warp_exchange(const void* in, void* out_all, unsigned bytes) {
    emu_exchange x;
    x.in = in;
    x.out = out_all;
    x.bytes = bytes;
    emu_warp_op(EMU_WARP_EXCHANGE, 0xffffffffu, (uint64_t)(uintptr_t)&x, 0, 32);
}

static inline void tachyon_mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    struct Frag {
        uint32_t a[4], b[2];
    };
    Frag mine, all[32];
    for (int r = 0; r < 4; ++r) mine.a[r] = a[r];
    mine.b[0] = b[0];
    mine.b[1] = b[1];
    emu_warp_exchange(&mine, all, sizeof(Frag));
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 8; ++i) {
            const uint32_t bits = (all[l].a[i / 2] >> (16 * (i & 1))) & 0xffffu;
            const int row = g + ((i & 2) ? 8 : 0);
            const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = emu_bf16_bits_to_float(bits);
        }
        for (int i = 0; i < 4; ++i) {
            const uint32_t bits = (all[l].b[i / 2] >> (16 * (i & 1))) & 0xffffu;
            B[t * 2 + (i & 1) + (i >= 2 ? 8 : 0)][g] = emu_bf16_bits_to_float(bits);
        }
    }
    const int lane = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    const int g = lane / 4, t = lane % 4;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = t * 2 + (i & 1);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        out[i] = acc;
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

static inline void tachyon_ldmatrix_x4(uint32_t r[4], const void* smem_row) {
    if (reinterpret_cast<uintptr_t>(smem_row) & 15) emu_misaligned(smem_row, 16, 0);
    const void* all[32];
    emu_warp_exchange(&smem_row, all, sizeof(const void*));
    const int lane = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    for (int j = 0; j < 4; ++j) {
        const uint32_t* row = static_cast<const uint32_t*>(all[j * 8 + lane / 4]);
        r[j] = row[lane % 4];  // a checked shared-memory read (races included)
    }
}

static inline void tachyon_ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
    if (reinterpret_cast<uintptr_t>(smem_row) & 15) emu_misaligned(smem_row, 16, 0);
    const void* all[32];
    emu_warp_exchange(&smem_row, all, sizeof(const void*));
    const int lane = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    for (int j = 0; j < 4; ++j) {
        const uint16_t* r0 = static_cast<const uint16_t*>(all[j * 8 + 2 * (lane % 4)]);
        const uint16_t* r1 = static_cast<const uint16_t*>(all[j * 8 + 2 * (lane % 4) + 1]);
        r[j] = uint32_t(r0[lane / 4]) | (uint32_t(r1[lane / 4]) << 16);  // checked reads
    }
}

static __forceinline__ void tachyon_cp_async_16(void* smem, const void* gmem) { emu_cp_async(smem, gmem, 16); }
static __forceinline__ void tachyon_cp_async_commit() { emu_cp_async_commit(); }
template <int N>
static __forceinline__ void tachyon_cp_async_wait() {
    emu_cp_async_wait(N);
}

static __forceinline__ void tachyon_grid_dependency_wait() { emu_grid_dependency_wait(); }
static __forceinline__ void tachyon_launch_dependents() { emu_launch_dependents(); }
static __forceinline__ void tachyon_prefetch_l2(const void* p) { (void)*static_cast<const volatile char*>(p); }

#else  // nvcc

static __device__ __forceinline__ void tachyon_mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                              const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

static __device__ __forceinline__ void tachyon_ldmatrix_x4(uint32_t r[4], const void* smem_row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void tachyon_ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void tachyon_cp_async_16(void* smem, const void* gmem) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem));
}
static __device__ __forceinline__ void tachyon_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
static __device__ __forceinline__ void tachyon_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// griddepcontrol exists from sm_90 on; the sm_80 code and the compute_80 PTX get nothing.
static __device__ __forceinline__ void tachyon_grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
static __device__ __forceinline__ void tachyon_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
static __device__ __forceinline__ void tachyon_prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

#endif  // TACHYON_EMU

#endif  // TACHYON_PTX_EMU_H
