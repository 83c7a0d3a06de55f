// Block packing with AVX2 8x8 transposes, and F16C conversion. Included by avx2.cpp and avx512.cpp inside their
// anonymous namespaces (see tile_impl.hpp for why).

inline void transpose8(const float* const* rows, idx_t k, float* out /* 8 rows of stride 16 */) {
    __m256 r0 = _mm256_loadu_ps(rows[0] + k), r1 = _mm256_loadu_ps(rows[1] + k);
    __m256 r2 = _mm256_loadu_ps(rows[2] + k), r3 = _mm256_loadu_ps(rows[3] + k);
    __m256 r4 = _mm256_loadu_ps(rows[4] + k), r5 = _mm256_loadu_ps(rows[5] + k);
    __m256 r6 = _mm256_loadu_ps(rows[6] + k), r7 = _mm256_loadu_ps(rows[7] + k);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(out + 0 * kBlock, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(out + 1 * kBlock, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(out + 2 * kBlock, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(out + 3 * kBlock, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(out + 4 * kBlock, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(out + 5 * kBlock, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(out + 6 * kBlock, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(out + 7 * kBlock, _mm256_permute2f128_ps(u3, u7, 0x31));
}

void k_pack_blocks_f32(const float* src, idx_t stride, const idx_t* ids, idx_t n, idx_t d, float* out) {
    const idx_t nblk = (n + kBlock - 1) / kBlock;
    for (idx_t b = 0; b < nblk; ++b) {
        float* blk = out + b * kBlock * d;
        const idx_t rows = n - b * kBlock < kBlock ? n - b * kBlock : kBlock;
        const float* rp[kBlock];
        for (idx_t j = 0; j < rows; ++j) {
            const idx_t i = b * kBlock + j;
            rp[j] = src + (ids ? ids[i] : i) * stride;
        }
        if (rows == kBlock) {
            idx_t k = 0;
            for (; k + 8 <= d; k += 8) {
                transpose8(rp, k, blk + k * kBlock);
                transpose8(rp + 8, k, blk + k * kBlock + 8);
            }
            for (; k < d; ++k)
                for (int j = 0; j < kBlock; ++j) blk[k * kBlock + j] = rp[j][k];
        } else {
            for (idx_t k = 0; k < d; ++k)
                for (int j = 0; j < kBlock; ++j) blk[k * kBlock + j] = j < rows ? rp[j][k] : 0.0f;
        }
    }
}

void k_f32_to_f16(const float* src, idx_t n, std::uint16_t* dst) {
    idx_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}

void k_encode_sq4(const float* blk, idx_t d, const float* mids, std::uint8_t* out) {
    for (idx_t k = 0; k < d; ++k) {
        const __m256 v0 = _mm256_loadu_ps(blk + k * 16), v1 = _mm256_loadu_ps(blk + k * 16 + 8);
        __m256i c0 = _mm256_setzero_si256(), c1 = _mm256_setzero_si256();
        const float* m = mids + k * 15;
        for (int j = 0; j < 15; ++j) {  // count the midpoints strictly below each value
            const __m256 mj = _mm256_set1_ps(m[j]);
            c0 = _mm256_sub_epi32(c0, _mm256_castps_si256(_mm256_cmp_ps(v0, mj, _CMP_GT_OQ)));
            c1 = _mm256_sub_epi32(c1, _mm256_castps_si256(_mm256_cmp_ps(v1, mj, _CMP_GT_OQ)));
        }
        const __m256i b = _mm256_or_si256(c0, _mm256_slli_epi32(c1, 4));  // 0..255 per lane
        const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + k * 8), _mm_packus_epi16(w16, w16));
    }
}
