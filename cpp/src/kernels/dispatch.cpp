// Detects the CPU once, honours MUDG_SIMD, and hands out the kernel table.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "mudg_fast/simd.hpp"

namespace mudg_fast {

const char* simd_level_name(SimdLevel level) noexcept {
    switch (level) {
        case SimdLevel::scalar: return "scalar";
        case SimdLevel::avx2: return "avx2";
        case SimdLevel::avx512: return "avx512";
    }
    return "unknown";
}

SimdLevel parse_simd_level(const char* name) {
    const std::string s = name ? name : "";
    if (s == "scalar") return SimdLevel::scalar;
    if (s == "avx2") return SimdLevel::avx2;
    if (s == "avx512") return SimdLevel::avx512;
    MUDG_CHECK(false, "unknown SIMD level '%s': use one of scalar, avx2, avx512", s.c_str());
}

SimdLevel detected_simd_level() noexcept {
#if defined(MUDG_X86) && (defined(__GNUC__) || defined(__clang__))
    static const SimdLevel level = [] {
        __builtin_cpu_init();
        const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        // F16C is present on every CPU with AVX2 that has shipped; the AVX2 table relies on it.
        return avx512 ? SimdLevel::avx512 : avx2 ? SimdLevel::avx2 : SimdLevel::scalar;
    }();
    return level;
#else
    return SimdLevel::scalar;
#endif
}

namespace {

const Kernels& table_of(SimdLevel level) {
    switch (level) {
#if defined(MUDG_X86)
        case SimdLevel::avx512: return avx512::table();
        case SimdLevel::avx2: return avx2::table();
#endif
        default: return scalar::table();
    }
}

std::atomic<const Kernels*> g_active{nullptr};

const Kernels* initial_table() {
    SimdLevel level = detected_simd_level();
    if (const char* cap = std::getenv("MUDG_SIMD"); cap && *cap) {
        const SimdLevel requested = parse_simd_level(cap);  // throws on a bad value
        if (static_cast<int>(requested) < static_cast<int>(level)) level = requested;
    }
    return &table_of(level);
}

}  // namespace

const Kernels& kernels() {
    const Kernels* k = g_active.load(std::memory_order_acquire);
    if (!k) {
        k = initial_table();
        const Kernels* expected = nullptr;
        if (!g_active.compare_exchange_strong(expected, k)) k = expected;
    }
    return *k;
}

const Kernels& kernels_for(SimdLevel level) {
    MUDG_CHECK(static_cast<int>(level) <= static_cast<int>(detected_simd_level()),
               "this CPU does not support SIMD level '%s' (best available: '%s')", simd_level_name(level),
               simd_level_name(detected_simd_level()));
    return table_of(level);
}

SimdLevel simd_level() { return kernels().level; }

void set_simd_level(SimdLevel level) { g_active.store(&kernels_for(level), std::memory_order_release); }

}  // namespace mudg_fast
