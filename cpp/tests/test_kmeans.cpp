// k-means and paired k-means invariants: labels are the nearest centroids, the objective never
// decreases, the inertia is what it says, centroids are the (normalised) means of their members
// at a fixed point, results are bit-identical across thread counts and SIMD levels, and bad
// parameters throw Error.
#include "check.hpp"
#include "mudg_fast/kmeans.hpp"
#include "mudg_fast/topk.hpp"

using namespace mudg_fast;
using namespace mudg_test;

namespace {

/// Blobs around `centers` random unit directions (spread 0.3), rows normalised when `unit`.
std::vector<float> blobs(idx_t n, idx_t d, idx_t centers, std::uint64_t seed, bool unit = true) {
    const auto c = uniform(centers * d, seed);
    auto noise = uniform(n * d, seed + 1);
    std::vector<float> x(n * d);
    for (idx_t i = 0; i < n; ++i)
        for (idx_t t = 0; t < d; ++t) x[i * d + t] = 3.0f * c[(i % centers) * d + t] + 0.3f * noise[i * d + t];
    if (unit) normalize(x, d);
    return x;
}

/// argmax_j <x_i, c_j> (+ bias), lowest j on ties, with the oracle's fma chain.
std::vector<idx_t> nearest_oracle(const float* x, idx_t n, const float* c, idx_t k, idx_t d, const float* bias) {
    std::vector<idx_t> lab(n);
    for (idx_t i = 0; i < n; ++i) {
        float best = -INFINITY;
        idx_t bj = -1;
        for (idx_t j = 0; j < k; ++j) {
            float s = ip(x + i * d, c + j * d, d);
            if (bias) s = s + bias[j];
            if (bj < 0 || s > best) {
                best = s;
                bj = j;
            }
        }
        lab[i] = bj;
    }
    return lab;
}

std::vector<float> l2_bias(const std::vector<float>& c, idx_t k, idx_t d) {
    std::vector<float> b(k);
    for (idx_t j = 0; j < k; ++j) {
        double s = 0;
        for (idx_t t = 0; t < d; ++t) s += static_cast<double>(c[j * d + t]) * c[j * d + t];
        b[j] = static_cast<float>(-0.5 * s);
    }
    return b;
}

struct Fit {
    std::vector<float> centroids;
    std::vector<idx_t> labels;
    KMeansResult result;
};

Fit fit(const KMeansData& data, const KMeansParams& p, const std::vector<float>* init = nullptr) {
    Fit f;
    f.centroids.assign(static_cast<std::size_t>(p.n_clusters * data.update.cols), 0.0f);
    if (init) f.centroids = *init;
    f.labels.assign(static_cast<std::size_t>(data.update.rows), -7);
    f.result = kmeans_fit(data, p, MatrixView<float>(f.centroids.data(), p.n_clusters, data.update.cols), f.labels.data());
    return f;
}

KMeansData plain(const std::vector<float>& x, idx_t n, idx_t d) {
    KMeansData data;
    data.assign = MatrixView<const float>(x.data(), n, d);
    data.update = data.assign;
    return data;
}

double inertia_of(const float* a, const idx_t* assign_ids, idx_t n, const std::vector<float>& c,
                  const std::vector<idx_t>& labels, idx_t d) {
    double s = 0;
    for (idx_t i = 0; i < n; ++i) {
        const float* ai = a + (assign_ids ? assign_ids[i] : i) * d;
        for (idx_t t = 0; t < d; ++t) {
            const double diff = static_cast<double>(ai[t]) - c[labels[i] * d + t];
            s += diff * diff;
        }
    }
    return s;
}

void check_same(const Fit& a, const Fit& b) {
    CHECK(a.labels == b.labels);
    CHECK_EQ(a.centroids.size(), b.centroids.size());
    for (std::size_t i = 0; i < a.centroids.size(); ++i) CHECK_BITS(a.centroids[i], b.centroids[i]);
    CHECK_EQ(a.result.inertia, b.result.inertia);
    CHECK(a.result.objective == b.result.objective);
    CHECK_EQ(a.result.n_iter, b.result.n_iter);
}

}  // namespace

TEST(spherical_kmeans_invariants) {
    for (idx_t d : {1, 3, 17, 33})
        for (KMeansInit init : {KMeansInit::kmeans_pp, KMeansInit::random}) {
            const idx_t n = 500, k = 12;
            const auto x = blobs(n, d, 8, static_cast<std::uint64_t>(d));
            KMeansParams p;
            p.n_clusters = k;
            p.max_iter = 30;
            p.init = init;
            p.seed = 3;
            const Fit f = fit(plain(x, n, d), p);
            // labels: the nearest of the returned centroids
            CHECK(f.labels == nearest_oracle(x.data(), n, f.centroids.data(), k, d, nullptr));
            // centroids: unit norm
            for (idx_t j = 0; j < k; ++j) {
                double s = 0;
                for (idx_t t = 0; t < d; ++t) s += static_cast<double>(f.centroids[j * d + t]) * f.centroids[j * d + t];
                CHECK_NEAR(s, 1.0, 1e-5);
            }
            // objective: one value per iteration, never decreasing beyond float rounding
            const auto& obj = f.result.objective;
            CHECK_EQ(static_cast<int>(obj.size()), f.result.n_iter);
            CHECK_EQ(f.result.iteration_seconds.size(), obj.size());
            CHECK(f.result.n_iter >= 1 && f.result.n_iter <= p.max_iter);
            for (std::size_t i = 1; i < obj.size(); ++i) CHECK(obj[i] >= obj[i - 1] - 1e-6 * std::fabs(obj[i - 1]));
            // inertia: sum of squared distances to the assigned centroid
            CHECK_NEAR(f.result.inertia, inertia_of(x.data(), nullptr, n, f.centroids, f.labels, d),
                       1e-9 * (1 + f.result.inertia));
            // converged: each centroid is its members' normalised mean
            if (f.result.n_iter < p.max_iter) {
                for (idx_t j = 0; j < k; ++j) {
                    std::vector<double> m(d, 0.0);
                    idx_t cnt = 0;
                    for (idx_t i = 0; i < n; ++i)
                        if (f.labels[i] == j) {
                            ++cnt;
                            for (idx_t t = 0; t < d; ++t) m[t] += x[i * d + t];
                        }
                    if (!cnt) continue;
                    double s = 0;
                    for (double v : m) s += v * v;
                    if (s <= 0) continue;
                    for (idx_t t = 0; t < d; ++t) CHECK_NEAR(f.centroids[j * d + t], m[t] / std::sqrt(s), 1e-5);
                }
            }
        }
}

TEST(l2_kmeans_labels_and_inertia) {
    const idx_t n = 400, d = 5, k = 6;
    const auto x = blobs(n, d, 6, 11, /*unit=*/false);
    KMeansParams p;
    p.n_clusters = k;
    p.spherical = false;
    p.seed = 1;
    const Fit f = fit(plain(x, n, d), p);
    const auto bias = l2_bias(f.centroids, k, d);
    CHECK(f.labels == nearest_oracle(x.data(), n, f.centroids.data(), k, d, bias.data()));
    CHECK_NEAR(f.result.inertia, inertia_of(x.data(), nullptr, n, f.centroids, f.labels, d), 1e-9 * f.result.inertia);
    // Well separated blobs: each point is at least as close to its centroid as to any other.
    for (idx_t i = 0; i < n; ++i) {
        auto dist = [&](idx_t j) {
            double s = 0;
            for (idx_t t = 0; t < d; ++t) s += std::pow(static_cast<double>(x[i * d + t]) - f.centroids[j * d + t], 2);
            return s;
        };
        for (idx_t j = 0; j < k; ++j) CHECK(dist(f.labels[i]) <= dist(j) * (1 + 1e-5) + 1e-6);
    }
    // kmeans_assign agrees with the oracle and reports the plain inner product.
    std::vector<idx_t> lab(n);
    std::vector<float> sc(n);
    kmeans_assign(MatrixView<const float>(x.data(), n, d), MatrixView<const float>(f.centroids.data(), k, d), false,
                  lab.data(), sc.data(), 2);
    CHECK(lab == f.labels);
    for (idx_t i = 0; i < n; ++i) CHECK_NEAR(sc[i], ip(x.data() + i * d, f.centroids.data() + lab[i] * d, d), 1e-5);
    kmeans_assign(MatrixView<const float>(x.data(), n, d), MatrixView<const float>(f.centroids.data(), k, d), true,
                  lab.data(), nullptr, 1);
    CHECK(lab == nearest_oracle(x.data(), n, f.centroids.data(), k, d, nullptr));
}

TEST(identical_across_threads_and_simd_levels) {
    LevelGuard lg;
    const idx_t n = 3000, d = 33, k = 20;
    const auto x = blobs(n, d, 15, 5);
    for (bool spherical : {true, false}) {
        KMeansParams p;
        p.n_clusters = k;
        p.spherical = spherical;
        p.seed = 9;
        p.max_points_per_centroid = 100;  // train on a seeded sample of 2000 points
        set_simd_level(SimdLevel::scalar);
        p.n_threads = 1;
        const Fit ref = fit(plain(x, n, d), p);
        for (SimdLevel level : available_levels())
            for (int threads : {1, 2, 3}) {
                set_simd_level(level);
                p.n_threads = threads;
                check_same(ref, fit(plain(x, n, d), p));
            }
        // A different seed gives a different start.
        p.seed = 10;
        CHECK(fit(plain(x, n, d), p).result.objective.front() != ref.result.objective.front());
    }
}

TEST(paired_kmeans_assigns_with_images_and_updates_with_captions) {
    // m images, n captions; caption i is paired with image pair[i]. Points are assigned by their
    // image and move the centroids with their caption.
    // Captions are noisy copies of their images, as paired embeddings are.
    const idx_t m = 300, n = 450, d = 17, k = 7;
    const auto images = blobs(m, d, 7, 21), noise = uniform(n * d, 23);
    std::vector<idx_t> pair(n);
    Rng rng(4);
    for (auto& v : pair) v = static_cast<idx_t>(rng.below(m));
    std::vector<float> captions(n * d);
    for (idx_t i = 0; i < n; ++i)
        for (idx_t t = 0; t < d; ++t) captions[i * d + t] = images[pair[i] * d + t] + 0.2f * noise[i * d + t];
    normalize(captions, d);
    KMeansData data;
    data.assign = MatrixView<const float>(images.data(), m, d);
    data.assign_ids = pair.data();
    data.update = MatrixView<const float>(captions.data(), n, d);
    KMeansParams p;
    p.n_clusters = k;
    p.max_iter = 100;
    p.seed = 2;
    const Fit f = fit(data, p);
    std::vector<float> paired(n * d);
    for (idx_t i = 0; i < n; ++i) std::copy(&images[pair[i] * d], &images[pair[i] * d] + d, &paired[i * d]);
    CHECK(f.labels == nearest_oracle(paired.data(), n, f.centroids.data(), k, d, nullptr));
    CHECK_NEAR(f.result.inertia, inertia_of(images.data(), pair.data(), n, f.centroids, f.labels, d),
               1e-9 * f.result.inertia);
    CHECK(f.result.n_iter < p.max_iter);  // converged: centroids are normalised caption means
    for (idx_t j = 0; j < k; ++j) {
        std::vector<double> mean(d, 0.0);
        for (idx_t i = 0; i < n; ++i)
            if (f.labels[i] == j)
                for (idx_t t = 0; t < d; ++t) mean[t] += captions[i * d + t];
        double s = 0;
        for (double v : mean) s += v * v;
        if (s <= 0) continue;
        for (idx_t t = 0; t < d; ++t) CHECK_NEAR(f.centroids[j * d + t], mean[t] / std::sqrt(s), 1e-5);
    }
    // One Lloyd step from given centroids: assignment by image, update by caption.
    std::vector<float> init = uniform(k * d, 25);
    normalize(init, d);
    const auto lab0 = nearest_oracle(paired.data(), n, init.data(), k, d, nullptr);
    KMeansParams p1 = p;
    p1.init = KMeansInit::given;
    p1.max_iter = 1;
    const Fit one = fit(data, p1, &init);
    for (idx_t j = 0; j < k; ++j) {
        std::vector<double> mean(d, 0.0);
        for (idx_t i = 0; i < n; ++i)
            if (lab0[i] == j)
                for (idx_t t = 0; t < d; ++t) mean[t] += captions[i * d + t];
        double s = 0;
        for (double v : mean) s += v * v;
        for (idx_t t = 0; t < d; ++t)  // an empty cluster is re-seeded: skip it
            if (s > 0) CHECK_NEAR(one.centroids[j * d + t], mean[t] / std::sqrt(s), 1e-5);
    }
    CHECK(one.labels == nearest_oracle(paired.data(), n, one.centroids.data(), k, d, nullptr));
    // Threads do not matter here either.
    p.n_threads = 1;
    const Fit a = fit(data, p);
    p.n_threads = 2;
    check_same(a, fit(data, p));
}

TEST(given_init_and_empty_cluster_reseeding) {
    const idx_t n = 200, d = 8, k = 5;
    const auto x = blobs(n, d, 5, 31);
    KMeansParams p;
    p.n_clusters = k;
    p.init = KMeansInit::given;
    // max_iter = 0: the given centroids (normalised) and their labels come back.
    std::vector<float> init = uniform(k * d, 32);
    p.max_iter = 0;
    Fit f = fit(plain(x, n, d), p, &init);
    auto unit = init;
    normalize(unit, d);
    for (std::size_t i = 0; i < unit.size(); ++i) CHECK_BITS(f.centroids[i], unit[i]);
    CHECK(f.labels == nearest_oracle(x.data(), n, unit.data(), k, d, nullptr));
    CHECK_EQ(f.result.n_iter, 0);
    // Every centroid identical: all points go to centroid 0, the others are re-seeded from its
    // worst-fitting members, and the result has no empty cluster.
    std::vector<float> same(k * d);
    for (idx_t j = 0; j < k; ++j) std::copy(x.begin(), x.begin() + d, same.begin() + j * d);
    p.max_iter = 20;
    f = fit(plain(x, n, d), p, &same);
    std::vector<idx_t> count(k, 0);
    for (idx_t l : f.labels) {
        CHECK(l >= 0 && l < k);
        ++count[l];
    }
    for (idx_t j = 0; j < k; ++j) CHECK(count[j] > 0);
    // k == n with distinct points: every point its own cluster, L2 inertia 0.
    p.init = KMeansInit::kmeans_pp;
    p.spherical = false;
    p.n_clusters = 10;
    const auto few = uniform(10 * 3, 33);
    f = fit(plain(few, 10, 3), p);
    CHECK_EQ(f.result.inertia, 0.0);
}

TEST(kmeans_pp_seeding) {
    const idx_t m = 50, d = 4;
    const auto x = uniform(m * d, 41);
    for (idx_t k : {1, 10, 50}) {
        std::vector<idx_t> chosen(k, -1), again(k, -1);
        kmeans_pp_seed(MatrixView<const float>(x.data(), m, d), k, 7, chosen.data(), 2);
        kmeans_pp_seed(MatrixView<const float>(x.data(), m, d), k, 7, again.data(), 1);
        CHECK(chosen == again);
        auto sorted = chosen;
        std::sort(sorted.begin(), sorted.end());
        CHECK(std::unique(sorted.begin(), sorted.end()) == sorted.end());  // distinct points: no repeats
        for (idx_t c : chosen) CHECK(c >= 0 && c < m);
    }
    // All points equal: still k valid indices.
    std::vector<float> same(m * d, 0.5f);
    std::vector<idx_t> chosen(5, -1);
    kmeans_pp_seed(MatrixView<const float>(same.data(), m, d), 5, 1, chosen.data());
    for (idx_t c : chosen) CHECK(c >= 0 && c < m);
    CHECK_THROWS(kmeans_pp_seed(MatrixView<const float>(x.data(), m, d), m + 1, 1, chosen.data()), Error,
                 "k-means++ needs 1 <= k <= 50 points, got k=51");
    CHECK_THROWS(kmeans_pp_seed(MatrixView<const float>(x.data(), m, d), 0, 1, chosen.data()), Error, "got k=0");
}

TEST(bad_parameters_throw_error) {
    const idx_t n = 20, d = 3;
    const auto x = uniform(n * d, 51);
    std::vector<float> c(30 * d);
    std::vector<idx_t> lab(n);
    KMeansParams p;
    auto run = [&](const KMeansData& data, idx_t k) {
        p.n_clusters = k;
        kmeans_fit(data, p, MatrixView<float>(c.data(), k, d), lab.data());
    };
    CHECK_THROWS(run(plain(x, n, d), 0), Error, "n_clusters must be >= 1, got 0");
    CHECK_THROWS(run(plain(x, n, d), 21), Error, "n_clusters=21 is larger than the number of points (20)");
    KMeansData bad = plain(x, n, d);
    bad.assign = MatrixView<const float>(x.data(), n, 2);
    CHECK_THROWS(run(bad, 3), Error, "assignment vectors have 2 dimensions, update vectors 3");
    bad = plain(x, n, d);
    bad.assign = MatrixView<const float>(x.data(), n - 1, d);
    CHECK_THROWS(run(bad, 3), Error, "differ in size");
    std::vector<idx_t> pair(n, 0);
    pair[7] = n;  // out of range
    bad = plain(x, n, d);
    bad.assign_ids = pair.data();
    CHECK_THROWS(run(bad, 3), Error, "pair index 20 out of range [0, 20)");
    pair[7] = -1;
    CHECK_THROWS(run(bad, 3), Error, "pair index -1 out of range");
    p.max_iter = -1;
    CHECK_THROWS(run(plain(x, n, d), 3), Error, "max_iter must be >= 0, got -1");
    p.max_iter = 5;
    p.n_clusters = 3;
    CHECK_THROWS(kmeans_fit(plain(x, n, d), p, MatrixView<float>(c.data(), 4, d), lab.data()), Error,
                 "centroid buffer has the wrong shape");
}

TEST(two_level_with_one_coarse_cluster_is_flat) {
    const idx_t n = 3000, d = 20, k = 40;
    const auto x = blobs(n, d, 25, 61);
    for (idx_t mppc : {idx_t{0}, idx_t{30}}) {
        KMeansParams p;
        p.n_clusters = k;
        p.max_iter = 6;
        p.seed = 5;
        p.max_points_per_centroid = mppc;
        const Fit flat = fit(plain(x, n, d), p);
        p.method = KMeansMethod::two_level;
        p.n_coarse = 1;
        const Fit two = fit(plain(x, n, d), p);
        check_same(flat, two);
        CHECK(two.result.coarse_counts == std::vector<idx_t>{k});
    }
}

TEST(two_level_structure_and_determinism) {
    const idx_t n = 6000, d = 24, k = 90;
    const auto x = blobs(n, d, 70, 62);
    KMeansParams p;
    p.n_clusters = k;
    p.max_iter = 5;
    p.method = KMeansMethod::two_level;
    p.n_threads = 1;
    const Fit ref = fit(plain(x, n, d), p);
    const auto& counts = ref.result.coarse_counts;
    CHECK_EQ(static_cast<idx_t>(counts.size()), idx_t{9});  // round(sqrt(90))
    CHECK_EQ(std::accumulate(counts.begin(), counts.end(), idx_t{0}), k);
    CHECK(counts == allot_sub_clusters(ref.result.coarse_sizes, k));
    for (std::size_t c = 0; c < counts.size(); ++c) CHECK((counts[c] >= 1) == (ref.result.coarse_sizes[c] > 0));
    CHECK_NEAR(ref.result.inertia, inertia_of(x.data(), nullptr, n, ref.centroids, ref.labels, d), 1e-6 * ref.result.inertia);
    for (int t : {2, 3}) {
        p.n_threads = t;
        check_same(ref, fit(plain(x, n, d), p));
    }
    p.n_threads = 2;
    for (SimdLevel level : supported_simd_levels()) {
        const SimdLevel before = simd_level();
        set_simd_level(level);
        const Fit f = fit(plain(x, n, d), p);
        set_simd_level(before);
        check_same(ref, f);
    }
    p.method = KMeansMethod::automatic;  // below kTwoLevelMinClusters: flat
    CHECK(fit(plain(x, n, d), p).result.coarse_counts.empty());
}

TEST(allotment_edge_cases) {
    CHECK(allot_sub_clusters({10, 30, 60}, 10) == (std::vector<idx_t>{1, 3, 6}));
    CHECK(allot_sub_clusters({0, 7, 0}, 7) == (std::vector<idx_t>{0, 7, 0}));
    CHECK(allot_sub_clusters({1, 1, 1, 97}, 4) == (std::vector<idx_t>{1, 1, 1, 1}));
    CHECK(allot_sub_clusters({1, 1, 1, 97}, 100) == (std::vector<idx_t>{1, 1, 1, 97}));
    CHECK_THROWS(allot_sub_clusters({2, 2, 2}, 2), Error, "cannot allot 2 centroids to 3 non-empty clusters");
    CHECK_THROWS(allot_sub_clusters({2, -1}, 1), Error, "cluster sizes must be >= 0");
}

TEST(two_level_bad_parameters) {
    const idx_t n = 50, d = 4;
    const auto x = uniform(n * d, 63);
    std::vector<float> c(20 * d);
    std::vector<idx_t> lab(n);
    KMeansParams p;
    p.method = KMeansMethod::two_level;
    auto run = [&](idx_t k) { kmeans_fit(plain(x, n, d), p, MatrixView<float>(c.data(), k, d), lab.data()); };
    p.n_clusters = 3;
    CHECK_THROWS(run(3), Error, "n_clusters=3 is too small for two-level k-means");
    p.n_clusters = 8;
    p.n_coarse = 9;
    CHECK_THROWS(run(8), Error, "n_coarse must be in [1, n_clusters=8]");
    p.n_coarse = 0;
    p.init = KMeansInit::given;
    CHECK_THROWS(run(8), Error, "need method='flat'");
}

int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
