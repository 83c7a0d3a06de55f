#include "mudg_fast/screen.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_fast {

namespace {
std::atomic<int> g_mode{-2};  // -2: not read from the environment yet

int mode_now() {
    int m = g_mode.load(std::memory_order_relaxed);
    if (m == -2) {
        const char* env = std::getenv("MUDG_SCREENING");
        m = (env && env[0] == '0') ? 0 : -1;
        g_mode.store(m);
    }
    return m;
}

}  // namespace

void set_screening(int mode) noexcept { g_mode.store(mode < -1 ? -1 : (mode > 1 ? 1 : mode)); }
int screening_mode() noexcept { return mode_now(); }

bool use_screening(const Kernels& K, idx_t d, idx_t n_cols, int k) {
    const int m = mode_now();
    if (m == 0) return false;
    if (m == -1 && !K.screening) return false;
    // Small problems gain nothing; int32 sums must stay exact in float (|S| < 2^24 needs d <= 1024).
    return d >= 16 && d <= 1024 && n_cols >= 64 && k <= 64;
}

void QuantRows::quantize(const float* src, idx_t stride, const idx_t* ids, idx_t n_rows, idx_t d) {
    const Kernels& K = kernels();
    n = n_rows;
    d4 = (d + 3) / 4;
    const idx_t n_panels = (n + kMr8 - 1) / kMr8;
    panels.assign(static_cast<std::size_t>(n_panels * d4 * 4 * kMr8), 128);  // padding: q = 0
    scale.assign(n, 1.0f);
    qnorm.assign(n, 0.0);
    resid.assign(n, 0.0);
    norm.assign(n, 0.0);
    for (idx_t i = 0; i < n; ++i) {
        double st[3];
        K.quantize_row(src + (ids ? ids[i] : i) * stride, d, 127, 128,
                       panels.data() + (i / kMr8) * d4 * 4 * kMr8 + (i % kMr8) * 4, 4 * kMr8, &scale[i], st);
        qnorm[i] = st[0];
        resid[i] = st[1];
        norm[i] = st[2];
    }
}

void QuantCols::quantize(const float* src, idx_t stride, idx_t n_cols, idx_t d, int n_threads) {
    const Kernels& K = kernels();
    n = n_cols;
    d4 = (d + 3) / 4;
    const idx_t nblk = (n + 15) / 16;
    blocks.assign(static_cast<std::size_t>(nblk * d4 * 64), 0);
    scale.assign(n, 1.0f);
    corr.assign(n, 0);
    std::vector<double> qn(n), rs(n), nm(n);
    parallel_for(n, 256, n_threads, [&](idx_t c0, idx_t c1, int) {
        for (idx_t c = c0; c < c1; ++c) {
            double st[3];
            auto* base = reinterpret_cast<std::uint8_t*>(blocks.data()) + (c / 16) * d4 * 64 + (c % 16) * 4;
            K.quantize_row(src + c * stride, d, K.i8_col_limit, 0, base, 64, &scale[c], st);
            std::int32_t qsum = 0;
            for (idx_t k = 0; k < d; ++k) qsum += static_cast<std::int8_t>(base[(k / 4) * 64 + (k % 4)]);
            corr[c] = 128 * qsum;
            qn[c] = st[0];
            rs[c] = st[1];
            nm[c] = st[2];
        }
    });
    qnorm_max = resid_max = norm_max = 0;
    for (idx_t c = 0; c < n; ++c) {
        qnorm_max = std::max(qnorm_max, qn[c]);
        resid_max = std::max(resid_max, rs[c]);
        norm_max = std::max(norm_max, nm[c]);
    }
}

double screen_error(const QuantRows& rows, idx_t r, const QuantCols& cols, idx_t d) {
    const double u = std::ldexp(1.0, -24);
    const double gamma = static_cast<double>(d) * u / (1.0 - static_cast<double>(d) * u);
    const double e = rows.qnorm[r] * cols.resid_max + cols.qnorm_max * rows.resid[r] +
                     rows.resid[r] * cols.resid_max + gamma * rows.norm[r] * cols.norm_max +
                     4.0 * u * rows.qnorm[r] * cols.qnorm_max;
    return e * (1.0 + 1e-6) + 1e-30;
}

}  // namespace mudg_fast
