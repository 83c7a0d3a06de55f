// Two-level k-means: a coarse k-means, then one k-means per coarse cluster with a share of the
// centroids proportional to its size (the scheme of faiss's contrib/clustering.py, for any k).
//
// Cost: a flat iteration scores every training point against all k centroids; here the coarse
// level scores it against n_coarse and the second level against its own cluster's ~k / n_coarse,
// so with n_coarse = sqrt(k) an iteration costs about 2 sqrt(k) instead of k scores per point.
// The price is that a point is only ever compared with the centroids of its coarse cluster.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <queue>

#include "bucket_work.hpp"
#include "kmeans_internal.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/rng.hpp"

namespace mudg_fast {

std::vector<idx_t> allot_sub_clusters(const std::vector<idx_t>& sizes, idx_t k) {
    idx_t total = 0, nonempty = 0;
    for (idx_t s : sizes) {
        MUDG_CHECK(s >= 0, "cluster sizes must be >= 0, got %lld", (long long)s);
        total += s;
        nonempty += s > 0;
    }
    MUDG_CHECK(k >= nonempty && k <= total,
               "cannot allot %lld centroids to %lld non-empty clusters of %lld points in all (need clusters <= "
               "centroids <= points)",
               (long long)k, (long long)nonempty, (long long)total);
    MUDG_CHECK(total <= std::numeric_limits<idx_t>::max() / std::max<idx_t>(k, 1),
               "too many points (%lld) for exact allotment of %lld centroids", (long long)total, (long long)k);
    const idx_t m = static_cast<idx_t>(sizes.size());
    std::vector<idx_t> a(m, 0);
    // The quota of cluster c is k * n_c / N. key(c) = k * n_c - a_c * N is N times what it still
    // lacks (negative when over-served): exact integers, so the allotment is the same everywhere.
    auto key = [&](idx_t c) { return k * sizes[c] - a[c] * total; };
    idx_t sum = 0;
    for (idx_t c = 0; c < m; ++c) {
        if (!sizes[c]) continue;
        a[c] = std::max<idx_t>(1, k * sizes[c] / total);  // floor of the quota <= n_c since k <= N
        sum += a[c];
    }
    // Ordering of candidates: larger key first, then lower index.
    using Entry = std::pair<idx_t, idx_t>;  // (key, cluster)
    if (sum < k) {  // largest remainders get one more, never beyond their size
        auto less = [](const Entry& x, const Entry& y) { return x.first < y.first || (x.first == y.first && x.second > y.second); };
        std::priority_queue<Entry, std::vector<Entry>, decltype(less)> heap(less);
        for (idx_t c = 0; c < m; ++c)
            if (sizes[c] && a[c] < sizes[c]) heap.push({key(c), c});
        for (; sum < k; ++sum) {
            MUDG_ASSERT(!heap.empty());
            const idx_t c = heap.top().second;
            heap.pop();
            ++a[c];
            if (a[c] < sizes[c]) heap.push({key(c), c});
        }
    } else if (sum > k) {  // the clusters raised to 1 made too many: the most over-served give one back
        auto more = [](const Entry& x, const Entry& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); };
        std::priority_queue<Entry, std::vector<Entry>, decltype(more)> heap(more);
        for (idx_t c = 0; c < m; ++c)
            if (a[c] > 1) heap.push({key(c), c});
        for (; sum > k; --sum) {
            MUDG_ASSERT(!heap.empty());
            const idx_t c = heap.top().second;
            heap.pop();
            --a[c];
            if (a[c] > 1) heap.push({key(c), c});
        }
    }
    return a;
}

namespace kmeans_detail {

namespace {

/// The coarse level trains on at most this many points per coarse cluster: its centroids only
/// partition the data (faiss's two-level clustering uses 2000).
constexpr idx_t kCoarsePointsPerCentroid = 1024;

/// Largest copy of a coarse cluster's rows that LocalRows makes (assignment + update vectors).
constexpr double kGatherBytes = 512.0 * (1 << 20);

/// A coarse cluster's members copied to contiguous rows, in member order, so that its fit streams
/// them instead of gathering scattered rows of the whole set at every iteration (and in k-means++).
/// The same rows in the same order: the fit's sums, scores and result are unchanged. gather() says
/// no above kGatherBytes, where the copy would cost more memory than it saves time.
struct LocalRows {
    std::vector<float> assign, update;
    KMeansData data;

    bool gather(const KMeansData& src, const idx_t* rows, idx_t m, int n_threads) {
        const idx_t d = src.update.cols;
        const bool shared =
            !src.assign_ids && src.assign.data == src.update.data && src.assign.stride == src.update.stride;
        if (static_cast<double>(m) * static_cast<double>(d) * sizeof(float) * (shared ? 1 : 2) > kGatherBytes)
            return false;
        update.resize(static_cast<std::size_t>(m * d));
        if (!shared) assign.resize(static_cast<std::size_t>(m * d));
        parallel_for(m, 256, n_threads, [&](idx_t b, idx_t e, int) {
            for (idx_t j = b; j < e; ++j) {
                const idx_t r = rows[j];
                std::copy(src.update.row(r), src.update.row(r) + d, update.data() + j * d);
                if (shared) continue;
                const float* a = src.assign.row(src.assign_ids ? src.assign_ids[r] : r);
                std::copy(a, a + d, assign.data() + j * d);
            }
        });
        data.update = MatrixView<const float>(update.data(), m, d);
        data.assign = shared ? data.update : MatrixView<const float>(assign.data(), m, d);
        data.assign_ids = nullptr;
        return true;
    }
};

/// Runs body(c, threads) for every item of `items` (ordered by decreasing work): items whose work
/// exceeds a share of the total one after another with all threads, the rest in parallel with one
/// thread each. Every body is deterministic at any thread count, so the schedule cannot change a
/// result.
template <class Body>
void spread_work(const std::vector<idx_t>& items, const std::vector<double>& work, int n_threads, Body&& body) {
    const int nt = resolve_threads(n_threads);
    double total = 0;
    for (idx_t c : items) total += work[c];
    std::vector<idx_t> small;
    for (idx_t c : items) {
        if (nt > 1 && work[c] * 2 * nt > total) {
            body(c, n_threads);
        } else {
            small.push_back(c);
        }
    }
    parallel_for(static_cast<idx_t>(small.size()), 1, n_threads, [&](idx_t b, idx_t e, int) {
        for (idx_t i = b; i < e; ++i) body(small[i], 1);
    });
}

}  // namespace

KMeansResult two_level_fit(const KMeansData& data, const KMeansParams& p, float* centroids, idx_t* labels) {
    using clock = std::chrono::steady_clock;
    const idx_t n = data.update.rows, d = data.update.cols, k = p.n_clusters;
    MUDG_CHECK(p.init != KMeansInit::given,
               "two-level k-means chooses its initial centroids itself: given initial centroids need method='flat'");
    MUDG_CHECK(p.n_coarse >= 0 && p.n_coarse <= k,
               "n_coarse must be in [1, n_clusters=%lld] (0: round(sqrt(n_clusters))), got %lld", (long long)k,
               (long long)p.n_coarse);
    idx_t k1 = p.n_coarse;
    if (k1 == 0) {
        MUDG_CHECK(k >= 4,
                   "n_clusters=%lld is too small for two-level k-means (it needs at least 4: two coarse clusters of "
                   "two); use method='flat'",
                   (long long)k);
        k1 = static_cast<idx_t>(std::llround(std::sqrt(static_cast<double>(k))));
    }
    const int nt = p.n_threads;
    KMeansResult result;
    auto t0 = clock::now();

    // 1. Training points: the flat fit's rule (all, or a seeded sample of k * max_points_per_centroid).
    std::vector<idx_t> train = training_sample(n, p);
    const bool all_points = train.empty();
    const idx_t n_train = all_points ? n : static_cast<idx_t>(train.size());
    const idx_t* train_rows = all_points ? nullptr : train.data();
    auto row = [&](idx_t i) { return all_points ? i : train[i]; };

    // 2. The coarse level: a flat fit of k1 clusters on (a seeded sample of at most
    //    k1 * kCoarsePointsPerCentroid of) the training points, labels for all of them.
    KMeansParams cp = p;
    cp.method = KMeansMethod::flat;
    cp.n_clusters = k1;
    cp.max_points_per_centroid = p.max_points_per_centroid > 0
                                     ? std::min(p.max_points_per_centroid, kCoarsePointsPerCentroid)
                                     : kCoarsePointsPerCentroid;
    cp.seed = Rng::stream(p.seed, 5).next();
    cp.verbose = false;
    std::vector<float> coarse(static_cast<std::size_t>(k1 * d));
    std::vector<idx_t> coarse_lab(static_cast<std::size_t>(n_train));
    lloyd_fit(data, train_rows, n_train, cp, coarse.data(), coarse_lab.data(), /*with_inertia=*/false);
    // Training positions grouped by coarse label (ascending within each cluster).
    const BucketRows by_coarse = invert_pairs(coarse_lab.data(), n_train, 1, k1);
    const std::vector<idx_t>& start = by_coarse.start;
    const std::vector<idx_t>& order = by_coarse.rows;
    std::vector<idx_t> sizes(k1), members(static_cast<std::size_t>(n_train));
    for (idx_t c = 0; c < k1; ++c) sizes[c] = start[c + 1] - start[c];
    for (idx_t i = 0; i < n_train; ++i) members[i] = row(order[i]);  // ascending within each cluster
    const std::vector<idx_t> counts = allot_sub_clusters(sizes, k);
    std::vector<idx_t> first(k1 + 1, 0);  // first centroid of each coarse cluster
    for (idx_t c = 0; c < k1; ++c) first[c + 1] = first[c] + counts[c];
    auto t1 = clock::now();
    result.coarse_seconds = std::chrono::duration<double>(t1 - t0).count();

    // 3. The second level: one flat fit per non-empty coarse cluster, on its own members.
    std::vector<idx_t> items;
    std::vector<double> work(k1, 0.0);
    for (idx_t c = 0; c < k1; ++c) {
        if (!counts[c]) continue;
        items.push_back(c);
        work[c] = static_cast<double>(sizes[c]) * static_cast<double>(counts[c]);
    }
    std::stable_sort(items.begin(), items.end(), [&](idx_t a, idx_t b) { return work[a] > work[b]; });
    std::vector<KMeansResult> sub(k1);
    std::vector<idx_t> sub_lab(static_cast<std::size_t>(n_train));
    spread_work(items, work, nt, [&](idx_t c, int threads) {
        KMeansParams sp = p;
        sp.method = KMeansMethod::flat;
        sp.n_clusters = counts[c];
        sp.seed = sub_cluster_seed(p.seed, c);
        sp.n_threads = threads;
        sp.verbose = false;
        // The fit's own inertia is not needed: the total over all points is computed once below.
        const idx_t* rows = members.data() + start[c];
        LocalRows local;
        const bool gathered = local.gather(data, rows, sizes[c], threads);
        sub[c] = lloyd_fit(gathered ? local.data : data, gathered ? nullptr : rows, sizes[c], sp,
                           centroids + first[c] * d, sub_lab.data() + start[c], /*with_inertia=*/false);
    });
    auto t2 = clock::now();
    result.fine_seconds = std::chrono::duration<double>(t2 - t1).count();

    // 4. Labels: the nearest centroid within the nearest coarse cluster. For the training points
    //    that is what the fits returned; other points (a sampled fit) are assigned the same way,
    //    among the coarse clusters that received centroids.
    if (all_points) {
        for (idx_t c = 0; c < k1; ++c)
            for (idx_t j = start[c]; j < start[c + 1]; ++j) labels[members[j]] = first[c] + sub_lab[j];
    } else {
        std::vector<float> live(static_cast<std::size_t>(items.size() * d));
        std::vector<idx_t> live_id(items.size());
        {
            std::vector<idx_t> sorted(items);
            std::sort(sorted.begin(), sorted.end());
            for (std::size_t j = 0; j < sorted.size(); ++j) {
                live_id[j] = sorted[j];
                std::copy(coarse.data() + sorted[j] * d, coarse.data() + (sorted[j] + 1) * d, live.data() + j * d);
            }
        }
        const idx_t n_live = static_cast<idx_t>(live_id.size());
        std::vector<idx_t> arow;
        if (data.assign_ids) arow.assign(data.assign_ids, data.assign_ids + n);
        std::vector<idx_t> lab(static_cast<std::size_t>(n));
        assign_to(live.data(), n_live, d, p.spherical, data.assign, arow.empty() ? nullptr : arow.data(), n, lab.data(),
                  nt);
        for (idx_t i = 0; i < n; ++i) lab[i] = live_id[lab[i]];
        const BucketRows by_label = invert_pairs(lab.data(), n, 1, k1);
        const std::vector<idx_t>& pstart = by_label.start;
        const std::vector<idx_t>& porder = by_label.rows;
        std::vector<double> pwork(k1, 0.0);
        for (idx_t c : items) pwork[c] = static_cast<double>(pstart[c + 1] - pstart[c]) * static_cast<double>(counts[c]);
        spread_work(items, pwork, nt, [&](idx_t c, int threads) {
            const idx_t m = pstart[c + 1] - pstart[c];
            if (!m) return;
            std::vector<idx_t> rows(static_cast<std::size_t>(m)), got(static_cast<std::size_t>(m));
            for (idx_t j = 0; j < m; ++j) {
                const idx_t i = porder[pstart[c] + j];
                rows[j] = data.assign_ids ? data.assign_ids[i] : i;
            }
            assign_to(centroids + first[c] * d, counts[c], d, p.spherical, data.assign, rows.data(), m, got.data(),
                      threads);
            for (idx_t j = 0; j < m; ++j) labels[porder[pstart[c] + j]] = first[c] + got[j];
        });
    }
    result.label_seconds = std::chrono::duration<double>(clock::now() - t2).count();

    // 5. Summary: per-iteration sums over the per-cluster fits, inertia over all points.
    for (idx_t c : items) result.n_iter = std::max(result.n_iter, sub[c].n_iter);
    result.objective.assign(static_cast<std::size_t>(result.n_iter), 0.0);
    result.iteration_seconds.assign(static_cast<std::size_t>(result.n_iter), 0.0);
    for (idx_t c = 0; c < k1; ++c) {  // cluster order: the sums do not depend on the schedule
        const KMeansResult& r = sub[c];
        if (r.objective.empty()) continue;
        for (int t = 0; t < result.n_iter; ++t) {
            result.objective[t] += r.objective[std::min<std::size_t>(t, r.objective.size() - 1)];
            if (t < static_cast<int>(r.iteration_seconds.size())) result.iteration_seconds[t] += r.iteration_seconds[t];
        }
    }
    result.inertia = inertia(data, nullptr, n, centroids, labels, nt);
    result.coarse_centroids = std::move(coarse);
    result.coarse_sizes = std::move(sizes);
    result.coarse_counts = counts;
    if (p.verbose)
        std::fprintf(stderr,
                     "two-level k-means: %lld coarse clusters of %lld training points (%.3f s), %lld centroids in "
                     "%lld second-level fits (%.3f s, up to %d iterations), labels (%.3f s)\n",
                     (long long)k1, (long long)n_train, result.coarse_seconds, (long long)k, (long long)items.size(),
                     result.fine_seconds, result.n_iter, result.label_seconds);
    return result;
}

}  // namespace kmeans_detail
}  // namespace mudg_fast
