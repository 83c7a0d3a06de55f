// Plain loops over memory that the compiler vectorises with the including file's ISA flags (no
// intrinsics: every level's file, NEON included, includes this inside its anonymous namespace;
// see tile_impl.hpp for why).

/// Largest p[i] & 0x7FFFFFFF: for float bit patterns, the largest |x| (its bit pattern; at or above
/// 0x7F800000 when some element is inf or NaN).
std::uint32_t k_max_abs_bits(const std::uint32_t* p, idx_t n) {
    std::uint32_t m = 0;
    for (idx_t i = 0; i < n; ++i) {
        const std::uint32_t v = p[i] & 0x7FFFFFFFu;
        m = v > m ? v : m;
    }
    return m;
}
