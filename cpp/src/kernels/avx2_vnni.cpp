// AVX2 + AVX-VNNI: the avx2 table with the int8 screening kernel on the VEX vpdpbusd (ymm, 6 rows x
// 2 vectors = 12 accumulators, as many as the 16 ymm registers allow). Built with the avx2 flags
// plus -mavxvnni; only the screening kernel differs from avx2.cpp, so the table copies the avx2
// one and swaps it in.
#include "isa_intrinsics.hpp"

#include <cstdint>
#include <cstring>

#include "mudg_fast/simd.hpp"

namespace mudg_fast {
namespace avx2_vnni {
namespace {

struct Vnni {
    using VI = __m256i;
    using VF = __m256;
    static constexpr int W = 8;
    static constexpr int NBLK = 1;

    static VI zero() { return _mm256_setzero_si256(); }
    static VI dpbusd(VI acc, VI u, VI s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }
    static VI bcast4(const std::uint8_t* p) {
        std::int32_t w;
        std::memcpy(&w, p, 4);
        return _mm256_set1_epi32(w);
    }
    static VI load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
    static VF to_float(VI v) { return _mm256_cvtepi32_ps(v); }
    static VI sub(VI a, VI b) { return _mm256_sub_epi32(a, b); }
    static VF mul(VF a, VF b) { return _mm256_mul_ps(a, b); }
    static VF set1(float v) { return _mm256_set1_ps(v); }
    static VF loadf(const float* p) { return _mm256_loadu_ps(p); }
    static void storef(float* p, VF v) { _mm256_storeu_ps(p, v); }
    static void storef_n(float* p, VF v, int n) {
        alignas(32) float t[8];
        _mm256_store_ps(t, v);
        for (int i = 0; i < n; ++i) p[i] = t[i];
    }
};

#include "i8_vnni_impl.hpp"

}  // namespace

const Kernels& table() {
    static const Kernels t = [] {
        Kernels k = avx2::table();
        k.level = SimdLevel::avx2_vnni;
        k.screening = true;
        k.i8_col_limit = 127;
        k.i8_scores = k_i8_scores_vnni;
        return k;
    }();
    return t;
}

}  // namespace avx2_vnni
}  // namespace mudg_fast
