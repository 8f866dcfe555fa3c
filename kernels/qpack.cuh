/*
 * qpack.cuh: the repacked layout of GGML block matrices (src/backend/cuda/repack.rs; its
 * arrays are described at the top of gemv_qpack.cu) as the kernels read it: where the
 * arrays start, one 32-element unit's raw bytes (`load_unit`), its scales decoded once
 * (`unit_scales`) and its elements as the CPU's dequantize gives them (`decode8` over a
 * `Cursor`), operation for operation. Shared by the decode GEMV (gemv_qpack.cu) and the
 * tensor-core product of more rows (gemm_mma.cu's `gemm_mma_qpack_<format>`).
 */
#ifndef TACHYON_QPACK_CUH
#define TACHYON_QPACK_CUH

#include "common.cuh"

namespace {
namespace qpack {

__host__ __device__ constexpr bool is_k(int f) {
    return f == TACHYON_DTYPE_Q4_K || f == TACHYON_DTYPE_Q5_K || f == TACHYON_DTYPE_Q6_K;
}
__host__ __device__ constexpr int qs_bytes(int f) { return f == TACHYON_DTYPE_Q8_0 ? 32 : 16; }
__host__ __device__ constexpr int qh_bytes(int f) {
    return f == TACHYON_DTYPE_Q6_K ? 8
           : (f == TACHYON_DTYPE_Q5_0 || f == TACHYON_DTYPE_Q5_1 || f == TACHYON_DTYPE_Q5_K) ? 4
                                                                                           : 0;
}
__host__ __device__ constexpr int sc_bytes(int f) {
    return (f == TACHYON_DTYPE_Q4_1 || f == TACHYON_DTYPE_Q5_1) ? 4 : 2;
}

__device__ __forceinline__ size_t align256(size_t v) { return (v + 255) & ~static_cast<size_t>(255); }

// Where the arrays of a repacked matrix start (repack.rs `PackedLayout`, the same sums).
template <int kF>
struct Arrays {
    const uint4* qs;
    const uint32_t* qh;
    const uint8_t* sc;
    const uint32_t* sup;
};

template <int kF>
__device__ __forceinline__ Arrays<kF> arrays(const void* base, size_t units) {
    const uint8_t* b = static_cast<const uint8_t*>(base);
    const size_t qh_off = align256(units * qs_bytes(kF));
    const size_t sc_off = align256(qh_off + units * qh_bytes(kF));
    const size_t sup_off = align256(sc_off + units * sc_bytes(kF));
    Arrays<kF> a;
    a.qs = reinterpret_cast<const uint4*>(b);
    a.qh = reinterpret_cast<const uint32_t*>(b + qh_off);
    a.sc = b + sc_off;
    a.sup = reinterpret_cast<const uint32_t*>(b + sup_off);
    return a;
}

// The raw bytes of one unit, as loaded.
struct Unit {
    uint4 q;
    uint4 q2;  // Q8_0's second 16 codes
    uint32_t h0, h1;
    uint32_t s;
    uint32_t sup;
};

template <int kF>
__device__ __forceinline__ Unit load_unit(const Arrays<kF>& a, size_t g) {
    Unit u;
    if (kF == TACHYON_DTYPE_Q8_0) {
        u.q = __ldg(a.qs + 2 * g);
        u.q2 = __ldg(a.qs + 2 * g + 1);
    } else {
        u.q = __ldg(a.qs + g);
        u.q2 = u.q;
    }
    u.h0 = 0;
    u.h1 = 0;
    if (qh_bytes(kF) == 4) u.h0 = __ldg(a.qh + g);
    if (qh_bytes(kF) == 8) {
        const uint2 h = __ldg(reinterpret_cast<const uint2*>(a.qh) + g);
        u.h0 = h.x;
        u.h1 = h.y;
    }
    if (sc_bytes(kF) == 4) {
        u.s = __ldg(reinterpret_cast<const uint32_t*>(a.sc) + g);
    } else {
        u.s = __ldg(reinterpret_cast<const unsigned short*>(a.sc) + g);
    }
    u.sup = is_k(kF) ? __ldg(a.sup + g / 8) : 0u;
    return u;
}

__device__ __forceinline__ float half_lo(uint32_t v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xffffu)));
}
__device__ __forceinline__ float half_hi(uint32_t v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16)));
}

// A unit's scales, decoded once: the per-element step is then one or two roundings.
struct Scales {
    float a;  // d, d * sc, or (Q6_K) d * sc of elements 0-15
    float b;  // m, dmin * mn, or (Q6_K) d * sc of elements 16-31
};

template <int kF>
__device__ __forceinline__ Scales unit_scales(const Unit& u) {
    Scales s;
    if (kF == TACHYON_DTYPE_Q4_K || kF == TACHYON_DTYPE_Q5_K) {
        s.a = __fmul_rn(half_lo(u.sup), static_cast<float>(u.s & 0xffu));
        s.b = __fmul_rn(half_hi(u.sup), static_cast<float>((u.s >> 8) & 0xffu));
    } else if (kF == TACHYON_DTYPE_Q6_K) {
        const float d = half_lo(u.sup);
        s.a = __fmul_rn(d, static_cast<float>(static_cast<int8_t>(u.s & 0xffu)));
        s.b = __fmul_rn(d, static_cast<float>(static_cast<int8_t>((u.s >> 8) & 0xffu)));
    } else {
        s.a = half_lo(u.s);
        s.b = sc_bytes(kF) == 4 ? half_hi(u.s) : 0.0f;
    }
    return s;
}

// Four elements of a unit as the CPU's dequantize gives them: k-th code in byte k of v
// (kHi: its high nibble), top bits from hb (bit k, or bits 2k and 2k + 1 for Q6_K).
template <int kF, bool kHi>
__device__ __forceinline__ void decode4(uint32_t v, uint32_t hb, const Scales& s, float w[4]) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if (kF == TACHYON_DTYPE_Q8_0) {
            const int q = static_cast<int>(v << (24 - 8 * k)) >> 24;
            w[k] = __fmul_rn(static_cast<float>(q), s.a);
            continue;
        }
        int q = static_cast<int>((v >> (8 * k + (kHi ? 4 : 0))) & 0xfu);
        if (qh_bytes(kF) == 4) q |= static_cast<int>((hb >> k) & 1u) << 4;
        if (kF == TACHYON_DTYPE_Q6_K) q |= static_cast<int>((hb >> (2 * k)) & 3u) << 4;
        if (kF == TACHYON_DTYPE_Q4_0) {
            w[k] = __fmul_rn(static_cast<float>(q - 8), s.a);
        } else if (kF == TACHYON_DTYPE_Q5_0) {
            w[k] = __fmul_rn(static_cast<float>(q - 16), s.a);
        } else if (kF == TACHYON_DTYPE_Q4_1 || kF == TACHYON_DTYPE_Q5_1) {
            w[k] = __fadd_rn(__fmul_rn(static_cast<float>(q), s.a), s.b);
        } else if (kF == TACHYON_DTYPE_Q6_K) {
            w[k] = __fmul_rn(kHi ? s.b : s.a, static_cast<float>(q - 32));
        } else {  // Q4_K, Q5_K
            w[k] = __fsub_rn(__fmul_rn(s.a, static_cast<float>(q)), s.b);
        }
    }
}

// Where a unit's next 4 + 4 elements come from: the words are rotated after each step so
// that the current one is always .x (registers only, no indexed local memory).
struct Cursor {
    uint4 q, q2;
    uint32_t hlo, hhi;
};

template <int kF>
__device__ __forceinline__ Cursor cursor(const Unit& u) {
    Cursor c;
    c.q = u.q;
    c.q2 = u.q2;
    // Q5: bit j of h0 (lo group of step w: bits 4w.., hi group: 16 + 4w..); Q6_K: 2 bits
    // per element, elements 0-15 in h0, 16-31 in h1.
    c.hlo = kF == TACHYON_DTYPE_Q6_K ? u.h0 : u.h0 & 0xffffu;
    c.hhi = kF == TACHYON_DTYPE_Q6_K ? u.h1 : u.h0 >> 16;
    return c;
}

template <int kF>
__device__ __forceinline__ void advance(Cursor& c) {
    c.q = make_uint4(c.q.y, c.q.z, c.q.w, c.q.x);
    if (kF == TACHYON_DTYPE_Q8_0) c.q2 = make_uint4(c.q2.y, c.q2.z, c.q2.w, c.q2.x);
    const int shift = kF == TACHYON_DTYPE_Q6_K ? 8 : 4;
    c.hlo >>= shift;
    c.hhi >>= shift;
}

// Elements 4w .. 4w + 3 (lo) and 16 + 4w .. 16 + 4w + 3 (hi) of the cursor's unit.
template <int kF>
__device__ __forceinline__ void decode8(const Cursor& c, const Scales& s, float lo[4], float hi[4]) {
    decode4<kF, false>(c.q.x, c.hlo, s, lo);
    decode4<kF, true>(kF == TACHYON_DTYPE_Q8_0 ? c.q2.x : c.q.x, c.hhi, s, hi);
}

}  // namespace qpack
}  // namespace

#endif  // TACHYON_QPACK_CUH
