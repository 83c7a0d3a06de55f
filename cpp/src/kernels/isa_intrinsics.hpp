// The x86 intrinsics for the per-ISA kernel files: the compiler's own (<immintrin.h>), or, in the
// SIMDe test build (MUDG_SIMDE, see .ci/simde), SIMDe's portable implementations of the same
// functions under the same names, so that the kernel sources are compiled and tested unchanged on
// any CPU.
#pragma once

#if defined(MUDG_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

#include <cmath>
#include <cstdint>

// SIMDe 0.7 has the AVX512-VNNI form of the 256-bit vpdpbusd but not the AVX-VNNI name; both
// compute the same non-saturating sums.
#if !defined(_mm256_dpbusd_avx_epi32)
#define _mm256_dpbusd_avx_epi32(src, a, b) _mm256_dpbusd_epi32(src, a, b)
#endif

// SIMDe 0.7 aliases the AVX-512 vector types but not the mask type.
typedef simde__mmask16 __mmask16;

// Intrinsics the kernels use that SIMDe 0.7 lacks: plain lane-wise definitions (newer SIMDe
// releases that define them win).
namespace mudg_simde_extra {
static inline simde__m512 cvtepi32_ps(simde__m512i a) {
    std::int32_t x[16];
    float r[16];
    __builtin_memcpy(x, &a, 64);
    for (int i = 0; i < 16; ++i) r[i] = static_cast<float>(x[i]);  // round to nearest, as vcvtdq2ps
    simde__m512 v;
    __builtin_memcpy(&v, r, 64);
    return v;
}
static inline simde__m512i cvtepu8_epi32(simde__m128i a) {
    std::uint8_t x[16];
    std::int32_t r[16];
    __builtin_memcpy(x, &a, 16);
    for (int i = 0; i < 16; ++i) r[i] = x[i];
    simde__m512i v;
    __builtin_memcpy(&v, r, 64);
    return v;
}
static inline simde__m512 cvtph_ps(simde__m256i a) {  // two 8-lane halves through SIMDe's F16C
    const simde__m256 lo = simde_mm256_cvtph_ps(simde_mm256_castsi256_si128(a));
    const simde__m256 hi = simde_mm256_cvtph_ps(simde_mm256_extracti128_si256(a, 1));
    simde__m512 v;
    __builtin_memcpy(&v, &lo, 32);
    __builtin_memcpy(reinterpret_cast<char*>(&v) + 32, &hi, 32);
    return v;
}
static inline simde__m512i cvtps_epi32(simde__m512 a) {  // current rounding mode: nearest even
    float x[16];
    std::int32_t r[16];
    __builtin_memcpy(x, &a, 64);
    for (int i = 0; i < 16; ++i) r[i] = static_cast<std::int32_t>(std::nearbyint(x[i]));  // in range here
    simde__m512i v;
    __builtin_memcpy(&v, r, 64);
    return v;
}
static inline simde__m128i cvtepi32_epi8(simde__m512i a) {  // vpmovdb: keep the low byte
    std::int32_t x[16];
    std::uint8_t r[16];
    __builtin_memcpy(x, &a, 64);
    for (int i = 0; i < 16; ++i) r[i] = static_cast<std::uint8_t>(x[i] & 0xFF);
    simde__m128i v;
    __builtin_memcpy(&v, r, 16);
    return v;
}
static inline float reduce_max_ps(simde__m512 a) {
    float x[16];
    __builtin_memcpy(x, &a, 64);
    float m = x[0];
    for (int i = 1; i < 16; ++i) m = x[i] > m ? x[i] : m;
    return m;
}
static inline float reduce_add_ps(simde__m512 a) {
    float x[16];
    __builtin_memcpy(x, &a, 64);
    float s = 0;
    for (int i = 0; i < 16; ++i) s += x[i];
    return s;
}
static inline simde__m512 mask_loadu_ps(simde__m512 src, std::uint16_t mask, const float* p) {
    float x[16];
    __builtin_memcpy(x, &src, 64);
    for (int i = 0; i < 16; ++i)
        if ((mask >> i) & 1u) x[i] = p[i];
    simde__m512 v;
    __builtin_memcpy(&v, x, 64);
    return v;
}
static inline simde__m512 shuffle_f32x4(simde__m512 a, simde__m512 b, int imm) {  // vshuff32x4
    float x[16], y[16], r[16];
    __builtin_memcpy(x, &a, 64);
    __builtin_memcpy(y, &b, 64);
    for (int lane = 0; lane < 4; ++lane) {
        const float* src = (lane < 2 ? x : y) + 4 * ((imm >> (2 * lane)) & 3);
        for (int i = 0; i < 4; ++i) r[4 * lane + i] = src[i];
    }
    simde__m512 v;
    __builtin_memcpy(&v, r, 64);
    return v;
}
template <class T, class V>
static inline void mask_storeu(void* p, std::uint16_t mask, V v) {
    T x[16];
    __builtin_memcpy(x, &v, 64);
    for (int i = 0; i < 16; ++i)
        if ((mask >> i) & 1u) __builtin_memcpy(static_cast<char*>(p) + i * sizeof(T), &x[i], sizeof(T));
}
}  // namespace mudg_simde_extra
#if !defined(_mm512_shuffle_f32x4)
#define _mm512_shuffle_f32x4(a, b, imm) mudg_simde_extra::shuffle_f32x4(a, b, imm)
#endif
#if !defined(_mm512_cvtepi32_ps)
#define _mm512_cvtepi32_ps(a) mudg_simde_extra::cvtepi32_ps(a)
#endif
#if !defined(_mm512_cvtepu8_epi32)
#define _mm512_cvtepu8_epi32(a) mudg_simde_extra::cvtepu8_epi32(a)
#endif
#if !defined(_mm512_cvtph_ps)
#define _mm512_cvtph_ps(a) mudg_simde_extra::cvtph_ps(a)
#endif
#if !defined(_mm512_mask_storeu_ps)
#define _mm512_mask_storeu_ps(p, m, v) mudg_simde_extra::mask_storeu<float>(p, m, v)
#endif
#if !defined(_mm512_mask_storeu_epi32)
#define _mm512_mask_storeu_epi32(p, m, v) mudg_simde_extra::mask_storeu<std::int32_t>(p, m, v)
#endif
#if !defined(_mm512_cvtps_epi32)
#define _mm512_cvtps_epi32(a) mudg_simde_extra::cvtps_epi32(a)
#endif
#if !defined(_mm512_cvtepi32_epi8)
#define _mm512_cvtepi32_epi8(a) mudg_simde_extra::cvtepi32_epi8(a)
#endif
#if !defined(_mm512_reduce_max_ps)
#define _mm512_reduce_max_ps(a) mudg_simde_extra::reduce_max_ps(a)
#endif
#if !defined(_mm512_reduce_add_ps)
#define _mm512_reduce_add_ps(a) mudg_simde_extra::reduce_add_ps(a)
#endif
#if !defined(_mm512_mask_loadu_ps)
#define _mm512_mask_loadu_ps(src, m, p) mudg_simde_extra::mask_loadu_ps(src, m, p)
#endif
#if !defined(_MM_FROUND_NO_EXC)
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif
#if !defined(_MM_FROUND_TO_NEAREST_INT)
#define _MM_FROUND_TO_NEAREST_INT SIMDE_MM_FROUND_TO_NEAREST_INT
#endif

// Without FMA hardware SIMDe emulates vfmadd/vfnmadd as a multiply and an add, two roundings; the
// kernels' contract (and the scalar reference) is one rounding. So the SIMDe build replaces the
// fused operations the kernels use with lane-wise std::fma, which is exact everywhere.
namespace mudg_simde_fma {
template <class V>
static inline V lanes(V a, V b, V c, float sign) {
    constexpr int n = sizeof(V) / sizeof(float);
    float x[n], y[n], z[n];
    __builtin_memcpy(x, &a, sizeof(V));
    __builtin_memcpy(y, &b, sizeof(V));
    __builtin_memcpy(z, &c, sizeof(V));
    for (int i = 0; i < n; ++i) z[i] = std::fma(sign * x[i], y[i], z[i]);  // sign * x is exact
    V r;
    __builtin_memcpy(&r, z, sizeof(V));
    return r;
}
static inline simde__m128 fnmadd_ss(simde__m128 a, simde__m128 b, simde__m128 c) {
    float x[4], y[4], z[4];
    __builtin_memcpy(x, &a, 16);
    __builtin_memcpy(y, &b, 16);
    __builtin_memcpy(z, &c, 16);
    x[0] = std::fma(-x[0], y[0], z[0]);  // upper lanes come from a
    simde__m128 r;
    __builtin_memcpy(&r, x, 16);
    return r;
}
}  // namespace mudg_simde_fma
#undef _mm256_fmadd_ps
#undef _mm512_fmadd_ps
#undef _mm256_fnmadd_ps
#undef _mm512_fnmadd_ps
#undef _mm_fnmadd_ss
#define _mm256_fmadd_ps(a, b, c) mudg_simde_fma::lanes<simde__m256>(a, b, c, 1.0f)
#define _mm512_fmadd_ps(a, b, c) mudg_simde_fma::lanes<simde__m512>(a, b, c, 1.0f)
#define _mm256_fnmadd_ps(a, b, c) mudg_simde_fma::lanes<simde__m256>(a, b, c, -1.0f)
#define _mm512_fnmadd_ps(a, b, c) mudg_simde_fma::lanes<simde__m512>(a, b, c, -1.0f)
#define _mm_fnmadd_ss(a, b, c) mudg_simde_fma::fnmadd_ss(a, b, c)

#else
#include <immintrin.h>
#endif
