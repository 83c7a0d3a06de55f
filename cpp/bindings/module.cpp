// PYBIND11_MODULE(_core): version, SIMD control, exception mapping, interrupt hook.
#include <cmath>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "common.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/simd.hpp"
#include "mudg_fast/screen.hpp"

#ifndef MUDG_VERSION
#define MUDG_VERSION "0.0.0"
#endif

namespace mudg_fast::py_bind {

namespace {

/// Lets long loops notice Ctrl-C: briefly takes the GIL and runs Python's signal handlers.
/// On KeyboardInterrupt the Python error stays set, and the Interrupted translator keeps it.
bool python_interrupt_requested() {
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
}

/// The largest |x| of a float16/32/64 array, or +inf when it holds NaN or inf. One parallel pass
/// over the bit patterns: with the sign bit cleared, IEEE floats order like unsigned integers, and
/// every pattern at or above the exponent-all-ones mask is inf or NaN. The result does not depend
/// on the thread count (max is exact).
double max_abs(const py::buffer& buf) {
    const py::buffer_info info = buf.request();
    MUDG_CHECK(info.format == py::format_descriptor<float>::format() || info.format == "e" ||
                   info.format == py::format_descriptor<double>::format(),
               "max_abs() takes float16, float32 or float64 arrays");
    bool contiguous = true;
    for (py::ssize_t i = info.ndim - 1, step = info.itemsize; i >= 0; --i) {
        if (info.shape[i] > 1 && info.strides[i] != step) contiguous = false;
        step *= info.shape[i];
    }
    MUDG_CHECK(contiguous, "max_abs() takes C-contiguous arrays");
    const idx_t n = static_cast<idx_t>(info.size);
    py::gil_scoped_release nogil;
    auto scan = [&](auto tag, std::uint64_t abs_mask, std::uint64_t inf_bits) -> std::uint64_t {
        using U = decltype(tag);
        const U* p = static_cast<const U*>(info.ptr);
        constexpr idx_t kChunk = idx_t{1} << 20;
        std::vector<std::uint64_t> part(static_cast<std::size_t>((n + kChunk - 1) / kChunk), 0);
        std::atomic<bool> bad{false};
        parallel_for(n, kChunk, 0, [&](idx_t b, idx_t e, int) {
            if (bad.load(std::memory_order_relaxed)) return;
            U m = 0;
            for (idx_t i = b; i < e; ++i) m = std::max<U>(m, static_cast<U>(p[i] & abs_mask));
            part[static_cast<std::size_t>(b / kChunk)] = m;
            if (m >= inf_bits) bad.store(true);
        });
        if (bad.load()) return inf_bits;
        std::uint64_t m = 0;
        for (std::uint64_t v : part) m = std::max(m, v);
        return m;
    };
    if (info.itemsize == 4) {
        const std::uint64_t m = scan(std::uint32_t{}, 0x7FFFFFFFu, 0x7F800000u);
        float f;
        const auto bits = static_cast<std::uint32_t>(m);
        std::memcpy(&f, &bits, sizeof f);
        return f;
    }
    if (info.itemsize == 2) {
        const std::uint64_t m = scan(std::uint16_t{}, 0x7FFFu, 0x7C00u);
        if (m >= 0x7C00u) return INFINITY;
        const int exponent = static_cast<int>(m >> 10), mantissa = static_cast<int>(m & 0x3FF);
        return exponent ? std::ldexp(1.0 + mantissa / 1024.0, exponent - 15) : std::ldexp(mantissa, -24);
    }
    const std::uint64_t m = scan(std::uint64_t{}, 0x7FFFFFFFFFFFFFFFull, 0x7FF0000000000000ull);
    double f;
    std::memcpy(&f, &m, sizeof f);
    return f;
}

/// True when no element is NaN or +-inf.
bool all_finite(const py::buffer& buf) { return std::isfinite(max_abs(buf)); }

}  // namespace

}  // namespace mudg_fast::py_bind

PYBIND11_MODULE(_core, m) {
    namespace py = pybind11;
    using namespace mudg_fast;
    using namespace mudg_fast::py_bind;
    m.doc() = "mudg_fast native core (private; use the mudg_fast package)";
    m.attr("__version__") = MUDG_VERSION;

    py::register_exception<Error>(m, "Error", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Interrupted&) {
            if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        }
    });
    set_interrupt_handler(python_interrupt_requested);

    m.def("simd_level", [] { return std::string(simd_level_name(simd_level())); },
          "The active SIMD level: 'scalar', 'avx2', 'avx2+vnni', 'avx512', 'avx512+vnni', 'neon' or "
          "'neon+dotprod'.");
    m.def("detected_simd_level", [] { return std::string(simd_level_name(detected_simd_level())); },
          "The best SIMD level this CPU supports.");
    m.def("available_simd_levels", [] {
              std::vector<std::string> names;
              for (SimdLevel level : supported_simd_levels()) names.emplace_back(simd_level_name(level));
              return names;
          },
          "Every SIMD level this CPU supports, scalar first (the order of preference).");
    m.def("simd_levels", [] {
              std::vector<std::string> names;
              for (const SimdLevelInfo& info : simd_levels()) names.emplace_back(info.name);
              return names;
          },
          "Every SIMD level this build knows, whether or not the CPU has it.");
    m.def("set_simd_level", [](const std::string& name) { set_simd_level(parse_simd_level(name.c_str())); },
          py::arg("level"), "Switch the active SIMD level (tests and benchmarks).");
    m.def("default_threads", &default_threads, "Threads used when num_threads is None.");
    // True only in the SIMDe test build (.ci/simde), whose x86 kernels are portable emulations.
    m.attr("simd_emulated") = simd_emulated();
    m.def("set_screening", &set_screening, py::arg("mode"),
          "int8 screening of exact searches: -1 the SIMD level's default, 0 off, 1 on (tests).");
    m.def("screening_mode", &screening_mode);
    m.def("all_finite", &all_finite, py::arg("array"), "True when the array holds no NaN or inf.");
    m.def("magnitude_limit", &magnitude_limit, py::arg("d"),
          "Largest |value| a d-dimensional input may hold (its float32 scores cannot overflow).");
    m.attr("max_dim") = kMaxDim;
    m.attr("max_nlist") = kMaxNlist;
    m.def("max_abs", &max_abs, py::arg("array"),
          "Largest absolute value of a C-contiguous float array; inf when it holds NaN or inf.");
#ifdef MUDG_WITH_OPENMP
    m.attr("openmp") = true;
#else
    m.attr("openmp") = false;
#endif

    bind_search(m);
    bind_kmeans(m);
    bind_index(m);
    bind_select(m);
}
