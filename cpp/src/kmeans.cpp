#include "mudg_fast/kmeans.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/rng.hpp"
#include "mudg_fast/simd.hpp"
#include "mudg_fast/topk.hpp"
#include "kmeans_internal.hpp"

namespace mudg_fast {

namespace {

/// k distinct indices from [0, n), in draw order (partial Fisher-Yates).
std::vector<idx_t> sample_without_replacement(idx_t n, idx_t k, Rng& rng) {
    std::vector<idx_t> perm(n);
    std::iota(perm.begin(), perm.end(), idx_t{0});
    for (idx_t i = 0; i < k; ++i) {
        const idx_t j = i + static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(n - i)));
        std::swap(perm[i], perm[j]);
    }
    perm.resize(k);
    return perm;
}

void normalize_rows(float* c, idx_t k, idx_t d) {
    for (idx_t j = 0; j < k; ++j) {
        float* row = c + j * d;
        double s = 0;
        for (idx_t t = 0; t < d; ++t) s += static_cast<double>(row[t]) * row[t];
        if (s > 0) {
            const double inv = 1.0 / std::sqrt(s);
            for (idx_t t = 0; t < d; ++t) row[t] = static_cast<float>(row[t] * inv);
        }
    }
}

/// Column bias for L2 assignment by inner product: argmin ||x-c||^2 = argmax <x,c> - ||c||^2/2.
std::vector<float> l2_bias(const float* c, idx_t k, idx_t d) {
    std::vector<float> bias(k);
    for (idx_t j = 0; j < k; ++j) {
        double s = 0;
        for (idx_t t = 0; t < d; ++t) s += static_cast<double>(c[j * d + t]) * c[j * d + t];
        bias[j] = static_cast<float>(-0.5 * s);
    }
    return bias;
}

double squared_norm(const float* x, idx_t d) {
    double s = 0;
    for (idx_t t = 0; t < d; ++t) s += static_cast<double>(x[t]) * x[t];
    return s;
}

}  // namespace

void kmeans_pp_seed(MatrixView<const float> x, idx_t k, std::uint64_t seed, idx_t* chosen, int n_threads) {
    const idx_t m = x.rows, d = x.cols;
    MUDG_CHECK(k >= 1 && k <= m, "k-means++ needs 1 <= k <= %lld points, got k=%lld", (long long)m, (long long)k);
    const Kernels& K = kernels();
    Rng rng = Rng::stream(seed, 2);

    std::vector<float> packed(static_cast<size_t>(n_blocks(m) * kBlock * d));
    K.pack_blocks_f32(x.data, x.stride, nullptr, m, d, packed.data());
    std::vector<double> norms(m), mind(m, std::numeric_limits<double>::infinity());
    for (idx_t i = 0; i < m; ++i) norms[i] = squared_norm(x.row(i), d);
    std::vector<float> panel(packed_rows_size(1, d, K.mr));
    std::vector<float> s(m);
    // Columns per task (a multiple of kBlock), at least ~2^19 multiply-adds: the k sequential
    // steps are short, and a parallel region per step costs more than it saves when it is tiny
    // (on a busy machine a late thread stalls every step by a scheduler quantum).
    const idx_t kChunk = std::max<idx_t>(2048, ((idx_t{1} << 19) / std::max<idx_t>(d, 1) + kBlock - 1) / kBlock * kBlock);

    chosen[0] = static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(m)));
    for (idx_t j = 0;; ++j) {
        const idx_t c = chosen[j];
        pack_rows(x.row(c), x.stride, nullptr, 1, d, K.mr, nullptr, panel.data());
        parallel_for(m, kChunk, n_threads, [&](idx_t c0, idx_t c1, int) {
            TileArgs t;
            t.a = panel.data();
            t.n_rows = 1;
            t.b = packed.data() + c0 * d;
            t.n_cols = c1 - c0;
            t.d = d;
            K.scores(t, s.data() + c0, 0);
            for (idx_t i = c0; i < c1; ++i)
                mind[i] = std::min(mind[i], std::max(0.0, norms[i] + norms[c] - 2.0 * s[i]));
        });
        if (j + 1 == k) break;
        double total = 0;
        for (idx_t i = 0; i < m; ++i) total += mind[i];
        idx_t next = m - 1;
        if (total > 0) {
            const double u = rng.uniform() * total;
            double acc = 0;
            for (idx_t i = 0; i < m; ++i) {
                acc += mind[i];
                if (acc > u) {
                    next = i;
                    break;
                }
            }
        } else {  // every point coincides with a chosen one: any choice is as good
            next = static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(m)));
        }
        chosen[j + 1] = next;
    }
}

void kmeans_assign(MatrixView<const float> x, MatrixView<const float> centroids, bool spherical, idx_t* labels,
                   float* scores, int n_threads) {
    std::vector<float> bias;
    if (!spherical) bias = l2_bias(centroids.data, centroids.rows, centroids.cols);
    std::vector<float> tmp;
    if (!scores) {
        tmp.resize(x.rows);
        scores = tmp.data();
    }
    nearest(centroids, x, scores, labels, n_threads, spherical ? nullptr : bias.data());
    if (!spherical) {  // report the inner product, not the biased score
        for (idx_t i = 0; i < x.rows; ++i)
            if (labels[i] >= 0) scores[i] -= bias[labels[i]];
    }
}

namespace {
void check_kmeans_input(const KMeansData& data, const KMeansParams& p, MatrixView<float> centroids) {
    const idx_t n = data.update.rows, d = data.update.cols, k = p.n_clusters;
    MUDG_CHECK(k >= 1, "n_clusters must be >= 1, got %lld", (long long)k);
    MUDG_CHECK(n >= k, "n_clusters=%lld is larger than the number of points (%lld): use fewer clusters",
               (long long)k, (long long)n);
    MUDG_CHECK(data.assign.cols == d, "assignment vectors have %lld dimensions, update vectors %lld",
               (long long)data.assign.cols, (long long)d);
    MUDG_CHECK(data.assign_ids || data.assign.rows == n, "assignment and update sets differ in size (%lld vs %lld)",
               (long long)data.assign.rows, (long long)n);
    MUDG_CHECK(centroids.rows == k && centroids.cols == d, "centroid buffer has the wrong shape");
    MUDG_CHECK(p.max_iter >= 0, "max_iter must be >= 0, got %d", p.max_iter);
    if (data.assign_ids)
        for (idx_t i = 0; i < n; ++i)
            MUDG_CHECK(data.assign_ids[i] >= 0 && data.assign_ids[i] < data.assign.rows,
                       "pair index %lld out of range [0, %lld)", (long long)data.assign_ids[i],
                       (long long)data.assign.rows);
}

}  // namespace

KMeansMethod resolve_kmeans_method(KMeansMethod method, idx_t n_clusters) noexcept {
    if (method != KMeansMethod::automatic) return method;
    return n_clusters >= kTwoLevelMinClusters ? KMeansMethod::two_level : KMeansMethod::flat;
}

KMeansResult kmeans_fit(const KMeansData& data, const KMeansParams& p, MatrixView<float> centroids, idx_t* labels) {
    check_kmeans_input(data, p, centroids);
    const idx_t k = p.n_clusters, d = data.update.cols;
    // The fits write k * d contiguous floats: a strided buffer goes through a copy.
    std::vector<float> tmp;
    float* c = centroids.data;
    if (centroids.stride != d) {
        tmp.resize(static_cast<std::size_t>(k * d));
        for (idx_t j = 0; j < k; ++j) std::copy(centroids.row(j), centroids.row(j) + d, tmp.data() + j * d);
        c = tmp.data();
    }
    KMeansResult r = resolve_kmeans_method(p.method, k) == KMeansMethod::two_level
                         ? kmeans_detail::two_level_fit(data, p, c, labels)
                         : kmeans_detail::lloyd_fit(data, nullptr, data.update.rows, p, c, labels);
    if (!tmp.empty())
        for (idx_t j = 0; j < k; ++j) std::copy(tmp.data() + j * d, tmp.data() + (j + 1) * d, centroids.row(j));
    return r;
}

namespace kmeans_detail {

KMeansResult lloyd_fit(const KMeansData& data, const idx_t* points, idx_t n, const KMeansParams& p, float* out_centroids,
                       idx_t* labels, bool with_inertia) {
    using clock = std::chrono::steady_clock;
    const idx_t d = data.update.cols, k = p.n_clusters;
    MUDG_ASSERT(k >= 1 && n >= k);
    // Update row of point i (an index into data.update; point i itself without a subset).
    auto point = [points](idx_t i) { return points ? points[i] : i; };
    KMeansResult result;
    const int nt = p.n_threads;

    // Training points (their update rows): all, or a seeded sample of k * max_points_per_centroid
    // (in index order, so centroid sums run in the same order whatever the sample).
    std::vector<idx_t> train = training_sample(n, p);
    if (train.empty()) {
        train.resize(n);
        std::iota(train.begin(), train.end(), idx_t{0});
    }
    for (idx_t& t : train) t = point(t);
    const idx_t nt_pts = static_cast<idx_t>(train.size());
    std::vector<idx_t> arow(nt_pts);
    for (idx_t i = 0; i < nt_pts; ++i) arow[i] = data.assign_ids ? data.assign_ids[train[i]] : train[i];

    // Initial centroids, in update space.
    std::vector<float> c(static_cast<size_t>(k * d));
    if (p.init == KMeansInit::given) {
        std::copy(out_centroids, out_centroids + k * d, c.data());
    } else {
        std::vector<idx_t> pick;
        if (p.init == KMeansInit::random) {
            Rng rng = Rng::stream(p.seed, 2);
            pick = sample_without_replacement(nt_pts, k, rng);
        } else {
            // Seed on a sample: k-means++ is sequential in k and each step reads every point.
            const idx_t m = std::min<idx_t>(nt_pts, std::max<idx_t>(8 * k, 4096));
            Rng rng = Rng::stream(p.seed, 3);
            std::vector<idx_t> sample = sample_without_replacement(nt_pts, m, rng);
            std::sort(sample.begin(), sample.end());
            std::vector<float> xs(static_cast<size_t>(m * d));
            for (idx_t i = 0; i < m; ++i) {
                const float* src = data.update.row(train[sample[i]]);
                std::copy(src, src + d, xs.data() + i * d);
            }
            std::vector<idx_t> chosen(k);
            kmeans_pp_seed(MatrixView<const float>(xs.data(), m, d), k, p.seed, chosen.data(), nt);
            pick.resize(k);
            for (idx_t j = 0; j < k; ++j) pick[j] = sample[chosen[j]];
        }
        for (idx_t j = 0; j < k; ++j) {
            const float* src = data.update.row(train[pick[j]]);
            std::copy(src, src + d, c.data() + j * d);
        }
    }
    if (p.spherical) normalize_rows(c.data(), k, d);

    std::vector<idx_t> lab(nt_pts, -1), prev(nt_pts, -1);
    std::vector<float> score(nt_pts);
    std::vector<idx_t> counts(k), offsets(k + 1), order(nt_pts);
    bool converged = false;

    auto assign_step = [&](const idx_t* rows, idx_t count, idx_t* out_lab, float* out_score) {
        assign_to(c.data(), k, d, p.spherical, data.assign, rows, count, out_lab, nt, out_score);
    };

    for (int it = 0; it < p.max_iter; ++it) {
        const auto t0 = clock::now();
        assign_step(arow.data(), nt_pts, lab.data(), score.data());
        double obj = 0;
        for (idx_t i = 0; i < nt_pts; ++i) obj += score[i];
        result.objective.push_back(obj);
        result.n_iter = it + 1;
        if (it > 0 && lab == prev) {  // fixed point: centroids already match these labels
            converged = true;
            result.iteration_seconds.push_back(std::chrono::duration<double>(clock::now() - t0).count());
            break;
        }
        prev = lab;

        // Update: counting sort by label, then each centroid sums its members in index order.
        std::fill(counts.begin(), counts.end(), 0);
        for (idx_t i = 0; i < nt_pts; ++i) ++counts[lab[i]];
        offsets[0] = 0;
        for (idx_t j = 0; j < k; ++j) offsets[j + 1] = offsets[j] + counts[j];
        {
            std::vector<idx_t> fill(offsets.begin(), offsets.end() - 1);
            for (idx_t i = 0; i < nt_pts; ++i) order[fill[lab[i]]++] = i;
        }
        parallel_for(k, 16, nt, [&](idx_t j0, idx_t j1, int) {
            // Members are summed in index order: float within runs of kRun, double across runs
            // (fast, and accurate even for clusters of millions of points).
            constexpr idx_t kRun = 256;
            std::vector<double> acc(d);
            std::vector<float> run(d);
            for (idx_t j = j0; j < j1; ++j) {
                if (counts[j] == 0) continue;
                std::fill(acc.begin(), acc.end(), 0.0);
                for (idx_t o0 = offsets[j]; o0 < offsets[j + 1]; o0 += kRun) {
                    const idx_t o1 = std::min(offsets[j + 1], o0 + kRun);
                    std::fill(run.begin(), run.end(), 0.0f);
                    for (idx_t o = o0; o < o1; ++o) {
                        const float* x = data.update.row(train[order[o]]);
                        for (idx_t t = 0; t < d; ++t) run[t] += x[t];
                    }
                    for (idx_t t = 0; t < d; ++t) acc[t] += run[t];
                }
                double scale = 1.0 / static_cast<double>(counts[j]);
                if (p.spherical) {
                    double s = 0;
                    for (idx_t t = 0; t < d; ++t) s += acc[t] * acc[t];
                    if (s <= 0) continue;  // members cancel out: keep the previous centroid
                    scale = 1.0 / std::sqrt(s);
                }
                float* cj = c.data() + j * d;
                for (idx_t t = 0; t < d; ++t) cj[t] = static_cast<float>(acc[t] * scale);
            }
        });

        // Empty clusters: split the largest cluster by moving the empty centroid onto its
        // worst-fitting member. Moving a centroid nobody is assigned to never lowers the objective.
        idx_t n_empty = 0;
        std::vector<double> size(counts.begin(), counts.end());
        std::vector<std::vector<idx_t>> worst(k);  // members by increasing score, built lazily
        std::vector<idx_t> used(k, 0);
        for (idx_t e = 0; e < k; ++e) {
            if (counts[e] != 0) continue;
            ++n_empty;
            idx_t j = 0;
            for (idx_t t = 1; t < k; ++t)
                if (size[t] > size[j]) j = t;
            if (counts[j] == 0 || used[j] >= counts[j]) continue;  // nothing left to split
            if (worst[j].empty()) {
                worst[j].assign(order.begin() + offsets[j], order.begin() + offsets[j + 1]);
                std::stable_sort(worst[j].begin(), worst[j].end(),
                                 [&](idx_t a, idx_t b) { return score[a] < score[b]; });
            }
            const idx_t member = worst[j][used[j]++];
            const float* src = data.update.row(train[member]);
            std::copy(src, src + d, c.data() + e * d);
            if (p.spherical) normalize_rows(c.data() + e * d, 1, d);
            size[j] /= 2;
            size[e] = size[j];
        }
        const double secs = std::chrono::duration<double>(clock::now() - t0).count();
        result.iteration_seconds.push_back(secs);
        if (p.verbose)
            std::fprintf(stderr, "k-means iteration %d: objective %.7g, %lld empty clusters re-seeded, %.3f s\n", it,
                         obj, (long long)n_empty, secs);
    }

    // Labels for every point with the final centroids (reuse the last assignment when it is exact).
    std::vector<float> all_score(n);
    if (converged && nt_pts == n) {
        std::copy(lab.begin(), lab.end(), labels);
        std::copy(score.begin(), score.end(), all_score.begin());
    } else {
        std::vector<idx_t> rows;
        if (data.assign_ids || points) {
            rows.resize(n);
            for (idx_t i = 0; i < n; ++i) rows[i] = data.assign_ids ? data.assign_ids[point(i)] : point(i);
        }
        assign_step(rows.empty() ? nullptr : rows.data(), n, labels, all_score.data());
    }
    if (with_inertia) result.inertia = inertia(data, points, n, c.data(), labels, nt);
    std::copy(c.begin(), c.end(), out_centroids);
    return result;
}

std::vector<idx_t> training_sample(idx_t n, const KMeansParams& p) {
    const idx_t k = p.n_clusters;
    if (!(p.max_points_per_centroid > 0 && n > k * p.max_points_per_centroid)) return {};
    Rng rng = Rng::stream(p.seed, 1);
    std::vector<idx_t> train = sample_without_replacement(n, k * p.max_points_per_centroid, rng);
    std::sort(train.begin(), train.end());
    return train;
}

void assign_to(const float* c, idx_t k, idx_t d, bool spherical, MatrixView<const float> x, const idx_t* rows,
               idx_t count, idx_t* labels, int n_threads, float* scores) {
    std::vector<float> bias, tmp;
    if (!spherical) bias = l2_bias(c, k, d);
    if (!scores) {
        tmp.resize(static_cast<std::size_t>(count));
        scores = tmp.data();
    }
    nearest(MatrixView<const float>(c, k, d), x, scores, labels, n_threads, spherical ? nullptr : bias.data(), rows,
            rows ? count : 0);
    // Finite inputs always have a nearest centroid; a score that overflowed to inf or NaN
    // does not, and an unassigned point must never index the centroid arrays.
    for (idx_t i = 0; i < count; ++i)
        MUDG_CHECK(labels[i] >= 0, "k-means assignment found no nearest centroid for point %lld: its "
                   "scores are not finite (inputs too large in magnitude?)", (long long)i);
}

double inertia(const KMeansData& data, const idx_t* points, idx_t n, const float* centroids, const idx_t* labels,
               int n_threads) {
    // sum ||a_i - c||^2, computed directly (the ||a||^2 - 2<a,c> + ||c||^2 shortcut cancels badly
    // far from the origin). Per-chunk partial sums merged in chunk order.
    const idx_t d = data.update.cols;
    constexpr idx_t kChunk = 4096;
    std::vector<double> partial((n + kChunk - 1) / kChunk, 0.0);
    parallel_for(n, kChunk, n_threads, [&](idx_t b, idx_t e, int) {
        double acc = 0;
        for (idx_t i = b; i < e; ++i) {
            const idx_t r = points ? points[i] : i;
            const float* a = data.assign.row(data.assign_ids ? data.assign_ids[r] : r);
            const float* cj = centroids + labels[i] * d;
            for (idx_t t = 0; t < d; ++t) {
                const double diff = static_cast<double>(a[t]) - cj[t];
                acc += diff * diff;
            }
        }
        partial[b / kChunk] = acc;
    });
    double total = 0;
    for (double v : partial) total += v;
    return total;
}

}  // namespace kmeans_detail

}  // namespace mudg_fast
