// A small, fully specified random generator, so every platform draws the same numbers for a seed
// (std:: distributions differ between standard libraries).
#pragma once

#include <cstdint>

namespace mudg_fast {

/// SplitMix64 (Steele, Lea & Flood, 2014): one 64-bit state, passes BigCrush, trivially seedable.
class Rng {
public:
    explicit Rng(std::uint64_t seed = 0) noexcept : state_(seed ^ 0x9E3779B97F4A7C15ull) {}

    std::uint64_t next() noexcept {
        std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    /// Uniform in [0, 1) with 53 random bits.
    double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
    /// Uniform integer in [0, n); n > 0. Lemire's multiply-shift (bias < n / 2^64, negligible).
    std::uint64_t below(std::uint64_t n) noexcept {
#ifdef __SIZEOF_INT128__
        return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
#else
        return next() % n;
#endif
    }
    /// An independent stream for sub-task `i` (e.g. one per class), same on every thread count.
    static Rng stream(std::uint64_t seed, std::uint64_t i) noexcept {
        Rng r(seed);
        r.state_ ^= (i + 1) * 0xD1B54A32D192ED03ull;
        r.next();
        return r;
    }

private:
    std::uint64_t state_;
};

}  // namespace mudg_fast
