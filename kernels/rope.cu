/*
 * rope.cu: rotary position embedding, in place, with the CPU backend's angle tables
 * (`Ops::rope_table`: cos/sin of position * inv_freq, llama3 and linear scaling already
 * folded in), so both backends rotate by bit-identical angles.
 *
 * Layout: x `n x (n_heads * head_dim)` f32; tables `ctx x half` f32. Row i is at position
 * pos + i (pos from device memory when `pos_dev` is set). Interleaved pairs (2j, 2j+1) or
 * NeoX pairs (j, j + half); only the first 2 * half values of a head rotate.
 * Launch: grid = (n), block = (256); thread k of a row handles pairs k, k + 256, ... of the
 * row's n_heads * half pairs. A position past the table writes NaN into the row.
 * Bytes: 8 per pair (x in and out) + 8 per pair of table (shared by heads, cached).
 * Flops: 6 per pair.
 */
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024) rope_f32(const RopeParams p) {
    const int row = blockIdx.x;
    if (row >= p.n) return;
    const int position = tachyon::read_pos(p.pos_dev, p.pos) + row;
    float* x = p.x + static_cast<size_t>(row) * p.n_heads * p.head_dim;
    const int pairs = p.n_heads * p.half;
    const bool bad = position < 0 || position >= p.ctx;
    for (int k = threadIdx.x; k < pairs; k += blockDim.x) {
        const int h = k / p.half;
        const int j = k % p.half;
        float* head = x + static_cast<size_t>(h) * p.head_dim;
        const int a = p.interleaved ? 2 * j : j;
        const int b = p.interleaved ? 2 * j + 1 : j + p.half;
        if (bad) {
            head[a] = head[b] = __int_as_float(0x7fc00000);
            continue;
        }
        const float c = p.cos[static_cast<size_t>(position) * p.half + j];
        const float s = p.sin[static_cast<size_t>(position) * p.half + j];
        const float x0 = head[a], x1 = head[b];
        // Same expression order as the CPU twin (ops::rope_head); no fma contraction
        // differences matter at f32 tolerance, but keep them alike.
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}
