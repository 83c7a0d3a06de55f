// int8 quantisation and z-scan helpers of the screening path on 256-bit vectors (AVX2). Included
// by avx2.cpp inside its anonymous namespace (see tile_impl.hpp for why); avx512.cpp has the
// 512-bit versions (quant_avx512_impl.hpp). Same results as the scalar kernels: max and the
// collected indices exactly; the codes and scale exactly; the statistics are upper bounds.

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
