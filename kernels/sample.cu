/*
 * sample.cu: greedy token choice on the device, so the logits never leave it: the index of
 * the largest logit, lowest index on ties, NaN never chosen (the CPU sampler's `argmax`).
 *
 * Two launches: argmax_partial, grid = (n_parts <= 1024), block = (256): each block scans a
 * grid-stride share of the logits and writes its best (value, index); argmax_final, grid =
 * (1), block = (1024): merges the n_parts candidates and writes the token id.
 * Bytes: 4 * n read (600 KB for a 152k vocabulary) + 8 * n_parts; no flops to speak of.
 * Spreading the read over many SMs is the point: one SM alone streams ~100-200 GB/s.
 *
 * Masked picks (`argmax_partial_masked`; the draw's `sample_*_masked` in sample_logits.cu):
 * a constrained step's allowed tokens as a bitmask of ceil(n / 32) words (bit k % 32 of word
 * k / 32 allows token k), uploaded by the host while the forward pass runs. A refused token
 * is no candidate at all, as a NaN logit is (not a -inf one: an allowed -inf logit still
 * beats nothing), so a step whose allowed logits are all NaN picks TACHYON_NO_TOKEN. The
 * mask adds n / 8 bytes read (19 KB for a 152k vocabulary), each word shared by 32
 * neighbouring ids.
 * Programmatic dependent launch (kernels/README.md): every kernel here triggers the next and
 * waits for the previous ones first (tachyon::pdl_trigger_then_wait), before any access.
 */
#include "pick.cuh"

namespace {

__device__ __forceinline__ void argmax_partial_body(const ArgmaxParams& p, const unsigned int* mask) {
    float bv = NAN;
    int bi = -1;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < p.n; k += gridDim.x * blockDim.x) {
        const float v = p.logits[k];
        if (allowed(mask, k) && better(v, k, bv, bi)) {
            bv = v;
            bi = k;
        }
    }
    block_best(bv, bi);
    if (threadIdx.x == 0) {
        p.part_val[blockIdx.x] = bv;
        p.part_idx[blockIdx.x] = bi;
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(1024) argmax_partial(const ArgmaxParams p) {
    tachyon::pdl_trigger_then_wait();
    argmax_partial_body(p, nullptr);
}

// The partials of the allowed tokens only; argmax_final merges them as it merges unmasked ones.
extern "C" __global__ void __launch_bounds__(1024) argmax_partial_masked(const MaskedArgmaxParams p) {
    tachyon::pdl_trigger_then_wait();
    argmax_partial_body(p.base, p.mask);
}

extern "C" __global__ void __launch_bounds__(1024) argmax_final(const ArgmaxParams p) {
    tachyon::pdl_trigger_then_wait();
    float bv = NAN;
    int bi = -1;
    for (int k = threadIdx.x; k < p.n_parts; k += blockDim.x) {
        const float v = p.part_val[k];
        const int i = p.part_idx[k];
        if (i >= 0 && better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    block_best(bv, bi);
    if (threadIdx.x == 0) {
        const unsigned int tok = bi < 0 ? TACHYON_NO_TOKEN : static_cast<unsigned int>(bi);
        *p.out = tok;
        tachyon::advance_step(p.advance, tok);
    }
}

