// AVX-512 + AVX512-VNNI: the avx512 table with the int8 screening kernel on vpdpbusd (zmm,
// 6 rows x 4 blocks = 24 accumulators). Built with the avx512 flags plus -mavx512vnni; only the
// screening kernel differs from avx512.cpp, so the table copies the avx512 one and swaps it in.
#include "isa_intrinsics.hpp"

#include <cstdint>
#include <cstring>

#include "mudg_fast/simd.hpp"

namespace mudg_fast {
namespace avx512_vnni {
namespace {

struct Vnni {
    using VI = __m512i;
    using VF = __m512;
    static constexpr int W = 16;
    static constexpr int NBLK = 4;

    static VI zero() { return _mm512_setzero_si512(); }
    static VI dpbusd(VI acc, VI u, VI s) { return _mm512_dpbusd_epi32(acc, u, s); }
    static VI bcast4(const std::uint8_t* p) {
        std::int32_t w;
        std::memcpy(&w, p, 4);
        return _mm512_set1_epi32(w);
    }
    static VI load(const void* p) { return _mm512_loadu_si512(p); }
    static VF to_float(VI v) { return _mm512_cvtepi32_ps(v); }
    static VI sub(VI a, VI b) { return _mm512_sub_epi32(a, b); }
    static VF mul(VF a, VF b) { return _mm512_mul_ps(a, b); }
    static VF set1(float v) { return _mm512_set1_ps(v); }
    static VF loadf(const float* p) { return _mm512_loadu_ps(p); }
    static void storef(float* p, VF v) { _mm512_storeu_ps(p, v); }
    static void storef_n(float* p, VF v, int n) {
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
    }
};

#include "i8_vnni_impl.hpp"

}  // namespace

const Kernels& table() {
    static const Kernels t = [] {
        Kernels k = avx512::table();
        k.level = SimdLevel::avx512_vnni;
        k.screening = true;
        k.i8_col_limit = 127;
        k.i8_scores = k_i8_scores_vnni;
        return k;
    }();
    return t;
}

}  // namespace avx512_vnni
}  // namespace mudg_fast
