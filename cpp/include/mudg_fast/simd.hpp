// Runtime-dispatched SIMD kernels: one table of function pointers per ISA, chosen once.
//
// Every kernel that produces a score computes it as one fused multiply-add chain over the
// dimensions in increasing order, starting from 0: s = fma(a[d-1], b[d-1], ... fma(a[0], b[0], 0)).
// Vector kernels parallelise across *outputs*, never across the dimension, so the scalar, AVX2 and
// AVX-512 paths return bit-identical scores and every decision taken on them (argmax, top-k,
// k-means labels) is the same at every SIMD level.
#pragma once

#include <cstdint>
#include <vector>

#include "mudg_fast/common.hpp"

namespace mudg_fast {

/// A SIMD level names the instruction sets a kernel table may use: a base ISA, optionally with
/// features, written "base+feature" ("avx512+vnni"). Within an architecture the enum order is the
/// order of preference. Other architectures append their own levels (with their own base ranks
/// and feature bits) to the enum and to the table in dispatch.cpp.
///   scalar       portable C++, always available
///   avx2         AVX2 + FMA + F16C
///   avx2+vnni    avx2 plus AVX-VNNI (VEX vpdpbusd on ymm) for the int8 screening kernel
///   avx512       AVX-512 F/BW/VL/DQ (and avx2's sets)
///   avx512+vnni  avx512 plus AVX512-VNNI (vpdpbusd on zmm) for the int8 screening kernel
///   neon         AArch64 Advanced SIMD (every ARMv8-A CPU)
///   neon+dotprod neon plus the ARMv8.2 dot-product extension (sdot) for the int8 screening kernel
enum class SimdLevel : int {
    scalar = 0, avx2 = 1, avx2_vnni = 2, avx512 = 3, avx512_vnni = 4, neon = 5, neon_dotprod = 6
};

/// Optional features a level adds to its base ISA (bit set).
enum SimdFeature : unsigned { kSimdVnni = 1u << 0, kSimdDotprod = 1u << 1 };

struct SimdLevelInfo {
    SimdLevel level;
    const char* name;      ///< "avx512+vnni"
    const char* arch;      ///< "any" (scalar), "x86", "arm"
    int rank;              ///< base ISA rank within its architecture: scalar 0, avx2 1, avx512 2;
                           ///< neon 1
    unsigned features;     ///< SimdFeature bits
};

/// Every level this build knows, in enum order.
const std::vector<SimdLevelInfo>& simd_levels() noexcept;
const SimdLevelInfo& simd_level_info(SimdLevel level) noexcept;
const char* simd_level_name(SimdLevel level) noexcept;
/// Parses a level name ("scalar", "avx2", "avx2+vnni", "avx512", "avx512+vnni", "neon",
/// "neon+dotprod"); throws Error otherwise.
SimdLevel parse_simd_level(const char* name);
/// Whether this CPU (and OS) can run the level.
bool simd_level_supported(SimdLevel level) noexcept;
/// The levels this CPU supports, in enum order (scalar first).
std::vector<SimdLevel> supported_simd_levels();
/// Whether `level` stays within `cap`: same architecture (or scalar), base rank <= the cap's, and
/// features a subset of the cap's. So MUDG_SIMD=avx512 allows avx2 and avx512 but not
/// avx512+vnni or avx2+vnni; MUDG_SIMD=avx512+vnni allows all five.
bool simd_level_within(SimdLevel level, SimdLevel cap) noexcept;
/// The best level this CPU (and OS) supports.
SimdLevel detected_simd_level() noexcept;
/// The active level: the best supported level within the MUDG_SIMD cap, or the last
/// set_simd_level().
SimdLevel simd_level();
/// Tests and benchmarks only: switch the active level. Throws Error if the CPU lacks it.
void set_simd_level(SimdLevel level);
/// True in the SIMDe test build (CMake MUDG_SIMDE): the x86 levels are portable emulations, all
/// offered on any CPU, and far slower than the real instructions.
bool simd_emulated() noexcept;

/// Database vectors live in blocks of kBlock vectors stored dimension-major ("transposed"):
/// value of vector j (0..15) in dimension k sits at block[k * kBlock + j]. Unused slots are zero.
constexpr int kBlock = 16;

/// How the columns ("database") of a tile kernel are encoded. Bytes per block: f32 64*d,
/// f16 32*d, sq8 16*d, sq4 8*d (byte j of a dimension holds vector j in its low nibble and
/// vector j+8 in its high nibble).
enum class Codec : int { f32 = 0, f16 = 1, sq8 = 2, sq4 = 3 };

inline idx_t block_bytes(Codec codec, idx_t d) noexcept {
    switch (codec) {
        case Codec::f32: return 64 * d;
        case Codec::f16: return 32 * d;
        case Codec::sq8: return 16 * d;
        case Codec::sq4: return 8 * d;
    }
    return 0;
}

/// One call of a tile kernel: rows = packed "A" panels (queries), columns = blocks ("database").
/// Panel p holds rows [p*mr, p*mr+mr) as a[p*mr*d + k*mr + r] (see pack_rows).
struct TileArgs {
    const float* a = nullptr;      ///< IN packed rows, ceil(n_rows/mr) panels
    idx_t n_rows = 0;              ///< valid rows
    const void* b = nullptr;       ///< IN ceil(n_cols/16) consecutive blocks, 64-byte aligned
    idx_t n_cols = 0;              ///< valid columns
    idx_t d = 0;                   ///< dimension
    Codec codec = Codec::f32;
    const float* lut = nullptr;    ///< IN sq4 only: reconstruction values [d][16]
    const float* col_bias = nullptr;  ///< IN optional [n_cols], added to each column's score
};

/// Called by the top-k kernel for each (row, col) whose score >= thresholds[row]; the sink may
/// raise thresholds[row]. `col` is relative to the call.
using CandidateSink = void (*)(void* ctx, idx_t row, idx_t col, float score);

struct Kernels {
    SimdLevel level;
    int mr;  ///< rows per packed A panel for this ISA

    /// scores[r * ld + c] = score(r, c) for all valid rows and columns.
    void (*scores)(const TileArgs& t, float* out, idx_t ld);
    /// For each row: if max_c score(r, c) > best[r], best[r] = that score and best_id[r] =
    /// col_offset + (lowest such c). Columns are scanned in increasing order, so call in
    /// increasing col_offset to keep "ties go to the lower column".
    /// `lanes` is scratch of 32 * round_up(n_rows, mr) 4-byte words.
    void (*argmax)(const TileArgs& t, idx_t col_offset, float* best, idx_t* best_id, void* lanes);
    /// For each (row, col) with score >= thresholds[row], in increasing col order per row panel,
    /// calls sink(ctx, row, col, score).
    void (*topk)(const TileArgs& t, float* thresholds, CandidateSink sink, void* ctx);
    /// f32 columns only, rows read in place (no packing): out[r * ld + c] = score of rows[r][0..d)
    /// against column c of the f32 blocks at b (the same fma chain as `scores`).
    void (*scores_rows)(const float* const* rows, idx_t n_rows, const float* b, idx_t n_cols, idx_t d, float* out,
                        idx_t ld);
    /// Packs n rows (src + i*stride, or src + ids[i]*stride when ids) of d floats into
    /// ceil(n/16) f32 blocks at out (zero-padded).
    void (*pack_blocks_f32)(const float* src, idx_t stride, const idx_t* ids, idx_t n, idx_t d,
                            float* out);
    /// dst[i] = half(src[i]), round to nearest even (identical to float_to_half()).
    void (*f32_to_f16)(const float* src, idx_t n, std::uint16_t* dst);

    // --- int8 screening (see screen.hpp): approximate scores, then exact fp32 re-scoring ------
    /// Whether exact searches screen with int8 at this level by default (faster than fp32 tiles).
    bool screening;
    /// Largest |q| of the s8 screening columns i8_scores accepts: 63 for the AVX2 kernel (its
    /// vpmaddubsw pair sums saturate at 2^15), 127 for the scalar and VNNI kernels (exact int32).
    int i8_col_limit;
    /// out[r * ld + c] = float(S_rc - col_corr[c]) * (row_scale[r] * col_scale[c]) where S_rc is
    /// the int32 dot product of u8 row r (panels of kMr8 rows: a[p][d4][kMr8][4]) and s8 column c
    /// (blocks of 16: b[blk][d4][16][4], |q| <= i8_col_limit).
    void (*i8_scores)(const std::uint8_t* a, idx_t n_rows, const std::int8_t* b, idx_t n_cols, idx_t d4,
                      const float* row_scale, const float* col_scale, const std::int32_t* col_corr, float* out,
                      idx_t ld);
    /// Largest of z[0..n).
    float (*max_value)(const float* z, idx_t n);
    /// Writes the indices c with z[c] >= tau to out (ascending); returns how many.
    idx_t (*collect_ge)(const float* z, idx_t n, float tau, std::int32_t* out);
    /// Quantises one row: a = max(max|x| / lim, FLT_MIN) (1 when x == 0), q = round(x / a)
    /// clamped to [-lim, lim]; byte (q + offset) of dimension k goes to out[(k / 4) * stride + k % 4].
    /// Returns a, and upper bounds of a|q|, |x - a q| and |x| in stats[0..3).
    void (*quantize_row)(const float* x, idx_t d, int lim, int offset, std::uint8_t* out, idx_t stride, float* a,
                         double* stats);
    /// SQ4 codes of one f32 block [d][16]: code = #{j : v > mids[k * 15 + j]} (mids sorted);
    /// out[k * 8 + j] = code(v[k][j]) | code(v[k][j + 8]) << 4.
    void (*encode_sq4)(const float* blk, idx_t d, const float* mids, std::uint8_t* out);
};

/// Rows per u8 panel of the int8 screening kernels (all levels).
constexpr int kMr8 = 6;

/// The active kernel table (resolved on first use; thread-safe).
const Kernels& kernels();
/// A specific level's table (tests compare levels against each other).
const Kernels& kernels_for(SimdLevel level);

// Per-ISA tables, defined in src/kernels/<isa>.cpp.
namespace scalar { const Kernels& table(); }
namespace avx2 { const Kernels& table(); }
namespace avx512 { const Kernels& table(); }
namespace avx2_vnni { const Kernels& table(); }
namespace avx512_vnni { const Kernels& table(); }
namespace neon { const Kernels& table(); }
namespace neon_dotprod { const Kernels& table(); }

/// Packs n rows (src + i*stride, or src + ids[i]*stride when ids) into ceil(n/mr) A panels:
/// out[p*mr*d + k*mr + r]; padding rows are zero. When `scale` is given, element k is multiplied
/// by scale[k] (scalar quantiser pre-scaling).
void pack_rows(const float* src, idx_t stride, const idx_t* ids, idx_t n, idx_t d, int mr,
               const float* scale, float* out);

/// Size in floats of the A panels for n rows.
inline idx_t packed_rows_size(idx_t n, idx_t d, int mr) noexcept {
    return (n + mr - 1) / mr * mr * d;
}
inline idx_t n_blocks(idx_t n) noexcept { return (n + kBlock - 1) / kBlock; }

/// IEEE half <-> float, exact for every half value (round-to-nearest-even on the way down).
float half_to_float(std::uint16_t h) noexcept;
std::uint16_t float_to_half(float f) noexcept;

}  // namespace mudg_fast
