// Re-ranking kernels shared by the vector ISAs: one query against rows given by pointers (the
// candidates of a shortlist, wherever they live). Included by avx2.cpp, avx512.cpp and neon.cpp inside their
// anonymous namespaces, after tile_impl.hpp (see there for why).
//
// Vectorised across rows, never across the dimension: a group of W rows is transposed in
// registers 8 dimensions at a time, so lane j accumulates row j as one fma chain over the
// dimensions in increasing order, exactly like the scalar reference and the tile kernels.
//
// Isa must provide, besides the tile traits:
//   ROW_GROUPS: groups of W rows accumulated together (independent chains hide the fma latency)
//   void cols_f32(const float* const* rows, idx_t k, V (&c)[8])        // c[t][j] = rows[j][k + t]
//   void cols_f16(const std::uint16_t* const* rows, idx_t k, V (&c)[8])  // the same, converted

inline float row_value(const float* row, idx_t k) { return row[k]; }
inline float row_value(const std::uint16_t* row, idx_t k) { return half_to_float(row[k]); }

template <class T>
inline void load_cols(const T* const* rows, idx_t k, V (&c)[8]) {
    if constexpr (std::is_same_v<T, float>) {
        Isa::cols_f32(rows, k, c);
    } else {
        Isa::cols_f16(rows, k, c);
    }
}

/// out[0 .. G*W) = scores of rows[0 .. G*W) (all pointers valid).
template <class T, int G>
inline void dot_groups(const float* q, const T* const* rows, idx_t d, float* out) {
    V acc[G];
    for (int g = 0; g < G; ++g) acc[g] = Isa::zero();
    idx_t k = 0;
    for (; k + 8 <= d; k += 8) {
        V qk[8];
        for (int t = 0; t < 8; ++t) qk[t] = Isa::bcast(q + k + t);
        for (int g = 0; g < G; ++g) {
            V c[8];
            load_cols(rows + g * W, k, c);
            for (int t = 0; t < 8; ++t) acc[g] = Isa::fma(qk[t], c[t], acc[g]);
        }
    }
    for (; k < d; ++k) {  // the last d % 8 dimensions, one at a time
        const V qk = Isa::bcast(q + k);
        for (int g = 0; g < G; ++g) {
            alignas(64) float col[W];
            for (int j = 0; j < W; ++j) col[j] = row_value(rows[g * W + j], k);
            acc[g] = Isa::fma(qk, Isa::loadu(col), acc[g]);
        }
    }
    for (int g = 0; g < G; ++g) Isa::storeu(out + g * W, acc[g]);
}

template <class T>
inline void dot_rows(const float* q, const T* const* rows, idx_t n, idx_t d, float* out) {
    constexpr int G = Isa::ROW_GROUPS;
    idx_t i = 0;
    for (; i + G * W <= n; i += G * W) dot_groups<T, G>(q, rows + i, d, out + i);
    for (; i + W <= n; i += W) dot_groups<T, 1>(q, rows + i, d, out + i);
    if (i < n) {  // a partial group: repeat the last row in the spare lanes, keep the valid scores
        const T* pad[W];
        alignas(64) float tmp[W];
        for (int j = 0; j < W; ++j) pad[j] = rows[i + j < n ? i + j : n - 1];
        dot_groups<T, 1>(q, pad, d, tmp);
        for (idx_t j = 0; i + j < n; ++j) out[i + j] = tmp[j];
    }
}

void k_dot_rows_f32(const float* q, const float* const* rows, idx_t n, idx_t d, float* out) {
    dot_rows(q, rows, n, d, out);
}

void k_dot_rows_f16(const float* q, const std::uint16_t* const* rows, idx_t n, idx_t d, float* out) {
    dot_rows(q, rows, n, d, out);
}
