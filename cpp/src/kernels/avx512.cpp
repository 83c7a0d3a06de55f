// AVX-512 kernels: 12x32 tiles (24 zmm accumulators). Built with AVX-512 F/BW/VL/DQ flags only.
// Shares tile_impl.hpp with the AVX2 file (only the vector traits below differ) and its int8
// screening kernel (i8_impl.hpp; avx512_vnni.cpp has the vpdpbusd one); quantisation helpers on
// zmm (quant_avx512_impl.hpp).
#include "isa_intrinsics.hpp"

#include <cstdint>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "mudg_fast/simd.hpp"

// GCC 12 reports its own _mm512_undefined_ps() inside the 512-bit shuffle intrinsics as "may be
// used uninitialized" once they are inlined (a false positive: the value is fully overwritten).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

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

    // Re-ranking (rows_impl.hpp): 16 rows x 8 dimensions transposed in registers. Register j
    // holds 8 dimensions of row lo(j) in its lower half and of row hi(j) in its upper half; the
    // in-lane 8x8 transpose followed by the 128-bit lane shuffle then leaves row r in lane r.
    static constexpr int ROW_GROUPS = 2;
    static constexpr int lo(int j) { return j < 4 ? j : j + 4; }
    static constexpr int hi(int j) { return j < 4 ? j + 4 : j + 8; }
    static void transpose16x8(V (&z)[8]) {
        const V t0 = _mm512_unpacklo_ps(z[0], z[1]), t1 = _mm512_unpackhi_ps(z[0], z[1]);
        const V t2 = _mm512_unpacklo_ps(z[2], z[3]), t3 = _mm512_unpackhi_ps(z[2], z[3]);
        const V t4 = _mm512_unpacklo_ps(z[4], z[5]), t5 = _mm512_unpackhi_ps(z[4], z[5]);
        const V t6 = _mm512_unpacklo_ps(z[6], z[7]), t7 = _mm512_unpackhi_ps(z[6], z[7]);
        const V u0 = _mm512_shuffle_ps(t0, t2, 0x44), u1 = _mm512_shuffle_ps(t0, t2, 0xEE);
        const V u2 = _mm512_shuffle_ps(t1, t3, 0x44), u3 = _mm512_shuffle_ps(t1, t3, 0xEE);
        const V u4 = _mm512_shuffle_ps(t4, t6, 0x44), u5 = _mm512_shuffle_ps(t4, t6, 0xEE);
        const V u6 = _mm512_shuffle_ps(t5, t7, 0x44), u7 = _mm512_shuffle_ps(t5, t7, 0xEE);
        // u_t (t < 4) holds dimension t (128-bit lanes 0, 2) and t + 4 (lanes 1, 3) of registers 0-3;
        // u_{t+4} the same for registers 4-7.
        z[0] = _mm512_shuffle_f32x4(u0, u4, 0x88);
        z[1] = _mm512_shuffle_f32x4(u1, u5, 0x88);
        z[2] = _mm512_shuffle_f32x4(u2, u6, 0x88);
        z[3] = _mm512_shuffle_f32x4(u3, u7, 0x88);
        z[4] = _mm512_shuffle_f32x4(u0, u4, 0xDD);
        z[5] = _mm512_shuffle_f32x4(u1, u5, 0xDD);
        z[6] = _mm512_shuffle_f32x4(u2, u6, 0xDD);
        z[7] = _mm512_shuffle_f32x4(u3, u7, 0xDD);
    }
    static void cols_f32(const float* const* rows, idx_t k, V (&c)[8]) {
        for (int j = 0; j < 8; ++j)
            c[j] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(rows[lo(j)] + k)),
                                      _mm256_loadu_ps(rows[hi(j)] + k), 1);
        transpose16x8(c);
    }
    static void cols_f16(const std::uint16_t* const* rows, idx_t k, V (&c)[8]) {
        for (int j = 0; j < 8; ++j) {
            const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[lo(j)] + k));
            const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[hi(j)] + k));
            c[j] = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1));
        }
        transpose16x8(c);
    }
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
#include "scan_impl.hpp"
#include "i8_impl.hpp"
#include "quant_avx512_impl.hpp"
#include "rows_impl.hpp"

const Kernels kTable = {SimdLevel::avx512, Isa::MR, k_scores, k_argmax, k_topk, k_scores_rows,
                        k_pack_blocks_f32, k_max_abs_bits, k_f32_to_f16, false, 63, k_i8_scores, k_max_value,
                        k_collect_ge, k_quantize_row, k_encode_sq4, k_dot_rows_f32, k_dot_rows_f16};

}  // namespace

const Kernels& table() { return kTable; }

}  // namespace avx512
}  // namespace mudg_fast
