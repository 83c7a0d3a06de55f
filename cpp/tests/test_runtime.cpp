// Runtime pieces: SIMD level parsing and switching, parallel_for's chunking and error
// propagation, the interrupt hook (what Ctrl-C goes through), the check macros and the RNG.
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "check.hpp"
#include "mudg_fast/ivf.hpp"
#include "mudg_fast/kmeans.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/topk.hpp"

using namespace mudg_fast;
using namespace mudg_test;

namespace {

std::atomic<int> g_polls{0};
std::atomic<int> g_fire_after{0};
/// Reports "interrupted" from the g_fire_after-th poll on.
bool counting_handler() { return ++g_polls >= g_fire_after.load(); }

/// Installs counting_handler for a scope; poll_interrupt is rate-limited (20 ms, per thread), so
/// wait that long first to make the next poll reach the handler.
struct InterruptScope {
    explicit InterruptScope(int fire_after) {
        g_polls = 0;
        g_fire_after = fire_after;
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
        set_interrupt_handler(counting_handler);
    }
    ~InterruptScope() { set_interrupt_handler(nullptr); }
};

}  // namespace

TEST(simd_levels_parse_and_switch) {
    CHECK(parse_simd_level("scalar") == SimdLevel::scalar);
    CHECK(parse_simd_level("avx2") == SimdLevel::avx2);
    CHECK(parse_simd_level("avx2+vnni") == SimdLevel::avx2_vnni);
    CHECK(parse_simd_level("avx512") == SimdLevel::avx512);
    CHECK(parse_simd_level("avx512+vnni") == SimdLevel::avx512_vnni);
    CHECK(parse_simd_level("neon") == SimdLevel::neon);
    CHECK(parse_simd_level("neon+dotprod") == SimdLevel::neon_dotprod);
    CHECK_THROWS(parse_simd_level("sse9"), Error,
                 "unknown SIMD level 'sse9': use one of scalar, avx2, avx2+vnni, avx512, avx512+vnni, neon, "
                 "neon+dotprod");
    CHECK_THROWS(parse_simd_level(nullptr), Error, "unknown SIMD level ''");
    CHECK_THROWS(parse_simd_level("avx512+"), Error, "unknown SIMD level 'avx512+'");
    CHECK_THROWS(parse_simd_level("vnni+avx512"), Error, "unknown SIMD level 'vnni+avx512'");
    for (const SimdLevelInfo& info : simd_levels()) {  // names round-trip
        CHECK(parse_simd_level(info.name) == info.level);
        CHECK_EQ(std::string(simd_level_name(info.level)), std::string(info.name));
    }
    LevelGuard lg;
    const std::vector<SimdLevel> levels = available_levels();
    CHECK(!levels.empty() && levels.front() == SimdLevel::scalar);
    CHECK(levels.back() == detected_simd_level());
    for (SimdLevel level : levels) {
        set_simd_level(level);
        CHECK(simd_level() == level);
        CHECK(kernels().level == level);
        CHECK(&kernels() == &kernels_for(level));
        // a VNNI or dot-product table is its base table with the screening kernel swapped: the same
        // fp32 kernels
        const SimdLevelInfo& info = simd_level_info(level);
        if (info.features & (kSimdVnni | kSimdDotprod)) {
            const Kernels& base = kernels_for(level == SimdLevel::avx2_vnni   ? SimdLevel::avx2
                                              : level == SimdLevel::neon_dotprod ? SimdLevel::neon
                                                                                 : SimdLevel::avx512);
            CHECK(kernels().scores == base.scores && kernels().topk == base.topk && kernels().mr == base.mr);
            CHECK(kernels().i8_scores != base.i8_scores);
            CHECK_EQ(kernels().i8_col_limit, 127);
        }
    }
    for (const SimdLevelInfo& info : simd_levels())
        if (!simd_level_supported(info.level)) {
            const std::string msg = "this CPU does not support SIMD level '" + std::string(info.name) + "'";
            CHECK_THROWS(set_simd_level(info.level), Error, msg.c_str());
        }
}

TEST(simd_caps_allow_the_named_instruction_sets_only) {
    using L = SimdLevel;
    const auto within = [](L l, L cap) { return simd_level_within(l, cap); };
    for (const SimdLevelInfo& info : simd_levels()) {
        CHECK(within(info.level, info.level));   // every level is within itself
        CHECK(within(L::scalar, info.level));    // and scalar within every cap
    }
    CHECK(!within(L::avx2, L::scalar));
    CHECK(within(L::avx2, L::avx512) && within(L::avx2, L::avx2_vnni) && within(L::avx2, L::avx512_vnni));
    CHECK(!within(L::avx2_vnni, L::avx2) && !within(L::avx2_vnni, L::avx512));  // vnni must be named
    CHECK(within(L::avx2_vnni, L::avx512_vnni));
    CHECK(!within(L::avx512, L::avx2) && !within(L::avx512, L::avx2_vnni));
    CHECK(!within(L::avx512_vnni, L::avx512) && !within(L::avx512_vnni, L::avx2_vnni));
    CHECK(within(L::neon, L::neon_dotprod) && !within(L::neon_dotprod, L::neon));  // dotprod must be named
    for (L x86 : {L::avx2, L::avx2_vnni, L::avx512, L::avx512_vnni})  // a cap keeps to its architecture
        for (L arm : {L::neon, L::neon_dotprod}) CHECK(!within(x86, arm) && !within(arm, x86));
}

TEST(parallel_for_covers_each_index_once_in_fixed_chunks) {
    for (int threads : {1, 2, 5})
        for (idx_t n : {0, 1, 9, 1000})
            for (idx_t grain : {0, 1, 7, 64}) {
                std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
                std::mutex mu;
                std::set<std::pair<idx_t, idx_t>> chunks;
                parallel_for(n, grain, threads, [&](idx_t b, idx_t e, int tid) {
                    CHECK(tid >= 0 && tid < std::max(threads, 1));
                    for (idx_t i = b; i < e; ++i) ++hits[i];
                    std::lock_guard<std::mutex> lock(mu);
                    chunks.insert({b, e});
                });
                for (idx_t i = 0; i < n; ++i) CHECK_EQ(hits[i].load(), 1);
                const idx_t g = std::max<idx_t>(grain, 1);
                CHECK_EQ(static_cast<idx_t>(chunks.size()), (n + g - 1) / g);
                for (const auto& [b, e] : chunks) {  // boundaries depend on n and grain only
                    CHECK_EQ(b % g, idx_t{0});
                    CHECK_EQ(e, std::min(n, b + g));
                }
            }
    CHECK(default_threads() >= 1);
    CHECK_EQ(resolve_threads(3), 3);
    CHECK_EQ(resolve_threads(0), default_threads());
    CHECK_EQ(effective_threads(10, 4, 8), 3);
}

TEST(parallel_for_rethrows_the_first_error) {
    for (int threads : {1, 2, 4}) {
        std::atomic<int> ran{0};
        CHECK_THROWS(parallel_for(10000, 1, threads,
                                  [&](idx_t b, idx_t, int) {
                                      ++ran;
                                      if (b == 3) MUDG_CHECK(false, "chunk %lld failed", (long long)b);
                                  }),
                     Error, "chunk 3 failed");
        // Serially, nothing runs after the failing chunk. With threads, chunks already claimed
        // still run (how many depends on timing), so only the serial count is exact.
        if (threads == 1) CHECK_EQ(ran.load(), 4);
        // A non-Error exception (a bug) comes through as itself.
        CHECK_THROWS(parallel_for(100, 10, threads, [](idx_t b, idx_t, int) { if (b == 50) MUDG_ASSERT(b != 50); }),
                     std::logic_error, "internal error (please report): b != 50 at");
    }
}

TEST(interrupt_stops_long_calls) {
    const idx_t n = 3000, d = 16;
    const auto x = uniform(n * d, 1);
    const MatrixView<const float> xv(x.data(), n, d);
    std::vector<float> s(n * 4);
    std::vector<idx_t> ids(n * 4);
    for (int threads : {1, 2}) {
        {
            InterruptScope scope(1);
            CHECK_THROWS(exact_search(xv, xv, 4, MatrixView<float>(s.data(), n, 4), MatrixView<idx_t>(ids.data(), n, 4),
                                      threads),
                         Interrupted, "interrupted");
            CHECK(g_polls.load() >= 1);
        }
        {
            InterruptScope scope(1);
            KMeansParams p;
            p.n_clusters = 50;
            p.n_threads = threads;
            KMeansData data;
            data.assign = xv;
            data.update = xv;
            std::vector<float> c(50 * d);
            std::vector<idx_t> lab(n);
            CHECK_THROWS(kmeans_fit(data, p, MatrixView<float>(c.data(), 50, d), lab.data()), Interrupted, "interrupted");
        }
        {
            IvfIndex ix(d, 4, Codec::f32);
            ix.set_centroids(MatrixView<const float>(x.data(), 4, d));
            InterruptScope scope(1);
            CHECK_THROWS(ix.add(xv, nullptr, threads), Interrupted, "interrupted");
        }
    }
    // A handler that never fires: the call completes, and the handler was consulted.
    {
        InterruptScope scope(1 << 30);
        exact_search(xv, xv, 4, MatrixView<float>(s.data(), n, 4), MatrixView<idx_t>(ids.data(), n, 4), 1);
        CHECK(g_polls.load() >= 1);
    }
    // No handler: nothing interrupts, and results are intact.
    std::vector<float> s2(n * 4);
    std::vector<idx_t> ids2(n * 4);
    exact_search(xv, xv, 4, MatrixView<float>(s2.data(), n, 4), MatrixView<idx_t>(ids2.data(), n, 4), 2);
    CHECK(ids == ids2);
    // Polls from parallel_for workers never reach the handler (only the entering thread may
    // talk to Python).
    {
        InterruptScope scope(1);
        set_worker_thread(true);
        poll_interrupt();
        set_worker_thread(false);
        CHECK_EQ(g_polls.load(), 0);
        CHECK_THROWS(poll_interrupt(), Interrupted, "interrupted");
    }
}

TEST(check_macros_format_their_messages) {
    try {
        MUDG_CHECK(1 + 1 == 3, "expected %d features, got %lld (%s)", 3, (long long)2, "fix it");
        fail(__FILE__, __LINE__, "nothing thrown");
    } catch (const Error& e) {
        CHECK_EQ(std::string(e.what()), std::string("expected 3 features, got 2 (fix it)"));
    }
    try {
        MUDG_CHECK(false, "100% literal");  // no arguments: not a format string
        fail(__FILE__, __LINE__, "nothing thrown");
    } catch (const Error& e) {
        CHECK_EQ(std::string(e.what()), std::string("100% literal"));
    }
    // Very long messages are truncated, not overflowed.
    const std::string big(5000, 'x');
    CHECK_THROWS(MUDG_CHECK(false, "%s", big.c_str()), Error, "xxxx");
    MUDG_CHECK(true, "never formatted %s", static_cast<const char*>(nullptr));
    CHECK_THROWS(MUDG_ASSERT(2 < 1), std::logic_error, "2 < 1 at");
    CHECK_EQ(std::string(Interrupted().what()), std::string("interrupted"));
}

TEST(rng_is_deterministic_and_in_range) {
    Rng a(42), b(42), c(43);
    for (int i = 0; i < 100; ++i) {
        const auto x = a.next();
        CHECK_EQ(x, b.next());
        CHECK(x != c.next());
    }
    Rng r(1);
    for (std::uint64_t n : {std::uint64_t{1}, std::uint64_t{2}, std::uint64_t{7}, std::uint64_t{1} << 40})
        for (int i = 0; i < 200; ++i) CHECK(r.below(n) < n);
    for (int i = 0; i < 200; ++i) {
        const double u = r.uniform();
        CHECK(u >= 0.0 && u < 1.0);
    }
    Rng s1 = Rng::stream(5, 0), s2 = Rng::stream(5, 1), s1b = Rng::stream(5, 0);
    const auto v = s1.next();
    CHECK_EQ(v, s1b.next());
    CHECK(v != s2.next());
}

int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
