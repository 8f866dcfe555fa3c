/*
 * gemv_qpack.cu: the decode-time matrix product for GGML block formats repacked at upload
 * (src/backend/cuda/repack.rs): `out[t, r] = dot(w[r], x[t])` for a handful of activation
 * rows t, f32 accumulation, with the fused parts of gemv.cu (gemv_fused.cuh): RMSNorm of
 * the activation rows in the prologue, bias, SwiGLU (w2), residual add and q/k/v split in
 * the epilogue. gemv_quant.cu is the same product over the file's own bytes (the readable
 * form and the fallback for a matrix that is not repacked).
 *
 * Layout (the "unit" is 32 consecutive elements of a row; a row of `cols` has U = cols / 32
 * units, unit g = r * U + u of the matrix; every array starts 256-byte aligned in one
 * buffer, in this order, so the kernel finds them from rows, cols and the format alone):
 *   qs: 16 B per unit (4-bit codes: byte i holds element i in its low nibble, i + 16 in its
 *       high), 32 B for Q8_0 (int8 codes in element order): 16-byte loads.
 *   qh: the codes' top bits: 4 B per unit for Q5_0/Q5_1/Q5_K (bit j: bit 4 of element j),
 *       8 B for Q6_K (bits 2j, 2j+1 of the 64-bit word: bits 4-5 of element j); else none.
 *   sc: per unit, as stored in the file: f16 d (Q4_0, Q5_0, Q8_0: 2 B); f16 d, f16 m (Q4_1,
 *       Q5_1: 4 B); the 6-bit scale and min as two bytes (Q4_K, Q5_K); Q6_K's two int8
 *       scales (elements 0-15, 16-31).
 *   sup: per 256-element block (8 units) of the K formats: f16 d, f16 dmin (Q6_K: d, 0).
 * The values are the CPU's dequantize (src/quant/dequant.rs) operation for operation,
 * rounded the same way (__fmul_rn and friends: no contraction): e.g. Q4_K
 * `(d * sc) * q - dmin * mn`, the scale products formed once per unit, never per element.
 * Rows are not padded: a row is a whole number of units in every array.
 *
 * Launch: as gemv_quant.cu: block = (32, 8), `warps_per_row` warps per output row (split-K
 * inside the block, fixed-order sum), grid = ceil(rows / (8 / warps_per_row)).
 * Work split: lane l of part p takes units p * 32 + l, then every 32 * warps_per_row: the
 * lanes of a warp read 512 (Q8_0: 1024) consecutive bytes of qs per load. Each lane issues
 * the loads of 2 units (of both matrices with w2; Q8_0 with w2: 1 of each) before it
 * decodes the first, then takes a unit in 4 steps of 8 elements (two float4 of x per
 * activation row, read from L1; not unrolled, or the loads of a whole unit for 4 rows are
 * hoisted and spill). Activation rows are processed 4 at a time.
 * Programmatic dependent launch (kernels/README.md): before its griddepcontrol.wait each
 * lane only prefetches into L2 the codes of its first units in flight; x, the outputs and
 * every write come after the wait.
 *
 * Bytes per call (weights; x and out are a few KB), n = 1; bits per weight as repacked:
 * Q4_0 4.5, Q4_1 5, Q5_0 5.5, Q5_1 6, Q8_0 8.5, Q4_K 4.625, Q5_K 5.625, Q6_K 6.625.
 *   1B (dim 2048, ffn 8192, 32/8 heads of 64): Q4_K norm+QKV 3.6 MB, o-proj 2.4 MB,
 *      norm+gate+up 19.4 MB, down 9.7 MB (Q6_K 13.9 MB); Q8_0 6.7/4.5/35.7/17.8 MB.
 *   8B (dim 4096, ffn 14336, 32/8 heads of 128): Q4_K 14.5/9.7/67.9/33.9 MB (Q6_K down
 *      48.6 MB); Q8_0 26.7/17.8/124.8/62.4 MB.
 * In flight: 2 units a lane, 36 B (Q4_K, sc and sup included; 68 B Q8_0), twice that with
 * w2 (Q8_0: the same 68 B). Registers (build.rs's ptxas, nvcc.log; one kernel per
 * format, __launch_bounds__(256, 2), no spills), sm_90a / sm_80: Q4_0 125/122,
 * Q4_1 123/119, Q5_0 119/119, Q5_1 124/125, Q8_0 109/103, Q4_K 126/118, Q5_K 128/127,
 * Q6_K 128/128.
 * At <= 128 an SM keeps 2 blocks, 512 lanes: about 18 KB per SM in flight for Q4_K (36 KB
 * gate/up, 35 KB Q8_0), near the 15-20 KB an H100 needs at ~600 ns latency to stream at
 * its copy rate.
 * Expected (reasoned, unmeasured): 70-85% of copy bandwidth for gate/up and down, less
 * for the 2-4 MB products of the 1B shape (a few microseconds: launch tail and the norm's
 * L2 reads show); the dequantize is ~4 integer/float ops per element per matrix, which
 * stays under the memory time at n = 1-4.
 *
 * The `_q8` kernels (`--int8-acts`): the same loop over int8 activations that
 * quantize_act.cu wrote (32 codes and a (d, d * sum) pair per unit; GemvParams xq / xd,
 * no norm: that kernel applied it). A unit's codes become 8 words of signed bytes once
 * (nibbles masked, top bits spread into bit 4 or bits 4-5 of each byte, the Q4_0 / Q5_0 /
 * Q6_K offsets taken out with __vsub4), then each activation row costs 2 int4 + 1 float2
 * loads (L1) and 8 __dp4a, exact integer sums, and one or two f32 products per unit:
 *   Q4_0, Q5_0, Q8_0: (d * dx) * sum;  Q4_1, Q5_1: (d * dx) * sum + m * (dx * sum(x));
 *   Q4_K, Q5_K: (d*sc * dx) * sum - dmin*mn * (dx * sum(x));  Q6_K: dx * (sa * lo + sb * hi).
 * Against the f32 form that is ~10 integer ops per 32 elements per row instead of ~8 flops
 * per element, and 40 bytes of activations per unit per row instead of 128: what makes
 * 2-4 rows (verify, short prefill chunks) nearly as cheap as one. Registers (nvcc.log),
 * sm_90a / sm_80: Q4_0 83/84, Q4_1 85/84, Q5_0 99/92, Q5_1 97/88, Q8_0 90/80, Q4_K 90/80,
 * Q5_K 106/92, Q6_K 117/103, no spills: room for more units in flight (unmeasured: the
 * first thing to tune on a GPU). Speed unmeasured; correctness against the CPU twin
 * (precise products over `quant::round_trip_int8` activations) under the emulated device.
 */
#include "gemv_fused.cuh"
#include "qpack.cuh"

// All kernel files build as one unit: the helpers get a namespace of their own.
namespace {
namespace qpack {

constexpr int kQWarps = 8;
constexpr int kQBatch = tachyon::kGemvBatch;

// Units (32 elements) each lane loads before it decodes the first: 2, of both matrices
// with w2, except Q8_0's gate/up (2 x 2 units of 32-byte codes spill at 128 registers;
// one unit of each matrix is the same 64 bytes in flight).
__host__ __device__ constexpr int units_in_flight(int f, bool two) {
    return f == TACHYON_DTYPE_Q8_0 && two ? 1 : 2;
}

__device__ __forceinline__ void unpack4(const float4 v, float f[4]) {
    f[0] = v.x;
    f[1] = v.y;
    f[2] = v.z;
    f[3] = v.w;
}

// acc[b] += unit . x[t0 + b][32 u ..] (and acc2 with w2).
template <int kF, bool kTwo, bool kNorm>
__device__ __forceinline__ void dot_unit(const GemvParams& p, const Unit& ua, const Unit& ub,
                                         int u, int t0, int nb, const float scale[kQBatch],
                                         float acc[kQBatch], float acc2[kQBatch]) {
    const Scales sa = unit_scales<kF>(ua);
    const Scales sb = kTwo ? unit_scales<kF>(ub) : sa;
    Cursor ca = cursor<kF>(ua);
    Cursor cb = cursor<kF>(ub);
    // Not unrolled further: the activation loads of the whole unit (up to 4 rows x 8
    // float4) would be hoisted and spill.
#pragma unroll 1
    for (int w = 0; w < 4; ++w) {
        float wl[4], wh[4], wl2[4], wh2[4];
        float gl[4] = {1.f, 1.f, 1.f, 1.f}, gh[4] = {1.f, 1.f, 1.f, 1.f};
        decode8<kF>(ca, sa, wl, wh);
        if (kTwo) decode8<kF>(cb, sb, wl2, wh2);
        advance<kF>(ca);
        if (kTwo) advance<kF>(cb);
        if (kNorm) {
            const float4* g4 = reinterpret_cast<const float4*>(p.norm_w) + 8 * u + w;
            unpack4(__ldg(g4), gl);
            unpack4(__ldg(g4 + 4), gh);
        }
#pragma unroll
        for (int b = 0; b < kQBatch; ++b) {
            if (b < nb) {
                const float4* x4 = reinterpret_cast<const float4*>(
                                       p.x + static_cast<size_t>(t0 + b) * p.cols) +
                                   8 * u + w;
                float xl[4], xh[4];
                unpack4(__ldg(x4), xl);
                unpack4(__ldg(x4 + 4), xh);
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    // The CPU's rmsnorm order: (x * scale) * weight.
                    const float vl = kNorm ? xl[k] * scale[b] * gl[k] : xl[k];
                    const float vh = kNorm ? xh[k] * scale[b] * gh[k] : xh[k];
                    acc[b] = fmaf(wl[k], vl, acc[b]);
                    acc[b] = fmaf(wh[k], vh, acc[b]);
                    if (kTwo) {
                        acc2[b] = fmaf(wl2[k], vl, acc2[b]);
                        acc2[b] = fmaf(wh2[k], vh, acc2[b]);
                    }
                }
            }
        }
    }
}

// ---- int8 activations (the `_q8` kernels): __dp4a over the codes --------------------------

// A unit's weight codes as signed bytes ready for __dp4a: lo[j] the elements 4j .. 4j + 3,
// hi[j] the elements 16 + 4j .. (Q8_0: its second 16 codes), top bits merged in and the
// Q4_0 / Q5_0 / Q6_K offsets (8, 16, 32) taken out bytewise, so the integer sum is exact.
struct Codes {
    int lo[4];
    int hi[4];
};

// Bits 0-3 of t to bit 4 of bytes 0-3 (the four shifted copies never overlap: no carries).
__device__ __forceinline__ uint32_t spread1(uint32_t t) {
    return (((t & 0xfu) * 0x00204081u) & 0x01010101u) << 4;
}
// Bit pairs 2k, 2k + 1 of t to bits 4-5 of byte k.
__device__ __forceinline__ uint32_t spread2(uint32_t t) {
    return ((t << 4) & 0x30u) | ((t << 10) & 0x3000u) | ((t << 16) & 0x300000u) |
           ((t << 22) & 0x30000000u);
}

template <int kF>
__device__ __forceinline__ Codes unit_codes(const Unit& u) {
    const uint32_t w[4] = {u.q.x, u.q.y, u.q.z, u.q.w};
    const uint32_t w2[4] = {u.q2.x, u.q2.y, u.q2.z, u.q2.w};
    constexpr uint32_t off = kF == TACHYON_DTYPE_Q4_0   ? 0x08080808u
                             : kF == TACHYON_DTYPE_Q5_0 ? 0x10101010u
                             : kF == TACHYON_DTYPE_Q6_K ? 0x20202020u
                                                        : 0u;
    Codes c;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (kF == TACHYON_DTYPE_Q8_0) {
            c.lo[j] = static_cast<int>(w[j]);
            c.hi[j] = static_cast<int>(w2[j]);
            continue;
        }
        uint32_t lo = w[j] & 0x0f0f0f0fu;
        uint32_t hi = (w[j] >> 4) & 0x0f0f0f0fu;
        if (qh_bytes(kF) == 4) {
            lo |= spread1(u.h0 >> (4 * j));
            hi |= spread1(u.h0 >> (16 + 4 * j));
        }
        if (kF == TACHYON_DTYPE_Q6_K) {
            lo |= spread2(u.h0 >> (8 * j));
            hi |= spread2(u.h1 >> (8 * j));
        }
        if (off != 0u) {
            lo = __vsub4(lo, off);
            hi = __vsub4(hi, off);
        }
        c.lo[j] = static_cast<int>(lo);
        c.hi[j] = static_cast<int>(hi);
    }
    return c;
}

// One unit's dot with one activation row's unit (codes xa: elements 0-15, xb: 16-31; xd:
// the row unit's d and d * sum(codes)): the integer sums, then one or two f32 products.
template <int kF>
__device__ __forceinline__ float unit_dot(const Codes& c, const Scales& s, const int4& xa,
                                          const int4& xb, const float2& xd) {
    const int xl[4] = {xa.x, xa.y, xa.z, xa.w};
    const int xh[4] = {xb.x, xb.y, xb.z, xb.w};
    int lo = 0, hi = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        lo = __dp4a(c.lo[j], xl[j], lo);
        hi = __dp4a(c.hi[j], xh[j], hi);
    }
    if (kF == TACHYON_DTYPE_Q6_K) {
        // Two scales per unit: elements 0-15 and 16-31.
        return __fmul_rn(xd.x, fmaf(s.a, static_cast<float>(lo), __fmul_rn(s.b, static_cast<float>(hi))));
    }
    const float dot = __fmul_rn(__fmul_rn(s.a, xd.x), static_cast<float>(lo + hi));
    if (kF == TACHYON_DTYPE_Q4_1 || kF == TACHYON_DTYPE_Q5_1) return fmaf(s.b, xd.y, dot);
    if (kF == TACHYON_DTYPE_Q4_K || kF == TACHYON_DTYPE_Q5_K) return fmaf(-s.b, xd.y, dot);
    return dot;
}

// acc[b] += unit . xq[t0 + b][32 u ..] (and acc2 with w2), int8 activations.
template <int kF, bool kTwo>
__device__ __forceinline__ void dot_unit_q8(const GemvParams& p, const Unit& ua, const Unit& ub,
                                            int u, int t0, int nb, float acc[kQBatch],
                                            float acc2[kQBatch]) {
    const Scales sa = unit_scales<kF>(ua);
    const Scales sb = kTwo ? unit_scales<kF>(ub) : sa;
    const Codes ca = unit_codes<kF>(ua);
    const Codes cb = kTwo ? unit_codes<kF>(ub) : ca;
    const size_t units = static_cast<size_t>(p.cols / tachyon::kWarp);
#pragma unroll
    for (int b = 0; b < kQBatch; ++b) {
        if (b < nb) {
            const size_t g = static_cast<size_t>(t0 + b) * units + u;
            const int4* x4 = reinterpret_cast<const int4*>(p.xq) + 2 * g;
            const int4 xa = __ldg(x4);
            const int4 xb = __ldg(x4 + 1);
            const float2 xd = __ldg(reinterpret_cast<const float2*>(p.xd) + g);
            acc[b] += unit_dot<kF>(ca, sa, xa, xb, xd);
            if (kTwo) acc2[b] += unit_dot<kF>(cb, sb, xa, xb, xd);
        }
    }
}

// The block's partial sums, one array for every instantiation (a static one in each of
// the 32 bodies would be 32 arrays).
using Red = float[kQWarps][2][kQBatch];

// kQ8: int8 activations from xq / xd (no norm: quantize_act.cu ran it).
template <int kF, bool kTwo, bool kNorm, bool kQ8>
__device__ __forceinline__ void qpack_body(const GemvParams& p, Red& red) {
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int wpr = p.warps_per_row;
    const int rows_per_block = kQWarps / wpr;
    const int row = blockIdx.x * rows_per_block + warp / wpr;
    const int part = warp % wpr;
    const bool live = row < p.rows;
    const int units = p.cols / tachyon::kWarp;
    const size_t total = static_cast<size_t>(p.rows) * units;
    const Arrays<kF> a = arrays<kF>(p.w, total);
    const Arrays<kF> a2 = arrays<kF>(kTwo ? p.w2 : p.w, total);
    const size_t g0 = static_cast<size_t>(live ? row : 0) * units;
    const int step = wpr * tachyon::kWarp;
    constexpr int kUnroll = units_in_flight(kF, kTwo);
    // Before the programmatic launch's wait only the weights may be touched (no kernel
    // writes them): each lane asks L2 for the codes of its first units, so the row starts
    // streaming while the kernel before this one finishes; x, the outputs and every write
    // come after the wait.
    if (live) {
        const int u0 = part * tachyon::kWarp + lane;
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) {
            if (u0 + k * step < units) {
                const size_t g = g0 + u0 + k * step;
                tachyon_prefetch_l2(a.qs + (kF == TACHYON_DTYPE_Q8_0 ? 2 * g : g));
                if (kTwo) tachyon_prefetch_l2(a2.qs + (kF == TACHYON_DTYPE_Q8_0 ? 2 * g : g));
            }
        }
    }
    tachyon::pdl_trigger_then_wait();
    for (int t0 = 0; t0 < p.n; t0 += kQBatch) {
        const int nb = min(kQBatch, p.n - t0);
        float scale[kQBatch];
        tachyon::norm_scales(p, t0, nb, scale);
        float acc[kQBatch] = {0.f, 0.f, 0.f, 0.f};
        float acc2[kQBatch] = {0.f, 0.f, 0.f, 0.f};
        if (live) {
            for (int u = part * tachyon::kWarp + lane; u < units; u += kUnroll * step) {
                Unit ua[kUnroll], ub[kUnroll];
#pragma unroll
                for (int k = 0; k < kUnroll; ++k) {
                    if (u + k * step < units) {
                        ua[k] = load_unit<kF>(a, g0 + u + k * step);
                        if (kTwo) ub[k] = load_unit<kF>(a2, g0 + u + k * step);
                    }
                }
#pragma unroll
                for (int k = 0; k < kUnroll; ++k) {
                    if (u + k * step < units) {
                        if (kQ8) {
                            dot_unit_q8<kF, kTwo>(p, ua[k], kTwo ? ub[k] : ua[k], u + k * step,
                                                  t0, nb, acc, acc2);
                        } else {
                            dot_unit<kF, kTwo, kNorm>(p, ua[k], kTwo ? ub[k] : ua[k],
                                                      u + k * step, t0, nb, scale, acc, acc2);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int b = 0; b < kQBatch; ++b) {
            acc[b] = tachyon::warp_sum_f(acc[b]);
            if (kTwo) acc2[b] = tachyon::warp_sum_f(acc2[b]);
        }
        if (lane == 0) {
#pragma unroll
            for (int b = 0; b < kQBatch; ++b) {
                red[warp][0][b] = acc[b];
                red[warp][1][b] = acc2[b];
            }
        }
        __syncthreads();
        // The first warp of each row sums the row's parts (fixed order: deterministic).
        if (live && part == 0 && lane < kQBatch && t0 + lane < p.n) {
            float y = 0.f, y2 = 0.f;
            for (int k = 0; k < wpr; ++k) {
                y += red[warp + k][0][lane];
                y2 += red[warp + k][1][lane];
            }
            if (p.bias != nullptr) y += p.bias[row];
            if (kTwo) y = y / (1.0f + expf(-y)) * y2;
            tachyon::gemv_store(p, t0 + lane, row, y);
        }
        __syncthreads();
    }
}

template <int kF>
__device__ __forceinline__ void qpack_format(const GemvParams& p, Red& red) {
    // Each combination is its own straight loop (uniform over the grid).
    const bool norm = p.norm_w != nullptr;
    if (p.w2 != nullptr) {
        if (norm) qpack_body<kF, true, true, false>(p, red);
        else qpack_body<kF, true, false, false>(p, red);
    } else {
        if (norm) qpack_body<kF, false, true, false>(p, red);
        else qpack_body<kF, false, false, false>(p, red);
    }
}

// The int8-activation form (the launcher refuses a norm: quantize_act.cu applies it).
template <int kF>
__device__ __forceinline__ void qpack_format_q8(const GemvParams& p, Red& red) {
    if (p.w2 != nullptr) qpack_body<kF, true, false, true>(p, red);
    else qpack_body<kF, false, false, true>(p, red);
}

}  // namespace qpack
}  // namespace

// One kernel per format, so that each gets the registers its own loop needs (the launcher
// picks by dtype; it checks that x, norm_w and the matrices are 16-byte aligned and that
// cols is a multiple of the format's block). At most 128 registers: two blocks (16 warps)
// resident per SM.
// (Written out, not a macro: the emulator lists the kernels from the source text.)
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q4_0(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q4_0>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q4_1(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q4_1>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q5_0(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q5_0>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q5_1(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q5_1>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q8_0(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q8_0>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q4_k(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q4_K>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q5_k(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q5_K>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q6_k(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format<TACHYON_DTYPE_Q6_K>(p, red);
}

// The int8-activation kernels (GemvParams xq / xd; the same order).
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q4_0_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q4_0>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q4_1_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q4_1>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q5_0_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q5_0>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q5_1_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q5_1>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q8_0_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q8_0>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q4_k_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q4_K>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q5_k_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q5_K>(p, red);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_qpack_q6_k_q8(const GemvParams p) {
    __shared__ qpack::Red red;
    qpack::qpack_format_q8<TACHYON_DTYPE_Q6_K>(p, red);
}
