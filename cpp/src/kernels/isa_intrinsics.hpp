// The x86 intrinsics for the per-ISA kernel files: the compiler's own (<immintrin.h>), or, in the
// SIMDe test build (MUDG_SIMDE), SIMDe's portable implementations of the same functions under
// the same names, so that the kernel sources are compiled and tested unchanged on any CPU.
#pragma once

#if defined(MUDG_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>
#else
#include <immintrin.h>
#endif

// SIMDe 0.7 has the AVX512-VNNI form of the 256-bit vpdpbusd but not the AVX-VNNI name; both
// compute the same non-saturating sums.
#if defined(MUDG_SIMDE) && !defined(_mm256_dpbusd_avx_epi32)
#define _mm256_dpbusd_avx_epi32(src, a, b) _mm256_dpbusd_epi32(src, a, b)
#endif
