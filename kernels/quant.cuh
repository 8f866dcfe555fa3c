/*
 * quant.cuh: GGML block formats on the device, one element at a time. The CPU twins are
 * the reference dequantizers in src/quant/dequant.rs (same operand order, no fused
 * multiply-add in the scale arithmetic), so a kernel built on these reads the same values.
 *
 * Block layouts (little-endian, packed; offsets in bytes):
 *   Q4_0 (32 elems, 18 B): d f16 @0, qs[16] @2; e < 16: low nibble of qs[e], else high of qs[e-16]; (q-8)*d
 *   Q4_1 (32, 20 B): d @0, m @2, qs[16] @4; q*d + m
 *   Q5_0 (32, 22 B): d @0, qh u32 @2, qs[16] @6; 5th bit of element e is bit e of qh; (q-16)*d
 *   Q5_1 (32, 24 B): d @0, m @2, qh @4, qs[16] @8; q*d + m
 *   Q8_0 (32, 34 B): d @0, qs i8[32] @2; q*d
 *   Q4_K (256, 144 B): d @0, dmin @2, scales[12] @4 (6-bit scale and min per 32-element
 *        sub-block s), qs[128] @16: sub-block s = 2c + h takes nibble h of qs[32c + l];
 *        d*sc[s]*q - dmin*mn[s]
 *   Q5_K (256, 176 B): as Q4_K with qh[32] @16 (bit s of qh[l] is the 5th bit), qs @48
 *   Q6_K (256, 210 B): ql[128] @0, qh[64] @128, scales i8[16] @192, d @208; element
 *        e = 128h + 32k + l: low nibble of ql[64h + 32(k%2) + l] (k < 2) or high (k >= 2),
 *        top bits (qh[32h + l] >> 2k) & 3; d * sc[e/16] * (q - 32)
 */
#ifndef TACHYON_QUANT_CUH
#define TACHYON_QUANT_CUH

#include "common.cuh"

namespace tachyon {

__device__ __forceinline__ bool is_quant(int dtype) { return dtype >= TACHYON_DTYPE_Q4_0; }

// Elements per block, and bytes per block.
__device__ __forceinline__ int quant_block_elems(int dtype) {
    return dtype >= TACHYON_DTYPE_Q4_K ? 256 : 32;
}

__device__ __forceinline__ int quant_block_bytes(int dtype) {
    switch (dtype) {
        case TACHYON_DTYPE_Q4_0: return 18;
        case TACHYON_DTYPE_Q4_1: return 20;
        case TACHYON_DTYPE_Q5_0: return 22;
        case TACHYON_DTYPE_Q5_1: return 24;
        case TACHYON_DTYPE_Q8_0: return 34;
        case TACHYON_DTYPE_Q4_K: return 144;
        case TACHYON_DTYPE_Q5_K: return 176;
        default: return 210;  // Q6_K
    }
}

__device__ __forceinline__ float f16_at(const uint8_t* b) {
    const unsigned short bits = static_cast<unsigned short>(b[0] | (b[1] << 8));
    return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ uint32_t u32_at(const uint8_t* b) {
    return static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) |
           (static_cast<uint32_t>(b[2]) << 16) | (static_cast<uint32_t>(b[3]) << 24);
}

// The 4-bit code of element e (< 32) of a simple block whose nibbles start at qs.
__device__ __forceinline__ int nibble32(const uint8_t* qs, int e) {
    return e < 16 ? (qs[e] & 0xf) : (qs[e - 16] >> 4);
}

// Scale and min of sub-block s (< 8) of a Q4_K / Q5_K block's 12 scale bytes.
__device__ __forceinline__ void k4_scale_min(const uint8_t* q, int s, int* sc, int* mn) {
    if (s < 4) {
        *sc = q[s] & 63;
        *mn = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 0xf) | ((q[s - 4] >> 6) << 4);
        *mn = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

// Element e of the block at b, as f32.
__device__ __forceinline__ float quant_elem(const uint8_t* b, int dtype, int e) {
    switch (dtype) {
        case TACHYON_DTYPE_Q4_0:
            return static_cast<float>(nibble32(b + 2, e) - 8) * f16_at(b);
        case TACHYON_DTYPE_Q4_1:
            return __fadd_rn(__fmul_rn(static_cast<float>(nibble32(b + 4, e)), f16_at(b)), f16_at(b + 2));
        case TACHYON_DTYPE_Q5_0: {
            const int q = nibble32(b + 6, e) | (((u32_at(b + 2) >> e) & 1) << 4);
            return static_cast<float>(q - 16) * f16_at(b);
        }
        case TACHYON_DTYPE_Q5_1: {
            const int q = nibble32(b + 8, e) | (((u32_at(b + 4) >> e) & 1) << 4);
            return __fadd_rn(__fmul_rn(static_cast<float>(q), f16_at(b)), f16_at(b + 2));
        }
        case TACHYON_DTYPE_Q8_0:
            return static_cast<float>(static_cast<int8_t>(b[2 + e])) * f16_at(b);
        case TACHYON_DTYPE_Q4_K:
        case TACHYON_DTYPE_Q5_K: {
            const int s = e / 32, l = e % 32, c = s / 2, shift = 4 * (s % 2);
            int sc, mn;
            k4_scale_min(b + 4, s, &sc, &mn);
            const bool five = dtype == TACHYON_DTYPE_Q5_K;
            const uint8_t* qs = b + (five ? 48 : 16);
            int q = (qs[32 * c + l] >> shift) & 0xf;
            if (five) q |= ((b[16 + l] >> s) & 1) << 4;
            const float d1 = __fmul_rn(f16_at(b), static_cast<float>(sc));
            const float m1 = __fmul_rn(f16_at(b + 2), static_cast<float>(mn));
            return __fsub_rn(__fmul_rn(d1, static_cast<float>(q)), m1);
        }
        default: {  // Q6_K
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            const int lo = (b[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xf;
            const int hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
            const float sc = static_cast<float>(static_cast<int8_t>(b[192 + e / 16]));
            return __fmul_rn(__fmul_rn(f16_at(b + 208), sc), static_cast<float>((lo | (hi << 4)) - 32));
        }
    }
}

// Element i of a quantized row starting at row (whole blocks).
__device__ __forceinline__ float quant_row_elem(const uint8_t* row, int dtype, int i) {
    const int qk = quant_block_elems(dtype);
    return quant_elem(row + static_cast<size_t>(i / qk) * quant_block_bytes(dtype), dtype, i % qk);
}

}  // namespace tachyon

#endif  // TACHYON_QUANT_CUH
