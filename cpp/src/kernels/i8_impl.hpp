// int8 screening kernel with AVX2 integer instructions. Included by avx2.cpp and avx512.cpp
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
