// PYBIND11_MODULE(_core): version, SIMD control, exception mapping, interrupt hook.
#include <cmath>
#include <cstring>

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

/// True when no element is NaN or +-inf (bit test on the exponent; parallel, no copies).
bool all_finite(const py::buffer& buf) {
    const py::buffer_info info = buf.request();
    MUDG_CHECK(info.format == py::format_descriptor<float>::format() || info.format == "e" ||
                   info.format == py::format_descriptor<double>::format(),
               "all_finite() takes float16, float32 or float64 arrays");
    const idx_t n = static_cast<idx_t>(info.size);
    bool ok = true;
    {
        py::gil_scoped_release nogil;
        std::atomic<bool> bad{false};
        auto scan = [&](auto tag, std::uint64_t mask) {
            using U = decltype(tag);
            const U* p = static_cast<const U*>(info.ptr);
            parallel_for(n, idx_t{1} << 20, 0, [&](idx_t b, idx_t e, int) {
                if (bad.load(std::memory_order_relaxed)) return;
                U any = 0;
                for (idx_t i = b; i < e; ++i) any |= static_cast<U>(((p[i] & mask) == mask));
                if (any) bad.store(true);
            });
        };
        if (info.itemsize == 4) scan(std::uint32_t{}, 0x7F800000u);
        else if (info.itemsize == 2) scan(std::uint16_t{}, 0x7C00u);
        else scan(std::uint64_t{}, 0x7FF0000000000000ull);
        ok = !bad.load();
    }
    return ok;
}

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
          "The active SIMD level: 'scalar', 'avx2' or 'avx512'.");
    m.def("detected_simd_level", [] { return std::string(simd_level_name(detected_simd_level())); },
          "The best SIMD level this CPU supports.");
    m.def("set_simd_level", [](const std::string& name) { set_simd_level(parse_simd_level(name.c_str())); },
          py::arg("level"), "Switch the active SIMD level (tests and benchmarks).");
    m.def("default_threads", &default_threads, "Threads used when num_threads is None.");
    m.def("set_screening", &set_screening, py::arg("mode"),
          "int8 screening of exact searches: -1 the SIMD level's default, 0 off, 1 on (tests).");
    m.def("screening_mode", &screening_mode);
    m.def("all_finite", &all_finite, py::arg("array"), "True when the array holds no NaN or inf.");
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
