#include "mudg_fast/select.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/rng.hpp"

namespace mudg_fast {

CombinedRetrieval combine_retrievals(const idx_t* ids, const float* scores, idx_t m, idx_t n_classes, idx_t k,
                                     std::uint64_t seed, int n_threads) {
    MUDG_CHECK(m >= 1 && n_classes >= 1 && k >= 1, "retrievals must have shape (m, C, K) with all sizes >= 1");
    struct Entry {
        idx_t id;
        std::int64_t cls;
        std::int64_t weight;  // K - rank
        float score;
    };
    const idx_t total = m * n_classes * k;
    std::vector<Entry> e;
    e.reserve(static_cast<std::size_t>(total));
    for (idx_t a = 0; a < m; ++a)
        for (idx_t c = 0; c < n_classes; ++c)
            for (idx_t r = 0; r < k; ++r) {
                const idx_t off = (a * n_classes + c) * k + r;
                if (ids[off] < 0) continue;
                e.push_back({ids[off], c, k - r, scores ? scores[off] : 0.0f});
            }
    // Sort by (id, class): chunks sorted in parallel, then merged pairwise (a total order, so
    // the result is unique).
    auto less = [](const Entry& x, const Entry& y) { return x.id != y.id ? x.id < y.id : x.cls < y.cls; };
    const idx_t n = static_cast<idx_t>(e.size());
    const idx_t chunk = std::max<idx_t>(1 << 16, (n + 7) / 8);
    parallel_for(n, chunk, n_threads, [&](idx_t b, idx_t end, int) { std::sort(e.begin() + b, e.begin() + end, less); });
    for (idx_t width = chunk; width < n; width *= 2)
        for (idx_t b = 0; b + width < n; b += 2 * width)
            std::inplace_merge(e.begin() + b, e.begin() + b + width, e.begin() + std::min(n, b + 2 * width), less);

    CombinedRetrieval out;
    std::vector<std::int64_t> tied;
    for (idx_t i = 0; i < n;) {
        const idx_t id = e[i].id;
        std::int64_t best = -1;
        float best_score = -std::numeric_limits<float>::infinity();
        tied.clear();
        idx_t j = i;
        while (j < n && e[j].id == id) {  // one run per id, classes ascending
            const std::int64_t cls = e[j].cls;
            std::int64_t v = 0;
            float s = -std::numeric_limits<float>::infinity();
            for (; j < n && e[j].id == id && e[j].cls == cls; ++j) {
                v += e[j].weight;
                s = std::max(s, e[j].score);
            }
            if (v > best) {
                best = v;
                tied.assign(1, cls);
                best_score = s;
            } else if (v == best) {
                tied.push_back(cls);
            }
        }
        std::int64_t label = tied[0];
        if (tied.size() > 1) {
            Rng rng = Rng::stream(seed, static_cast<std::uint64_t>(id));
            label = tied[rng.below(tied.size())];
            // the score reported is that of the chosen class
            best_score = -std::numeric_limits<float>::infinity();
            for (idx_t t = i; t < j; ++t)
                if (e[t].cls == label) best_score = std::max(best_score, e[t].score);
        }
        out.ids.push_back(id);
        out.labels.push_back(label);
        out.votes.push_back(static_cast<double>(best));
        out.best_score.push_back(best_score);
        out.n_tied.push_back(static_cast<std::int64_t>(tied.size()));
        i = j;
    }
    return out;
}

void similarity_to_prototypes(MatrixView<const float> x, const std::int64_t* labels,
                              MatrixView<const float> prototypes, float* out_sim, int n_threads) {
    MUDG_CHECK(x.cols == prototypes.cols, "embeddings have %lld dimensions, prototypes %lld", (long long)x.cols,
               (long long)prototypes.cols);
    for (idx_t i = 0; i < x.rows; ++i)
        MUDG_CHECK(labels[i] >= 0 && labels[i] < prototypes.rows, "label %lld out of range [0, %lld)",
                   (long long)labels[i], (long long)prototypes.rows);
    parallel_for(x.rows, 4096, n_threads, [&](idx_t b, idx_t e, int) {
        for (idx_t i = b; i < e; ++i) {
            const float* a = x.row(i);
            const float* p = prototypes.row(labels[i]);
            double s = 0;
            for (idx_t t = 0; t < x.cols; ++t) s += static_cast<double>(a[t]) * p[t];
            out_sim[i] = static_cast<float>(s);
        }
    });
}

std::vector<idx_t> select_by_clustering(MatrixView<const float> x, const std::int64_t* labels,
                                        const SelectionParams& p) {
    MUDG_CHECK(p.k_per_class >= 1, "k_per_class must be >= 1, got %lld", (long long)p.k_per_class);
    const idx_t n = x.rows, d = x.cols;
    for (idx_t i = 0; i < n; ++i)
        MUDG_CHECK(labels[i] >= 0, "labels must be >= 0, got %lld", (long long)labels[i]);
    // Members grouped by class (ascending row index within a class). Classes are the distinct
    // label values, found by sorting: memory is O(n) whatever the label values are.
    std::vector<idx_t> members(n);
    std::iota(members.begin(), members.end(), idx_t{0});
    std::stable_sort(members.begin(), members.end(), [&](idx_t a, idx_t b) { return labels[a] < labels[b]; });
    std::vector<std::int64_t> classes;  // distinct label values, ascending
    std::vector<idx_t> start;           // members of classes[g]: [start[g], start[g + 1])
    for (idx_t i = 0; i < n; ++i)
        if (i == 0 || labels[members[i]] != labels[members[i - 1]]) {
            classes.push_back(labels[members[i]]);
            start.push_back(i);
        }
    start.push_back(n);
    const auto n_groups = static_cast<std::int64_t>(classes.size());
    std::vector<std::vector<idx_t>> picked(n_groups);
    // Largest classes first: they dominate the time.
    std::vector<std::int64_t> order(n_groups);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::int64_t a, std::int64_t b) { return start[a + 1] - start[a] > start[b + 1] - start[b]; });
    parallel_for(n_groups, 1, p.n_threads, [&](idx_t o0, idx_t o1, int) {
        std::vector<float> xs, cent;
        std::vector<idx_t> lab;
        for (idx_t o = o0; o < o1; ++o) {
            const std::int64_t g = order[o];
            const std::int64_t c = classes[g];  // the label value seeds this class's streams
            const idx_t m = start[g + 1] - start[g];
            const idx_t* mem = members.data() + start[g];
            std::vector<idx_t>& out = picked[g];
            if (m <= p.k_per_class) {
                out.assign(mem, mem + m);
                continue;
            }
            xs.resize(static_cast<std::size_t>(m * d));
            for (idx_t i = 0; i < m; ++i) std::copy(x.row(mem[i]), x.row(mem[i]) + d, xs.data() + i * d);
            KMeansParams kp;
            kp.n_clusters = p.k_per_class;
            kp.max_iter = p.max_iter;
            kp.spherical = p.spherical;
            kp.seed = Rng::stream(p.seed, static_cast<std::uint64_t>(c)).next();
            kp.n_threads = 1;
            KMeansData data;
            data.assign = MatrixView<const float>(xs.data(), m, d);
            data.update = data.assign;
            cent.resize(static_cast<std::size_t>(p.k_per_class * d));
            lab.resize(m);
            kmeans_fit(data, kp, MatrixView<float>(cent.data(), p.k_per_class, d), lab.data());
            // One member per non-empty cluster.
            std::vector<idx_t> best(p.k_per_class, -1), count(p.k_per_class, 0);
            std::vector<double> best_sim(p.k_per_class, -std::numeric_limits<double>::infinity());
            Rng rng = Rng::stream(p.seed ^ 0x5E1EC7ull, static_cast<std::uint64_t>(c));
            for (idx_t i = 0; i < m; ++i) {
                const idx_t j = lab[i];
                ++count[j];
                if (p.strategy == PickStrategy::random) {
                    // reservoir sampling: member i replaces the pick with probability 1/count
                    if (rng.below(static_cast<std::uint64_t>(count[j])) == 0) best[j] = i;
                } else {
                    double s = 0;
                    const float* a = xs.data() + i * d;
                    const float* cj = cent.data() + j * d;
                    if (p.spherical) {
                        for (idx_t t = 0; t < d; ++t) s += static_cast<double>(a[t]) * cj[t];
                    } else {
                        for (idx_t t = 0; t < d; ++t) s -= (static_cast<double>(a[t]) - cj[t]) * (a[t] - cj[t]);
                    }
                    if (s > best_sim[j]) {  // strict: ties keep the lower index
                        best_sim[j] = s;
                        best[j] = i;
                    }
                }
            }
            out.clear();
            for (idx_t j = 0; j < p.k_per_class; ++j)
                if (best[j] >= 0) out.push_back(mem[best[j]]);
            std::sort(out.begin(), out.end());
        }
    });
    std::vector<idx_t> result;
    for (const auto& v : picked) result.insert(result.end(), v.begin(), v.end());
    std::sort(result.begin(), result.end());
    return result;
}

}  // namespace mudg_fast
