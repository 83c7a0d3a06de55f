// Detects the CPU once, honours MUDG_SIMD, and hands out the kernel table.
//
// Levels are "base[+feature]" (see simd.hpp). MUDG_SIMD names a cap: the active level is the best
// level the CPU supports whose base is no higher than the cap's and whose features are all named
// by the cap (MUDG_SIMD=avx512 keeps VNNI off; MUDG_SIMD=avx512+vnni allows everything on x86;
// MUDG_SIMD=neon keeps sdot off on ARM).
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "mudg_fast/simd.hpp"

#if defined(MUDG_X86) && (defined(__GNUC__) || defined(__clang__)) && !defined(MUDG_SIMDE)
#include <cpuid.h>
#define MUDG_X86_DETECT 1
#endif

// AArch64 feature detection: the kernel's hardware capabilities on Linux (and FreeBSD), sysctl on
// macOS, IsProcessorFeaturePresent on Windows; elsewhere only the base ISA (NEON) is assumed.
#if defined(MUDG_ARM64)
#if defined(__linux__) || defined(__FreeBSD__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#elif defined(_WIN32)
#define NOMINMAX
#include <windows.h>
#endif
#endif

namespace mudg_fast {

const std::vector<SimdLevelInfo>& simd_levels() noexcept {
    static const std::vector<SimdLevelInfo> levels = {
        {SimdLevel::scalar, "scalar", "any", 0, 0},
        {SimdLevel::avx2, "avx2", "x86", 1, 0},
        {SimdLevel::avx2_vnni, "avx2+vnni", "x86", 1, kSimdVnni},
        {SimdLevel::avx512, "avx512", "x86", 2, 0},
        {SimdLevel::avx512_vnni, "avx512+vnni", "x86", 2, kSimdVnni},
        {SimdLevel::neon, "neon", "arm", 1, 0},
        {SimdLevel::neon_dotprod, "neon+dotprod", "arm", 1, kSimdDotprod},
    };
    return levels;
}

const SimdLevelInfo& simd_level_info(SimdLevel level) noexcept {
    for (const SimdLevelInfo& info : simd_levels())
        if (info.level == level) return info;
    return simd_levels().front();
}

const char* simd_level_name(SimdLevel level) noexcept { return simd_level_info(level).name; }

SimdLevel parse_simd_level(const char* name) {
    const std::string s = name ? name : "";
    std::string all;
    for (const SimdLevelInfo& info : simd_levels()) {
        if (s == info.name) return info.level;
        all += (all.empty() ? "" : ", ") + std::string(info.name);
    }
    MUDG_CHECK(false, "unknown SIMD level '%s': use one of %s", s.c_str(), all.c_str());
}

bool simd_level_within(SimdLevel level, SimdLevel cap) noexcept {
    const SimdLevelInfo &l = simd_level_info(level), &c = simd_level_info(cap);
    if (l.level == SimdLevel::scalar) return true;
    return std::strcmp(l.arch, c.arch) == 0 && l.rank <= c.rank && (l.features & ~c.features) == 0;
}

namespace {

#if defined(MUDG_ARM64)
// AArch64 hardware-capability bits (asm/hwcap.h), spelled out for C libraries that lack them.
constexpr unsigned long kHwcapAsimd = 1ul << 1, kHwcapAsimddp = 1ul << 20;

/// {Advanced SIMD, dot product}: NEON is part of every AArch64 CPU, but Linux still reports it.
void arm_features(bool& neon, bool& dotprod) noexcept {
    neon = true;
    dotprod = false;
#if defined(__linux__)
    const unsigned long hwcap = getauxval(AT_HWCAP);
    neon = (hwcap & kHwcapAsimd) != 0;
    dotprod = neon && (hwcap & kHwcapAsimddp) != 0;
#elif defined(__FreeBSD__)
    unsigned long hwcap = 0;
    if (elf_aux_info(AT_HWCAP, &hwcap, sizeof hwcap) == 0) dotprod = (hwcap & kHwcapAsimddp) != 0;
#elif defined(__APPLE__)
    // macOS 12+ names the feature FEAT_DotProd; macOS 11 armv8_2_dotprod (every Apple M1 has it).
    for (const char* key : {"hw.optional.arm.FEAT_DotProd", "hw.optional.armv8_2_dotprod"}) {
        int value = 0;
        std::size_t size = sizeof value;
        if (sysctlbyname(key, &value, &size, nullptr, 0) == 0) {
            dotprod = value != 0;
            break;
        }
    }
#elif defined(_WIN32)
#ifndef PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE
#define PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE 43
#endif
    dotprod = IsProcessorFeaturePresent(PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE) != 0;
#endif
}
#endif

/// Bit set of the levels this CPU and OS can run (bit i: SimdLevel i).
unsigned supported_mask() noexcept {
    static const unsigned mask = [] {
        unsigned m = 1u << static_cast<int>(SimdLevel::scalar);
#if defined(MUDG_X86_DETECT)
        __builtin_cpu_init();
        // __builtin_cpu_supports also checks that the OS saves the YMM / ZMM state (XGETBV).
        const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        // The VNNI bits straight from CPUID (older compilers do not know "avxvnni"): AVX512-VNNI is
        // leaf 7 subleaf 0 ECX bit 11, AVX-VNNI leaf 7 subleaf 1 EAX bit 4. Both use state the
        // base checks above already verified.
        unsigned a = 0, b = 0, c = 0, d = 0;
        bool vnni512 = false, vnni256 = false;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
            vnni512 = (c >> 11) & 1u;
            if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) vnni256 = (a >> 4) & 1u;
        }
        // F16C is present on every CPU with AVX2 that has shipped; the AVX2 tables rely on it.
        if (avx2) m |= 1u << static_cast<int>(SimdLevel::avx2);
        if (avx512) m |= 1u << static_cast<int>(SimdLevel::avx512);
#if defined(MUDG_HAVE_AVX2_VNNI)
        if (avx2 && vnni256) m |= 1u << static_cast<int>(SimdLevel::avx2_vnni);
#endif
#if defined(MUDG_HAVE_AVX512_VNNI)
        if (avx512 && vnni512) m |= 1u << static_cast<int>(SimdLevel::avx512_vnni);
#endif
#endif
#if defined(MUDG_ARM64)
        bool neon = false, dotprod = false;
        arm_features(neon, dotprod);
        if (neon) m |= 1u << static_cast<int>(SimdLevel::neon);
#if defined(MUDG_HAVE_NEON_DOTPROD)
        if (neon && dotprod) m |= 1u << static_cast<int>(SimdLevel::neon_dotprod);
#endif
#endif
#if defined(MUDG_SIMDE)
        // The SIMDe test build emulates the x86 instruction sets in portable code: every x86
        // level runs, whatever the CPU.
        for (const SimdLevelInfo& info : simd_levels())
            if (std::strcmp(info.arch, "x86") == 0) m |= 1u << static_cast<int>(info.level);
#endif
        return m;
    }();
    return mask;
}

}  // namespace

bool simd_emulated() noexcept {
#if defined(MUDG_SIMDE)
    return true;
#else
    return false;
#endif
}

bool simd_level_supported(SimdLevel level) noexcept {
    return (supported_mask() >> static_cast<int>(level)) & 1u;
}

std::vector<SimdLevel> supported_simd_levels() {
    std::vector<SimdLevel> v;
    for (const SimdLevelInfo& info : simd_levels())
        if (simd_level_supported(info.level)) v.push_back(info.level);
    return v;
}

namespace {

/// The best supported level within `cap` (enum order is preference order).
SimdLevel best_within(SimdLevel cap) noexcept {
    SimdLevel best = SimdLevel::scalar;
    for (const SimdLevelInfo& info : simd_levels())
        if (simd_level_supported(info.level) && simd_level_within(info.level, cap)) best = info.level;
    return best;
}

}  // namespace

SimdLevel detected_simd_level() noexcept {
    SimdLevel best = SimdLevel::scalar;
    for (const SimdLevelInfo& info : simd_levels())
        if (simd_level_supported(info.level)) best = info.level;
    return best;
}

namespace {

const Kernels& table_of(SimdLevel level) {
    switch (level) {
#if defined(MUDG_X86)
#if defined(MUDG_HAVE_AVX512_VNNI)
        case SimdLevel::avx512_vnni: return avx512_vnni::table();
#endif
        case SimdLevel::avx512: return avx512::table();
#if defined(MUDG_HAVE_AVX2_VNNI)
        case SimdLevel::avx2_vnni: return avx2_vnni::table();
#endif
        case SimdLevel::avx2: return avx2::table();
#endif
#if defined(MUDG_ARM64)
#if defined(MUDG_HAVE_NEON_DOTPROD)
        case SimdLevel::neon_dotprod: return neon_dotprod::table();
#endif
        case SimdLevel::neon: return neon::table();
#endif
        default: return scalar::table();
    }
}

std::atomic<const Kernels*> g_active{nullptr};

const Kernels* initial_table() {
    SimdLevel level = detected_simd_level();
    if (const char* cap = std::getenv("MUDG_SIMD"); cap && *cap)
        level = best_within(parse_simd_level(cap));  // throws on a bad value
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
    MUDG_CHECK(simd_level_supported(level), "this CPU does not support SIMD level '%s' (best available: '%s')",
               simd_level_name(level), simd_level_name(detected_simd_level()));
    return table_of(level);
}

SimdLevel simd_level() { return kernels().level; }

void set_simd_level(SimdLevel level) { g_active.store(&kernels_for(level), std::memory_order_release); }

}  // namespace mudg_fast
