// AVX-512 kernels: 12x32 tiles (24 zmm accumulators). Built with AVX-512 F/BW/VL/DQ flags only.
// Shares tile_impl.hpp with the AVX2 file; only the vector traits below differ.
#include "isa_intrinsics.hpp"

#include <cstdint>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "mudg_fast/simd.hpp"

namespace mudg_fast {
namespace avx512 {
namespace {

struct Isa {
    using V = __m512;
    static constexpr int W = 16;
    static constexpr int MR = 12;      // 12 rows x 2 vectors (two blocks) = 24 accumulators
    static constexpr int NB_FULL = 2;
    static constexpr int NB_ONE = 4;   // one row: 4 accumulators over 4 blocks

    static V zero() { return _mm512_setzero_ps(); }
    static V bcast(const float* p) { return _mm512_set1_ps(*p); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V loadu(const float* p) { return _mm512_loadu_ps(p); }
    static void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V load_f32(const float* row, int) { return _mm512_loadu_ps(row); }
    static V load_f16(const std::uint16_t* row, int) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)));
    }
    static V load_sq8(const std::uint8_t* row, int) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
    }
    static V load_sq4(const std::uint8_t* row8, const float* lut, int) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row8));
        const __m128i low4 = _mm_set1_epi8(0x0F);
        const __m128i nib = _mm_unpacklo_epi64(_mm_and_si128(b, low4), _mm_and_si128(_mm_srli_epi16(b, 4), low4));
        return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nib), _mm512_loadu_ps(lut));
    }
    static unsigned mask_ge(V a, V b) { return static_cast<unsigned>(_mm512_cmp_ps_mask(a, b, _CMP_GE_OQ)); }
    static void lane_update(float* best, std::int32_t* col, V acc, std::int32_t col0) {
        const __mmask16 m = _mm512_cmp_ps_mask(acc, _mm512_loadu_ps(best), _CMP_GT_OQ);
        _mm512_mask_storeu_ps(best, m, acc);
        const __m512i nc = _mm512_add_epi32(
            _mm512_set1_epi32(col0),
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        _mm512_mask_storeu_epi32(col, m, nc);
    }
};

#include "tile_impl.hpp"
#include "pack_impl.hpp"
#include "i8_impl.hpp"


const Kernels kTable = {SimdLevel::avx512, Isa::MR, k_scores, k_argmax, k_topk, k_scores_rows, k_pack_blocks_f32,
                          k_f32_to_f16, false, 63, k_i8_scores, k_max_value, k_collect_ge, k_quantize_row,
                          k_encode_sq4};

}  // namespace

const Kernels& table() { return kTable; }

}  // namespace avx512
}  // namespace mudg_fast
