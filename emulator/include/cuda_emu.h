/*
 * cuda_emu.h: the prelude force-included (g++ -include) in every kernel source compiled for
 * the emulated GPU. It gives host C++ the CUDA execution model: qualifiers, threadIdx and
 * friends (read from the running fiber, see emu_abi.h), __shared__ memory (thread-local in
 * the kernels library, so one copy per worker thread = per running block), barriers, warp
 * operations, atomics, vector types whose copies check their alignment as the GPU's vector
 * loads do, the math intrinsics, and the host halves of cuda_fp16.h / cuda_bf16.h.
 *
 * Float arithmetic is the host's (IEEE f32, no fused multiply-add contraction): results can
 * differ from a GPU's in the last bits where nvcc contracts a*b+c into an FMA, and the fast
 * intrinsics (__expf, __fdividef, rsqrtf...) are the exact library functions here.
 * Not emulated yet: programmatic dependent launch (griddepcontrol: would go next to
 * __syncthreads below as a no-op pair), cooperative_groups, texture / surface objects.
 */
#ifndef TACHYON_CUDA_EMU_H
#define TACHYON_CUDA_EMU_H

#include <assert.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "emu_abi.h"

#define TACHYON_EMU 1

// ---- Qualifiers ----------------------------------------------------------------------------
#define __CUDA_INCLUDE_COMPILER_INTERNAL_HEADERS__
#include <crt/host_defines.h>
#undef __CUDA_INCLUDE_COMPILER_INTERNAL_HEADERS__
#undef __host__
#undef __device__
#undef __global__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __host__
#define __device__
#define __global__ __attribute__((used))
#define __shared__ static thread_local
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)

// Dynamic shared memory: kernels/common.cuh's TACHYON_DYNAMIC_SMEM(T, name) declares
// `extern __shared__ T name[]` under nvcc; here it is this block's dynamic buffer.
#define TACHYON_DYNAMIC_SMEM(T, name) T* const name = reinterpret_cast<T*>(emu_dyn_smem())

// ---- Vector types ---------------------------------------------------------------------------
// A copy of a 2- or 4-element vector type is one vector load / store on the GPU, which must
// be aligned to the type's size: the copy constructor and assignment check it.
#define EMU_VEC_CHECK(p, A, W)                                                        \
    do {                                                                              \
        if (__builtin_expect((reinterpret_cast<uintptr_t>(p) & ((A) - 1)) != 0, 0))   \
            emu_misaligned((p), (A), (W));                                            \
    } while (0)

#define EMU_VEC1(T, N) \
    struct N {         \
        T x;           \
    };
#define EMU_VEC3(T, N) \
    struct N {         \
        T x, y, z;     \
    };
#define EMU_VEC2(T, N, A)                                                   \
    struct __attribute__((aligned(A))) N {                                  \
        T x, y;                                                             \
        N() = default;                                                      \
        constexpr N(T a, T b) : x(a), y(b) {}                               \
        __forceinline__ N(const N& o) {                                     \
            EMU_VEC_CHECK(&o, A, 0);                                        \
            x = o.x;                                                        \
            y = o.y;                                                        \
        }                                                                   \
        __forceinline__ N& operator=(const N& o) {                          \
            EMU_VEC_CHECK(&o, A, 0);                                        \
            EMU_VEC_CHECK(this, A, 1);                                      \
            x = o.x;                                                        \
            y = o.y;                                                        \
            return *this;                                                   \
        }                                                                   \
    };
#define EMU_VEC4(T, N, A)                                                   \
    struct __attribute__((aligned(A))) N {                                  \
        T x, y, z, w;                                                       \
        N() = default;                                                      \
        constexpr N(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}         \
        __forceinline__ N(const N& o) {                                     \
            EMU_VEC_CHECK(&o, A, 0);                                        \
            x = o.x;                                                        \
            y = o.y;                                                        \
            z = o.z;                                                        \
            w = o.w;                                                        \
        }                                                                   \
        __forceinline__ N& operator=(const N& o) {                          \
            EMU_VEC_CHECK(&o, A, 0);                                        \
            EMU_VEC_CHECK(this, A, 1);                                      \
            x = o.x;                                                        \
            y = o.y;                                                        \
            z = o.z;                                                        \
            w = o.w;                                                        \
            return *this;                                                   \
        }                                                                   \
    };

typedef emu_u3 uint3;
EMU_VEC1(char, char1)
EMU_VEC2(char, char2, 2)
EMU_VEC3(char, char3)
EMU_VEC4(char, char4, 4)
EMU_VEC1(unsigned char, uchar1)
EMU_VEC2(unsigned char, uchar2, 2)
EMU_VEC3(unsigned char, uchar3)
EMU_VEC4(unsigned char, uchar4, 4)
EMU_VEC1(short, short1)
EMU_VEC2(short, short2, 4)
EMU_VEC3(short, short3)
EMU_VEC4(short, short4, 8)
EMU_VEC1(unsigned short, ushort1)
EMU_VEC2(unsigned short, ushort2, 4)
EMU_VEC3(unsigned short, ushort3)
EMU_VEC4(unsigned short, ushort4, 8)
EMU_VEC1(int, int1)
EMU_VEC2(int, int2, 8)
EMU_VEC3(int, int3)
EMU_VEC4(int, int4, 16)
EMU_VEC1(unsigned int, uint1)
EMU_VEC2(unsigned int, uint2, 8)
EMU_VEC4(unsigned int, uint4, 16)
EMU_VEC1(long, long1)
EMU_VEC2(long, long2, 16)
EMU_VEC3(long, long3)
EMU_VEC4(long, long4, 16)
EMU_VEC1(unsigned long, ulong1)
EMU_VEC2(unsigned long, ulong2, 16)
EMU_VEC3(unsigned long, ulong3)
EMU_VEC4(unsigned long, ulong4, 16)
EMU_VEC1(long long, longlong1)
EMU_VEC2(long long, longlong2, 16)
EMU_VEC3(long long, longlong3)
EMU_VEC4(long long, longlong4, 16)
EMU_VEC1(unsigned long long, ulonglong1)
EMU_VEC2(unsigned long long, ulonglong2, 16)
EMU_VEC3(unsigned long long, ulonglong3)
EMU_VEC4(unsigned long long, ulonglong4, 16)
EMU_VEC1(float, float1)
EMU_VEC2(float, float2, 8)
EMU_VEC3(float, float3)
EMU_VEC4(float, float4, 16)
EMU_VEC1(double, double1)
EMU_VEC2(double, double2, 16)
EMU_VEC3(double, double3)
EMU_VEC4(double, double4, 16)

#define EMU_MAKE1(N, T) \
    static __forceinline__ N make_##N(T a) { N r; r.x = a; return r; }
#define EMU_MAKE2(N, T) \
    static __forceinline__ N make_##N(T a, T b) { return N(a, b); }
#define EMU_MAKE3(N, T) \
    static __forceinline__ N make_##N(T a, T b, T c) { N r; r.x = a; r.y = b; r.z = c; return r; }
#define EMU_MAKE4(N, T) \
    static __forceinline__ N make_##N(T a, T b, T c, T d) { return N(a, b, c, d); }
#define EMU_MAKE_ALL(P, T) EMU_MAKE1(P##1, T) EMU_MAKE2(P##2, T) EMU_MAKE3(P##3, T) EMU_MAKE4(P##4, T)
EMU_MAKE_ALL(char, signed char)
EMU_MAKE_ALL(uchar, unsigned char)
EMU_MAKE_ALL(short, short)
EMU_MAKE_ALL(ushort, unsigned short)
EMU_MAKE_ALL(int, int)
EMU_MAKE_ALL(uint, unsigned int)
EMU_MAKE_ALL(long, long)
EMU_MAKE_ALL(ulong, unsigned long)
EMU_MAKE_ALL(longlong, long long)
EMU_MAKE_ALL(ulonglong, unsigned long long)
EMU_MAKE_ALL(float, float)
EMU_MAKE_ALL(double, double)

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// NVIDIA's headers must not bring their own vector types.
#define __VECTOR_TYPES_H__
#define __VECTOR_FUNCTIONS_H__
#define __VECTOR_FUNCTIONS_HPP__

static __forceinline__ void* emu_dyn_smem() {
    void* p;
    __asm__("movq (%1), %0" : "=r"(p) : "r"(&emu_self()->dyn_smem));
    return p;
}

// ---- Thread coordinates ---------------------------------------------------------------------
// Read with inline asm: the fiber record is constant for the thread's life, and a plain
// load would go through the access checks on every use of threadIdx.
static __forceinline__ emu_u3 emu_hdr_u3(unsigned off) {
    const char* h = reinterpret_cast<const char*>(emu_self()) + off;
    emu_u3 v;
    __asm__("movl (%3), %0\n\tmovl 4(%3), %1\n\tmovl 8(%3), %2" : "=&r"(v.x), "=&r"(v.y), "=&r"(v.z) : "r"(h));
    return v;
}
#define threadIdx (emu_hdr_u3(offsetof(emu_fiber_header, thread_idx)))
#define blockIdx (emu_hdr_u3(offsetof(emu_fiber_header, block_idx)))
#define blockDim (dim3(emu_hdr_u3(offsetof(emu_fiber_header, block_dim))))
#define gridDim (dim3(emu_hdr_u3(offsetof(emu_fiber_header, grid_dim))))
#define warpSize 32

// ---- Barriers and warp operations -----------------------------------------------------------
#define __syncthreads() emu_syncthreads_at(__FILE__, __LINE__)
#define __syncthreads_count(p) emu_syncthreads_pred_at((p), 0, __FILE__, __LINE__)
#define __syncthreads_and(p) emu_syncthreads_pred_at((p), 1, __FILE__, __LINE__)
#define __syncthreads_or(p) emu_syncthreads_pred_at((p), 2, __FILE__, __LINE__)
#define __syncwarp(...) emu_warp_op(EMU_WARP_SYNC, emu_mask_or_all(__VA_ARGS__), 0, 0, 32)
// Programmatic dependent launch (griddepcontrol.wait / launch_dependents) goes here: with
// synchronous launches both are no-ops.

static __forceinline__ unsigned emu_mask_or_all() { return 0xffffffffu; }
static __forceinline__ unsigned emu_mask_or_all(unsigned m) { return m; }

template <class T>
static __forceinline__ uint64_t emu_to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp operand of up to 8 bytes");
    uint64_t b = 0;
    __builtin_memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
static __forceinline__ T emu_from_bits(uint64_t b) {
    T v;
    __builtin_memcpy(&v, &b, sizeof(T));
    return v;
}

template <class T>
static __forceinline__ T __shfl_sync(unsigned mask, T var, int src, int width = warpSize) {
    return emu_from_bits<T>(emu_warp_op(EMU_WARP_SHFL_IDX, mask, emu_to_bits(var), src, width));
}
template <class T>
static __forceinline__ T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu_from_bits<T>(emu_warp_op(EMU_WARP_SHFL_UP, mask, emu_to_bits(var), int(delta), width));
}
template <class T>
static __forceinline__ T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu_from_bits<T>(emu_warp_op(EMU_WARP_SHFL_DOWN, mask, emu_to_bits(var), int(delta), width));
}
template <class T>
static __forceinline__ T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return emu_from_bits<T>(emu_warp_op(EMU_WARP_SHFL_XOR, mask, emu_to_bits(var), lane_mask, width));
}
static __forceinline__ unsigned __ballot_sync(unsigned mask, int pred) {
    return unsigned(emu_warp_op(EMU_WARP_BALLOT, mask, pred != 0, 0, 32));
}
static __forceinline__ int __any_sync(unsigned mask, int pred) {
    return int(emu_warp_op(EMU_WARP_ANY, mask, pred != 0, 0, 32));
}
static __forceinline__ int __all_sync(unsigned mask, int pred) {
    return int(emu_warp_op(EMU_WARP_ALL, mask, pred != 0, 0, 32));
}
static __forceinline__ unsigned __activemask() { return emu_activemask(); }
template <class T>
static __forceinline__ unsigned __match_any_sync(unsigned mask, T v) {
    return unsigned(emu_warp_op(EMU_WARP_MATCH_ANY, mask, emu_to_bits(v), 0, 32));
}
#define EMU_REDUCE(NAME, T, KIND)                                                      \
    static __forceinline__ T NAME(unsigned mask, T v) {                                \
        return T(emu_warp_op(KIND, mask, uint32_t(v), 0, 32));                         \
    }
EMU_REDUCE(__reduce_add_sync, unsigned, EMU_WARP_REDUCE_ADD_U32)
EMU_REDUCE(__reduce_add_sync, int, EMU_WARP_REDUCE_ADD_I32)
EMU_REDUCE(__reduce_min_sync, unsigned, EMU_WARP_REDUCE_MIN_U32)
EMU_REDUCE(__reduce_min_sync, int, EMU_WARP_REDUCE_MIN_I32)
EMU_REDUCE(__reduce_max_sync, unsigned, EMU_WARP_REDUCE_MAX_U32)
EMU_REDUCE(__reduce_max_sync, int, EMU_WARP_REDUCE_MAX_I32)
EMU_REDUCE(__reduce_and_sync, unsigned, EMU_WARP_REDUCE_AND)
EMU_REDUCE(__reduce_or_sync, unsigned, EMU_WARP_REDUCE_OR)
EMU_REDUCE(__reduce_xor_sync, unsigned, EMU_WARP_REDUCE_XOR)

static __forceinline__ void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static __forceinline__ void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static __forceinline__ void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// A wait on another block (a flag, a grid barrier): let the other threads run.
static __forceinline__ void emu_spin_wait() { emu_yield(); }
static __forceinline__ void __nanosleep(unsigned) { emu_yield(); }
static __forceinline__ long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
static __forceinline__ void __trap() { emu_trap("__trap()"); }
static __forceinline__ void __brkpt() { emu_trap("__brkpt()"); }

// ---- Atomics ----------------------------------------------------------------------------------
template <class T>
static __forceinline__ uint64_t emu_abits(T v) { return emu_to_bits(v); }
#define EMU_ATOMIC1(NAME, OP, T, TY)                                                      \
    static __forceinline__ T NAME(T* p, T v) {                                            \
        return emu_from_bits<T>(emu_atomic(OP, TY, (void*)p, emu_abits(v), 0));           \
    }
EMU_ATOMIC1(atomicAdd, EMU_ATOM_ADD, int, EMU_TY_I32)
EMU_ATOMIC1(atomicAdd, EMU_ATOM_ADD, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicAdd, EMU_ATOM_ADD, unsigned long long, EMU_TY_U64)
EMU_ATOMIC1(atomicAdd, EMU_ATOM_ADD, float, EMU_TY_F32)
EMU_ATOMIC1(atomicAdd, EMU_ATOM_ADD, double, EMU_TY_F64)
EMU_ATOMIC1(atomicSub, EMU_ATOM_SUB, int, EMU_TY_I32)
EMU_ATOMIC1(atomicSub, EMU_ATOM_SUB, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicMin, EMU_ATOM_MIN, int, EMU_TY_I32)
EMU_ATOMIC1(atomicMin, EMU_ATOM_MIN, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicMin, EMU_ATOM_MIN, long long, EMU_TY_I64)
EMU_ATOMIC1(atomicMin, EMU_ATOM_MIN, unsigned long long, EMU_TY_U64)
EMU_ATOMIC1(atomicMax, EMU_ATOM_MAX, int, EMU_TY_I32)
EMU_ATOMIC1(atomicMax, EMU_ATOM_MAX, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicMax, EMU_ATOM_MAX, long long, EMU_TY_I64)
EMU_ATOMIC1(atomicMax, EMU_ATOM_MAX, unsigned long long, EMU_TY_U64)
EMU_ATOMIC1(atomicExch, EMU_ATOM_EXCH, int, EMU_TY_I32)
EMU_ATOMIC1(atomicExch, EMU_ATOM_EXCH, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicExch, EMU_ATOM_EXCH, unsigned long long, EMU_TY_U64)
EMU_ATOMIC1(atomicExch, EMU_ATOM_EXCH, float, EMU_TY_F32)
EMU_ATOMIC1(atomicAnd, EMU_ATOM_AND, int, EMU_TY_I32)
EMU_ATOMIC1(atomicAnd, EMU_ATOM_AND, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicAnd, EMU_ATOM_AND, unsigned long long, EMU_TY_U64)
EMU_ATOMIC1(atomicOr, EMU_ATOM_OR, int, EMU_TY_I32)
EMU_ATOMIC1(atomicOr, EMU_ATOM_OR, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicOr, EMU_ATOM_OR, unsigned long long, EMU_TY_U64)
EMU_ATOMIC1(atomicXor, EMU_ATOM_XOR, int, EMU_TY_I32)
EMU_ATOMIC1(atomicXor, EMU_ATOM_XOR, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicXor, EMU_ATOM_XOR, unsigned long long, EMU_TY_U64)
EMU_ATOMIC1(atomicInc, EMU_ATOM_INC, unsigned int, EMU_TY_U32)
EMU_ATOMIC1(atomicDec, EMU_ATOM_DEC, unsigned int, EMU_TY_U32)
#define EMU_ATOMIC_CAS(T, TY)                                                             \
    static __forceinline__ T atomicCAS(T* p, T cmp, T v) {                                \
        return emu_from_bits<T>(emu_atomic(EMU_ATOM_CAS, TY, (void*)p, emu_abits(cmp), emu_abits(v))); \
    }
EMU_ATOMIC_CAS(int, EMU_TY_I32)
EMU_ATOMIC_CAS(unsigned int, EMU_TY_U32)
EMU_ATOMIC_CAS(unsigned long long, EMU_TY_U64)
EMU_ATOMIC_CAS(unsigned short, EMU_TY_U16)

// ---- Loads with cache hints: plain (checked) loads here -------------------------------------
template <class T> static __forceinline__ T __ldg(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcg(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldca(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcs(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldlu(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcv(const T* p) { return *p; }
template <class T> static __forceinline__ void __stcg(T* p, T v) { *p = v; }
template <class T> static __forceinline__ void __stcs(T* p, T v) { *p = v; }
template <class T> static __forceinline__ void __stwb(T* p, T v) { *p = v; }
template <class T> static __forceinline__ void __stwt(T* p, T v) { *p = v; }

// ---- Math -----------------------------------------------------------------------------------
static __forceinline__ int min(int a, int b) { return a < b ? a : b; }
static __forceinline__ int max(int a, int b) { return a > b ? a : b; }
static __forceinline__ unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static __forceinline__ unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static __forceinline__ unsigned min(int a, unsigned b) { return min(unsigned(a), b); }
static __forceinline__ unsigned min(unsigned a, int b) { return min(a, unsigned(b)); }
static __forceinline__ unsigned max(int a, unsigned b) { return max(unsigned(a), b); }
static __forceinline__ unsigned max(unsigned a, int b) { return max(a, unsigned(b)); }
static __forceinline__ long long min(long long a, long long b) { return a < b ? a : b; }
static __forceinline__ long long max(long long a, long long b) { return a > b ? a : b; }
static __forceinline__ unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static __forceinline__ unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static __forceinline__ long min(long a, long b) { return a < b ? a : b; }
static __forceinline__ long max(long a, long b) { return a > b ? a : b; }
static __forceinline__ unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static __forceinline__ unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static __forceinline__ float min(float a, float b) { return fminf(a, b); }
static __forceinline__ float max(float a, float b) { return fmaxf(a, b); }
static __forceinline__ double min(double a, double b) { return fmin(a, b); }
static __forceinline__ double max(double a, double b) { return fmax(a, b); }

static __forceinline__ float __int_as_float(int v) { return emu_from_bits<float>(uint32_t(v)); }
static __forceinline__ int __float_as_int(float v) { return int(uint32_t(emu_to_bits(v))); }
static __forceinline__ float __uint_as_float(unsigned v) { return emu_from_bits<float>(v); }
static __forceinline__ unsigned __float_as_uint(float v) { return uint32_t(emu_to_bits(v)); }
static __forceinline__ double __longlong_as_double(long long v) { return emu_from_bits<double>(uint64_t(v)); }
static __forceinline__ long long __double_as_longlong(double v) { return (long long)emu_to_bits(v); }

static __forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static __forceinline__ double rsqrt(double x) { return 1.0 / sqrt(x); }
static __forceinline__ float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
// glibc declares these names itself: macros, not functions.
#define __expf(...) expf(__VA_ARGS__)
#define __exp10f(...) exp10f(__VA_ARGS__)
#define __logf(...) logf(__VA_ARGS__)
#define __log2f(...) log2f(__VA_ARGS__)
#define __log10f(...) log10f(__VA_ARGS__)
#define __sinf(...) sinf(__VA_ARGS__)
#define __cosf(...) cosf(__VA_ARGS__)
#define __tanf(...) tanf(__VA_ARGS__)
#define __sincosf(...) sincosf(__VA_ARGS__)
#define __powf(...) powf(__VA_ARGS__)
static __forceinline__ float __fdividef(float a, float b) { return a / b; }
static __forceinline__ float __frcp_rn(float x) { return 1.0f / x; }
static __forceinline__ float __fsqrt_rn(float x) { return sqrtf(x); }
static __forceinline__ float __fadd_rn(float a, float b) { return a + b; }
static __forceinline__ float __fsub_rn(float a, float b) { return a - b; }
static __forceinline__ float __fmul_rn(float a, float b) { return a * b; }
static __forceinline__ float __fdiv_rn(float a, float b) { return a / b; }
static __forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static __forceinline__ double __dadd_rn(double a, double b) { return a + b; }
static __forceinline__ double __dmul_rn(double a, double b) { return a * b; }
static __forceinline__ double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static __forceinline__ float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
static __forceinline__ float exp10f_emu(float x) { return exp10f(x); }
static __forceinline__ int __float2int_rn(float x) { return int(nearbyintf(x)); }
static __forceinline__ int __float2int_rz(float x) { return int(x); }
static __forceinline__ int __float2int_rd(float x) { return int(floorf(x)); }
static __forceinline__ int __float2int_ru(float x) { return int(ceilf(x)); }
static __forceinline__ unsigned __float2uint_rn(float x) { return unsigned(nearbyintf(x)); }
static __forceinline__ unsigned __float2uint_rz(float x) { return unsigned(x); }
static __forceinline__ float __int2float_rn(int x) { return float(x); }
static __forceinline__ float __uint2float_rn(unsigned x) { return float(x); }
static __forceinline__ int __popc(unsigned x) { return __builtin_popcount(x); }
static __forceinline__ int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static __forceinline__ int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
static __forceinline__ int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static __forceinline__ int __ffs(int x) { return __builtin_ffs(x); }
static __forceinline__ int __ffsll(long long x) { return __builtin_ffsll(x); }
static __forceinline__ unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
static __forceinline__ unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = (uint64_t(y) << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
static __forceinline__ unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
    const uint64_t v = (uint64_t(hi) << 32) | lo;
    return unsigned((v << (s & 31)) >> 32);
}
static __forceinline__ unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    const uint64_t v = (uint64_t(hi) << 32) | lo;
    return unsigned(v >> (s & 31));
}
// SIMD-within-a-word integer ops: __dp4a sums the products of the four signed (or unsigned)
// bytes of a and b onto c (exact; 32-bit wraparound); __vsub4 subtracts bytewise, each byte
// wrapping on its own (no borrow into the next).
static __forceinline__ int __dp4a(int a, int b, int c) {
    int32_t s = 0;
    for (int i = 0; i < 4; ++i) s += int32_t(int8_t(a >> (8 * i))) * int32_t(int8_t(b >> (8 * i)));
    return int(uint32_t(c) + uint32_t(s));
}
static __forceinline__ unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    uint32_t s = 0;
    for (int i = 0; i < 4; ++i) s += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
    return c + s;
}
static __forceinline__ unsigned __vsub4(unsigned a, unsigned b) {
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) - (b >> (8 * i))) & 0xffu) << (8 * i);
    return r;
}
static __forceinline__ int __mul24(int a, int b) { return (a << 8 >> 8) * (b << 8 >> 8); }
static __forceinline__ unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffff) * (b & 0xffffff); }
static __forceinline__ unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
static __forceinline__ int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
static __forceinline__ unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// ---- Half and bfloat16: NVIDIA's host implementations ---------------------------------------
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#endif  // TACHYON_CUDA_EMU_H
