// AVX2 + FMA kernels: 6x16 tiles (12 ymm accumulators). Built with -mavx2 -mfma -mf16c only.
#include "isa_intrinsics.hpp"

#include <cstdint>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "mudg_fast/simd.hpp"

namespace mudg_fast {
namespace avx2 {
namespace {

struct Isa {
    using V = __m256;
    static constexpr int W = 8;
    static constexpr int MR = 6;       // 6 rows x 2 vectors = 12 accumulators
    static constexpr int NB_FULL = 1;
    static constexpr int NB_ONE = 4;   // one row: 8 accumulators over 4 blocks

    static V zero() { return _mm256_setzero_ps(); }
    static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V loadu(const float* p) { return _mm256_loadu_ps(p); }
    static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V load_f32(const float* row, int s) { return _mm256_loadu_ps(row + s * 8); }
    static V load_f16(const std::uint16_t* row, int s) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + s * 8)));
    }
    static V load_sq8(const std::uint8_t* row, int s) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + s * 8));
        return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
    }
    static V load_sq4(const std::uint8_t* row8, const float* lut, int s) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row8));
        const __m128i low4 = _mm_set1_epi8(0x0F);
        const __m128i nib = s == 0 ? _mm_and_si128(b, low4) : _mm_and_si128(_mm_srli_epi16(b, 4), low4);
        const __m256i idx = _mm256_cvtepu8_epi32(nib);
        const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lut), idx);
        const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lut + 8), idx);
        const __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
        return _mm256_blendv_ps(lo, hi, upper);
    }
    static unsigned mask_ge(V a, V b) {
        return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)));
    }
    static void lane_update(float* best, std::int32_t* col, V acc, std::int32_t col0) {
        const V b = _mm256_loadu_ps(best);
        const V m = _mm256_cmp_ps(acc, b, _CMP_GT_OQ);
        _mm256_storeu_ps(best, _mm256_blendv_ps(b, acc, m));
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col));
        const __m256i nc = _mm256_add_epi32(_mm256_set1_epi32(col0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(col), _mm256_blendv_epi8(c, nc, _mm256_castps_si256(m)));
    }
};

#include "tile_impl.hpp"
#include "pack_impl.hpp"
#include "i8_impl.hpp"


const Kernels kTable = {SimdLevel::avx2, Isa::MR, k_scores, k_argmax, k_topk, k_scores_rows, k_pack_blocks_f32,
                          k_f32_to_f16, true, 63, k_i8_scores, k_max_value, k_collect_ge, k_quantize_row,
                          k_encode_sq4};

}  // namespace

const Kernels& table() { return kTable; }

}  // namespace avx2
}  // namespace mudg_fast
