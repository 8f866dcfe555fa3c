/*
 * gemm_mma.cu: the tensor-core matrix product for more than 4 activation rows (speculative
 * verify of K+1 rows, prefill chunks): `out[t, r] = dot(w[r], x[t]) (+ bias[r])`, BF16
 * weights, f32 activations, f32 out. Takes GemvParams with gemm.cu's rules (`w2` and
 * `norm_w` NULL, `warps_per_row` ignored) and the epilogue of gemv_fused.cuh: bias, the
 * residual add (`accumulate`) and the q/k/v split.
 *
 * Precision: the weights are BF16 already, so they enter `mma.sync.m16n8k16 .bf16` as they
 * are; each f32 activation is split into bf16 hi = rn(x) and lo = rn(x - hi) and multiplied
 * twice (two MMAs into one f32 accumulator). bf16 rounds to 8 significant bits (unit
 * roundoff 2^-8), so |x - hi - lo| <= 2^-16 |x|: ~16 bits of each activation are kept, and
 * each product w * hi, w * lo is exact in f32. An output is then off by at most 2^-16 of
 * its sum |w x| beyond f32 accumulation; with random signs far less (tests/cuda/mma.rs
 * measures ~2-8e-7 of sum |w x| against f64 at 264-2048 columns, the CPU twin ~3e-8), and
 * tests/cuda/ops.rs allows the 2^-16 on top of its f32 bound for this path (it matters only
 * for very short rows, where random errors do not average out). A single bf16 activation
 * (2^-8 per term: ~1.7e-4 measured) would not keep speculative greedy equal to plain
 * greedy nor match the CPU twin; the second MMA is
 * cheap because the kernel is memory-bound at verify sizes. F16 weights are not done here
 * (an f16 hi/lo split loses range: activations past 65504 or below 6e-5); they and F32 run
 * gemm.cu.
 *
 * Layout: w `rows x cols` row-major BF16, cols a multiple of 8 and w 16-byte aligned (each
 * 16-byte piece of a row is one cp.async); x `n x cols` f32, 8-byte aligned (float2 loads);
 * out `n x rows` f32 (or the q/k/v outputs). The launcher checks these and runs gemm.cu
 * otherwise. Rows, n and cols % 64 edges: rows past the end load the last row (their
 * outputs are dropped), k past the end is zero in shared memory and in the fragment.
 *
 * Launch: block = 128 threads (4 warps) owns 16 weight rows (the MMA's M) x 16 tokens (two
 * n8 tiles; the second is skipped when the tile has at most 8 tokens); grid = (ceil(n / 16),
 * ceil(rows / 16)) with the token tiles in x, so the blocks that share a weight tile run
 * next to each other and a prefill's re-reads of it come from L2. The 4 warps split K: warp
 * w takes the 64-column chunks w, w + 4, ..., each staged by cp.async (16 rows x 128 bytes,
 * 16-byte pieces XOR-swizzled by row so ldmatrix.x4 reads 8 rows without bank conflicts) in
 * a private 4-stage ring (3 chunks, 6 KB, in flight per warp; warp-level barriers only).
 * A fragments come from ldmatrix.x4, B fragments straight from x (float2 loads, L1/L2),
 * split into hi/lo in registers. The 4 partial sums are added in a fixed order through
 * shared memory (deterministic). Static shared memory: 4 x 4 x 2 KB weights + 4 x 16 x 17
 * floats = 36.3 KB. ptxas: 70 registers (sm_80), 77 (sm_90a), no spills (nvcc.log).
 *
 * Bytes per call: rows * cols * 2 weight bytes from memory (once for all n <= 16 rows; per
 * 16-token tile beyond, mostly L2), n * cols * 4 per 16 weight rows of activations (L2/L1),
 * n * rows * 4 out. Flops: 2 * n * rows * cols useful, 4 * ceil(n / 16) * 16 * rows * cols
 * issued on the tensor cores (hi/lo, token tiles padded).
 *
 * Expected speed (reasoned, not measured: no GPU run yet). Verify (n = 5..16) is
 * memory-bound: 512 weight bytes feed 2-4 MMAs (4096 flops each), ~150 TFLOP/s of
 * mma.sync at 4.8 TB/s, a fraction of the H200's rate, so the weights should stream at
 * 70-85% of copy bandwidth for n <= 8 and somewhat less at n = 16, where the activation
 * reads (2x the weight bytes, from L2) and the hi/lo split's ALU work grow; a verify step of
 * 8 rows should then cost ~1.1-1.3x a decode step. Products with fewer than ~132 x 16 rows
 * (1B o-proj: 128 blocks) leave SMs idle or lightly loaded. Prefill reuses each weight tile
 * over the token tiles from L2 and reaches a fraction of the tensor rate only (each block
 * re-reads its activations and re-splits them per 16 weight rows); a prefill tile that
 * stages split activations in shared memory and reuses them across 64-128 weight rows is
 * the next step (and wgmma/TMA on sm_90a), not done.
 *
 * `gemm_tile_bf16`: the BF16 product for prefill chunks (64 activation rows and more), with
 * both operands staged in shared memory so each is reused across the other's tile: a block
 * of 128 threads owns 64 weight rows x 64 tokens and walks K in 32-column chunks through a
 * 3-stage ring (weights by cp.async; activations loaded as float4 into registers one chunk
 * ahead, split into bf16 hi and lo and stored, so each activation is split once per 64
 * weight rows instead of once per 16 rows per 16 tokens). Its 4 warps (2 x 2) each own 32
 * rows x 32 tokens: per 16 columns 2 ldmatrix.x4 of weights, 4 of activations (hi, lo)
 * and 16 MMAs, 32 accumulators a lane, no K split (each warp stores its own outputs
 * through the same epilogue helpers, bias first). 16-byte pieces XOR-swizzled by row pair
 * (4 pieces a 64-byte row) so ldmatrix reads 8 rows without bank conflicts. Dynamic shared
 * memory 36 KB (3 stages x 3 operands x 4 KB). Needs cols % 8 == 0 and 16-byte aligned w
 * and x (float4 loads); the launcher runs gemm_mma_bf16 otherwise. ptxas: 125 registers
 * (sm_80), 128 (sm_90a), no spills (nvcc.log).
 * Bytes: every weight once per 64 tokens and every activation once per 64 weight rows
 * (from L2 past the first), against once per 16 and once per 16 for gemm_mma_bf16: on the
 * 1B shape a 512-token chunk moves ~40 GB through L2 instead of ~160 GB. Expected (reasoned,
 * unmeasured): L2-bound rather than tensor-bound, roughly 3-4x gemm_mma_bf16's prefill
 * throughput; 128x128 tiles, single-bf16 activations or wgmma / TMA on sm_90a would be the
 * steps after it.
 *

 * (qpack.cuh; verify rows past 4 and prefill of quantized models, which the GEMV would read
 * once per 4 rows). Same grid, block, K split and epilogue; the weight stage is filled by
 * dequantizing instead of cp.async: each lane loads one 32-element unit of a chunk (row
 * lane / 2, unit 2 chunk + lane % 2: 18-36 bytes), the next chunk's unit loaded while this
 * one is used, decodes it as the CPU does (qpack::decode8, f32), and writes it as bf16 hi
 * and lo = rn(w - hi) into two stages (swizzled as above). Three MMAs per fragment pair:
 * wh xh + wh xl + wl xh (the wl xl term is 2^-32 of the product), so each weight and each
 * activation keeps ~16 bits: an output is within about 2^-15 of its sum |w x| beyond f32
 * accumulation (tests/cuda/ops.rs allows twice the BF16 path's 2^-16). Dynamic shared
 * memory (MmaQSmem, 20.3 KB: 2 x 2 KB stages per warp and the epilogue's sums); 64-96
 * registers, no spills (nvcc.log).
 * Bytes: the repacked matrix once per 16 tokens (4.5-8.5 bits a weight), against the GEMV's
 * once per 4 rows: a verify step of 8 rows reads the weights once instead of twice.
 * Expected (reasoned, unmeasured): with one unit in flight per lane and a single stage
 * per warp the loads are exposed (~4 x 36 B per warp per chunk, 16-32 warps per SM: ~10-20
 * KB in flight, about what an H100 needs) and the decode + split is ~12 ops per weight per
 * block, spread over 16-32 tokens; verify steps should stream at well under the GEMV's
 * fraction of copy bandwidth, yet read half the bytes at 8 rows.
 *
 * `gemm_mma_qpack_wide_<format>`: the same for prefill chunks of 64 rows and more, with 64
 * tokens a block (8 n8 tiles; grid (ceil(n / 64), ceil(rows / 16))), so each unit is
 * decoded and split once per 64 tokens instead of once per 16. Per 16x16 weight fragment a
 * lane then issues 24 MMAs against ~96 decode/split instructions (6 against the same at 16
 * tokens) and ~80 for splitting the 8 tiles' activations; the weights are read once per
 * 64 tokens (a quarter of the narrow form's L2 traffic for them). 32 accumulators a lane;
 * dynamic shared memory 33 KB (the stages and a 4 x 64 x 17 float epilogue). Expected
 * (reasoned, unmeasured): decode-bound like the narrow form, so about 2-3x its prefill
 * throughput on quantized matrices, still far from the tensor rate, because activations
 * are re-read and re-split per 16 weight rows; staging split activations in shared memory
 * across 64-128 weight rows (and wgmma / TMA on sm_90a) is the next step. A 64-127 token
 * chunk makes a quarter of the narrow form's blocks: on small matrices (1B o-proj: 128
 * row blocks) one wave instead of four, each block 4x the work. ptxas: 80-128 registers
 * (sm_80), 80-96 (sm_90a), no spills (nvcc.log).
 */
#include "gemv_fused.cuh"
#include "qpack.cuh"
// The inline-PTX wrappers (host versions under the emulated GPU) live with the emulator.
#include "../emulator/include/ptx_emu.h"

namespace {

constexpr int kMmaWarps = 4;                   // K-split across the warps of a block
constexpr int kMmaThreads = kMmaWarps * 32;    // block size
constexpr int kMmaRows = 16;                   // weight rows per block (the MMA's M)
constexpr int kMmaTokens = 16;                 // activation rows per block (two n8 tiles)
constexpr int kMmaWideTiles = 8;               // n8 tiles per block of the wide (prefill) form
constexpr int kMmaChunk = 64;                  // K columns per stage (128 bytes a row)
constexpr int kMmaPieces = kMmaChunk / 8;      // 16-byte pieces per row of a stage
constexpr int kMmaStages = 4;                  // ring depth per warp (3 chunks in flight)
constexpr int kMmaStageU4 = kMmaRows * kMmaPieces;  // uint4 per stage (2 KB)

// Where piece `piece` of row `row` of a stage lives: XOR-swizzled so that the 8 rows an
// ldmatrix phase reads (same piece column) fall in 8 different bank groups.
__device__ __forceinline__ int mma_slot(int row, int piece) { return row * kMmaPieces + (piece ^ (row & 7)); }

// Chunk `chunk` of weight rows row0.. into `stage`: each lane 4 of the 128 pieces.
__device__ __forceinline__ void mma_load_chunk(const GemvParams& p, int row0, int chunk, uint4* stage, int lane) {
    const __nv_bfloat16* w = static_cast<const __nv_bfloat16*>(p.w);
#pragma unroll
    for (int j = 0; j < kMmaStageU4 / 32; ++j) {
        const int piece = lane + 32 * j;
        const int r = piece / kMmaPieces, c = piece % kMmaPieces;
        const int k = chunk * kMmaChunk + c * 8;
        uint4* dst = stage + mma_slot(r, c);
        if (k < p.cols) {
            // Rows past the end repeat the last row: their outputs are never stored.
            const int gr = min(row0 + r, p.rows - 1);
            tachyon_cp_async_16(dst, w + static_cast<size_t>(gr) * p.cols + k);
        } else {
            *dst = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// Two f32 as the bf16 pair of their high parts and the pair of their remainders (the
// lower-numbered element in the low 16 bits, as the B fragment wants).
__device__ __forceinline__ void mma_split(float2 v, uint32_t& hi, uint32_t& lo) {
    const __nv_bfloat16 h0 = __float2bfloat16_rn(v.x), h1 = __float2bfloat16_rn(v.y);
    const __nv_bfloat16 l0 = __float2bfloat16_rn(v.x - __bfloat162float(h0));
    const __nv_bfloat16 l1 = __float2bfloat16_rn(v.y - __bfloat162float(h1));
    hi = uint32_t(__bfloat16_as_ushort(h0)) | (uint32_t(__bfloat16_as_ushort(h1)) << 16);
    lo = uint32_t(__bfloat16_as_ushort(l0)) | (uint32_t(__bfloat16_as_ushort(l1)) << 16);
}

// x[t][k], x[t][k + 1], or zeros past the token or column end (cols is a multiple of 8 and
// k even, so k < cols covers k + 1).
__device__ __forceinline__ float2 mma_x2(const GemvParams& p, int t, int k) {
    if (t < p.n && k < p.cols) return *reinterpret_cast<const float2*>(p.x + static_cast<size_t>(t) * p.cols + k);
    return make_float2(0.0f, 0.0f);
}

// The block's epilogue: the 4 warps' partial sums added in a fixed order through shared
// memory (deterministic), the bias, and the store (gemv_fused.cuh: residual add, q/k/v split).
// kTiles n8 token tiles per block: 2 (16 tokens) or kMmaWideTiles.
template <int kTiles>
using MmaRedT = float[kMmaWarps][kTiles * 8][kMmaRows + 1];
using MmaRed = MmaRedT<2>;

template <int kTiles>
__device__ __forceinline__ void mma_finish(const GemvParams& p, MmaRedT<kTiles>& red,
                                           const float acc[kTiles][4], int warp, int tok0, int row0) {
    const int lane = threadIdx.x % 32;
    const int g = lane / 4, tig = lane % 4;
    // D fragment: element e at row g (+8 when e >= 2), token 2 tig + (e & 1) of tile nt.
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp][nt * 8 + 2 * tig + (e & 1)][g + (e >= 2 ? 8 : 0)] = acc[nt][e];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMmaRows * kTiles * 8 / kMmaThreads; ++j) {
        const int o = threadIdx.x + j * kMmaThreads;
        const int tt = o / kMmaRows, rr = o % kMmaRows;  // consecutive threads: consecutive rows
        const int t = tok0 + tt, r = row0 + rr;
        if (t >= p.n || r >= p.rows) continue;
        float y = 0.0f;
#pragma unroll
        for (int w = 0; w < kMmaWarps; ++w) y += red[w][tt][rr];
        if (p.bias != nullptr) y += p.bias[r];
        tachyon::gemv_store(p, t, r, y);
    }
}

// ---- Prefill: 64 weight rows x 64 tokens a block, both operands staged ----------------------

constexpr int kPfRows = 64;                          // weight rows per block
constexpr int kPfTokens = 64;                        // activation rows per block
constexpr int kPfK = 32;                             // K columns per stage (64 bytes a row)
constexpr int kPfPieces = kPfK / 8;                // 16-byte pieces per staged row
constexpr int kPfStages = 3;                         // ring depth (one chunk ahead in flight)
constexpr int kPfStageU4 = kPfRows * kPfPieces;  // uint4 per operand stage (4 KB)
static_assert(kPfRows == kPfTokens, "one stage shape serves weights and activations");

// Piece `piece` of row `row`: XOR-swizzled by row pair, so the 8 rows an ldmatrix phase reads
// (64 bytes apart, same piece) land in 8 different 16-byte bank groups.
__device__ __forceinline__ int tile_slot(int row, int piece) {
    return row * kPfPieces + (piece ^ ((row >> 1) & (kPfPieces - 1)));
}

// The block's ring: weights, and the activations' bf16 hi and lo parts.
struct TileSmem {
    uint4 w[kPfStages][kPfStageU4];
    uint4 xh[kPfStages][kPfStageU4];
    uint4 xl[kPfStages][kPfStageU4];
};
static_assert(sizeof(TileSmem) == 36864, "TILE_SMEM_BYTES in launch/matmul.rs");

// Weight rows row0.. of chunk k0.. into `st` by cp.async: each thread 2 of the 256 pieces.
__device__ __forceinline__ void tile_load_w(const GemvParams& p, int row0, int k0, uint4* st) {
    const __nv_bfloat16* w = static_cast<const __nv_bfloat16*>(p.w);
#pragma unroll
    for (int j = 0; j < kPfStageU4 / kMmaThreads; ++j) {
        const int piece = threadIdx.x + kMmaThreads * j;
        const int r = piece / kPfPieces, c = piece % kPfPieces;
        const int k = k0 + 8 * c;
        uint4* dst = st + tile_slot(r, c);
        if (k < p.cols) {
            // Rows past the end repeat the last row: their outputs are never stored.
            const int gr = min(row0 + r, p.rows - 1);
            tachyon_cp_async_16(dst, w + static_cast<size_t>(gr) * p.cols + k);
        } else {
            *dst = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// Float4 `j` of this thread's share of the activation chunk k0.. (64 tokens x 32 columns:
// 8 float4 a token, consecutive threads along a token's row), or zeros past n or cols
// (cols % 8 == 0 and k % 4 == 0, so k < cols covers k + 3).
constexpr int kPfXLoads = kPfTokens * kPfK / 4 / kMmaThreads;  // float4 per thread (4)
__device__ __forceinline__ float4 tile_x4(const GemvParams& p, int tok0, int k0, int j) {
    const int f = threadIdx.x + kMmaThreads * j;
    const int t = tok0 + f / (kPfK / 4), k = k0 + 4 * (f % (kPfK / 4));
    if (t < p.n && k < p.cols) return *reinterpret_cast<const float4*>(p.x + static_cast<size_t>(t) * p.cols + k);
    return make_float4(0.f, 0.f, 0.f, 0.f);
}

// The loaded float4s split into bf16 hi and lo, stored at their token row and columns.
__device__ __forceinline__ void tile_store_x(const float4 (&xr)[kPfXLoads], uint4* hs, uint4* ls) {
#pragma unroll
    for (int j = 0; j < kPfXLoads; ++j) {
        const int f = threadIdx.x + kMmaThreads * j;
        const int t = f / (kPfK / 4), q = f % (kPfK / 4);  // q: 4-column group, 2 a piece
        uint2 h, l;
        mma_split(make_float2(xr[j].x, xr[j].y), h.x, l.x);
        mma_split(make_float2(xr[j].z, xr[j].w), h.y, l.y);
        const int slot = tile_slot(t, q / 2);
        reinterpret_cast<uint2*>(hs + slot)[q % 2] = h;
        reinterpret_cast<uint2*>(ls + slot)[q % 2] = l;
    }
}

__device__ __forceinline__ void tile_gemm_bf16(const GemvParams& p, TileSmem& sm) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int tok0 = blockIdx.x * kPfTokens;
    const int row0 = blockIdx.y * kPfRows;
    const int wm = warp / 2, wn = warp % 2;  // this warp's 32 rows and 32 tokens
    const int g = lane / 4, tig = lane % 4;
    const int chunks = (p.cols + kPfK - 1) / kPfK;
    float acc[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
    // A (weights): ldmatrix.x4 matrices rows 0-7 / 8-15 of k 0-7, then of k 8-15. B
    // (activations, token-major, k contiguous): tokens 0-7 of k 0-7 / k 8-15, then tokens
    // 8-15: registers 0-1 are the fragment of the first n8 tile, 2-3 of the second.
    const int a_row = (lane % 8) + 8 * ((lane / 8) & 1), a_half = lane / 16;
    const int b_tok = (lane % 8) + 8 * (lane / 16), b_half = (lane / 8) & 1;

    float4 xr[kPfXLoads];
    tile_load_w(p, row0, 0, sm.w[0]);
    tachyon_cp_async_commit();
#pragma unroll
    for (int j = 0; j < kPfXLoads; ++j) xr[j] = tile_x4(p, tok0, 0, j);
    tile_store_x(xr, sm.xh[0], sm.xl[0]);
    for (int i = 0; i < chunks; ++i) {
        const int cur = i % kPfStages, nxt = (i + 1) % kPfStages;
        const bool more = i + 1 < chunks;  // block-uniform
        // The next chunk's loads go out before this one is multiplied. Stage `nxt` was last
        // read two chunks ago, before the barrier of the last iteration.
        if (more) {
            tile_load_w(p, row0, (i + 1) * kPfK, sm.w[nxt]);
#pragma unroll
            for (int j = 0; j < kPfXLoads; ++j) xr[j] = tile_x4(p, tok0, (i + 1) * kPfK, j);
        }
        tachyon_cp_async_commit();
        tachyon_cp_async_wait<1>();  // this thread's pieces of chunk i have landed
        __syncthreads();             // ... and every thread's, with its activations stored
        const uint4* ws = sm.w[cur];
        const uint4* hs = sm.xh[cur];
        const uint4* ls = sm.xl[cur];
#pragma unroll
        for (int kk = 0; kk < kPfK / 16; ++kk) {
            uint32_t a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) tachyon_ldmatrix_x4(a[mt], ws + tile_slot(wm * 32 + mt * 16 + a_row, 2 * kk + a_half));
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                uint32_t bh[4], bl[4];
                const int slot = tile_slot(wn * 32 + np * 16 + b_tok, 2 * kk + b_half);
                tachyon_ldmatrix_x4(bh, hs + slot);
                tachyon_ldmatrix_x4(bl, ls + slot);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        float* d = acc[mt][2 * np + h];
                        const uint32_t xh[2] = {bh[2 * h], bh[2 * h + 1]};
                        const uint32_t xl[2] = {bl[2 * h], bl[2 * h + 1]};
                        tachyon_mma_bf16_16816(d, a[mt], xh, d);
                        tachyon_mma_bf16_16816(d, a[mt], xl, d);
                    }
                }
            }
        }
        if (more) tile_store_x(xr, sm.xh[nxt], sm.xl[nxt]);
    }
    tachyon_cp_async_wait<0>();  // nothing is left in flight (the trailing empty group)
    // D fragment: element e at weight row g (+8 when e >= 2), token 2 tig + (e & 1).
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = row0 + wm * 32 + mt * 16 + g + (e >= 2 ? 8 : 0);
                const int t = tok0 + wn * 32 + nt * 8 + 2 * tig + (e & 1);
                if (t >= p.n || r >= p.rows) continue;
                float y = acc[mt][nt][e];
                if (p.bias != nullptr) y += p.bias[r];
                tachyon::gemv_store(p, t, r, y);
            }
        }
    }
}

// ---- Block-format weights (repacked, qpack.cuh) on the same tensor-core path -------------

// One 32-element unit of a weight row, dequantized as the CPU does (decode8) and split
// into bf16 hi = rn(w), lo = rn(w - hi), into the hi and lo stages at row r, pieces
// 4 * half .. 4 * half + 3 (zeros where the unit is past the row's end).
template <int kF>
__device__ __forceinline__ void mma_stage_unit(const qpack::Unit& un, bool valid, int r, int half,
                                               uint4* hi_stage, uint4* lo_stage) {
    if (!valid) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            hi_stage[mma_slot(r, 4 * half + j)] = make_uint4(0u, 0u, 0u, 0u);
            lo_stage[mma_slot(r, 4 * half + j)] = make_uint4(0u, 0u, 0u, 0u);
        }
        return;
    }
    const qpack::Scales s = qpack::unit_scales<kF>(un);
    qpack::Cursor c = qpack::cursor<kF>(un);
    float e[32];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        float lo4[4], hi4[4];
        qpack::decode8<kF>(c, s, lo4, hi4);
        qpack::advance<kF>(c);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            e[4 * w + k] = lo4[k];
            e[16 + 4 * w + k] = hi4[k];
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        uint32_t h[4], l[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) mma_split(make_float2(e[8 * j + 2 * q], e[8 * j + 2 * q + 1]), h[q], l[q]);
        hi_stage[mma_slot(r, 4 * half + j)] = make_uint4(h[0], h[1], h[2], h[3]);
        lo_stage[mma_slot(r, 4 * half + j)] = make_uint4(l[0], l[1], l[2], l[3]);
    }
}

// Each warp's hi and lo stage (16 rows x 64 columns of bf16 each) and the epilogue's sums.
// Dynamic shared memory: 16 kernels with 20-33 KB each of static shared memory would be
// counted as one file's 400 KB by the emulated device; the launcher passes these sizes
// (QMMA_SMEM_BYTES and QMMA_WIDE_SMEM_BYTES in src/backend/cuda/launch/matmul.rs).
template <int kTiles>
struct MmaQSmem {
    uint4 w[kMmaWarps][2][kMmaStageU4];
    MmaRedT<kTiles> red;
};
static_assert(sizeof(MmaQSmem<2>) == 20736, "QMMA_SMEM_BYTES in launch/matmul.rs");
static_assert(sizeof(MmaQSmem<kMmaWideTiles>) == 33792, "QMMA_WIDE_SMEM_BYTES in launch/matmul.rs");

// kTiles n8 token tiles per block: 2 (verify rows, short prompts) or kMmaWideTiles (the
// wide form: each staged unit feeds 4x the MMAs, see the header).
template <int kF, int kTiles>
__device__ __forceinline__ void mma_qpack(const GemvParams& p, MmaQSmem<kTiles>& sm) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int tok0 = blockIdx.x * kTiles * 8;
    const int row0 = blockIdx.y * kMmaRows;
    const int tiles = min(kTiles, (p.n - tok0 + 7) / 8);  // block-uniform
    const int g = lane / 4, tig = lane % 4;
    const int units = p.cols / tachyon::kWarp;
    const int chunks = (p.cols + kMmaChunk - 1) / kMmaChunk;
    const int mine = warp < chunks ? (chunks - warp + kMmaWarps - 1) / kMmaWarps : 0;
    const qpack::Arrays<kF> a = qpack::arrays<kF>(p.w, static_cast<size_t>(p.rows) * units);
    // Lane l stages row l / 2, unit 2 * chunk + l % 2 (a chunk is 2 units of each of 16 rows);
    // rows past the end repeat the last row (their outputs are never stored).
    const int r = lane / 2, half = lane % 2;
    const size_t g0 = static_cast<size_t>(min(row0 + r, p.rows - 1)) * units;
    uint4* hs = sm.w[warp][0];
    uint4* ls = sm.w[warp][1];
    float acc[kTiles][4];
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    const int lm_row = (lane % 8) + 8 * ((lane / 8) & 1);
    const int lm_half = lane / 16;
    // The next chunk's unit is loaded while this one is decoded and multiplied.
    qpack::Unit next{};
    int u_next = 2 * warp + half;
    if (mine > 0 && u_next < units) next = qpack::load_unit<kF>(a, g0 + u_next);
    for (int i = 0; i < mine; ++i) {
        const qpack::Unit cur = next;
        const bool cur_ok = u_next < units;
        u_next = 2 * (warp + (i + 1) * kMmaWarps) + half;
        if (i + 1 < mine && u_next < units) next = qpack::load_unit<kF>(a, g0 + u_next);
        __syncwarp();  // every lane's ldmatrix of the previous chunk is done
        mma_stage_unit<kF>(cur, cur_ok, r, half, hs, ls);
        __syncwarp();  // ... and every lane's unit of this one is staged
        const int kbase = (warp + i * kMmaWarps) * kMmaChunk;
#pragma unroll
        for (int kk = 0; kk < kMmaChunk / 16; ++kk) {
            const int kb = kbase + kk * 16;
            if (kb >= p.cols) break;  // warp-uniform
            uint32_t ah[4], al[4];
            tachyon_ldmatrix_x4(ah, hs + mma_slot(lm_row, 2 * kk + lm_half));
            tachyon_ldmatrix_x4(al, ls + mma_slot(lm_row, 2 * kk + lm_half));
#pragma unroll
            for (int nt = 0; nt < kTiles; ++nt) {
                if (nt >= tiles) break;
                const int t = tok0 + nt * 8 + g;
                uint32_t xh[2], xl[2];
                mma_split(mma_x2(p, t, kb + 2 * tig), xh[0], xl[0]);
                mma_split(mma_x2(p, t, kb + 8 + 2 * tig), xh[1], xl[1]);
                // w x = (wh + wl)(xh + xl) less wl xl (2^-16 of 2^-16).
                tachyon_mma_bf16_16816(acc[nt], ah, xh, acc[nt]);
                tachyon_mma_bf16_16816(acc[nt], ah, xl, acc[nt]);
                tachyon_mma_bf16_16816(acc[nt], al, xh, acc[nt]);
            }
        }
    }
    mma_finish<kTiles>(p, sm.red, acc, warp, tok0, row0);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_bf16(const GemvParams p) {
    // uint4 is 16-byte aligned: every piece is a valid cp.async / ldmatrix row address.
    __shared__ uint4 wsm[kMmaWarps][kMmaStages][kMmaStageU4];
    __shared__ MmaRed red;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int tok0 = blockIdx.x * kMmaTokens;
    const int row0 = blockIdx.y * kMmaRows;
    const bool two_tiles = p.n - tok0 > 8;  // block-uniform
    const int g = lane / 4, tig = lane % 4;
    const int chunks = (p.cols + kMmaChunk - 1) / kMmaChunk;
    // This warp's chunks: warp, warp + kMmaWarps, ...
    const int mine = warp < chunks ? (chunks - warp + kMmaWarps - 1) / kMmaWarps : 0;
    uint4(*ring)[kMmaStageU4] = wsm[warp];

    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};

#pragma unroll
    for (int s = 0; s < kMmaStages - 1; ++s) {
        if (s < mine) mma_load_chunk(p, row0, warp + s * kMmaWarps, ring[s], lane);
        tachyon_cp_async_commit();
    }
    // ldmatrix.x4 of a 16x16 A tile: lanes 8j..8j+7 address matrix j (rows 0-7 / 8-15 of
    // k 0-7, then of k 8-15), which land in a[0..3] as the A fragment orders them.
    const int lm_row = (lane % 8) + 8 * ((lane / 8) & 1);
    const int lm_half = lane / 16;
    for (int i = 0; i < mine; ++i) {
        tachyon_cp_async_wait<kMmaStages - 2>();  // chunk i has landed (this lane's pieces)
        __syncwarp();                              // ... and every lane's; stage i-1 is free
        const int next = i + kMmaStages - 1;
        if (next < mine) mma_load_chunk(p, row0, warp + next * kMmaWarps, ring[next % kMmaStages], lane);
        tachyon_cp_async_commit();

        const uint4* stage = ring[i % kMmaStages];
        const int kbase = (warp + i * kMmaWarps) * kMmaChunk;
#pragma unroll
        for (int kk = 0; kk < kMmaChunk / 16; ++kk) {
            const int kb = kbase + kk * 16;
            if (kb >= p.cols) break;  // warp-uniform
            uint32_t a[4];
            tachyon_ldmatrix_x4(a, stage + mma_slot(lm_row, 2 * kk + lm_half));
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                if (nt == 1 && !two_tiles) break;
                const int t = tok0 + nt * 8 + g;
                uint32_t hi[2], lo[2];
                mma_split(mma_x2(p, t, kb + 2 * tig), hi[0], lo[0]);
                mma_split(mma_x2(p, t, kb + 8 + 2 * tig), hi[1], lo[1]);
                tachyon_mma_bf16_16816(acc[nt], a, hi, acc[nt]);
                tachyon_mma_bf16_16816(acc[nt], a, lo, acc[nt]);
            }
        }
    }
    tachyon_cp_async_wait<0>();  // nothing is left in flight (the trailing empty groups)

    mma_finish<2>(p, red, acc, warp, tok0, row0);
}

extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_tile_bf16(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, tile_smem);
    tile_gemm_bf16(p, *reinterpret_cast<TileSmem*>(tile_smem));
}

// Block-format weights, one kernel per format (the launcher picks by dtype, in
// TACHYON_DTYPE_* order from Q4_0). Written out: the emulator lists kernels from the text.
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q4_0(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q4_0, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q4_1(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q4_1, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q5_0(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q5_0, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q5_1(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q5_1, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q8_0(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q8_0, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q4_k(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q4_K, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q5_k(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q5_K, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_q6_k(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q6_K, 2>(p, *reinterpret_cast<MmaQSmem<2>*>(qmma_smem));
}

// The wide form (64 tokens a block) of the same, for prefill chunks of 64 rows and more.
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q4_0(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q4_0, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q4_1(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q4_1, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q5_0(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q5_0, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q5_1(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q5_1, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q8_0(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q8_0, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q4_k(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q4_K, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q5_k(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q5_K, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
extern "C" __global__ void __launch_bounds__(kMmaThreads) gemm_mma_qpack_wide_q6_k(const GemvParams p) {
    TACHYON_DYNAMIC_SMEM(uint4, qmma_smem);
    mma_qpack<TACHYON_DTYPE_Q6_K, kMmaWideTiles>(p, *reinterpret_cast<MmaQSmem<kMmaWideTiles>*>(qmma_smem));
}
