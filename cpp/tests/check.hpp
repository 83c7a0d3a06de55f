// A minimal test harness for the C++ unit tests (nothing to download): TEST cases registered at
// static-initialisation time, CHECK macros that throw on failure, and shared test helpers
// (seeded data, exact-size aligned buffers, the brute-force inner-product oracle).
//
// Every test_*.cpp is its own executable (see cpp/CMakeLists.txt) and ends with
//   int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
// `./test_x name_substring` runs only the matching cases.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "mudg_fast/common.hpp"
#include "mudg_fast/rng.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_test {

using mudg_fast::idx_t;

struct Case {
    const char* name;
    void (*fn)();
};

inline std::vector<Case>& registry() {
    static std::vector<Case> cases;
    return cases;
}

struct Register {
    Register(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

/// Thrown by a failed CHECK; caught by run_all().
struct Failure {
    std::string message;
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
    std::ostringstream s;
    s << file << ":" << line << ": " << what;
    throw Failure{s.str()};
}

template <class T>
std::string show(const T& v) {
    std::ostringstream s;
    if constexpr (std::is_floating_point_v<T>) s.precision(9);
    s << v;
    return s.str();
}

/// Bitwise float equality: NaNs with the same payload compare equal, +0 and -0 do not.
inline bool same_bits(float a, float b) {
    std::uint32_t x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    return x == y;
}

inline int run_all(int argc, char** argv) {
    const char* filter = argc > 1 ? argv[1] : nullptr;
    int failed = 0, ran = 0;
    for (const Case& c : registry()) {
        if (filter && !std::strstr(c.name, filter)) continue;
        ++ran;
        try {
            c.fn();
            std::printf("[ ok ] %s\n", c.name);
        } catch (const Failure& f) {
            ++failed;
            std::printf("[FAIL] %s\n       %s\n", c.name, f.message.c_str());
        } catch (const std::exception& e) {
            ++failed;
            std::printf("[FAIL] %s\n       unexpected exception: %s\n", c.name, e.what());
        } catch (...) {
            ++failed;
            std::printf("[FAIL] %s\n       unexpected non-standard exception\n", c.name);
        }
        std::fflush(stdout);
    }
    std::printf("%d of %d test cases passed\n", ran - failed, ran);
    if (ran == 0) {
        std::printf("no test case matched\n");
        return 1;
    }
    return failed ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Data and buffers

/// Uniform floats in [-1, 1).
inline std::vector<float> uniform(idx_t n, std::uint64_t seed) {
    mudg_fast::Rng rng(seed);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = static_cast<float>(2.0 * rng.uniform() - 1.0);
    return v;
}

/// Small integers in [-lim, lim]: products and sums are exact, so many scores tie.
inline std::vector<float> small_ints(idx_t n, int lim, std::uint64_t seed) {
    mudg_fast::Rng rng(seed);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = static_cast<float>(static_cast<int>(rng.below(2 * lim + 1)) - lim);
    return v;
}

/// Rows of x scaled to unit L2 norm (zero rows stay zero).
inline void normalize(std::vector<float>& x, idx_t d) {
    for (std::size_t i = 0; i + d <= x.size(); i += d) {
        double s = 0;
        for (idx_t t = 0; t < d; ++t) s += static_cast<double>(x[i + t]) * x[i + t];
        if (s > 0)
            for (idx_t t = 0; t < d; ++t) x[i + t] = static_cast<float>(x[i + t] / std::sqrt(s));
    }
}

/// A heap buffer of exactly n elements, 64-byte aligned (what the tile kernels require), so
/// that AddressSanitizer reports any read or write past the documented size.
template <class T>
class Aligned {
public:
    explicit Aligned(std::size_t n, T fill = T{}) : n_(n) {
        void* p = nullptr;
        if (posix_memalign(&p, 64, std::max<std::size_t>(1, n * sizeof(T))) != 0) throw std::bad_alloc();
        p_ = static_cast<T*>(p);
        std::fill(p_, p_ + n_, fill);
    }
    Aligned(Aligned&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
    Aligned(const Aligned&) = delete;
    Aligned& operator=(const Aligned&) = delete;
    Aligned& operator=(Aligned&&) = delete;
    ~Aligned() { std::free(p_); }
    T* data() { return p_; }
    const T* data() const { return p_; }
    std::size_t size() const { return n_; }
    T& operator[](std::size_t i) { return p_[i]; }
    const T& operator[](std::size_t i) const { return p_[i]; }

private:
    T* p_ = nullptr;
    std::size_t n_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The oracle: the documented score arithmetic, written as a plain loop.

/// One fma chain over the dimensions in increasing order, from 0 (see simd.hpp): every kernel
/// and every SIMD level must return exactly this value.
inline float ip(const float* a, const float* b, idx_t d) {
    float acc = 0.0f;
    for (idx_t k = 0; k < d; ++k) acc = std::fma(a[k], b[k], acc);
    return acc;
}

/// Exact top-k of each query over rows [0, n) of db, ordered by (score desc, id asc), padded
/// with (-inf, -1). scores/ids are [nq x k].
inline void brute_topk(const float* db, idx_t n, const float* q, idx_t nq, idx_t d, int k,
                       std::vector<float>& scores, std::vector<idx_t>& ids, const float* bias = nullptr) {
    scores.assign(static_cast<std::size_t>(nq * k), -INFINITY);
    ids.assign(static_cast<std::size_t>(nq * k), -1);
    std::vector<float> s(static_cast<std::size_t>(n));
    std::vector<idx_t> order(static_cast<std::size_t>(n));
    for (idx_t i = 0; i < nq; ++i) {
        for (idx_t j = 0; j < n; ++j) {
            s[j] = ip(q + i * d, db + j * d, d);
            if (bias) s[j] = s[j] + bias[j];
        }
        std::iota(order.begin(), order.end(), idx_t{0});
        std::sort(order.begin(), order.end(), [&](idx_t a, idx_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
        for (idx_t j = 0; j < std::min<idx_t>(k, n); ++j) {
            scores[i * k + j] = s[order[j]];
            ids[i * k + j] = order[j];
        }
    }
}

/// Orders (score, id) pairs best first: higher score, then lower id (TopkHeaps' total order).
struct BetterPair {
    template <class P>
    bool operator()(const P& a, const P& b) const {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    }
};

/// Every SIMD level this CPU supports, scalar first.
inline std::vector<mudg_fast::SimdLevel> available_levels() { return mudg_fast::supported_simd_levels(); }

/// Restores the active SIMD level when a test that switches levels ends (or fails).
struct LevelGuard {
    mudg_fast::SimdLevel saved = mudg_fast::simd_level();
    ~LevelGuard() { mudg_fast::set_simd_level(saved); }
};

}  // namespace mudg_test

#define MUDG_TEST_CAT2(a, b) a##b
#define MUDG_TEST_CAT(a, b) MUDG_TEST_CAT2(a, b)

/// Declares a test case: TEST(name) { ... }
#define TEST(name)                                                                       \
    static void name();                                                                  \
    static const ::mudg_test::Register MUDG_TEST_CAT(name, _registered)(#name, &name); \
    static void name()

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) ::mudg_test::fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
    } while (0)

/// a == b, reporting both values on failure.
#define CHECK_EQ(a, b)                                                                                   \
    do {                                                                                                 \
        const auto mudg_a_ = (a); /* copies: (a) may be a reference to a temporary */                \
        const auto mudg_b_ = (b);                                                                        \
        if (!(mudg_a_ == mudg_b_))                                                                       \
            ::mudg_test::fail(__FILE__, __LINE__,                                                        \
                              "CHECK_EQ(" #a ", " #b "): " + ::mudg_test::show(mudg_a_) + " != " +       \
                                  ::mudg_test::show(mudg_b_));                                           \
    } while (0)

/// Bitwise equality of two floats.
#define CHECK_BITS(a, b)                                                                              \
    do {                                                                                              \
        const float mudg_a_ = (a), mudg_b_ = (b);                                                     \
        if (!::mudg_test::same_bits(mudg_a_, mudg_b_))                                                \
            ::mudg_test::fail(__FILE__, __LINE__,                                                     \
                              "CHECK_BITS(" #a ", " #b "): " + ::mudg_test::show(mudg_a_) + " vs " + \
                                  ::mudg_test::show(mudg_b_));                                        \
    } while (0)

/// |a - b| <= tol.
#define CHECK_NEAR(a, b, tol)                                                                            \
    do {                                                                                                 \
        const double mudg_a_ = (a), mudg_b_ = (b);                                                       \
        if (!(std::fabs(mudg_a_ - mudg_b_) <= (tol)))                                                    \
            ::mudg_test::fail(__FILE__, __LINE__,                                                        \
                              "CHECK_NEAR(" #a ", " #b "): " + ::mudg_test::show(mudg_a_) + " vs " +    \
                                  ::mudg_test::show(mudg_b_));                                           \
    } while (0)

/// `expr` throws an exception of type `type` whose what() contains `substr`.
#define CHECK_THROWS(expr, type, substr)                                                                    \
    do {                                                                                                    \
        bool mudg_thrown_ = false;                                                                          \
        try {                                                                                               \
            expr;                                                                                           \
        } catch (const type& e) {                                                                           \
            mudg_thrown_ = true;                                                                            \
            if (!std::strstr(e.what(), substr))                                                             \
                ::mudg_test::fail(__FILE__, __LINE__,                                                       \
                                  std::string("CHECK_THROWS(" #expr "): message '") + e.what() +            \
                                      "' lacks '" + (substr) + "'");                                        \
        }                                                                                                   \
        if (!mudg_thrown_) ::mudg_test::fail(__FILE__, __LINE__, "CHECK_THROWS(" #expr "): nothing thrown"); \
    } while (0)
