// int8 screening kernel with VNNI (vpdpbusd: four u8 x s8 products summed into each int32 lane,
// one instruction). Included by avx2_vnni.cpp (ymm) and avx512_vnni.cpp (zmm) inside their
// anonymous namespaces, after they define `struct Vnni` (see tile_impl.hpp for why):
//   using VI (int32 vector), VF (float vector); W (lanes); NBLK (16-column blocks per tile)
//   VI zero(); VI dpbusd(VI acc, VI u8x4, VI s8x4) (no saturation); VI bcast4(const std::uint8_t*)
//   VI load(const void*); VF to_float(VI); VI sub(VI, VI); VF mul(VF, VF); VF set1(float)
//   VF loadf(const float*); void storef(float*, VF); void storef_n(float*, VF, int n)  // n < W
//
// vpdpbusd adds the four products to the accumulator with plain (wrapping) int32 arithmetic, no
// 16-bit intermediate: columns may use the full signed range (|q| <= 127). Rows (q + 128 <= 255)
// times columns over d <= 1024 dimensions stay below 1024 * 255 * 127 < 2^25 in magnitude, so
// nothing wraps and the sums are exact, the same integers as the scalar kernel.

constexpr int VPB = 16 / Vnni::W;  // vectors per 16-column block
using VI = typename Vnni::VI;
using VF = typename Vnni::VF;

/// acc[r][v] = int32 dot products of the kMr8 rows of panel `ap` with the NB * 16 columns of the
/// NB consecutive blocks at `bj` (block stride d4 * 64 bytes).
template <int NB>
inline void i8_tile(const std::uint8_t* ap, const std::int8_t* bj, idx_t d4, VI (&acc)[kMr8][NB * VPB]) {
    VI c[kMr8][NB * VPB];
    for (int r = 0; r < kMr8; ++r)
        for (int v = 0; v < NB * VPB; ++v) c[r][v] = Vnni::zero();
    for (idx_t k = 0; k < d4; ++k) {
        VI bv[NB * VPB];
        for (int nb = 0; nb < NB; ++nb)
            for (int s = 0; s < VPB; ++s) bv[nb * VPB + s] = Vnni::load(bj + nb * d4 * 64 + k * 64 + s * Vnni::W * 4);
        const std::uint8_t* ak = ap + k * (4 * kMr8);
        for (int r = 0; r < kMr8; ++r) {
            const VI av = Vnni::bcast4(ak + 4 * r);
            for (int v = 0; v < NB * VPB; ++v) c[r][v] = Vnni::dpbusd(c[r][v], av, bv[v]);
        }
    }
    for (int r = 0; r < kMr8; ++r)
        for (int v = 0; v < NB * VPB; ++v) acc[r][v] = c[r][v];
}

/// Columns [c0, c0 + NB * 16) (cols of them valid) for every panel.
template <int NB>
inline void i8_block_group(const std::uint8_t* a, idx_t n_rows, const std::int8_t* bj, idx_t c0, idx_t cols, idx_t d4,
                           const float* row_scale, const float* col_scale, const std::int32_t* col_corr, float* out,
                           idx_t ld) {
    constexpr int NV = NB * VPB;
    alignas(64) float cs[NB * 16] = {};
    alignas(64) std::int32_t cc[NB * 16] = {};
    for (idx_t c = 0; c < cols; ++c) {
        cs[c] = col_scale[c0 + c];
        cc[c] = col_corr[c0 + c];
    }
    VF csv[NV];
    VI ccv[NV];
    for (int v = 0; v < NV; ++v) {
        csv[v] = Vnni::loadf(cs + v * Vnni::W);
        ccv[v] = Vnni::load(cc + v * Vnni::W);
    }
    const idx_t n_panels = (n_rows + kMr8 - 1) / kMr8;
    for (idx_t p = 0; p < n_panels; ++p) {
        VI acc[kMr8][NV];
        i8_tile<NB>(a + p * d4 * (4 * kMr8), bj, d4, acc);
        for (int r = 0; r < kMr8; ++r) {
            const idx_t row = p * kMr8 + r;
            if (row >= n_rows) break;
            const VF rs = Vnni::set1(row_scale[row]);
            float* o = out + row * ld + c0;
            for (int v = 0; v < NV; ++v) {
                // the scalar kernel's arithmetic: float(S - corr) * (row_scale * col_scale)
                const VF z = Vnni::mul(Vnni::to_float(Vnni::sub(acc[r][v], ccv[v])), Vnni::mul(rs, csv[v]));
                const idx_t left = cols - v * Vnni::W;
                if (left >= Vnni::W) {
                    Vnni::storef(o + v * Vnni::W, z);
                } else if (left > 0) {
                    Vnni::storef_n(o + v * Vnni::W, z, static_cast<int>(left));
                }
            }
        }
    }
}

void k_i8_scores_vnni(const std::uint8_t* a, idx_t n_rows, const std::int8_t* b, idx_t n_cols, idx_t d4,
                      const float* row_scale, const float* col_scale, const std::int32_t* col_corr, float* out,
                      idx_t ld) {
    constexpr int NB = Vnni::NBLK;
    const idx_t nblk = (n_cols + 15) / 16;
    idx_t j = 0;
    for (; j + NB <= nblk; j += NB) {
        const idx_t cols = n_cols - j * 16 < NB * 16 ? n_cols - j * 16 : NB * 16;
        i8_block_group<NB>(a, n_rows, b + j * d4 * 64, j * 16, cols, d4, row_scale, col_scale, col_corr, out, ld);
    }
    for (; j < nblk; ++j) {
        const idx_t cols = n_cols - j * 16 < 16 ? n_cols - j * 16 : 16;
        i8_block_group<1>(a, n_rows, b + j * d4 * 64, j * 16, cols, d4, row_scale, col_scale, col_corr, out, ld);
    }
}
