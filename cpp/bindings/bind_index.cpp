// IvfIndex bindings: strict arrays in, numpy out, GIL released around native work.
#include "common.hpp"

#include <pybind11/typing.h>
#include "mudg_fast/coarse_quantizer.hpp"
#include "mudg_fast/ivf.hpp"

namespace mudg_fast::py_bind {

namespace {

Codec parse_codec(const std::string& s) {
    if (s == "f32") return Codec::f32;
    if (s == "f16") return Codec::f16;
    if (s == "sq8") return Codec::sq8;
    if (s == "sq4") return Codec::sq4;
    MUDG_CHECK(false, "codec must be one of 'f32', 'f16', 'sq8', 'sq4', got '%s'", s.c_str());
}

const char* codec_name(Codec c) {
    switch (c) {
        case Codec::f32: return "f32";
        case Codec::f16: return "f16";
        case Codec::sq8: return "sq8";
        case Codec::sq4: return "sq4";
    }
    return "?";
}

SearchMode parse_mode(const std::string& s) {
    if (s == "auto") return SearchMode::automatic;
    if (s == "list_major") return SearchMode::list_major;
    if (s == "per_query") return SearchMode::per_query;
    MUDG_CHECK(false, "mode must be 'auto', 'list_major' or 'per_query', got '%s'", s.c_str());
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v, idx_t rows, idx_t cols) {
    auto a = cols > 0 ? new_array<T>({rows, cols}) : new_array<T>({rows});
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
    return a;
}

}  // namespace

void bind_index(py::module_& m) {
    py::class_<IvfIndex>(m, "IvfIndex")
        .def(py::init([](idx_t dim, idx_t nlist, const std::string& codec) {
                 return std::make_unique<IvfIndex>(dim, nlist, parse_codec(codec));
             }),
             py::arg("dim"), py::arg("nlist"), py::arg("codec"))
        .def_property_readonly("dim", &IvfIndex::dim)
        .def_property_readonly("nlist", &IvfIndex::nlist)
        .def_property_readonly("codec", [](const IvfIndex& ix) { return std::string(codec_name(ix.codec())); })
        .def_property_readonly("ntotal", &IvfIndex::ntotal)
        .def_property_readonly("is_trained", &IvfIndex::is_trained)
        .def_property_readonly("has_centroids", &IvfIndex::has_centroids)
        .def_property_readonly("codec_trained", &IvfIndex::codec_trained)
        .def("set_centroids",
             [](IvfIndex& ix, const F32& c) { ix.set_centroids(as_view(c, "centroids", ix.dim())); },
             py::arg("centroids").noconvert())
        .def("centroids",
             [](const IvfIndex& ix) {
                 MUDG_CHECK(ix.has_centroids(), "the index has no centroids yet");
                 return to_numpy(ix.centroids(), ix.nlist(), ix.dim());
             })
        .def("train_codec",
             [](IvfIndex& ix, const F32& x, bool sq4_residual, int n_threads) {
                 auto v = as_view(x, "x", ix.dim());
                 py::gil_scoped_release nogil;
                 ix.train_codec(v, sq4_residual, n_threads);
             },
             py::arg("x").noconvert(), py::arg("sq4_residual") = true, py::arg("n_threads") = 0)
        .def_property_readonly("sq4_residual", &IvfIndex::sq4_residual)
        .def("codec_params",
             [](const IvfIndex& ix) {
                 return py::make_tuple(to_numpy(ix.codec_a(), static_cast<idx_t>(ix.codec_a().size()), 0),
                                       to_numpy(ix.codec_b(), static_cast<idx_t>(ix.codec_b().size()), 0));
             })
        .def("set_codec_params",
             [](IvfIndex& ix, const F32& a, const F32& b) {
                 ix.set_codec_params(std::vector<float>(a.data(), a.data() + a.size()),
                                     std::vector<float>(b.data(), b.data() + b.size()));
             },
             py::arg("a").noconvert(), py::arg("b").noconvert())
        .def("add",
             [](IvfIndex& ix, const F32& x, std::optional<I64> ids, int n_threads, py::object progress) {
                 auto v = as_view(x, "x", ix.dim());
                 const idx_t* idp = nullptr;
                 if (ids) {
                     MUDG_CHECK(ids->ndim() == 1 && ids->shape(0) == v.rows, "ids must have shape (%lld,)",
                                (long long)v.rows);
                     idp = reinterpret_cast<const idx_t*>(ids->data());
                 }
                 ProgressFn fn;
                 if (!progress.is_none())
                     fn = [&progress](idx_t done, idx_t total) {
                         py::gil_scoped_acquire gil;
                         progress(done, total);
                     };
                 py::gil_scoped_release nogil;
                 ix.add(v, idp, n_threads, fn);
             },
             py::arg("x").noconvert(), py::arg("ids").noconvert() = py::none(), py::arg("n_threads") = 0,
             py::arg("progress") = py::none())
        .def("search",
             [](const IvfIndex& ix, const F32& q, int k, int nprobe, int n_threads, const std::string& mode) {
                 auto v = as_view(q, "queries", ix.dim());
                 MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
                 auto s = new_array<float>({v.rows, k});
                 auto i = new_array<std::int64_t>({v.rows, k});
                 MatrixView<float> sv(s.mutable_data(), v.rows, k);
                 MatrixView<idx_t> iv(reinterpret_cast<idx_t*>(i.mutable_data()), v.rows, k);
                 const SearchMode sm = parse_mode(mode);
                 {
                     py::gil_scoped_release nogil;
                     ix.search(v, k, nprobe, sv, iv, n_threads, sm);
                 }
                 return py::make_tuple(s, i);
             },
             py::arg("queries").noconvert(), py::arg("k"), py::arg("nprobe"), py::arg("n_threads") = 0,
             py::arg("mode") = "auto")
        .def("probe",
             [](const IvfIndex& ix, const F32& q, int nprobe, int n_threads) {
                 auto v = as_view(q, "queries", ix.dim());
                 MUDG_CHECK(nprobe >= 1, "nprobe must be >= 1, got %d", nprobe);
                 auto s = new_array<float>({v.rows, static_cast<idx_t>(nprobe)});
                 auto l = new_array<std::int64_t>({v.rows, static_cast<idx_t>(nprobe)});
                 MatrixView<float> sv(s.mutable_data(), v.rows, nprobe);
                 MatrixView<idx_t> lv(reinterpret_cast<idx_t*>(l.mutable_data()), v.rows, nprobe);
                 {
                     py::gil_scoped_release nogil;
                     ix.probe(v, nprobe, sv, lv, n_threads);
                 }
                 return py::make_tuple(s, l);
             },
             py::arg("queries").noconvert(), py::arg("nprobe"), py::arg("n_threads") = 0)
        .def("search_probed",
             [](const IvfIndex& ix, const F32& q, int k, const I64& probes, int n_threads, const std::string& mode) {
                 auto v = as_view(q, "queries", ix.dim());
                 MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
                 MUDG_CHECK(probes.ndim() == 2 && probes.shape(0) == v.rows,
                            "probes must have shape (%lld, nprobe)", (long long)v.rows);
                 MatrixView<const idx_t> pv(reinterpret_cast<const idx_t*>(probes.data()), v.rows, probes.shape(1));
                 auto s = new_array<float>({v.rows, k});
                 auto i = new_array<std::int64_t>({v.rows, k});
                 MatrixView<float> sv(s.mutable_data(), v.rows, k);
                 MatrixView<idx_t> iv(reinterpret_cast<idx_t*>(i.mutable_data()), v.rows, k);
                 const SearchMode sm = parse_mode(mode);
                 {
                     py::gil_scoped_release nogil;
                     ix.search_probed(v, k, pv, sv, iv, n_threads, sm);
                 }
                 return py::make_tuple(s, i);
             },
             py::arg("queries").noconvert(), py::arg("k"), py::arg("probes").noconvert(), py::arg("n_threads") = 0,
             py::arg("mode") = "auto")
        .def("reconstruct",
             [](const IvfIndex& ix, const I64& ids) {
                 MUDG_CHECK(ids.ndim() == 1, "ids must be 1-D");
                 const idx_t n = ids.shape(0);
                 auto out = new_array<float>({n, ix.dim()});
                 const auto* idp = reinterpret_cast<const idx_t*>(ids.data());
                 float* o = out.mutable_data();
                 py::gil_scoped_release nogil;
                 ix.reconstruct(idp, n, o);
                 return out;
             },
             py::arg("ids").noconvert())
        .def("list_sizes",
             [](const IvfIndex& ix) { return to_numpy(ix.list_sizes(), ix.nlist(), 0); })
        .def("list_ids",
             [](const IvfIndex& ix, idx_t l) {
                 auto v = ix.list_ids(l);
                 return to_numpy(v, static_cast<idx_t>(v.size()), 0);
             },
             py::arg("list"))
        .def("merge_from", [](IvfIndex& ix, const IvfIndex& other) {
                 py::gil_scoped_release nogil;
                 ix.merge_from(other);
             }, py::arg("other"))
        .def("save",
             [](const IvfIndex& ix, const std::string& path) {
                 py::gil_scoped_release nogil;
                 ix.save(path);
             },
             py::arg("path"))
        .def_static("load",
                    // Optional<IvfIndex> rather than a pointer defaulting to nullptr, so that the
                    // signature (and the generated _core.pyi) reads "IvfIndex | None = None".
                    [](const std::string& path, bool mmap, bool verify,
                       const py::typing::Optional<IvfIndex>& trained_like) {
                        if (!trained_like.is_none() && !py::isinstance<IvfIndex>(trained_like))
                            throw py::type_error("trained_like must be an IvfIndex or None");
                        const IvfIndex* like =
                            trained_like.is_none() ? nullptr : trained_like.cast<const IvfIndex*>();
                        py::gil_scoped_release nogil;
                        return IvfIndex::load(path, mmap, verify, like);
                    },
                    py::arg("path"), py::arg("mmap") = true, py::arg("verify") = true,
                    py::arg("trained_like") = py::none())
        .def_static("search_probed_parts",
                    [](const std::vector<const IvfIndex*>& parts, const F32& q, int k, const I64& probes,
                       int n_threads, const std::string& mode) {
                        MUDG_CHECK(!parts.empty(), "search over parts needs at least one part");
                        auto v = as_view(q, "queries", parts[0]->dim());
                        MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
                        MUDG_CHECK(probes.ndim() == 2 && probes.shape(0) == v.rows,
                                   "probes must have shape (%lld, nprobe)", (long long)v.rows);
                        MatrixView<const idx_t> pv(reinterpret_cast<const idx_t*>(probes.data()), v.rows,
                                                   probes.shape(1));
                        auto s = new_array<float>({v.rows, k});
                        auto i = new_array<std::int64_t>({v.rows, k});
                        MatrixView<float> sv(s.mutable_data(), v.rows, k);
                        MatrixView<idx_t> iv(reinterpret_cast<idx_t*>(i.mutable_data()), v.rows, k);
                        const SearchMode sm = parse_mode(mode);
                        {
                            py::gil_scoped_release nogil;
                            IvfIndex::search_probed_parts(parts, v, k, pv, sv, iv, n_threads, sm);
                        }
                        return py::make_tuple(s, i);
                    },
                    py::arg("parts"), py::arg("queries").noconvert(), py::arg("k"), py::arg("probes").noconvert(),
                    py::arg("n_threads") = 0, py::arg("mode") = "auto")
        .def_static("merge_files",
                    [](const std::vector<std::string>& parts, const std::string& path, const py::bytes& metadata,
                       int n_threads, std::uint64_t batch_bytes) {
                        std::string meta(metadata);
                        py::gil_scoped_release nogil;
                        IvfIndex::merge_files(parts, path, meta, n_threads, batch_bytes);
                    },
                    py::arg("parts"), py::arg("path"), py::arg("metadata"), py::arg("n_threads") = 0,
                    py::arg("batch_bytes") = std::uint64_t{64} << 20)
        .def("memory_bytes", &IvfIndex::memory_bytes)
        .def("set_two_level_quantizer",
             [](IvfIndex& ix, idx_t cells, int probe, std::uint64_t seed, int n_threads) {
                 py::gil_scoped_release nogil;
                 ix.set_two_level_quantizer(cells, probe, seed, n_threads);
             },
             py::arg("cells"), py::arg("probe"), py::arg("seed") = 0, py::arg("n_threads") = 0)
        .def("set_flat_quantizer", &IvfIndex::set_flat_quantizer)
        .def("set_quantizer_probe", &IvfIndex::set_quantizer_probe, py::arg("probe"))
        .def_property_readonly("quantizer",
                               [](const IvfIndex& ix) { return std::string(ix.quantizer() ? "two_level" : "flat"); })
        .def("quantizer_state",
             [](const IvfIndex& ix) {
                 const TwoLevelQuantizer* q = ix.quantizer();
                 MUDG_CHECK(q, "the index has a flat quantizer");
                 py::dict out;
                 out["cells"] = q->cells();
                 out["probe"] = q->probe();
                 out["expected_scores"] = q->expected_scores();
                 auto centres = new_array<float>({q->cells(), q->dim()});
                 std::copy(q->cell_centres().begin(), q->cell_centres().end(), centres.mutable_data());
                 auto cell_of = new_array<std::int64_t>({q->nlist()});
                 std::copy(q->cell_of().begin(), q->cell_of().end(), cell_of.mutable_data());
                 out["cell_centres"] = centres;
                 out["cell_of"] = cell_of;
                 return out;
             })
        .def_property_readonly("metadata", [](const IvfIndex& ix) { return py::bytes(ix.metadata()); })
        .def("set_metadata", [](IvfIndex& ix, const py::bytes& text) { ix.set_metadata(std::string(text)); },
             py::arg("text"))
        .def("fingerprint", [](const IvfIndex& ix) {
                 py::gil_scoped_release nogil;
                 return ix.fingerprint();
             });
    m.attr("max_metadata_bytes") = kMaxMetadataBytes;
    m.attr("two_level_quantizer_min_lists") = kTwoLevelQuantizerMinLists;
    m.attr("two_level_quantizer_min_nlist") = kTwoLevelQuantizerMinNlist;
    m.def("two_level_quantizer_default_cells", &TwoLevelQuantizer::default_cells, py::arg("nlist"),
          "Default number of cells of a two-level quantizer for nlist lists.");
    m.def("two_level_quantizer_default_probe", &TwoLevelQuantizer::default_probe, py::arg("cells"),
          "Default probe (cells scanned per vector) of a two-level quantizer with this many cells.");
}

}  // namespace mudg_fast::py_bind
