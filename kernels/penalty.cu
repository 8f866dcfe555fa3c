/*
 * penalty.cu: the decode step's token history on the device, so repetition, presence and
 * frequency penalties never send the logits to the host.
 *
 * State (PenaltyState): `hist[p]`, the token at position p; `last[t]`, 1 + the latest
 * position holding t; `counts[t]`, how often t was generated. The host zeroes `last` and
 * `counts` and writes the prompt's window into `hist` once per generation; `penalty_seed`
 * marks that window; each step's `penalty_apply` records its input token and penalizes.
 *
 * penalty_apply, grid = (1), block = (1024): thread 0 records the token (once per position,
 * so an eager re-run of a step changes nothing), then the block walks the positions that
 * can matter, lo..=p with lo = min(p + 1 - last_n, prompt_len): a token is penalized by the
 * thread holding its latest position (last[t] == a + 1), so each distinct token exactly
 * once, as the CPU sampler's dedup does, with no sort and no vocabulary-wide pass.
 * Bytes: 12 per position walked (hist, last, counts) plus a logit read and write per
 * distinct token: about 50 KB for a 64-token window and 4k generated tokens, a few
 * microseconds on one SM, most of it the dependent load chain hist -> last -> logits.
 * With no penalty set the kernel records the token and returns.
 *
 * Arithmetic matches the CPU sampler bit for bit: division and the presence + frequency *
 * count sum are rounded as written (no contraction into an FMA).
 *
 * The step's inputs move on in the pick itself (`advance_step` in common.cuh, called by
 * argmax_final and the sampler after they write the token): no launch of its own.
 * Programmatic dependent launch (kernels/README.md): every kernel here triggers the next and
 * waits for the previous ones first (tachyon::pdl_trigger_then_wait), before any access.
 */
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) penalty_seed(const PenaltySeedParams p) {
    tachyon::pdl_trigger_then_wait();
    const PenaltyState& st = p.st;
    const int from = max(p.from, 0), to = min(p.to, st.ctx);
    for (int a = from + static_cast<int>(threadIdx.x); a < to; a += blockDim.x) {
        const unsigned int t = st.hist[a];
        if (t < static_cast<unsigned int>(st.vocab)) atomicMax(&st.last[t], static_cast<unsigned int>(a + 1));
    }
    if (threadIdx.x == 0) *st.next_pos = to;
}

extern "C" __global__ void __launch_bounds__(1024) penalty_apply(const PenaltyApplyParams p) {
    tachyon::pdl_trigger_then_wait();
    const PenaltyState& st = p.st;
    const SampleConfig& cfg = *p.cfg;
    const int pos = *p.pos;
    if (pos < 0 || pos >= st.ctx) return;
    if (threadIdx.x == 0 && pos >= *st.next_pos) {
        const unsigned int t = *p.token;
        st.hist[pos] = t;
        if (t < static_cast<unsigned int>(st.vocab)) {
            st.last[t] = static_cast<unsigned int>(pos + 1);
            if (pos >= cfg.prompt_len) st.counts[t] += 1u;
        }
        *st.next_pos = pos + 1;
    }
    __syncthreads();
    const float rep = cfg.repetition_penalty;
    const bool repeat = rep != 1.0f;
    const bool counted = cfg.presence_penalty != 0.0f || cfg.frequency_penalty != 0.0f;
    if (!repeat && !counted) return;
    const int window_lo = pos + 1 - max(cfg.last_n, 0);
    int lo = repeat ? window_lo : pos + 1;
    if (counted) lo = min(lo, max(cfg.prompt_len, 0));
    lo = max(lo, 0);
    for (int a = lo + static_cast<int>(threadIdx.x); a <= pos; a += blockDim.x) {
        const unsigned int t = st.hist[a];
        if (t >= static_cast<unsigned int>(st.vocab) || st.last[t] != static_cast<unsigned int>(a + 1)) continue;
        float l = p.logits[t];
        if (repeat && a >= window_lo) l = l > 0.0f ? __fdiv_rn(l, rep) : __fmul_rn(l, rep);
        const unsigned int n = st.counts[t];
        if (counted && n > 0u)
            l = __fsub_rn(l, __fadd_rn(cfg.presence_penalty, __fmul_rn(cfg.frequency_penalty, static_cast<float>(n))));
        p.logits[t] = l;
    }
}
