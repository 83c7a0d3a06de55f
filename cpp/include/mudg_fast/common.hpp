// Basic types shared by the whole core: idx_t, MatrixView, Error and the two check macros.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace mudg_fast {

using idx_t = std::int64_t;

/// Row-major, non-owning view. `stride` counts elements and is >= cols.
template <class T>
struct MatrixView {
    T* data = nullptr;
    idx_t rows = 0, cols = 0, stride = 0;

    MatrixView() = default;
    MatrixView(T* d, idx_t r, idx_t c) : data(d), rows(r), cols(c), stride(c) {}
    MatrixView(T* d, idx_t r, idx_t c, idx_t s) : data(d), rows(r), cols(c), stride(s) {}
    template <class U>
    MatrixView(const MatrixView<U>& o) : data(o.data), rows(o.rows), cols(o.cols), stride(o.stride) {}

    T* row(idx_t i) const noexcept { return data + i * stride; }
    bool empty() const noexcept { return rows == 0 || cols == 0; }
};

/// Largest vector dimension the index accepts (CLIP and most embedding models stay below 4096).
inline constexpr idx_t kMaxDim = idx_t{1} << 20;
/// Largest number of inverted lists (faiss-style indexes use up to a few million).
inline constexpr idx_t kMaxNlist = idx_t{1} << 24;

/// Largest |value| a d-dimensional input may hold: at this bound every inner product of two
/// inputs (<= d * limit^2) and every squared distance (<= 4 d limit^2) stays below FLT_MAX.
/// Python reads it through _core.magnitude_limit.
inline double magnitude_limit(idx_t d) {
    return std::sqrt(3.4028234663852886e38 / (4.0 * static_cast<double>(d < 1 ? 1 : d)));
}

/// A wrong call from a user: bad shapes, bad parameters, corrupt files. Maps to ValueError.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Raised inside long loops when the user pressed Ctrl-C (maps to KeyboardInterrupt).
class Interrupted : public std::exception {
public:
    const char* what() const noexcept override { return "interrupted"; }
};

namespace detail {
template <class... Args>
[[noreturn]] void throw_error(const char* fmt, Args... args) {
    char buf[1024];
    if constexpr (sizeof...(Args) == 0) {
        std::snprintf(buf, sizeof(buf), "%s", fmt);
    } else {
        std::snprintf(buf, sizeof(buf), fmt, args...);
    }
    throw Error(buf);
}
[[noreturn]] void assertion_failed(const char* expr, const char* file, int line);
}  // namespace detail

}  // namespace mudg_fast

/// A user error: states what was expected, what arrived and how to fix it.
#define MUDG_CHECK(cond, ...)                                 \
    do {                                                      \
        if (!(cond)) ::mudg_fast::detail::throw_error(__VA_ARGS__); \
    } while (0)

/// A broken invariant: our bug if it fires.
#define MUDG_ASSERT(cond)                                                          \
    do {                                                                           \
        if (!(cond)) ::mudg_fast::detail::assertion_failed(#cond, __FILE__, __LINE__); \
    } while (0)
