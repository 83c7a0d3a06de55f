// int8 screening for exact search: approximate every score with int8 dot products, then
// re-score exactly (the same fp32 fma chain as the tile kernels) only the columns whose score
// could still make the result. A rigorous error bound decides which columns those are, so the
// result is identical to the plain fp32 search — only faster.
//
// Bound. Row x is stored as a * q_x + e_x (q_x in [-127, 127]), column c as b * q_c + e_c
// (q_c in [-L, L], L = Kernels::i8_col_limit: 63 where the kernel's vpmaddubsw pair sums must not
// saturate, 127 for the VNNI and scalar kernels, whose int32 sums are exact); the approximation
// is z = a * b * <q_x, q_c> (integer dot, exact: |<q_x, q_c>| <= 1024 * 127 * 127 < 2^24 for
// d <= 1024, so it converts to float without rounding). The bound below holds for any L. Then
//   |<x, c> - z| <= a |q_x| |e_c| + b |q_c| |e_x| + |e_x| |e_c|       (Cauchy-Schwarz)
// and the fp32 chain differs from <x, c> by at most gamma_d |x| |c|, gamma_d = d u / (1 - d u),
// u = 2^-24; the float evaluation of z adds at most 4 u a |q_x| b |q_c|. E(x) takes the maxima
// of the column terms over the columns in play. A column can beat the current k-th best exact
// score T (or the k-th largest z minus E) only if z + E >= that bound.
#pragma once

#include <cstdint>
#include <vector>

#include "mudg_fast/common.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_fast {

/// -1: the level's default (on for AVX2), 0: off, 1: on at every level (tests). MUDG_SCREENING=0
/// in the environment turns it off.
void set_screening(int mode) noexcept;
int screening_mode() noexcept;
/// Whether a search of this shape screens with the active kernels.
bool use_screening(const Kernels& K, idx_t d, idx_t n_cols, int k);

struct QuantRows {
    idx_t n = 0, d4 = 0;
    std::vector<std::uint8_t> panels;  ///< [p][d4][kMr8][4], q + 128
    std::vector<float> scale;          ///< a
    std::vector<double> qnorm;         ///< a |q|
    std::vector<double> resid;         ///< |e|
    std::vector<double> norm;          ///< |x|
    /// Rows src + (ids ? ids[i] : i) * stride, i < n.
    void quantize(const float* src, idx_t stride, const idx_t* ids, idx_t n, idx_t d);
};

struct QuantCols {
    idx_t n = 0, d4 = 0;
    std::vector<std::int8_t> blocks;   ///< [blk][d4][16][4], |q| <= the active table's i8_col_limit
    std::vector<float> scale;          ///< b
    std::vector<std::int32_t> corr;    ///< 128 * sum(q)
    double qnorm_max = 0, resid_max = 0, norm_max = 0;
    /// Rows src + i * stride, i < n (n a multiple of 16 except for the last call).
    void quantize(const float* src, idx_t stride, idx_t n, idx_t d, int n_threads = 1);
};

/// E for row r of `rows` against the columns of `cols` (see the header comment).
double screen_error(const QuantRows& rows, idx_t r, const QuantCols& cols, idx_t d);

}  // namespace mudg_fast
