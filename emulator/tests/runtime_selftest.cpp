/*
 * runtime_selftest.cpp: the emulated GPU's runtime, tested through emu::launch without the
 * driver. Each planted bug (emulator/tests/planted) must be reported with the right error
 * code, kernel, block, thread(s) and address; each correct twin must pass and compute the
 * right values; a few real kernels (rmsnorm, gemv, attention, argmax, sample_logits) run on
 * tiny inputs against hand computations; launch refusals; the device arena. Then timings:
 * ns per access hook, per fiber switch, and a 4096 x 4096 gemv_f32out.
 *
 * Usage: runtime_selftest KERNELS_LIB PLANTED_LIB   (exit status 0 only if all pass)
 */
#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "runtime.h"
#include "tachyon_kernels.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void expect(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

struct Lib {
    std::map<std::string, const emu::KernelInfo*> k;
    std::string stamp;
};

Lib load(const char* path) {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        exit(2);
    }
    auto reg = reinterpret_cast<const emu::KernelInfo* (*)(size_t*, const char**)>(dlsym(h, "tachyon_emu_registry"));
    if (reg == nullptr) {
        fprintf(stderr, "%s has no tachyon_emu_registry\n", path);
        exit(2);
    }
    Lib lib;
    size_t n = 0;
    const char* stamp = nullptr;
    const emu::KernelInfo* ks = reg(&n, &stamp);
    for (size_t i = 0; i < n; ++i) lib.k[ks[i].name] = &ks[i];
    lib.stamp = stamp ? stamp : "";
    return lib;
}

const emu::KernelInfo& kernel(const Lib& lib, const char* name) {
    auto it = lib.k.find(name);
    if (it == lib.k.end()) {
        fprintf(stderr, "kernel %s is not in the registry\n", name);
        exit(2);
    }
    return *it->second;
}

template <class... P>
emu::LaunchResult run_ex(const Lib& lib, const char* name, emu::Dim3 grid, emu::Dim3 block, size_t dyn,
                         const emu::LaunchOptions& opt, P... params) {
    void* ps[] = {&params..., nullptr};
    return emu::launch(kernel(lib, name), grid, block, dyn, ps, opt);
}

template <class... P>
emu::LaunchResult run(const Lib& lib, const char* name, emu::Dim3 grid, emu::Dim3 block, P... params) {
    return run_ex(lib, name, grid, block, 0, emu::LaunchOptions(), params...);
}

std::string hexaddr(const void* p) {
    char b[32];
    snprintf(b, sizeof b, "0x%lx", (unsigned long)reinterpret_cast<uintptr_t>(p));
    return b;
}

void expect_ok(const emu::LaunchResult& r, const char* what) {
    expect(r.cuda_error == 0, std::string(what) + " should pass, got " + std::to_string(r.cuda_error) + ": " + r.report);
}

void expect_fault(const emu::LaunchResult& r, int code, const char* what, const std::vector<std::string>& needles) {
    expect(r.cuda_error == code, std::string(what) + ": error " + std::to_string(r.cuda_error) + ", want " +
                                     std::to_string(code) + " (report: " + r.report + ")");
    for (const auto& n : needles)
        expect(r.report.find(n) != std::string::npos, std::string(what) + ": report lacks \"" + n + "\": " + r.report);
    if (getenv("SELFTEST_VERBOSE")) printf("  %s -> %s\n", what, r.report.c_str());
}

template <class T>
T* dalloc(size_t n) {
    return static_cast<T*>(emu::dev_alloc(n * sizeof(T)));
}

emu::Dim3 d1(unsigned x) { return emu::Dim3{x, 1, 1}; }

// ---- planted bugs and their correct twins ---------------------------------------------------
void planted(const Lib& P) {
    {
        float* out = dalloc<float>(256);
        auto r = run(P, "planted_oob_write", d1(2), d1(256), out, 256);
        expect_fault(r, 700, "oob write", {"planted_oob_write", "block (1,0,0)", "thread (0,0,0)", "write of 4 bytes",
                                             hexaddr(out + 256), "past the end of a 1024-byte allocation"});
        float* ok = dalloc<float>(256);
        expect_ok(run(P, "ok_write", d1(2), d1(256), ok, 256), "ok_write");
        bool all = true;
        for (int i = 0; i < 256; ++i) all &= ok[i] == 1.0f;
        expect(all, "ok_write values");
    }
    {
        float* out = dalloc<float>(256);
        expect_fault(run(P, "planted_raw_race", d1(1), d1(256), out), 719, "raw race",
                     {"planted_raw_race", "block (0,0,0)", "race (read after write)", "thread (0,0,0) wrote",
                      "thread (1,0,0) reads", "static shared offset"});
        expect_ok(run(P, "ok_raw", d1(1), d1(256), out), "ok_raw");
        bool all = true;
        for (int t = 0; t < 256; ++t) all &= out[t] == float((t + 255) % 256);
        expect(all, "ok_raw values");
        expect_fault(run(P, "planted_war_race", d1(1), d1(256), out), 719, "war race",
                     // After a barrier the last thread to arrive runs on first: thread 255 reads s[0],
                     // then thread 0 overwrites it.
                     {"planted_war_race", "race (write after read)", "thread (255,0,0) read it", "thread (0,0,0) writes"});
        expect_ok(run(P, "ok_war", d1(1), d1(256), out), "ok_war");
        all = true;
        for (int t = 0; t < 256; ++t) all &= out[t] == float((t + 1) % 256);
        expect(all, "ok_war values");
    }
    {
        float* p = dalloc<float>(64);
        float* out = dalloc<float>(32);
        for (int i = 0; i < 64; ++i) p[i] = float(i);
        expect_fault(run(P, "planted_misaligned_float4", d1(1), d1(32), (const float*)p, out), 716, "misaligned float4",
                     {"planted_misaligned_float4", "thread (0,0,0)", hexaddr(p + 1), "misaligned"});
        expect_ok(run(P, "ok_aligned_float4", d1(1), d1(32), (const float*)p, out), "ok_aligned_float4");
        expect(out[31] == 4 + 5 + 6 + 7, "ok_aligned_float4 value");
    }
    {
        float* out = dalloc<float>(64);
        expect_fault(run(P, "planted_divergent_barrier", d1(1), d1(64), out), 719, "divergent barrier",
                     {"planted_divergent_barrier", "divergent barrier", "thread (16,0,0)", "exited", "[0-15] exited"});
        expect_ok(run(P, "ok_barrier", d1(1), d1(64), out), "ok_barrier");
        expect(out[20] == 2.0f && std::isnan(out[3]), "ok_barrier values (unwritten memory reads as NaN)");
    }
    {
        float* out = dalloc<float>(64);
        expect_fault(run(P, "planted_shfl_mask_missing", d1(1), d1(32), out), 719, "shuffle mask missing a lane",
                     {"planted_shfl_mask_missing", "thread (30,0,0)", "reads lane 31, which is not in the mask"});
        expect_fault(run(P, "planted_shfl_self_missing", d1(1), d1(32), out), 719, "shuffle by a lane outside its mask",
                     {"planted_shfl_self_missing", "thread (31,0,0)", "does not name the calling lane 31"});
        expect_fault(run(P, "planted_shfl_lane_absent", d1(1), d1(32), out), 719, "shuffle lane absent",
                     {"planted_shfl_lane_absent", "thread (5,0,0) exited", "[0-4] wait for it", "__shfl_xor_sync"});
        expect_ok(run(P, "ok_shfl", d1(1), d1(64), out), "ok_shfl");
        bool all = true;
        for (int t = 0; t < 64; ++t) all &= out[t] == 496.0f;
        expect(all, "ok_shfl values");
    }
    {
        float host[32] = {0};
        float* out = dalloc<float>(32);
        expect_fault(run(P, "planted_host_pointer", d1(1), d1(32), (const float*)host, out), 700, "host pointer",
                     {"planted_host_pointer", "thread (0,0,0)", "read of 4 bytes", hexaddr(host), "not device memory"});
        float* freed = dalloc<float>(32);
        emu::dev_free(freed);
        expect_fault(run(P, "planted_use_after_free", d1(1), d1(32), (const float*)freed, out), 700, "use after free",
                     {"thread (0,0,0)", hexaddr(freed), "freed"});
    }
    {
        unsigned* out = dalloc<unsigned>(8);
        memset(out, 0, 8 * sizeof(unsigned));
        expect_ok(run(P, "ok_atomics", d1(1), d1(64), out), "ok_atomics");
        expect(out[0] == 16 && out[1] == 16 && out[2] == 16 && out[3] == 16 && out[4] == 0x55555555u, "ok_atomics values");
        float* f = dalloc<float>(32);
        expect_ok(run(P, "ok_syncwarp", d1(1), d1(32), f), "ok_syncwarp");
        expect(f[0] == 31.0f && f[31] == 0.0f, "ok_syncwarp values");
        expect_fault(run(P, "planted_no_syncwarp", d1(1), d1(32), f), 719, "warp exchange without __syncwarp",
                     {"race (read after write)", "thread (0,0,0) wrote", "thread (1,0,0) reads"});
    }
    {
        float* out = dalloc<float>(256);
        expect_ok(run_ex(P, "ok_dynamic_smem", d1(1), d1(256), 1024, emu::LaunchOptions(), out, 256), "ok_dynamic_smem");
        expect(out[0] == 255.0f && out[255] == 0.0f, "ok_dynamic_smem values");
        expect_fault(run_ex(P, "planted_dynamic_smem_oob", d1(1), d1(32), 1024, emu::LaunchOptions(), out, 256), 700,
                     "dynamic shared memory overflow", {"thread (0,0,0)", "dynamic shared memory (1024 bytes)"});
        const float* fresh = dalloc<float>(4);
        expect_ok(run(P, "ok_read_fill", d1(1), d1(1), fresh, out), "ok_read_fill");
        uint32_t bits;
        memcpy(&bits, out, 4);
        expect(bits == 0xffffffffu, "fresh device memory reads as 0xFF bytes");
    }
    {
        int* flag = dalloc<int>(1);
        int* out = dalloc<int>(2);
        *flag = 0;
        emu::LaunchOptions coop;
        coop.cooperative = true;
        expect_ok(run_ex(P, "ok_cross_block_flag", d1(2), d1(32), 0, coop, (volatile int*)flag, out), "cooperative flag wait");
        expect(out[0] == 8, "cooperative flag value");
    }
    {
        // Refusals: nothing runs, CUDA_ERROR_INVALID_VALUE.
        float* out = dalloc<float>(2048);
        expect_fault(run(P, "ok_write", d1(1), d1(512), out, 10), 1, "over __launch_bounds__", {"__launch_bounds__ 256"});
        expect_fault(run(P, "ok_shfl", d1(1), d1(1025), out), 1, "over 1024 threads", {"exceeds"});
        expect_fault(run(P, "ok_shfl", d1(1), emu::Dim3{1, 1, 65}, out), 1, "block z over 64", {"exceeds (1024,1024,64)"});
        expect_fault(run(P, "ok_shfl", emu::Dim3{1, 65536, 1}, d1(32), out), 1, "grid y over 65535", {"exceeds"});
        expect_fault(run(P, "ok_shfl", d1(0), d1(32), out), 1, "zero grid", {"zero"});
        expect_fault(run_ex(P, "ok_dynamic_smem", d1(1), d1(32), 49153, emu::LaunchOptions(), out, 16), 1,
                     "dynamic smem over 48 KiB without opt-in", {"48 KiB"});
        emu::LaunchOptions big;
        big.max_dynamic_smem = 232448;
        expect_ok(run_ex(P, "ok_dynamic_smem", d1(1), d1(256), 200000, big, out, 50000), "227 KiB opt-in");
        expect(out[0] == 49999.0f, "opt-in dynamic smem value");
        expect_fault(run_ex(P, "ok_dynamic_smem", d1(1), d1(32), 232449, big, out, 16), 1, "dynamic smem over 227 KiB", {"exceeds"});
    }
}

void arena() {
    const size_t before = emu::dev_free_bytes();
    char* p = static_cast<char*>(emu::dev_alloc(1000));
    expect(p != nullptr && reinterpret_cast<uintptr_t>(p) % 256 == 0, "allocation is 256-aligned");
    expect(emu::dev_free_bytes() == before - 1024, "free bytes drop by the rounded size");
    expect(emu::dev_range_ok(p, 1000) && !emu::dev_range_ok(p, 1001) && emu::dev_range_ok(p + 999, 1) &&
               !emu::dev_range_ok(p - 1, 1),
           "dev_range_ok bounds");
    void* base = nullptr;
    size_t size = 0;
    expect(emu::dev_lookup(p + 500, &base, &size) && base == p && size == 1000, "dev_lookup");
    expect(!emu::dev_free(p + 8), "interior pointer is not freed");
    expect(emu::dev_free(p), "free");
    expect(!emu::dev_free(p), "double free refused");
    expect(emu::dev_free_bytes() == before, "free bytes back");
    expect(emu::dev_alloc(emu::dev_total_bytes() + 1) == nullptr, "over-size allocation fails");
}

// ---- real kernels on tiny inputs ---------------------------------------------------------------
float bf16_round(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    b &= 0xffff0000u;
    memcpy(&f, &b, 4);
    return f;
}
uint16_t bf16_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return uint16_t(b >> 16);
}
bool close(float a, float b, float rel = 1e-5f) {
    return std::fabs(a - b) <= rel * std::max(1.0f, std::fabs(b));
}

void real_kernels(const Lib& K) {
    // rmsnorm: 2 rows, vector path (dim 8) and scalar path (dim 7, with add).
    for (int dim : {8, 7}) {
        const int rows = 2;
        float* x = dalloc<float>(rows * dim);
        float* add = dalloc<float>(rows * dim);
        float* w = dalloc<float>(dim);
        float* out = dalloc<float>(rows * dim);
        std::vector<float> hx(rows * dim);
        for (int i = 0; i < rows * dim; ++i) {
            x[i] = hx[i] = 0.25f * float(i % 5) - 0.5f;
            add[i] = 0.125f * float(i % 3);
        }
        for (int i = 0; i < dim; ++i) w[i] = 1.0f + 0.1f * float(i);
        RmsNormParams p{dim == 7 ? add : nullptr, x, w, out, rows, dim, 1e-5f};
        expect_ok(run(K, "rmsnorm_residual_f32", d1(rows), d1(256), p), "rmsnorm");
        bool good = true;
        for (int r = 0; r < rows; ++r) {
            double ss = 0;
            std::vector<float> v(dim);
            for (int i = 0; i < dim; ++i) {
                v[i] = hx[r * dim + i] + (dim == 7 ? 0.125f * float((r * dim + i) % 3) : 0.0f);
                ss += double(v[i]) * v[i];
            }
            const float scale = 1.0f / std::sqrt(float(ss / dim) + 1e-5f);
            for (int i = 0; i < dim; ++i) good &= close(out[r * dim + i], v[i] * scale * w[i], 1e-5f);
        }
        expect(good, "rmsnorm values (dim " + std::to_string(dim) + ")");
    }
    // gemv: bf16 vector path (cols 16) and f32 scalar path with bias; exact small values.
    {
        const int rows = 5, cols = 16, n = 2;
        uint16_t* w = dalloc<uint16_t>(rows * cols);
        float* x = dalloc<float>(n * cols);
        float* out = dalloc<float>(n * rows);
        std::vector<float> hw(rows * cols);
        for (int i = 0; i < rows * cols; ++i) {
            hw[i] = bf16_round(0.125f * float((i * 7) % 11) - 0.5f);
            w[i] = bf16_bits(hw[i]);
        }
        for (int i = 0; i < n * cols; ++i) x[i] = float((i * 3) % 5) - 2.0f;
        for (int wpr : {1, 2, 8}) {
            GemvParams p{w, nullptr, nullptr, x, out, rows, cols, n, TACHYON_DTYPE_BF16, wpr};
            const unsigned rpb = 8 / wpr;
            expect_ok(run(K, "gemv_f32out", d1((rows + rpb - 1) / rpb), emu::Dim3{32, 8, 1}, p), "gemv bf16");
            bool good = true;
            for (int t = 0; t < n; ++t)
                for (int r = 0; r < rows; ++r) {
                    float ref = 0;
                    for (int c = 0; c < cols; ++c) ref += hw[r * cols + c] * x[t * cols + c];
                    good &= close(out[t * rows + r], ref);
                }
            expect(good, "gemv bf16 values (warps_per_row " + std::to_string(wpr) + ")");
        }
        float* wf = dalloc<float>(3 * 10);
        float* bias = dalloc<float>(3);
        for (int i = 0; i < 30; ++i) wf[i] = float(i % 4) - 1.0f;
        for (int i = 0; i < 3; ++i) bias[i] = 0.5f * i;
        GemvParams p{wf, nullptr, bias, x, out, 3, 10, 1, TACHYON_DTYPE_F32, 1};
        expect_ok(run(K, "gemv_f32out", d1(1), emu::Dim3{32, 8, 1}, p), "gemv f32 bias");
        bool good = true;
        for (int r = 0; r < 3; ++r) {
            float ref = bias[r];
            for (int c = 0; c < 10; ++c) ref += wf[r * 10 + c] * x[c];
            good &= close(out[r], ref);
        }
        expect(good, "gemv f32 bias values");
    }
    // attention: 1 query row, 2 query heads sharing 1 kv head, head_dim 32, 4 cached positions, 2 splits.
    {
        const int nh = 2, nkv = 1, hd = 32, ctx = 8, pos = 3, splits = 2;
        float* q = dalloc<float>(nh * hd);
        float* kc = dalloc<float>(ctx * nkv * hd);
        float* vc = dalloc<float>(ctx * nkv * hd);
        float* out = dalloc<float>(nh * hd);
        float* pacc = dalloc<float>(nh * splits * hd);
        float* pmax = dalloc<float>(nh * splits);
        float* psum = dalloc<float>(nh * splits);
        for (int i = 0; i < nh * hd; ++i) q[i] = 0.05f * float((i * 5) % 13) - 0.3f;
        for (int i = 0; i < ctx * hd; ++i) {
            kc[i] = 0.04f * float((i * 3) % 17) - 0.3f;
            vc[i] = 0.1f * float((i * 11) % 7) - 0.2f;
        }
        AttnParams p{q, nullptr, nullptr, kc, vc, out, pacc, pmax, psum, nullptr, pos, 1, nh, nkv, hd, 0, splits, ctx};
        expect_ok(run(K, "attn_decode_split", emu::Dim3{1, unsigned(splits), 1}, d1(128), p), "attn_decode_split");
        expect_ok(run(K, "attn_decode_reduce", d1(nh), d1(128), p), "attn_decode_reduce");
        bool good = true;
        for (int h = 0; h < nh; ++h) {
            double s[pos + 1], mx = -1e30, z = 0;
            for (int t = 0; t <= pos; ++t) {
                double d = 0;
                for (int i = 0; i < hd; ++i) d += double(q[h * hd + i]) * kc[t * hd + i];
                s[t] = d / std::sqrt(double(hd));
                mx = std::max(mx, s[t]);
            }
            for (int t = 0; t <= pos; ++t) z += std::exp(s[t] - mx);
            for (int i = 0; i < hd; ++i) {
                double o = 0;
                for (int t = 0; t <= pos; ++t) o += std::exp(s[t] - mx) / z * vc[t * hd + i];
                good &= close(out[h * hd + i], float(o), 1e-4f);
            }
        }
        expect(good, "attention values");
    }
    // argmax over 1000 logits in 4 parts, and sample_logits with top_k = 1 (always the argmax).
    {
        const int n = 1000, parts = 4;
        float* logits = dalloc<float>(n);
        for (int i = 0; i < n; ++i) logits[i] = std::sin(0.37f * float(i));
        logits[123] = NAN;
        logits[777] = 3.0f;
        float* pv = dalloc<float>(parts);
        int* pi = dalloc<int>(parts);
        unsigned* out = dalloc<unsigned>(1);
        ArgmaxParams a{logits, pv, pi, out, n, parts};
        expect_ok(run(K, "argmax_partial", d1(parts), d1(256), a), "argmax_partial");
        expect_ok(run(K, "argmax_final", d1(1), d1(1024), a), "argmax_final");
        expect(*out == 777, "argmax value " + std::to_string(*out));
        // The draw: three vocabulary passes, then the final block. Scratch starts zeroed
        // and the kernels leave it so.
        float* work = dalloc<float>(TACHYON_SAMPLE_SCRATCH_WORDS + n);
        std::memset(work, 0, sizeof(float) * (TACHYON_SAMPLE_SCRATCH_WORDS + n));
        unsigned long long* rng = dalloc<unsigned long long>(1);
        *rng = 42;
        const int sparts = 1;
        SampleParams s{logits, work, out, rng, n, 1, 1.0f, 1.0f, 0.0f, sparts};
        auto draw = [&](const char* what) {
            expect_ok(run(K, "sample_scan", d1(sparts), d1(256), s), what);
            expect_ok(run(K, "sample_refine", d1(sparts), d1(256), s), what);
            expect_ok(run(K, "sample_compact", d1(sparts), d1(256), s), what);
            expect_ok(run(K, "sample_logits", d1(1), d1(1024), s), what);
        };
        *out = 0;
        draw("sample_logits top_k 1");
        expect(*out == 777, "sample_logits top_k 1 picks the argmax, got " + std::to_string(*out));
        // Two candidates only (the rest -inf): the draw must be one of them.
        for (int i = 0; i < n; ++i) logits[i] = -INFINITY;
        logits[10] = 0.0f;
        logits[900] = 0.0f;
        s.top_k = 0;
        int hits10 = 0;
        for (int rep = 0; rep < 8; ++rep) {
            draw("sample_logits two candidates");
            expect(*out == 10 || *out == 900, "sample_logits draws a candidate, got " + std::to_string(*out));
            hits10 += *out == 10;
        }
        expect(hits10 > 0 && hits10 < 8, "both candidates drawn over 8 draws (" + std::to_string(hits10) + " of 8 were 10)");
    }
}

// The PTX wrappers against a plain matrix product and a plain copy.
void ptx(const Lib& P) {
    uint16_t* a = dalloc<uint16_t>(256);
    uint16_t* b = dalloc<uint16_t>(128);
    float* c = dalloc<float>(128);
    float* d = dalloc<float>(128);
    std::vector<float> ha(256), hb(128);
    for (int i = 0; i < 256; ++i) {
        ha[i] = bf16_round(0.0625f * float((i * 37) % 29) - 0.875f);
        a[i] = bf16_bits(ha[i]);
    }
    for (int i = 0; i < 128; ++i) {
        hb[i] = bf16_round(0.03125f * float((i * 11) % 23) - 0.25f);
        b[i] = bf16_bits(hb[i]);
        c[i] = 0.5f * float(i % 3);
    }
    expect_ok(run(P, "ok_mma_bf16", d1(1), d1(32), (const uint16_t*)a, (const uint16_t*)b, (const float*)c, d), "mma");
    bool good = true;
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            float ref = c[m * 8 + n];
            for (int k = 0; k < 16; ++k) ref += ha[m * 16 + k] * hb[k * 8 + n];
            good &= close(d[m * 8 + n], ref, 1e-5f);
        }
    expect(good, "mma.sync m16n8k16 bf16 (A through ldmatrix.x4) equals the plain product");
    expect_ok(run(P, "ok_mma_bf16_btrans", d1(1), d1(32), (const uint16_t*)a, (const uint16_t*)b, (const float*)c, d),
              "mma btrans");
    good = true;
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            float ref = c[m * 8 + n];
            for (int k = 0; k < 16; ++k) ref += ha[m * 16 + k] * hb[k * 8 + n];
            good &= close(d[m * 8 + n], ref, 1e-5f);
        }
    expect(good, "mma.sync m16n8k16 bf16 with B through ldmatrix.x4.trans equals the plain product");

    float* src = dalloc<float>(256);
    float* dst = dalloc<float>(256);
    float* early = dalloc<float>(64);
    for (int i = 0; i < 256; ++i) src[i] = float(i);
    expect_ok(run(P, "ok_cp_async", d1(1), d1(32), (const float*)src, dst, early, 256), "cp.async");
    good = true;
    for (int i = 0; i < 256; ++i) good &= dst[i] == float(i);
    expect(good, "cp.async copy equals the source");
    expect(std::isnan(early[0]) && std::isnan(early[40]),
           "cp.async data is not visible before its wait_group (shared memory still holds the 0xFF fill)");
}

// Programmatic dependent launch: the pre-wait rule (emulator/runtime/pdl.cpp).
void pdl(const Lib& P) {
    emu::LaunchOptions prog;
    prog.programmatic = true;
    const int n = 64;
    float* w = dalloc<float>(n);  // written by the host only: weights
    for (int i = 0; i < n; ++i) w[i] = 100.0f;
    float* in = dalloc<float>(n);
    float* out = dalloc<float>(n);
    float* out2 = dalloc<float>(n);
    auto produce = [&] { expect_ok(run(P, "ok_pdl_produce", d1(1), d1(32), in, n), "ok_pdl_produce"); };
    produce();
    expect_fault(run_ex(P, "planted_pdl_read_before_wait", d1(1), d1(n), 0, prog, (const float*)w, (const float*)in, out),
                 700, "pdl read before wait",
                 {"planted_pdl_read_before_wait", "block (0,0,0)", "thread (0,0,0)", "read of 4 bytes", hexaddr(in),
                  "before griddepcontrol.wait", "256-byte allocation", "ok_pdl_produce (launch 1 before"});
    produce();
    expect_ok(run_ex(P, "ok_pdl_read_after_wait", d1(1), d1(n), 0, prog, (const float*)w, (const float*)in, out),
              "pdl read after wait");
    expect(out[5] == 105.0f, "pdl read after wait value");
    produce();
    expect_ok(run(P, "planted_pdl_read_before_wait", d1(1), d1(n), (const float*)w, (const float*)in, out),
              "read before wait without the attribute");
    // Transitive: a programmatic kernel may start while the one two launches back still runs.
    produce();
    expect_ok(run_ex(P, "ok_pdl_read_after_wait", d1(1), d1(n), 0, prog, (const float*)w, (const float*)in, out2),
              "pdl chain, first");
    expect_fault(run_ex(P, "planted_pdl_read_before_wait", d1(1), d1(n), 0, prog, (const float*)w, (const float*)in, out),
                 700, "pdl read before wait, two launches back", {"ok_pdl_produce (launch 2 before"});
    // A copy (or a graph launch) between them orders everything: no overlap to check.
    produce();
    emu::pdl_serialize();
    expect_ok(run_ex(P, "planted_pdl_read_before_wait", d1(1), d1(n), 0, prog, (const float*)w, (const float*)in, out),
              "read before wait after a serializing copy");
    expect_fault(run_ex(P, "planted_pdl_write_before_wait", d1(1), d1(n), 0, prog, out), 700, "pdl write before wait",
                 {"planted_pdl_write_before_wait", "write of 4 bytes", hexaddr(out), "before griddepcontrol.wait"});
    produce();
    expect_fault(run_ex(P, "planted_pdl_prefetch_before_wait", d1(1), d1(n), 0, prog, (const float*)in, out), 700,
                 "pdl prefetch before wait", {"read of 1 byte", hexaddr(in), "ok_pdl_produce"});
    expect_ok(run(P, "planted_pdl_write_before_wait", d1(1), d1(n), out), "write before wait without the attribute");
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU time of the whole process (all workers): meaningful on a busy machine.
double cpu_s() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

void timings(const Lib& K, const Lib& P) {
    {
        const int n = 1 << 22;
        float* p = dalloc<float>(n);
        memset(p, 0, n * sizeof(float));
        float* out = dalloc<float>(1);
        const double t0 = cpu_s();
        expect_ok(run(P, "bench_loads", d1(1), d1(1), (const float*)p, n, out), "bench_loads");
        const double t1 = cpu_s();
        printf("timing: %.2f ns CPU per checked global load (hook + load + add)\n", (t1 - t0) * 1e9 / n);
        emu::LaunchOptions prog;
        prog.programmatic = true;
        const double p0 = cpu_s();
        expect_ok(run_ex(P, "bench_loads_pdl", d1(1), d1(1), 0, prog, (const float*)p, n, out), "bench_loads_pdl");
        const double p1 = cpu_s();
        printf("timing: %.2f ns CPU per checked global load in a programmatic launch, after its wait\n",
               (p1 - p0) * 1e9 / n);
        const int iters = 1000000;
        const double t2 = cpu_s();
        expect_ok(run(P, "bench_barrier", d1(1), d1(2), iters, out), "bench_barrier");
        const double t3 = cpu_s();
        // Two threads: each barrier is one switch (the second arrival completes it and runs on).
        printf("timing: %.2f ns CPU per barrier of 2 threads = one fiber switch + barrier bookkeeping\n",
               (t3 - t2) * 1e9 / iters);
    }
    {
        const int rows = 4096, cols = 4096;
        uint16_t* w = dalloc<uint16_t>(size_t(rows) * cols);
        for (size_t i = 0; i < size_t(rows) * cols; ++i) w[i] = bf16_bits(float(i % 7) * 0.01f);
        float* x = dalloc<float>(cols);
        for (int i = 0; i < cols; ++i) x[i] = 0.001f * float(i % 13);
        float* out = dalloc<float>(rows);
        for (int wpr : {1, 4}) {
            GemvParams p{w, nullptr, nullptr, x, out, rows, cols, 1, TACHYON_DTYPE_BF16, wpr};
            const double t0 = now_s(), c0 = cpu_s();
            expect_ok(run(K, "gemv_f32out", d1(rows / (8 / wpr)), emu::Dim3{32, 8, 1}, p), "gemv 4096");
            const double t1 = now_s(), c1 = cpu_s();
            printf("timing: gemv_f32out 4096x4096 bf16, n=1, warps_per_row %d: %.3f s wall, %.3f s CPU, %u workers\n",
                   wpr, t1 - t0, c1 - c0, emu::worker_count());
        }
        double ref = 0;
        for (int c = 0; c < cols; ++c) ref += double(bf16_round(float((size_t(17) * cols + c) % 7) * 0.01f)) * x[c];
        expect(close(out[17], float(ref), 1e-4f), "gemv 4096 value");
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s KERNELS_LIB PLANTED_LIB\n", argv[0]);
        return 2;
    }
    const Lib K = load(argv[1]);
    const Lib P = load(argv[2]);
    // Every extern "C" kernel of kernels/*.cu (a new kernel updates this count).
    expect(K.k.size() == 81, "the kernels library registers 81 kernels, has " + std::to_string(K.k.size()));
    expect(K.stamp.size() == 16, "the kernels library carries a stamp");
    arena();
    planted(P);
    real_kernels(K);
    ptx(P);
    pdl(P);
    if (getenv("SELFTEST_NO_TIMING") == nullptr) timings(K, P);
    printf("runtime self test: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
