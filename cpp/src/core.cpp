// Small shared pieces: threads, interrupt polling, assertion reporting, row packing, half floats.
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_fast {

namespace detail {
void assertion_failed(const char* expr, const char* file, int line) {
    char buf[512];
    std::snprintf(buf, sizeof(buf), "internal error (please report): %s at %s:%d", expr, file, line);
    throw std::logic_error(buf);
}
}  // namespace detail

int default_threads() {
#ifdef MUDG_WITH_OPENMP
    return std::max(1, omp_get_max_threads());
#else
    return std::max(1u, std::thread::hardware_concurrency());
#endif
}

namespace {
std::atomic<InterruptHandler> g_interrupt{nullptr};
thread_local bool t_worker = false;
}

void set_worker_thread(bool worker) noexcept { t_worker = worker; }

void set_interrupt_handler(InterruptHandler handler) { g_interrupt.store(handler); }

void poll_interrupt() {
    const InterruptHandler handler = g_interrupt.load(std::memory_order_relaxed);
    if (!handler || t_worker) return;
    using clock = std::chrono::steady_clock;
    thread_local clock::time_point last{};
    const auto now = clock::now();
    if (now - last < std::chrono::milliseconds(20)) return;
    last = now;
    if (handler()) throw Interrupted();
}

void pack_rows(const float* src, idx_t stride, const idx_t* ids, idx_t n, idx_t d, int mr,
               const float* scale, float* out) {
    const idx_t n_panels = (n + mr - 1) / mr;
    for (idx_t p = 0; p < n_panels; ++p) {
        float* panel = out + p * mr * d;
        for (int r = 0; r < mr; ++r) {
            const idx_t i = p * mr + r;
            if (i >= n) {
                for (idx_t k = 0; k < d; ++k) panel[k * mr + r] = 0.0f;
                continue;
            }
            const float* row = src + (ids ? ids[i] : i) * stride;
            if (scale) {
                for (idx_t k = 0; k < d; ++k) panel[k * mr + r] = row[k] * scale[k];
            } else {
                for (idx_t k = 0; k < d; ++k) panel[k * mr + r] = row[k];
            }
        }
    }
}

float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1Fu;
    std::uint32_t mant = h & 0x3FFu;
    std::uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;  // signed zero
    } else {          // subnormal half -> normal float
        exp = 113;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

std::uint16_t float_to_half(float f) noexcept {
    std::uint32_t x;
    std::memcpy(&x, &f, 4);
    const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    const std::uint32_t absx = x & 0x7FFFFFFFu;
    if (absx >= 0x7F800000u) return sign | 0x7C00u | (absx > 0x7F800000u ? 0x200u : 0u);
    if (absx >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: overflow to inf
    if (absx < 0x38800000u) {                        // result is subnormal or zero
        if (absx < 0x33000000u) return sign;          // < 2^-25: rounds to zero
        const std::uint32_t e = absx >> 23;
        const std::uint32_t m = (absx & 0x7FFFFFu) | 0x800000u;
        const std::uint32_t shift = 126 - e;          // 14..24
        std::uint32_t q = m >> shift;
        const std::uint32_t rem = m & ((1u << shift) - 1u);
        const std::uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return sign | static_cast<std::uint16_t>(q);
    }
    std::uint32_t r = absx - 0x38000000u;  // rebias exponent 127 -> 15
    const std::uint32_t rem = r & 0x1FFFu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return sign | static_cast<std::uint16_t>(r);
}

}  // namespace mudg_fast
