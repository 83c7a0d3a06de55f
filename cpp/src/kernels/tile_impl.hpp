// Tile kernels shared by the vector ISAs. Included by avx2.cpp and avx512.cpp *inside*
// `namespace mudg_fast::<isa> { namespace { ... } }`, after they define `struct Isa` (the vector
// traits below) — so every instantiation has internal linkage and is built only with that file's
// ISA flags. Include nothing here: inline templates shared with baseline code could be picked
// from this object by the linker and crash CPUs without the ISA.
//
// Isa must provide:
//   using V (float vector), W (lanes), MR (rows per A panel), NB_FULL (blocks per full tile),
//   NB_ONE (blocks per tile when a panel holds one row)
//   V zero(); V bcast(const float*); V fma(V a, V b, V c)  (a*b+c, one rounding); V add(V, V)
//   V loadu(const float*); void storeu(float*, V)
//   V load_f32(const float* row16, int s)   // s-th vector of a 16-wide dimension row
//   V load_f16(const std::uint16_t* row16, int s)
//   V load_sq8(const std::uint8_t* row16, int s)
//   V load_sq4(const std::uint8_t* row8, const float* lut16, int s)
//   unsigned mask_ge(V a, V b)   // bit i set when a[i] >= b[i]
//   void lane_update(float* best, std::int32_t* best_col, V acc, std::int32_t col0)
//       // lanes where acc > best: best = acc, best_col = col0 + lane

constexpr int W = Isa::W;
inline idx_t min_idx(idx_t a, idx_t b) { return a < b ? a : b; }
constexpr int VPB = kBlock / W;  // vectors per 16-wide block row
using V = typename Isa::V;

template <Codec C>
inline V load_col(const std::uint8_t* blk, idx_t k, int s, const float* lut) {
    if constexpr (C == Codec::f32) {
        return Isa::load_f32(reinterpret_cast<const float*>(blk) + k * kBlock, s);
    } else if constexpr (C == Codec::f16) {
        return Isa::load_f16(reinterpret_cast<const std::uint16_t*>(blk) + k * kBlock, s);
    } else if constexpr (C == Codec::sq8) {
        return Isa::load_sq8(blk + k * kBlock, s);
    } else {
        return Isa::load_sq4(blk + k * (kBlock / 2), lut + k * kBlock, s);
    }
}

/// Rows of a packed A panel: value (r, k) at a[k * MR + r].
struct PanelRows {
    const float* a;
    V bcast(idx_t k, int r) const { return Isa::bcast(a + k * Isa::MR + r); }
};

/// Rows read in place: value (r, k) at rows[r][k] (no packing).
template <int R>
struct PointerRows {
    const float* rows[R];
    V bcast(idx_t k, int r) const { return Isa::bcast(rows[r] + k); }
};

/// acc[r][v] = sum_k a(r, k) * b(col of vector v, k) as one fma chain in k order.
/// a: the rows (PanelRows or PointerRows); blk: first of NB consecutive blocks.
template <Codec C, int R, int NB, class A>
inline void tile(const A& a, const std::uint8_t* blk, idx_t bbytes, idx_t d,
                 const float* lut, V (&acc)[R][NB * VPB]) {
    // Accumulate in a local array: GCC keeps it in registers, whereas writing through `acc`
    // makes it store every accumulator on every iteration.
    V c[R][NB * VPB];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NB * VPB; ++v) c[r][v] = Isa::zero();
    for (idx_t k = 0; k < d; ++k) {
        V bv[NB * VPB];
        for (int nb = 0; nb < NB; ++nb)
            for (int s = 0; s < VPB; ++s) bv[nb * VPB + s] = load_col<C>(blk + nb * bbytes, k, s, lut);
        for (int r = 0; r < R; ++r) {
            const V av = a.bcast(k, r);
            for (int v = 0; v < NB * VPB; ++v) c[r][v] = Isa::fma(av, bv[v], c[r][v]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NB * VPB; ++v) acc[r][v] = c[r][v];
}

/// Walks all (panel, block-group) tiles of a call and hands each tile to `epi`:
/// epi(acc, row0, R_valid, col0, cols_valid) with acc[R][NB*VPB].
template <Codec C, class Epi>
inline void run_tiles(const TileArgs& t, Epi& epi) {
    const idx_t d = t.d;
    const idx_t n_panels = (t.n_rows + Isa::MR - 1) / Isa::MR;
    const idx_t nblk = (t.n_cols + kBlock - 1) / kBlock;
    const idx_t bbytes = block_bytes(C, d);
    const auto* b = static_cast<const std::uint8_t*>(t.b);
    const idx_t panel_size = Isa::MR * d;

    if (t.n_rows == 1) {  // one query: spread the accumulators over more blocks
        constexpr int NB = Isa::NB_ONE;
        idx_t j = 0;
        for (; j + NB <= nblk; j += NB) {
            V acc[1][NB * VPB];
            tile<C, 1, NB>(PanelRows{t.a}, b + j * bbytes, bbytes, d, t.lut, acc);
            epi(acc, 0, 1, j * kBlock, min_idx(NB * kBlock, t.n_cols - j * kBlock));
        }
        for (; j < nblk; ++j) {
            V acc[1][VPB];
            tile<C, 1, 1>(PanelRows{t.a}, b + j * bbytes, bbytes, d, t.lut, acc);
            epi(acc, 0, 1, j * kBlock, min_idx(kBlock, t.n_cols - j * kBlock));
        }
        return;
    }
    constexpr int NB = Isa::NB_FULL;
    constexpr int R = Isa::MR;
    idx_t j = 0;
    for (; j + NB <= nblk; j += NB) {
        const idx_t cols = min_idx(NB * kBlock, t.n_cols - j * kBlock);
        for (idx_t p = 0; p < n_panels; ++p) {
            V acc[R][NB * VPB];
            tile<C, R, NB>(PanelRows{t.a + p * panel_size}, b + j * bbytes, bbytes, d, t.lut, acc);
            epi(acc, p * R, min_idx(R, t.n_rows - p * R), j * kBlock, cols);
        }
    }
    if constexpr (NB > 1) {
        for (; j < nblk; ++j) {
            const idx_t cols = min_idx(kBlock, t.n_cols - j * kBlock);
            for (idx_t p = 0; p < n_panels; ++p) {
                V acc[R][VPB];
                tile<C, R, 1>(PanelRows{t.a + p * panel_size}, b + j * bbytes, bbytes, d, t.lut, acc);
                epi(acc, p * R, min_idx(R, t.n_rows - p * R), j * kBlock, cols);
            }
        }
    }
}

/// Adds col_bias[col0 ..] to a tile row when a bias is given.
template <int NV>
inline void add_bias(V (&row)[NV], const float* bias, idx_t col0, idx_t cols) {
    if (!bias) return;
    if (cols == NV * W) {
        for (int v = 0; v < NV; ++v) row[v] = Isa::add(row[v], Isa::loadu(bias + col0 + v * W));
    } else {
        alignas(64) float tmp[NV * W] = {};
        for (idx_t c = 0; c < cols; ++c) tmp[c] = bias[col0 + c];
        for (int v = 0; v < NV; ++v) row[v] = Isa::add(row[v], Isa::loadu(tmp + v * W));
    }
}

struct ScoresEpi {
    const TileArgs* t;
    float* out;
    idx_t ld;
    template <int R, int NV>
    void operator()(V (&acc)[R][NV], idx_t row0, idx_t rows, idx_t col0, idx_t cols) {
        for (int r = 0; r < R && r < rows; ++r) {
            add_bias(acc[r], t->col_bias, col0, cols);
            float* o = out + (row0 + r) * ld + col0;
            if (cols == NV * W) {
                for (int v = 0; v < NV; ++v) Isa::storeu(o + v * W, acc[r][v]);
            } else {
                alignas(64) float tmp[NV * W];
                for (int v = 0; v < NV; ++v) Isa::storeu(tmp + v * W, acc[r][v]);
                for (idx_t c = 0; c < cols; ++c) o[c] = tmp[c];
            }
        }
    }
};

/// Lane-wise running argmax: lane j of a row tracks the best of columns == j (mod 16).
struct ArgmaxEpi {
    const TileArgs* t;
    float* lane_best;          // [rows][16]
    std::int32_t* lane_col;    // [rows][16]
    template <int R, int NV>
    void operator()(V (&acc)[R][NV], idx_t row0, idx_t rows, idx_t col0, idx_t cols) {
        for (int r = 0; r < R && r < rows; ++r) {
            add_bias(acc[r], t->col_bias, col0, cols);
            float* lb = lane_best + (row0 + r) * kBlock;
            std::int32_t* lc = lane_col + (row0 + r) * kBlock;
            if (cols == NV * W) {
                for (int v = 0; v < NV; ++v) {
                    const int s = v % VPB;
                    Isa::lane_update(lb + s * W, lc + s * W, acc[r][v],
                                     static_cast<std::int32_t>(col0 + v * W));
                }
            } else {  // partial last block: scalar, skipping padding columns
                alignas(64) float tmp[NV * W];
                for (int v = 0; v < NV; ++v) Isa::storeu(tmp + v * W, acc[r][v]);
                for (idx_t c = 0; c < cols; ++c) {
                    const int lane = static_cast<int>((col0 + c) % kBlock);
                    if (tmp[c] > lb[lane]) {
                        lb[lane] = tmp[c];
                        lc[lane] = static_cast<std::int32_t>(col0 + c);
                    }
                }
            }
        }
    }
};

struct TopkEpi {
    const TileArgs* t;
    float* thresholds;
    CandidateSink sink;
    void* ctx;
    template <int R, int NV>
    void operator()(V (&acc)[R][NV], idx_t row0, idx_t rows, idx_t col0, idx_t cols) {
        static_assert(NV * W <= 64, "tile wider than the hit mask");
        const std::uint64_t full = NV * W == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << (NV * W)) - 1);
        const std::uint64_t valid = cols >= NV * W ? full : ((std::uint64_t{1} << cols) - 1);
        for (int r = 0; r < R && r < rows; ++r) {
            add_bias(acc[r], t->col_bias, col0, cols);
            const idx_t row = row0 + r;
            std::uint64_t hits = 0;
            {
                const V thr = Isa::bcast(thresholds + row);
                for (int v = 0; v < NV; ++v)
                    hits |= static_cast<std::uint64_t>(Isa::mask_ge(acc[r][v], thr)) << (v * W);
            }
            hits &= valid;
            if (!hits) continue;
            alignas(64) float tmp[NV * W];
            for (int v = 0; v < NV; ++v) Isa::storeu(tmp + v * W, acc[r][v]);
            while (hits) {
                const int c = __builtin_ctzll(hits);
                hits &= hits - 1;
                if (tmp[c] >= thresholds[row]) sink(ctx, row, col0 + c, tmp[c]);
            }
        }
    }
};

template <class Fn>
inline void with_codec(Codec c, Fn&& fn) {
    switch (c) {
        case Codec::f32: fn(std::integral_constant<Codec, Codec::f32>{}); break;
        case Codec::f16: fn(std::integral_constant<Codec, Codec::f16>{}); break;
        case Codec::sq8: fn(std::integral_constant<Codec, Codec::sq8>{}); break;
        case Codec::sq4: fn(std::integral_constant<Codec, Codec::sq4>{}); break;
    }
}

void k_scores(const TileArgs& t, float* out, idx_t ld) {
    ScoresEpi epi{&t, out, ld};
    with_codec(t.codec, [&](auto c) { run_tiles<decltype(c)::value>(t, epi); });
}

void k_argmax(const TileArgs& t, idx_t col_offset, float* best, idx_t* best_id, void* lanes) {
    const idx_t rows_padded = (t.n_rows + Isa::MR - 1) / Isa::MR * Isa::MR;
    auto* lane_best = static_cast<float*>(lanes);
    auto* lane_col = reinterpret_cast<std::int32_t*>(lane_best + rows_padded * kBlock);
    for (idx_t i = 0; i < rows_padded * kBlock; ++i) {
        lane_best[i] = -__builtin_inff();
        lane_col[i] = 0x7fffffff;
    }
    ArgmaxEpi epi{&t, lane_best, lane_col};
    if (t.codec == Codec::f32) {
        run_tiles<Codec::f32>(t, epi);
    } else {
        with_codec(t.codec, [&](auto c) { run_tiles<decltype(c)::value>(t, epi); });
    }
    for (idx_t r = 0; r < t.n_rows; ++r) {
        float s = -__builtin_inff();
        std::int32_t c = 0x7fffffff;
        for (int j = 0; j < kBlock; ++j) {
            const float v = lane_best[r * kBlock + j];
            const std::int32_t cj = lane_col[r * kBlock + j];
            if (v > s || (v == s && cj < c)) {
                s = v;
                c = cj;
            }
        }
        if (c == 0x7fffffff) continue;
        const idx_t id = col_offset + c;
        if (s > best[r] || (s == best[r] && (best_id[r] < 0 || id < best_id[r]))) {
            best[r] = s;
            best_id[r] = id;
        }
    }
}

void k_scores_rows(const float* const* rows, idx_t n_rows, const float* b, idx_t n_cols, idx_t d, float* out,
                   idx_t ld) {
    constexpr int R = Isa::MR;
    const idx_t nblk = (n_cols + kBlock - 1) / kBlock;
    const idx_t bbytes = block_bytes(Codec::f32, d);
    const auto* bb = reinterpret_cast<const std::uint8_t*>(b);
    for (idx_t j = 0; j < nblk; ++j) {
        const idx_t c0 = j * kBlock, cols = min_idx(kBlock, n_cols - c0);
        for (idx_t r0 = 0; r0 < n_rows; r0 += R) {
            const idx_t nr = min_idx(R, n_rows - r0);
            PointerRows<R> a;
            for (int r = 0; r < R; ++r) a.rows[r] = rows[r0 + (r < nr ? r : nr - 1)];  // pad: repeat a row
            V acc[R][VPB];
            tile<Codec::f32, R, 1>(a, bb + j * bbytes, bbytes, d, nullptr, acc);
            for (idx_t r = 0; r < nr; ++r) {
                float* o = out + (r0 + r) * ld + c0;
                if (cols == kBlock) {
                    for (int v = 0; v < VPB; ++v) Isa::storeu(o + v * W, acc[r][v]);
                } else {
                    alignas(64) float tmp[kBlock];
                    for (int v = 0; v < VPB; ++v) Isa::storeu(tmp + v * W, acc[r][v]);
                    for (idx_t c = 0; c < cols; ++c) o[c] = tmp[c];
                }
            }
        }
    }
}

void k_topk(const TileArgs& t, float* thresholds, CandidateSink sink, void* ctx) {
    TopkEpi epi{&t, thresholds, sink, ctx};
    with_codec(t.codec, [&](auto c) { run_tiles<decltype(c)::value>(t, epi); });
}
