/*
 * attention_prefill.cu: causal grouped-query attention of a prefill chunk (n query rows)
 * over a BF16 KV cache on the tensor cores, FlashAttention-2 style. Same semantics and
 * params as attn_decode_split + attn_decode_reduce (kernels/attention.cu, AttnParams):
 * query row i (position p = pos + i), head h sees cache positions first..=p of kv head
 * h / group (first = 0, or p + 1 - window when window > 0), scores q.k / sqrt(head_dim),
 * out = softmax(scores) V. attn_kv_append must have run (it writes positions pos..pos+n).
 * `pos` comes from the host (`pos_dev` is not read: the launcher uses this kernel only then).
 *
 * Rows: the n x group (query row, head) pairs of one kv head are flattened, pair
 * m = row * group + (h - kvh * group), so the query heads that share a kv head share each
 * K/V tile load (GQA), and short chunks fill more of a 64-pair tile (16 rows at GQA 4).
 * Block = 4 warps x 16 pairs (the MMA's M) = 64 pairs; grid = (ceil(n * group / 64),
 * n_kv_heads, n_splits). The pairs' visible positions (from first(first row) to pos + last
 * row) are cut into tiles of 32 positions and the tiles into n_splits contiguous shares
 * (possibly empty), one a block: a 64-row chunk of an 8-kv-head model is only 32 pair
 * tiles, so the launcher splits the sequence to fill the SMs (launch/attention.rs,
 * prefill_splits). With one split the block writes O / l to out; with more it writes
 * attn_decode_reduce's partials (unnormalized O, max, exp-sum; max -inf for a row the split
 * did not see) and the reduce merges them, in a fixed order. A warp skips the MMAs of a
 * tile none of its rows sees (above the diagonal, or before the window), so the causal half
 * costs loads only at the diagonal.
 *
 * Per tile and warp: S (16 x 32) = Q K^T as 4 n8 tiles x head_dim / 16 k-steps of
 * mma.sync.m16n8k16 bf16; K fragments by ldmatrix.x4 from shared memory (K rows are the
 * MMA's column-major B). Then the online softmax in registers: each lane holds 2 rows x 8
 * scores; row max and sum over the 4 lanes of a row by shuffles; a running max, exp-sum and
 * output per row, rescaled by e^(m_old - m_new). Then O (16 x head_dim) += P V with P's
 * accumulator fragments reused as the A fragments (FA2's register trick) and V fragments by
 * ldmatrix.x4.trans (V rows are a row-major k x n tile). At the end O / l (or the partial)
 * is stored.
 *
 * Precision: Q (f32) and P (f32) are each split into bf16 hi = rn(x) and lo = rn(x - hi) and
 * multiplied twice (two MMAs into one f32 accumulator), as gemm_mma.cu does for its
 * activations: K and V are BF16 already, so each product is exact in f32 and ~16 bits of each
 * Q and P element are kept (|x - hi - lo| <= 2^-16 |x|). The scores then match the CPU twin's
 * f32 dots to ~2^-16 of sum |q k| and the output to ~2^-16 relative on top of f32 sums
 * (tests/cuda/attention_prefill.rs, under the emulator: 2.4e-6 to 4.8e-6 of the largest
 * |output|; Q and P as bf16 hi alone gave 1.9e-3, which would not match the CPU twin).
 * The scale 1/sqrt(head_dim) multiplies the f32 scores, as the CPU twin does.
 * NaN: a NaN score makes its row's max NaN (max_keep_nan), hence the row's output NaN, as
 * on the CPU. Positions outside the block's visible range are zero in shared memory; a
 * non-finite V at a position one row of the block sees but another does not still reaches
 * the other row as 0 x inf = NaN (the CPU would skip it): only a damaged cache does that.
 *
 * Layout: q `n x n_heads x head_dim` f32 (8-byte aligned: float2 loads), caches
 * `ctx x n_kv_heads x head_dim` BF16 (16-byte aligned rows: each 16-byte piece is one
 * cp.async), out `n x n_heads x head_dim` f32. head_dim is 64 or 128 (a template; other sizes
 * and the f32/f16 caches run attention.cu).
 *
 * Shared memory (dynamic, sized by the launcher: 256 * head_dim bytes): 2 stages x (K + V) x
 * 32 positions x head_dim bf16 = 16 KB at head_dim 64, 32 KB at 128 (dynamic so that each
 * instantiation gets its own size, under 48 KB without the opt-in). Each row's 16-byte
 * pieces are XOR-swizzled by (row & 7) so the 8 rows an ldmatrix phase reads fall in 8 bank
 * groups. The stages are a block-wide cp.async double buffer: tile i + 1 is in flight while
 * tile i is multiplied.
 * Registers (ptxas -v of CUDA 12.2, nvcc.log), no spills, no stack: head_dim 64: 164
 * (sm_80), 156 (sm_90a); head_dim 128: 248 (sm_80), 223 (sm_90a). 128 threads a block; at
 * 128 the registers allow 2 blocks (8 warps) an SM: Q's hi/lo fragments alone are 64
 * registers, the O accumulators 64 (holding Q in shared memory is the next step).
 *
 * Bytes: K and V of the visible positions once per 64-pair tile: 2 * 2 * L * head_dim per
 * (pair tile, kv head) (L2 mostly; the cache is read from memory ~once per kv head), q and
 * out once, plus with splits 4 * (head_dim + 2) per (row, head, split) of partials written
 * and read back. Flops issued per key tile and warp: 2 * 2 * 16 * 32 * head_dim for S and
 * as many for PV (hi/lo doubling each): 2x the useful 4 * (row, head) * visible * head_dim,
 * plus the masked halves of diagonal tiles and the padding pairs of the last pair tile.
 *
 * Expected speed (reasoned, not measured: no GPU run yet). Per key tile a warp issues
 * 64 + 64 mma.sync (head_dim 128; half at 64) against ~16 exps, ~40 shuffles/conversions
 * and ~2 KB of ldmatrix per lane, so it is MMA-bound. mma.sync bf16 reaches roughly 60% of
 * the H200's ~990 TFLOP/s dense rate (the full rate needs wgmma); with 8 warps an SM at head_dim
 * 128 (registers), 4 independent accumulator chains per warp, a 2-stage ring and block-wide
 * barriers, 30-50% of that is a fair guess: ~180-300 TFLOP/s issued, ~80-130 useful after
 * hi/lo and diagonal waste. A 4k-token prefill of a 1B model (32 x 64 heads, 8 kv heads,
 * 16 layers: 1.1e12 useful flops) would then spend ~9-14 ms in attention, several times
 * less than the split path, which re-reads K/V per query row on the CUDA cores. FA3-level
 * speed needs wgmma + TMA and dropping the hi/lo doubling (not done: precision against the
 * CPU twin is the bar here).
 */
#include <math.h>

#include "common.cuh"
#include "../emulator/include/ptx_emu.h"

namespace {

constexpr int kFaWarps = 4;
constexpr int kFaThreads = kFaWarps * 32;
constexpr int kFaPairs = kFaWarps * 16;  // (row, head) pairs a block
constexpr int kFaKeys = 32;              // positions a tile

// NaN-keeping max (as attention.cu's): fmaxf would drop a NaN score.
__device__ __forceinline__ float fa_max(float a, float b) { return (isnan(a) || isnan(b)) ? NAN : fmaxf(a, b); }

// Two f32 as the bf16 pair of their high parts and the pair of their remainders (the first
// in the low 16 bits, as the fragments want).
__device__ __forceinline__ void fa_split(float x0, float x1, uint32_t& hi, uint32_t& lo) {
    const __nv_bfloat16 h0 = __float2bfloat16_rn(x0), h1 = __float2bfloat16_rn(x1);
    const __nv_bfloat16 l0 = __float2bfloat16_rn(x0 - __bfloat162float(h0));
    const __nv_bfloat16 l1 = __float2bfloat16_rn(x1 - __bfloat162float(h1));
    hi = uint32_t(__bfloat16_as_ushort(h0)) | (uint32_t(__bfloat16_as_ushort(h1)) << 16);
    lo = uint32_t(__bfloat16_as_ushort(l0)) | (uint32_t(__bfloat16_as_ushort(l1)) << 16);
}

// The first position query row `row` sees (its last is pos + row).
__device__ __forceinline__ int fa_first(const AttnParams& p, int pos, int row) {
    return p.window > 0 ? max(0, pos + row + 1 - p.window) : 0;
}

template <int HD>
struct FaTile {
    static constexpr int kPieces = HD / 8;                // 16-byte pieces a row
    static constexpr int kStageU4 = kFaKeys * kPieces;    // uint4 of K (or V) a stage
    // Piece `piece` of row `row`, swizzled: an ldmatrix phase reads 8 rows at one piece.
    __device__ __forceinline__ static int slot(int row, int piece) { return row * kPieces + (piece ^ (row & 7)); }
};

// K and V rows t0..t0 + 31 of kv head `kvh` into one stage: positions outside [lo, hi] are
// zeros (they may be unwritten: NaN there would survive a zero weight).
template <int HD>
__device__ __forceinline__ void fa_load_tile(const AttnParams& p, int kvh, int t0, int lo, int hi, uint4* ks,
                                             uint4* vs) {
    using T = FaTile<HD>;
    const __nv_bfloat16* kc = static_cast<const __nv_bfloat16*>(p.k_cache);
    const __nv_bfloat16* vc = static_cast<const __nv_bfloat16*>(p.v_cache);
    const size_t kv_dim = static_cast<size_t>(p.n_kv_heads) * HD;
#pragma unroll
    for (int j = 0; j < T::kStageU4 / kFaThreads; ++j) {
        const int piece = threadIdx.x + kFaThreads * j;
        const int r = piece / T::kPieces, c = piece % T::kPieces;
        const int t = t0 + r;
        const int s = T::slot(r, c);
        if (t >= lo && t <= hi) {
            const size_t at = static_cast<size_t>(t) * kv_dim + static_cast<size_t>(kvh) * HD + c * 8;
            tachyon_cp_async_16(ks + s, kc + at);
            tachyon_cp_async_16(vs + s, vc + at);
        } else {
            ks[s] = make_uint4(0u, 0u, 0u, 0u);
            vs[s] = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

template <int HD>
__device__ __forceinline__ void fa_prefill(const AttnParams& p) {
    using T = FaTile<HD>;
    constexpr int kSteps = HD / 16;  // k-steps of S, n8 tiles of O: HD / 8
    // Dynamic (the launcher gives 4 * kStageU4 * 16 bytes): K stages 0, 1 then V stages 0, 1.
    // uint4 is 16-byte aligned: every piece is a valid cp.async / ldmatrix row address.
    TACHYON_DYNAMIC_SMEM(uint4, fa_smem);
    // Stage addresses by arithmetic (an array of pointers indexed by i & 1 would live in
    // local memory).
    auto kst = [&](int st) { return fa_smem + st * T::kStageU4; };
    auto vst = [&](int st) { return fa_smem + (2 + st) * T::kStageU4; };

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, tig = lane % 4;
    const int group = p.n_heads / p.n_kv_heads;
    const int kvh = blockIdx.y;
    const int pairs = p.n * group;
    const int m0 = blockIdx.x * kFaPairs;
    const int pos = p.pos;
    const float scale = 1.0f / sqrtf(static_cast<float>(HD));

    // The block's visible positions: rows grow with m, and so do first and last.
    const int row_lo = m0 / group;
    const int row_hi = min((m0 + kFaPairs - 1) / group, p.n - 1);
    const int lo = fa_first(p, pos, row_lo);
    const int hi = pos + row_hi;
    const int t_begin = lo - lo % kFaKeys;
    const int tiles = (hi - t_begin) / kFaKeys + 1;
    // This split's tiles (blockIdx.z of n_splits): a contiguous share, possibly none.
    const int per = (tiles + p.n_splits - 1) / p.n_splits;
    const int i_begin = min(tiles, static_cast<int>(blockIdx.z) * per);
    const int i_end = min(tiles, i_begin + per);

    // This lane's two rows (g, g + 8 of the warp's 16); pairs past the end compute on the
    // last row's range with zero q and are not stored.
    const int wm = m0 + warp * 16;
    const bool warp_live = wm < pairs;  // warp-uniform
    int qrow[2], head[2];
    bool live[2];
    int first[2], last[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = wm + g + 8 * h;
        live[h] = m < pairs;
        const int mm = min(m, pairs - 1);
        qrow[h] = mm / group;
        head[h] = kvh * group + mm % group;
        first[h] = fa_first(p, pos, qrow[h]);
        last[h] = pos + qrow[h];
    }
    // The warp's range (for skipping tiles): its first pair's first, its last pair's last.
    const int w_first = fa_first(p, pos, min(wm, pairs - 1) / group);
    const int w_last = pos + min(wm + 15, pairs - 1) / group;

    // Q's A fragments, split hi/lo: a[0] row g cols 2 tig, +1; a[1] row g + 8; a[2], a[3]
    // the same 8 columns on.
    uint32_t qh[kSteps][4], ql[kSteps][4];
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int h = r & 1;
            const int d = ks * 16 + 2 * tig + (r >= 2 ? 8 : 0);
            float2 x = make_float2(0.0f, 0.0f);
            if (live[h]) {
                const size_t at = (static_cast<size_t>(qrow[h]) * p.n_heads + head[h]) * HD + d;
                x = *reinterpret_cast<const float2*>(p.q + at);
            }
            fa_split(x.x, x.y, qh[ks][r], ql[ks][r]);
        }
    }

    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY};
    float lrow[2] = {0.0f, 0.0f};  // this lane's share of the row sums (its 2 x 8 columns)

    if (i_begin < i_end) {
        fa_load_tile<HD>(p, kvh, t_begin + i_begin * kFaKeys, lo, hi, kst(i_begin & 1), vst(i_begin & 1));
    }
    tachyon_cp_async_commit();
    for (int i = i_begin; i < i_end; ++i) {
        const int t0 = t_begin + i * kFaKeys;
        if (i + 1 < i_end) fa_load_tile<HD>(p, kvh, t0 + kFaKeys, lo, hi, kst((i + 1) & 1), vst((i + 1) & 1));
        tachyon_cp_async_commit();
        tachyon_cp_async_wait<1>();  // tile i has landed (this thread's pieces)
        __syncthreads();             // ... and every thread's, zeros included

        if (warp_live && t0 <= w_last && t0 + kFaKeys > w_first) {
            const uint4* ks_ = kst(i & 1);
            const uint4* vs_ = vst(i & 1);
            // S: n8 tile j is positions t0 + 8 j ..; ldmatrix.x4 matrix q (lanes 8 q ..) is
            // those 8 rows at piece 4 kp + q: b for k-steps 2 kp (b[0..1]), 2 kp + 1 (b[2..3]).
            float s[4][4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
                for (int kp = 0; kp < kSteps / 2; ++kp) {
                    uint32_t b[4];
                    tachyon_ldmatrix_x4(b, ks_ + T::slot(8 * j + lane % 8, 4 * kp + lane / 8));
                    tachyon_mma_bf16_16816(s[j], qh[2 * kp], b, s[j]);
                    tachyon_mma_bf16_16816(s[j], ql[2 * kp], b, s[j]);
                    tachyon_mma_bf16_16816(s[j], qh[2 * kp + 1], b + 2, s[j]);
                    tachyon_mma_bf16_16816(s[j], ql[2 * kp + 1], b + 2, s[j]);
                }
            }
            // Scale, mask, and the online softmax: element e of tile j is row g (+8 when
            // e >= 2), position t0 + 8 j + 2 tig + (e & 1).
            float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = e >> 1;
                    const int t = t0 + 8 * j + 2 * tig + (e & 1);
                    const float x = (t >= first[h] && t <= last[h]) ? s[j][e] * scale : -INFINITY;
                    s[j][e] = x;
                    tmax[h] = fa_max(tmax[h], x);
                }
            }
            float corr[2], muse[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                tmax[h] = fa_max(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 1));
                tmax[h] = fa_max(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 2));
                const float mnew = fa_max(mrow[h], tmax[h]);
                // A row that has seen nothing yet keeps -inf: exponents against 0 give 0.
                muse[h] = mnew == -INFINITY ? 0.0f : mnew;
                corr[h] = expf(mrow[h] - muse[h]);
                mrow[h] = mnew;
                lrow[h] *= corr[h];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = e >> 1;
                    s[j][e] = expf(s[j][e] - muse[h]);
                    lrow[h] += s[j][e];
                }
            }
#pragma unroll
            for (int j = 0; j < HD / 8; ++j) {
                o[j][0] *= corr[0];
                o[j][1] *= corr[0];
                o[j][2] *= corr[1];
                o[j][3] *= corr[1];
            }
            // O += P V: k-step kk is positions 16 kk ..: P's A fragment is S tiles 2 kk and
            // 2 kk + 1 as they lie. ldmatrix.x4.trans matrix q: rows 16 kk + 8 (q & 1) ..,
            // piece dn + q / 2: b for dim tiles dn and dn + 1.
#pragma unroll
            for (int kk = 0; kk < kFaKeys / 16; ++kk) {
                uint32_t ph[4], pl[4];
                fa_split(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
                fa_split(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
                fa_split(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
                fa_split(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
#pragma unroll
                for (int dn = 0; dn < HD / 8; dn += 2) {
                    uint32_t b[4];
                    const int q = lane / 8;
                    tachyon_ldmatrix_x4_trans(b, vs_ + T::slot(16 * kk + 8 * (q & 1) + lane % 8, dn + q / 2));
                    tachyon_mma_bf16_16816(o[dn], ph, b, o[dn]);
                    tachyon_mma_bf16_16816(o[dn], pl, b, o[dn]);
                    tachyon_mma_bf16_16816(o[dn + 1], ph, b + 2, o[dn + 1]);
                    tachyon_mma_bf16_16816(o[dn + 1], pl, b + 2, o[dn + 1]);
                }
            }
        }
        __syncthreads();  // every warp is done with stage i & 1 before tile i + 2 lands there
    }
    tachyon_cp_async_wait<0>();  // nothing is left in flight (the trailing empty group)

    // The row sums over the 4 lanes of each row. Element e of dim tile j is row g (+8 when
    // e >= 2), dims 8 j + 2 tig, +1.
    float lsum[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float l = lrow[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        lsum[h] = l;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (!live[h]) continue;
        const size_t rh = static_cast<size_t>(qrow[h]) * p.n_heads + head[h];
        if (p.n_splits == 1) {
            // One split saw every position: O / l is the output.
            const float inv = 1.0f / lsum[h];
            float* dst = p.out + rh * HD + 2 * tig;
#pragma unroll
            for (int j = 0; j < HD / 8; ++j) {
                *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
            }
        } else {
            // attn_decode_reduce's partial: unnormalized O, max (-inf when this split saw
            // none of the row's positions: l and O are 0 then) and exp-sum.
            const size_t slot = rh * p.n_splits + blockIdx.z;
            if (tig == 0) {
                p.part_max[slot] = mrow[h];
                p.part_sum[slot] = lsum[h];
            }
            float* dst = p.part_acc + slot * HD + 2 * tig;
#pragma unroll
            for (int j = 0; j < HD / 8; ++j) {
                *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[j][2 * h], o[j][2 * h + 1]);
            }
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kFaThreads) attn_prefill_mma_h64(const AttnParams p) {
    fa_prefill<64>(p);
}

extern "C" __global__ void __launch_bounds__(kFaThreads) attn_prefill_mma_h128(const AttnParams p) {
    fa_prefill<128>(p);
}
