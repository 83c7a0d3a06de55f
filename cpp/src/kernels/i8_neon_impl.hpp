// int8 screening kernel for AArch64 NEON. Included inside their anonymous namespaces (see
// tile_impl.hpp for why) by neon.cpp, which gets the ARMv8.0 version (widening multiplies), and by
// neon_dotprod.cpp, built with the dot-product extension and MUDG_NEON_DOTPROD defined, which gets
// the sdot version.
//
// Rows arrive as u8 (q + 128) and columns as s8. Both versions flip each row byte back to s8
// (byte ^ 0x80 == q), so every product is a signed 8 x 8-bit one (exact in 16 bits even for -128)
// and every sum is exact in int32: S_rc = sum q_r q_c + 128 sum q_c is the same integer as the
// scalar kernel's, and the float epilogue is the scalar one, lane by lane. Columns may use the full
// s8 range (no pair sum saturates, unlike x86's vpmaddubsw).

/// Per column of one 16-column block, sum over all dimensions of q_c: sum[v] holds columns
/// 4v .. 4v+3.
inline void column_sums(const std::int8_t* bj, idx_t d4, int32x4_t (&sum)[4]) {
    for (int v = 0; v < 4; ++v) sum[v] = vdupq_n_s32(0);
    for (idx_t k = 0; k < d4; ++k)
        for (int v = 0; v < 4; ++v)  // 16 bytes = 4 columns x 4 dimensions -> 4 column sums
            sum[v] = vpadalq_s16(sum[v], vpaddlq_s8(vld1q_s8(bj + k * 64 + v * 16)));
}

/// out[row, c0 ..] = float(S - corr) * (row_scale * col_scale) for the valid columns of a block.
inline void i8_store_row(const int32x4_t (&dot)[4], const int32x4_t (&colsum)[4], const int32x4_t (&corr)[4],
                         const float32x4_t (&cs)[4], float row_scale, float* o, idx_t cols) {
    float32x4_t z[4];
    for (int v = 0; v < 4; ++v) {
        const int32x4_t s = vaddq_s32(dot[v], vshlq_n_s32(colsum[v], 7));  // + 128 * sum q_c
        z[v] = vmulq_f32(vcvtq_f32_s32(vsubq_s32(s, corr[v])), vmulq_n_f32(cs[v], row_scale));
    }
    if (cols == 16) {
        for (int v = 0; v < 4; ++v) vst1q_f32(o + 4 * v, z[v]);
    } else {
        float tmp[16];
        for (int v = 0; v < 4; ++v) vst1q_f32(tmp + 4 * v, z[v]);
        for (idx_t c = 0; c < cols; ++c) o[c] = tmp[c];
    }
}

#if defined(MUDG_NEON_DOTPROD)

// One panel of 6 rows x one block of 16 columns: 24 int32x4 accumulators, each sdot adding the
// 4-dimension dot products of 4 columns with one row (its 4 bytes taken as a lane of a vector).
#define MUDG_SDOT_ROW(r, a, lane)                                                                     \
    for (int v = 0; v < 4; ++v) acc[r][v] = vdotq_laneq_s32(acc[r][v], bv[v], a, lane);
#define MUDG_SDOT_ROW8(r, a, lane)                                                                    \
    for (int v = 0; v < 4; ++v) acc[r][v] = vdotq_lane_s32(acc[r][v], bv[v], a, lane);

inline void i8_panel(const std::uint8_t* ap, const std::int8_t* bj, idx_t d4, int32x4_t (&acc)[kMr8][4]) {
    static_assert(kMr8 == 6, "the sdot panel kernel is written for 6 rows");
    for (int r = 0; r < kMr8; ++r)
        for (int v = 0; v < 4; ++v) acc[r][v] = vdupq_n_s32(0);
    const uint8x16_t flip16 = vdupq_n_u8(0x80);
    const uint8x8_t flip8 = vdup_n_u8(0x80);
    for (idx_t k = 0; k < d4; ++k) {
        int8x16_t bv[4];
        for (int v = 0; v < 4; ++v) bv[v] = vld1q_s8(bj + k * 64 + v * 16);
        const std::uint8_t* ak = ap + k * (4 * kMr8);  // 24 bytes: rows 0..5, 4 dimensions each
        const int8x16_t a03 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(ak), flip16));
        const int8x8_t a45 = vreinterpret_s8_u8(veor_u8(vld1_u8(ak + 16), flip8));
        MUDG_SDOT_ROW(0, a03, 0)
        MUDG_SDOT_ROW(1, a03, 1)
        MUDG_SDOT_ROW(2, a03, 2)
        MUDG_SDOT_ROW(3, a03, 3)
        MUDG_SDOT_ROW8(4, a45, 0)
        MUDG_SDOT_ROW8(5, a45, 1)
    }
}
#undef MUDG_SDOT_ROW
#undef MUDG_SDOT_ROW8

#else

// One row x one block of 16 columns with widening multiplies: vmull_s8 gives the 16-bit products
// of 2 columns x 4 dimensions, vpadalq_s16 adds adjacent pairs into int32 lanes (column c:
// dimensions 0+1, column c: 2+3, column c+1: ...), and vpaddq_s32 folds the pairs at the end.
inline void i8_row(const std::uint8_t* ar, const std::int8_t* bj, idx_t d4, int32x4_t (&dot)[4]) {
    int32x4_t pair[8];
    for (int v = 0; v < 8; ++v) pair[v] = vdupq_n_s32(0);
    for (idx_t k = 0; k < d4; ++k) {
        std::uint32_t w;
        std::memcpy(&w, ar + k * (4 * kMr8), 4);
        const int8x16_t av = vreinterpretq_s8_u32(vdupq_n_u32(w ^ 0x80808080u));
        for (int v = 0; v < 4; ++v) {
            const int8x16_t bv = vld1q_s8(bj + k * 64 + v * 16);
            pair[2 * v] = vpadalq_s16(pair[2 * v], vmull_s8(vget_low_s8(av), vget_low_s8(bv)));
            pair[2 * v + 1] = vpadalq_s16(pair[2 * v + 1], vmull_high_s8(av, bv));
        }
    }
    for (int v = 0; v < 4; ++v) dot[v] = vpaddq_s32(pair[2 * v], pair[2 * v + 1]);
}

#endif

void k_i8_scores_neon(const std::uint8_t* a, idx_t n_rows, const std::int8_t* b, idx_t n_cols, idx_t d4,
                      const float* row_scale, const float* col_scale, const std::int32_t* col_corr, float* out,
                      idx_t ld) {
    const idx_t n_panels = (n_rows + kMr8 - 1) / kMr8;
    const idx_t nblk = (n_cols + 15) / 16;
    for (idx_t j = 0; j < nblk; ++j) {
        const std::int8_t* bj = b + j * d4 * 64;
        const idx_t c0 = j * 16;
        const idx_t cols = n_cols - c0 < 16 ? n_cols - c0 : 16;
        float cs_buf[16] = {};
        std::int32_t cc_buf[16] = {};
        for (idx_t c = 0; c < cols; ++c) {
            cs_buf[c] = col_scale[c0 + c];
            cc_buf[c] = col_corr[c0 + c];
        }
        float32x4_t cs[4];
        int32x4_t corr[4], colsum[4];
        for (int v = 0; v < 4; ++v) {
            cs[v] = vld1q_f32(cs_buf + 4 * v);
            corr[v] = vld1q_s32(cc_buf + 4 * v);
        }
        column_sums(bj, d4, colsum);
        for (idx_t p = 0; p < n_panels; ++p) {
            const std::uint8_t* ap = a + p * d4 * (4 * kMr8);
#if defined(MUDG_NEON_DOTPROD)
            int32x4_t acc[kMr8][4];
            i8_panel(ap, bj, d4, acc);
            for (int r = 0; r < kMr8 && p * kMr8 + r < n_rows; ++r) {
                const idx_t row = p * kMr8 + r;
                i8_store_row(acc[r], colsum, corr, cs, row_scale[row], out + row * ld + c0, cols);
            }
#else
            for (int r = 0; r < kMr8 && p * kMr8 + r < n_rows; ++r) {
                const idx_t row = p * kMr8 + r;
                int32x4_t dot[4];
                i8_row(ap + 4 * r, bj, d4, dot);
                i8_store_row(dot, colsum, corr, cs, row_scale[row], out + row * ld + c0, cols);
            }
#endif
        }
    }
}
