// int8 screening kernels with AVX2 integer instructions. Included by avx2.cpp and avx512.cpp
// inside their anonymous namespaces (see tile_impl.hpp for why).
//
// Rows are unsigned (q + 128, q in [-127, 127]), columns signed 7-bit (|q| <= 63), so that
// vpmaddubsw's pair sums (<= 2 * 255 * 63 = 32130) never saturate; vpmaddwd against ones widens
// them to int32. The +128 offset is removed with the per-column correction 128 * sum(q).

void k_i8_scores(const std::uint8_t* a, idx_t n_rows, const std::int8_t* b, idx_t n_cols, idx_t d4,
                 const float* row_scale, const float* col_scale, const std::int32_t* col_corr, float* out,
                 idx_t ld) {
    const idx_t n_panels = (n_rows + kMr8 - 1) / kMr8;
    const idx_t nblk = (n_cols + 15) / 16;
    const __m256i ones = _mm256_set1_epi16(1);
    for (idx_t j = 0; j < nblk; ++j) {
        const std::int8_t* bj = b + j * d4 * 64;
        const idx_t c0 = j * 16;
        const idx_t cols = n_cols - c0 < 16 ? n_cols - c0 : 16;
        alignas(32) float cs[16] = {};
        alignas(32) std::int32_t cc[16] = {};
        for (idx_t c = 0; c < cols; ++c) {
            cs[c] = col_scale[c0 + c];
            cc[c] = col_corr[c0 + c];
        }
        const __m256 cs0 = _mm256_load_ps(cs), cs1 = _mm256_load_ps(cs + 8);
        const __m256i cc0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(cc));
        const __m256i cc1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(cc + 8));
        for (idx_t p = 0; p < n_panels; ++p) {
            const std::uint8_t* ap = a + p * d4 * (4 * kMr8);
            __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00;
            __m256i s30 = s00, s31 = s00, s40 = s00, s41 = s00, s50 = s00, s51 = s00;
            for (idx_t k = 0; k < d4; ++k) {
                const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj + k * 64));
                const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj + k * 64 + 32));
                const std::uint8_t* ak = ap + k * (4 * kMr8);
#define MUDG_I8_ROW(r, x0, x1)                                                                       \
    {                                                                                                \
        std::int32_t w;                                                                              \
        std::memcpy(&w, ak + 4 * (r), 4);                                                            \
        const __m256i av = _mm256_set1_epi32(w);                                                     \
        x0 = _mm256_add_epi32(x0, _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones));           \
        x1 = _mm256_add_epi32(x1, _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones));           \
    }
                MUDG_I8_ROW(0, s00, s01)
                MUDG_I8_ROW(1, s10, s11)
                MUDG_I8_ROW(2, s20, s21)
                MUDG_I8_ROW(3, s30, s31)
                MUDG_I8_ROW(4, s40, s41)
                MUDG_I8_ROW(5, s50, s51)
#undef MUDG_I8_ROW
            }
            const __m256i acc[12] = {s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51};
            for (int r = 0; r < kMr8; ++r) {
                const idx_t row = p * kMr8 + r;
                if (row >= n_rows) break;
                const __m256 rs = _mm256_set1_ps(row_scale[row]);
                const __m256 z0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[2 * r], cc0)), _mm256_mul_ps(rs, cs0));
                const __m256 z1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[2 * r + 1], cc1)), _mm256_mul_ps(rs, cs1));
                float* o = out + row * ld + c0;
                if (cols == 16) {
                    _mm256_storeu_ps(o, z0);
                    _mm256_storeu_ps(o + 8, z1);
                } else {
                    alignas(32) float tmp[16];
                    _mm256_store_ps(tmp, z0);
                    _mm256_store_ps(tmp + 8, z1);
                    for (idx_t c = 0; c < cols; ++c) o[c] = tmp[c];
                }
            }
        }
    }
}

float k_max_value(const float* z, idx_t n) {
    __m256 m = _mm256_set1_ps(-__builtin_inff());
    idx_t i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(z + i));
    alignas(32) float t[8];
    _mm256_store_ps(t, m);
    float r = t[0];
    for (int j = 1; j < 8; ++j) r = t[j] > r ? t[j] : r;
    for (; i < n; ++i) r = z[i] > r ? z[i] : r;
    return r;
}

idx_t k_collect_ge(const float* z, idx_t n, float tau, std::int32_t* out) {
    const __m256 t = _mm256_set1_ps(tau);
    idx_t cnt = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z + i), t, _CMP_GE_OQ)));
        while (m) {
            out[cnt++] = static_cast<std::int32_t>(i + __builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (; i < n; ++i)
        if (z[i] >= tau) out[cnt++] = static_cast<std::int32_t>(i);
    return cnt;
}

inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

void k_quantize_row(const float* x, idx_t d, int lim, int offset, std::uint8_t* out, idx_t stride, float* a_out,
                    double* stats) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps(), vx2 = _mm256_setzero_ps();
    idx_t k = 0;
    for (; k + 8 <= d; k += 8) {
        const __m256 v = _mm256_loadu_ps(x + k);
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
        vx2 = _mm256_fmadd_ps(v, v, vx2);
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, vmax);
    float amax = 0;
    for (int j = 0; j < 8; ++j) amax = t[j] > amax ? t[j] : amax;
    float x2 = hsum8(vx2);
    for (idx_t j = k; j < d; ++j) {
        const float v = x[j] < 0 ? -x[j] : x[j];
        amax = v > amax ? v : amax;
        x2 += x[j] * x[j];
    }
    // At least the smallest normal float (0x1p-126): for a subnormal max|x|, amax / lim could
    // underflow and 1 / a overflow, and x * inf is not convertible to int.
    float a = amax > 0 ? amax / static_cast<float>(lim) : 1.0f;
    a = a < 0x1p-126f ? 0x1p-126f : a;
    const float inv = 1.0f / a;
    const __m256 va = _mm256_set1_ps(a), vinv = _mm256_set1_ps(inv);
    const __m256i vlim = _mm256_set1_epi32(lim), vnlim = _mm256_set1_epi32(-lim), voff = _mm256_set1_epi32(offset);
    __m256 vq2 = _mm256_setzero_ps(), ve2 = _mm256_setzero_ps();
    for (k = 0; k + 8 <= d; k += 8) {
        const __m256 v = _mm256_loadu_ps(x + k);
        __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(v, vinv));  // nearest, ties to even
        q = _mm256_max_epi32(vnlim, _mm256_min_epi32(vlim, q));
        const __m256 qf = _mm256_cvtepi32_ps(q);
        const __m256 e = _mm256_fnmadd_ps(va, qf, v);
        vq2 = _mm256_fmadd_ps(qf, qf, vq2);  // integers: exact while below 2^24 per lane
        ve2 = _mm256_fmadd_ps(e, e, ve2);
        const __m256i b = _mm256_add_epi32(q, voff);  // 0..255: pack to bytes in lane order
        const __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
        // unsigned saturation for offset bytes (0..255), signed for plain int8 (-lim..lim)
        const __m128i w16 = offset ? _mm_packus_epi32(lo, hi) : _mm_packs_epi32(lo, hi);
        const __m128i w8 = offset ? _mm_packus_epi16(w16, w16) : _mm_packs_epi16(w16, w16);
        const std::uint32_t g0 = static_cast<std::uint32_t>(_mm_cvtsi128_si32(w8));
        const std::uint32_t g1 = static_cast<std::uint32_t>(_mm_extract_epi32(w8, 1));
        std::memcpy(out + (k / 4) * stride, &g0, 4);
        std::memcpy(out + (k / 4 + 1) * stride, &g1, 4);
    }
    float q2 = hsum8(vq2), e2 = hsum8(ve2);
    for (; k < d; ++k) {
        // The same arithmetic as the vector lanes above: round to nearest even, and the residual
        // x - a q with one rounding (a separate product would round the residual away).
        const float f = x[k] * inv;
        int q = _mm_cvtss_si32(_mm_set_ss(f));
        q = q > lim ? lim : (q < -lim ? -lim : q);
        const float e = _mm_cvtss_f32(_mm_fnmadd_ss(_mm_set_ss(a), _mm_set_ss(static_cast<float>(q)), _mm_set_ss(x[k])));
        q2 += static_cast<float>(q * q);
        e2 += e * e;
        out[(k / 4) * stride + (k % 4)] = static_cast<std::uint8_t>(q + offset);
    }
    // Float sums of d squares are within d*u relative of the truth: inflate to stay an upper bound.
    // Squares that underflow lose at most 2^-150 each: covered by e2's 1e-40 floor, and for |x|
    // by summing in double when the row is so small that its squares underflow.
    const double infl = 1.0 + 4.0 * static_cast<double>(d) * 0x1.0p-24;
    double x2d = x2;
    if (amax < 0x1p-40f) {
        x2d = 0;
        for (idx_t j = 0; j < d; ++j) x2d += static_cast<double>(x[j]) * x[j];
    }
    *a_out = a;
    stats[0] = static_cast<double>(a) * std::sqrt(static_cast<double>(q2) * infl);
    stats[1] = std::sqrt(static_cast<double>(e2) * infl + 1e-40) * (1.0 + 1e-6);
    stats[2] = std::sqrt(x2d * infl) * (1.0 + 1e-6);
}
