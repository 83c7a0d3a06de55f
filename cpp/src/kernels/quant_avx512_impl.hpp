// int8 quantisation and z-scan helpers of the screening path on 512-bit vectors (AVX-512 F/BW/VL/
// DQ). Included by avx512.cpp inside its anonymous namespace (see tile_impl.hpp for why). The
// arithmetic is quant_avx2_impl.hpp's, 16 lanes wide: the codes, the scale, max and the collected
// indices equal the scalar kernels' exactly; the statistics are upper bounds (sums in another
// order, inflated by the same documented factor).

float k_max_value(const float* z, idx_t n) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    __m512 m = ninf;
    idx_t i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(z + i));
    if (i < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, static_cast<__mmask16>((1u << (n - i)) - 1), z + i));
    return _mm512_reduce_max_ps(m);
}

idx_t k_collect_ge(const float* z, idx_t n, float tau, std::int32_t* out) {
    const __m512 t = _mm512_set1_ps(tau);
    idx_t cnt = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        unsigned m = _mm512_cmp_ps_mask(_mm512_loadu_ps(z + i), t, _CMP_GE_OQ);
        while (m) {  // candidates are rare: a bit loop beats a compress
            out[cnt++] = static_cast<std::int32_t>(i + __builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (; i < n; ++i)
        if (z[i] >= tau) out[cnt++] = static_cast<std::int32_t>(i);
    return cnt;
}

void k_quantize_row(const float* x, idx_t d, int lim, int offset, std::uint8_t* out, idx_t stride, float* a_out,
                    double* stats) {
    __m512 vmax = _mm512_setzero_ps(), vx2 = _mm512_setzero_ps();
    idx_t k = 0;
    for (; k + 16 <= d; k += 16) {
        const __m512 v = _mm512_loadu_ps(x + k);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
        vx2 = _mm512_fmadd_ps(v, v, vx2);
    }
    float amax = _mm512_reduce_max_ps(vmax);
    float x2 = _mm512_reduce_add_ps(vx2);
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
    const __m512 va = _mm512_set1_ps(a), vinv = _mm512_set1_ps(inv);
    const __m512i vlim = _mm512_set1_epi32(lim), vnlim = _mm512_set1_epi32(-lim), voff = _mm512_set1_epi32(offset);
    __m512 vq2 = _mm512_setzero_ps(), ve2 = _mm512_setzero_ps();
    for (k = 0; k + 16 <= d; k += 16) {
        const __m512 v = _mm512_loadu_ps(x + k);
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));  // nearest, ties to even
        q = _mm512_max_epi32(vnlim, _mm512_min_epi32(vlim, q));
        const __m512 qf = _mm512_cvtepi32_ps(q);
        const __m512 e = _mm512_fnmadd_ps(va, qf, v);
        vq2 = _mm512_fmadd_ps(qf, qf, vq2);  // integers: exact while below 2^24 per lane
        ve2 = _mm512_fmadd_ps(e, e, ve2);
        // q + offset is 0..255 (offset 128) or -lim..lim (offset 0): the low byte is the code
        const __m128i b = _mm512_cvtepi32_epi8(_mm512_add_epi32(q, voff));
        alignas(16) std::uint32_t g[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(g), b);
        for (int j = 0; j < 4; ++j) std::memcpy(out + (k / 4 + j) * stride, &g[j], 4);
    }
    float q2 = _mm512_reduce_add_ps(vq2), e2 = _mm512_reduce_add_ps(ve2);
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
