// IvfIndex against brute force for every codec: the search over the probed lists must return
// exactly the top-k of the stored (decoded) vectors under the documented score arithmetic, in
// both scan modes, for any thread count and SIMD level; plus save/load, merge, reconstruct,
// list bookkeeping and the error paths.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>

#include "check.hpp"
#include "mudg_fast/coarse_quantizer.hpp"
#include "mudg_fast/ivf.hpp"
#include "mudg_fast/topk.hpp"

using namespace mudg_fast;
using namespace mudg_test;

namespace {

const Codec kCodecs[] = {Codec::f32, Codec::f16, Codec::sq8, Codec::sq4};
const char* codec_name(Codec c) {
    return c == Codec::f32 ? "f32" : c == Codec::f16 ? "f16" : c == Codec::sq8 ? "sq8" : "sq4";
}

/// A trained index: centroids are nlist normalised data rows, the codec is trained on the data.
std::unique_ptr<IvfIndex> make_index(const std::vector<float>& x, idx_t n, idx_t d, idx_t nlist, Codec codec) {
    auto ix = std::make_unique<IvfIndex>(d, nlist, codec);
    std::vector<float> c(x.begin(), x.begin() + nlist * d);
    for (idx_t j = 0; j < nlist; ++j) c[j * d] += 0.01f * static_cast<float>(j);  // distinct even for duplicates
    normalize(c, d);
    ix->set_centroids(MatrixView<const float>(c.data(), nlist, d));
    ix->train_codec(MatrixView<const float>(x.data(), n, d));
    CHECK(ix->is_trained());
    return ix;
}

struct Result {
    std::vector<float> s;
    std::vector<idx_t> i;
};

Result search(const IvfIndex& ix, const std::vector<float>& q, idx_t nq, int k, int nprobe, int threads,
              SearchMode mode) {
    Result r{std::vector<float>(nq * k, 9.0f), std::vector<idx_t>(nq * k, 9)};
    ix.search(MatrixView<const float>(q.data(), nq, ix.dim()), k, nprobe, MatrixView<float>(r.s.data(), nq, k),
              MatrixView<idx_t>(r.i.data(), nq, k), threads, mode);
    return r;
}

void check_same(const Result& a, const Result& b, const std::string& what) {
    if (a.i != b.i) fail(__FILE__, __LINE__, "ids differ: " + what);
    for (std::size_t j = 0; j < a.s.size(); ++j)
        if (!same_bits(a.s[j], b.s[j])) fail(__FILE__, __LINE__, "scores differ: " + what);
}

/// The oracle: for each query, every vector in its nprobe nearest lists, scored with the codec's
/// documented arithmetic on the stored codes, ordered by (score, lower id).
Result oracle(const IvfIndex& ix, const std::vector<float>& q, idx_t nq, int k, int nprobe) {
    const idx_t d = ix.dim(), nlist = ix.nlist();
    nprobe = static_cast<int>(std::min<idx_t>(nprobe, nlist));
    std::vector<float> ps;
    std::vector<idx_t> probes;
    brute_topk(ix.centroids().data(), nlist, q.data(), nq, d, nprobe, ps, probes);
    const auto& va = ix.codec_a();
    const auto& vb = ix.codec_b();
    // Each list's ids and the vectors its scores are computed on: the decoded vectors, for SQ8
    // the codes themselves (recovered exactly from the decoded values), for SQ4 in the residual
    // form the levels (the one whose c_l + s_l * level is the decoded value).
    const bool residual = ix.sq4_residual();
    std::vector<std::vector<idx_t>> lids(nlist);
    std::vector<std::vector<float>> lvec(nlist);
    for (idx_t l = 0; l < nlist; ++l) {
        lids[l] = ix.list_ids(l);
        lvec[l].resize(lids[l].size() * d);
        ix.reconstruct(lids[l].data(), static_cast<idx_t>(lids[l].size()), lvec[l].data());
        if (residual)
            for (std::size_t j = 0; j < lids[l].size(); ++j)
                for (idx_t t = 0; t < d; ++t) {
                    float& v = lvec[l][j * d + t];
                    const float c = ix.centroids()[l * d + t], s = vb[l];
                    int best = 0;
                    for (int c4 = 1; c4 < 16; ++c4)
                        if (std::fabs(va[t * 16 + c4] * s + c - v) < std::fabs(va[t * 16 + best] * s + c - v)) best = c4;
                    CHECK_EQ(c + s * va[t * 16 + best], v);
                    v = va[t * 16 + best];
                }
        if (ix.codec() == Codec::sq8)
            for (std::size_t j = 0; j < lids[l].size(); ++j)
                for (idx_t t = 0; t < d; ++t) {
                    float& b = lvec[l][j * d + t];
                    const float code = std::nearbyint((b - va[t]) / vb[t]);
                    CHECK(code >= 0 && code <= 255);
                    CHECK_EQ(va[t] + code * vb[t], b);
                    b = code;
                }
    }
    Result r{std::vector<float>(nq * k, -INFINITY), std::vector<idx_t>(nq * k, -1)};
    std::vector<std::pair<float, idx_t>> cand;
    for (idx_t qi = 0; qi < nq; ++qi) {
        const float* qv = q.data() + qi * d;
        double bias = 0;  // sq8: <q, vmin>, added after ranking
        std::vector<float> qs(qv, qv + d);
        if (ix.codec() == Codec::sq8)
            for (idx_t t = 0; t < d; ++t) {
                bias += static_cast<double>(qv[t]) * va[t];
                qs[t] = qv[t] * vb[t];
            }
        cand.clear();
        for (int p = 0; p < nprobe; ++p) {
            const idx_t l = probes[qi * nprobe + p];
            const float cq = residual ? ip(qv, ix.centroids().data() + l * d, d) : 0.0f;
            for (std::size_t j = 0; j < lids[l].size(); ++j) {
                const float s = ip(qs.data(), &lvec[l][j * d], d);
                cand.push_back({residual ? std::fma(s, vb[l], cq) : s, lids[l][j]});
            }
        }
        std::sort(cand.begin(), cand.end(), BetterPair{});
        for (int j = 0; j < k && j < static_cast<int>(cand.size()); ++j) {
            r.s[qi * k + j] = ix.codec() == Codec::sq8 ? static_cast<float>(cand[j].first + bias) : cand[j].first;
            r.i[qi * k + j] = cand[j].second;
        }
    }
    return r;
}

std::string temp_path(const char* tag) {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/mudg_test_" + tag + "_" + std::to_string(::getpid()) + ".ivf";
}

}  // namespace

TEST(search_equals_brute_force_for_every_codec) {
    LevelGuard lg;
    std::uint64_t seed = 1;
    for (Codec codec : kCodecs)
        for (idx_t d : {1, 3, 17, 33}) {
            const idx_t n = 530, nlist = 6, nq = 40;  // 40 queries: list-major in automatic mode
            auto x = uniform(n * d, ++seed);
            std::copy(x.begin(), x.begin() + 3 * d, x.begin() + 100 * d);  // duplicates: tied scores
            const auto q = uniform(nq * d, ++seed);
            auto ix = make_index(x, n, d, nlist, codec);
            ix->add(MatrixView<const float>(x.data(), n, d), nullptr, 2);
            CHECK_EQ(ix->ntotal(), n);
            for (int nprobe : {1, 3, 50})  // 50 > nlist: every list
                for (int k : {1, 10, 600}) {
                    const std::string what = std::string(codec_name(codec)) + " d=" + show(d) +
                                             " nprobe=" + show(nprobe) + " k=" + show(k);
                    const Result want = oracle(*ix, q, nq, k, nprobe);
                    for (SimdLevel level : available_levels()) {
                        set_simd_level(level);
                        for (SearchMode mode : {SearchMode::list_major, SearchMode::per_query})
                            for (int threads : {1, 2})
                                check_same(search(*ix, q, nq, k, nprobe, threads, mode), want,
                                           what + " level=" + simd_level_name(level) + " mode=" +
                                               show(static_cast<int>(mode)) + " threads=" + show(threads));
                    }
                }
        }
}

TEST(f32_with_every_list_probed_equals_exact_search) {
    const idx_t n = 400, d = 20, nlist = 8, nq = 33;
    const auto x = uniform(n * d, 3), q = uniform(nq * d, 4);
    auto ix = make_index(x, n, d, nlist, Codec::f32);
    ix->add(MatrixView<const float>(x.data(), n, d), nullptr);
    for (int k : {1, 7, 64}) {
        Result ex{std::vector<float>(nq * k), std::vector<idx_t>(nq * k)};
        exact_search(MatrixView<const float>(x.data(), n, d), MatrixView<const float>(q.data(), nq, d), k,
                     MatrixView<float>(ex.s.data(), nq, k), MatrixView<idx_t>(ex.i.data(), nq, k));
        check_same(search(*ix, q, nq, k, static_cast<int>(nlist), 2, SearchMode::automatic), ex, "k=" + show(k));
        // and reconstruct gives back the input exactly
        std::vector<idx_t> ids{0, 17, n - 1};
        std::vector<float> rec(3 * d);
        ix->reconstruct(ids.data(), 3, rec.data());
        for (int j = 0; j < 3; ++j)
            for (idx_t t = 0; t < d; ++t) CHECK_EQ(rec[j * d + t], x[ids[j] * d + t]);
    }
}

TEST(lists_hold_each_vector_once_in_its_nearest_list) {
    const idx_t n = 1000, d = 9, nlist = 13;
    const auto x = uniform(n * d, 5);
    std::vector<idx_t> ids(n);
    for (idx_t i = 0; i < n; ++i) ids[i] = 1000000 + 3 * i;  // user ids
    auto ix = make_index(x, n, d, nlist, Codec::sq4);
    // In two calls, with progress reports.
    std::vector<std::pair<idx_t, idx_t>> reports;
    ix->add(MatrixView<const float>(x.data(), 600, d), ids.data(), 2,
            [&](idx_t done, idx_t total) { reports.push_back({done, total}); });
    ix->add(MatrixView<const float>(x.data() + 600 * d, 400, d), ids.data() + 600, 1);
    CHECK(!reports.empty());
    CHECK_EQ(reports.back().first, idx_t{600});
    CHECK_EQ(reports.back().second, idx_t{600});
    std::vector<idx_t> nearest_list(n);
    std::vector<float> ns(n);
    nearest(MatrixView<const float>(ix->centroids().data(), nlist, d), MatrixView<const float>(x.data(), n, d), ns.data(),
            nearest_list.data());
    const auto sizes = ix->list_sizes();
    idx_t total = 0;
    std::set<idx_t> seen;
    for (idx_t l = 0; l < nlist; ++l) {
        const auto li = ix->list_ids(l);
        CHECK_EQ(static_cast<idx_t>(li.size()), sizes[l]);
        total += sizes[l];
        for (std::size_t j = 0; j < li.size(); ++j) {
            const idx_t row = (li[j] - 1000000) / 3;
            CHECK_EQ(nearest_list[row], l);
            CHECK(seen.insert(li[j]).second);
            if (j) CHECK(li[j] > li[j - 1]);  // storage order = input order
        }
    }
    CHECK_EQ(total, n);
    CHECK_EQ(ix->ntotal(), n);
    CHECK(ix->memory_bytes() >= static_cast<std::size_t>(n * (8 + d / 2)));
    idx_t missing = 5;
    std::vector<float> out(d);
    CHECK_THROWS(ix->reconstruct(&missing, 1, out.data()), Error, "id 5 is not in the index");
    CHECK_THROWS(ix->list_ids(nlist), Error, "list 13 out of range [0, 13)");
}

TEST(save_load_round_trip) {
    for (Codec codec : kCodecs) {
        const idx_t n = 700, d = 11, nlist = 5, nq = 40;
        const auto x = uniform(n * d, 6), q = uniform(nq * d, 7);
        auto ix = make_index(x, n, d, nlist, codec);
        ix->add(MatrixView<const float>(x.data(), n, d), nullptr);
        const std::string path = temp_path(codec_name(codec));
        ix->save(path);
        const Result want = search(*ix, q, nq, 10, 3, 2, SearchMode::automatic);
        for (bool mmap : {false, true})
            for (bool verify : {false, true}) {
                auto back = IvfIndex::load(path, mmap, verify);
                CHECK_EQ(back->dim(), d);
                CHECK_EQ(back->nlist(), nlist);
                CHECK(back->codec() == codec);
                CHECK_EQ(back->ntotal(), n);
                CHECK(back->centroids() == ix->centroids());
                CHECK(back->codec_a() == ix->codec_a());
                CHECK(back->codec_b() == ix->codec_b());
                CHECK(back->list_sizes() == ix->list_sizes());
                for (idx_t l = 0; l < nlist; ++l) CHECK(back->list_ids(l) == ix->list_ids(l));
                check_same(search(*back, q, nq, 10, 3, 2, SearchMode::automatic), want, codec_name(codec));
                // Adding to a loaded (possibly mapped) index copies its lists first.
                back->add(MatrixView<const float>(q.data(), nq, d), nullptr, 2);
                ix->add(MatrixView<const float>(q.data(), nq, d), nullptr, 2);
                check_same(search(*back, q, nq, 10, 5, 2, SearchMode::automatic),
                           search(*ix, q, nq, 10, 5, 2, SearchMode::automatic), "after add");
                ix = make_index(x, n, d, nlist, codec);  // back to the saved state
                ix->add(MatrixView<const float>(x.data(), n, d), nullptr);
            }
        std::remove(path.c_str());
    }
}

TEST(load_rejects_bad_files) {
    const std::string path = temp_path("bad");
    CHECK_THROWS(IvfIndex::load(path + ".missing", true, true), Error, "cannot open");
    {
        std::ofstream f(path, std::ios::binary);
        f << "definitely not an index";
    }
    CHECK_THROWS(IvfIndex::load(path, false, true), Error, "is not a mudg_fast IVF index file");
    // A valid file, truncated, and with a flipped data byte.
    const idx_t n = 100, d = 4;
    const auto x = uniform(n * d, 8);
    auto ix = make_index(x, n, d, 2, Codec::f32);
    ix->add(MatrixView<const float>(x.data(), n, d), nullptr);
    ix->save(path);
    std::vector<char> bytes;
    {
        std::ifstream f(path, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(f), {});
    }
    for (std::size_t cut : {std::size_t{8}, std::size_t{100}, std::size_t{200}, bytes.size() - 1}) {
        std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(cut));
        CHECK_THROWS(IvfIndex::load(path, cut % 2 == 0, true), Error, "");
    }
    auto flipped = bytes;
    flipped[bytes.size() - 100] ^= 0x10;  // inside the last list's ids
    std::ofstream(path, std::ios::binary).write(flipped.data(), static_cast<std::streamsize>(flipped.size()));
    CHECK_THROWS(IvfIndex::load(path, true, true), Error, "list data checksum mismatch");
    flipped = bytes;
    flipped[130] ^= 0x01;  // a centroid
    std::ofstream(path, std::ios::binary).write(flipped.data(), static_cast<std::streamsize>(flipped.size()));
    CHECK_THROWS(IvfIndex::load(path, false, false), Error, "centroid/directory checksum mismatch");
    std::remove(path.c_str());
    CHECK_THROWS(ix->save("/nonexistent-dir/x.ivf"), Error, "cannot create");
    IvfIndex untrained(4, 2, Codec::f32);
    CHECK_THROWS(untrained.save(path), Error, "without centroids");
}

TEST(merge_equals_adding_everything_to_one_index) {
    for (Codec codec : kCodecs)
        for (idx_t split : {idx_t{32}, idx_t{250}}) {  // 32 with nlist 1: block-aligned copy
            for (idx_t nlist : {idx_t{1}, idx_t{7}}) {
                const idx_t n = 500, d = 13, nq = 35;
                const auto x = uniform(n * d, 9), q = uniform(nq * d, 10);
                std::vector<idx_t> ids(n);
                for (idx_t i = 0; i < n; ++i) ids[i] = 10 * i + 1;
                auto all = make_index(x, n, d, nlist, codec);
                auto a = make_index(x, n, d, nlist, codec);
                auto b = make_index(x, n, d, nlist, codec);
                all->add(MatrixView<const float>(x.data(), n, d), ids.data());
                a->add(MatrixView<const float>(x.data(), split, d), ids.data());
                b->add(MatrixView<const float>(x.data() + split * d, n - split, d), ids.data() + split);
                a->merge_from(*b);
                CHECK_EQ(a->ntotal(), n);
                CHECK(a->list_sizes() == all->list_sizes());
                for (idx_t l = 0; l < nlist; ++l) CHECK(a->list_ids(l) == all->list_ids(l));
                check_same(search(*a, q, nq, 12, 3, 2, SearchMode::automatic),
                           search(*all, q, nq, 12, 3, 2, SearchMode::automatic),
                           std::string("merge ") + codec_name(codec));
                std::vector<float> ra(n * d), rb(n * d);
                a->reconstruct(ids.data(), n, ra.data());
                all->reconstruct(ids.data(), n, rb.data());
                CHECK(ra == rb);
            }
        }
    const idx_t d = 4;
    const auto x = uniform(50 * d, 11);
    auto a = make_index(x, 50, d, 2, Codec::f32);
    CHECK_THROWS(a->merge_from(*a), Error, "cannot merge an index into itself");
    auto other_codec = make_index(x, 50, d, 2, Codec::f16);
    CHECK_THROWS(a->merge_from(*other_codec), Error, "differ in dim, nlist or codec");
    IvfIndex moved(d, 2, Codec::f32);
    std::vector<float> c(2 * d, 0.5f);
    moved.set_centroids(MatrixView<const float>(c.data(), 2, d));
    CHECK_THROWS(a->merge_from(moved), Error, "different centroids");
    auto s1 = make_index(x, 50, d, 2, Codec::sq8);
    auto s2 = make_index(x, 50, d, 2, Codec::sq8);
    s2->train_codec(MatrixView<const float>(x.data(), 10, d));
    CHECK_THROWS(s1->merge_from(*s2), Error, "different codec parameters");
}

namespace {
std::vector<char> file_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}
}  // namespace

TEST(parts_search_and_merge_equal_one_index) {
    // Three parts (one of them empty, one block aligned) of one training; searched together they
    // give the whole index's answer, and merged they give its file byte for byte.
    for (Codec codec : kCodecs) {
        const idx_t n = 600, d = 13, nlist = 5, nq = 40;
        const auto x = uniform(n * d, 21), q = uniform(nq * d, 22);
        auto whole = make_index(x, n, d, nlist, codec);
        whole->add(MatrixView<const float>(x.data(), n, d), nullptr);
        const idx_t cuts[] = {0, 32, 32, 217, n};
        std::vector<std::string> paths;
        std::vector<std::unique_ptr<IvfIndex>> parts;
        for (int p = 0; p < 4; ++p) {
            auto part = make_index(x, n, d, nlist, codec);
            std::vector<idx_t> ids;
            for (idx_t i = cuts[p]; i < cuts[p + 1]; ++i) ids.push_back(i);
            part->add(MatrixView<const float>(x.data() + cuts[p] * d, cuts[p + 1] - cuts[p], d), ids.data());
            paths.push_back(temp_path((std::string("part") + std::to_string(p) + codec_name(codec)).c_str()));
            part->save(paths.back());
            parts.push_back(IvfIndex::load(paths.back(), true, true, p ? parts[0].get() : nullptr));
        }
        CHECK(&parts[1]->centroids() == &parts[0]->centroids());  // shared, not copied
        std::vector<const IvfIndex*> ptrs;
        for (const auto& p : parts) ptrs.push_back(p.get());
        for (int nprobe : {1, 3, 5})
            for (int k : {4, 700})
                for (SearchMode mode : {SearchMode::list_major, SearchMode::per_query}) {
                    std::vector<float> ps(nq * nprobe);
                    std::vector<idx_t> probes(nq * nprobe);
                    whole->probe(MatrixView<const float>(q.data(), nq, d), nprobe,
                                 MatrixView<float>(ps.data(), nq, nprobe), MatrixView<idx_t>(probes.data(), nq, nprobe));
                    Result got{std::vector<float>(nq * k), std::vector<idx_t>(nq * k)};
                    IvfIndex::search_probed_parts(ptrs, MatrixView<const float>(q.data(), nq, d), k,
                                                  MatrixView<const idx_t>(probes.data(), nq, nprobe),
                                                  MatrixView<float>(got.s.data(), nq, k),
                                                  MatrixView<idx_t>(got.i.data(), nq, k), 3, mode);
                    check_same(got, search(*whole, q, nq, k, nprobe, 2, mode), std::string("parts ") + codec_name(codec));
                }
        const std::string merged = temp_path((std::string("merged") + codec_name(codec)).c_str());
        const std::string single = temp_path((std::string("single") + codec_name(codec)).c_str());
        whole->set_metadata("{\"a\": 1}");
        whole->save(single);
        for (int threads : {1, 3}) {
            IvfIndex::merge_files(paths, merged, "{\"a\": 1}", threads);
            CHECK(file_bytes(merged) == file_bytes(single));
        }
        // A part of another training is refused, by name; so is a damaged part.
        auto other = make_index(x, n, d, nlist, codec);
        other->train_codec(MatrixView<const float>(x.data() + d, 50, d));
        other->add(MatrixView<const float>(x.data(), 10, d), nullptr);
        const std::string odd = temp_path("odd");
        other->save(odd);
        if (codec == Codec::sq8 || codec == Codec::sq4)
            CHECK_THROWS(IvfIndex::merge_files({paths[0], odd}, merged, "", 1), Error, "trained differently");
        auto bytes = file_bytes(paths[3]);
        bytes[bytes.size() - 40] ^= 0x04;  // an id of the last list
        std::ofstream(paths[3], std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        CHECK_THROWS(IvfIndex::merge_files(paths, merged, "", 2), Error, (paths[3] + "' is corrupted").c_str());
        for (const auto& path : paths) std::remove(path.c_str());
        for (const auto& path : {merged, single, odd}) std::remove(path.c_str());
    }
}

TEST(large_lists_use_mapped_buffers) {
    // One list of 3000 f32 vectors of d = 40: 480 kB of codes, grown in place past the 64 kB
    // mapping threshold, appended in slices that leave the last block half full.
    const idx_t n = 3000, d = 40;
    const auto x = uniform(n * d, 12);
    auto ix = make_index(x, n, d, 1, Codec::f32);
    for (idx_t b = 0; b < n; b += 377)
        ix->add(MatrixView<const float>(x.data() + b * d, std::min<idx_t>(377, n - b), d), nullptr, 2);
    std::vector<idx_t> ids(n);
    std::iota(ids.begin(), ids.end(), idx_t{0});
    std::vector<float> rec(n * d);
    ix->reconstruct(ids.data(), n, rec.data());
    CHECK(rec == x);
    AlignedBuffer buf;
    buf.resize(100);
    std::memset(buf.data(), 0xAB, 100);
    buf.resize(200000);  // crosses into a mapping: the old bytes move, the new ones are zero
    CHECK_EQ(int(buf.data()[99]), 0xAB);
    CHECK_EQ(int(buf.data()[100]), 0);
    CHECK_EQ(int(buf.data()[199999]), 0);
    CHECK_EQ(reinterpret_cast<std::uintptr_t>(buf.data()) % 64, std::uintptr_t{0});
    AlignedBuffer copy;
    copy = buf;
    CHECK_EQ(copy.size(), buf.size());
    CHECK(std::memcmp(copy.data(), buf.data(), buf.size()) == 0);
    AlignedBuffer moved(std::move(copy));
    CHECK_EQ(moved.size(), std::size_t{200000});
}

TEST(codec_parameters_and_training) {
    const idx_t d = 3;
    IvfIndex sq8(d, 1, Codec::sq8), sq4(d, 1, Codec::sq4), f32(d, 1, Codec::f32);
    CHECK(!sq8.codec_trained());
    CHECK(f32.codec_trained());
    CHECK_THROWS(sq8.set_codec_params({0, 0, 0}, {1, 0, 1}), Error, "invalid SQ8 parameters");
    CHECK_THROWS(sq8.set_codec_params({0, 0}, {1, 1}), Error, "two arrays of 3 values");
    CHECK_THROWS(sq8.set_codec_params({0, NAN, 0}, {1, 1, 1}), Error, "invalid SQ8 parameters");
    std::vector<float> levels(d * 16);
    for (std::size_t i = 0; i < levels.size(); ++i) levels[i] = static_cast<float>(i % 16);
    sq4.set_codec_params(levels, {});
    CHECK(sq4.codec_trained());
    levels[5] = 100;  // unsorted
    CHECK_THROWS(sq4.set_codec_params(levels, {}), Error, "SQ4 levels must be sorted");
    CHECK_THROWS(sq4.set_codec_params({1, 2}, {}), Error, "SQ4 parameters must hold 48 levels");
    CHECK_THROWS(f32.set_codec_params({1}, {}), Error, "has no parameters");
    std::vector<float> one(d, 1.0f);
    CHECK_THROWS(sq8.train_codec(MatrixView<const float>(one.data(), 1, d)), Error, "at least 2 training vectors");
    CHECK_THROWS(sq8.train_codec(MatrixView<const float>(one.data(), 1, 1)), Error, "1 dimensions, the index 3");
    // Constant dimensions train without dividing by zero; the SQ8 range covers the sample.
    const idx_t n = 64;
    auto x = uniform(n * d, 13);
    for (idx_t i = 0; i < n; ++i) x[i * d + 1] = 0.25f;
    sq8.train_codec(MatrixView<const float>(x.data(), n, d));
    // The residual form (the default) needs the centroids; the direct form does not.
    CHECK_THROWS(sq4.train_codec(MatrixView<const float>(x.data(), n, d)), Error, "before training it");
    sq4.train_codec(MatrixView<const float>(x.data(), n, d), false);
    CHECK(!sq4.sq4_residual() && sq4.codec_b().empty());
    for (idx_t t = 0; t < d; ++t) {
        CHECK(sq8.codec_b()[t] > 0);
        for (idx_t i = 0; i < n; ++i) {
            CHECK(x[i * d + t] >= sq8.codec_a()[t]);
            CHECK(x[i * d + t] <= sq8.codec_a()[t] + 255 * sq8.codec_b()[t] * (1 + 1e-6f) + 1e-6f);
        }
        for (int j = 1; j < 16; ++j) CHECK(sq4.codec_a()[t * 16 + j] >= sq4.codec_a()[t * 16 + j - 1]);
    }
}

TEST(sq8_with_tiny_ranges_and_steps) {
    // A dimension whose sample range is subnormal: the trained step stays a normal float (its
    // reciprocal is finite) and search still equals the oracle.
    const idx_t n = 300, d = 5, nq = 33;
    auto x = uniform(n * d, 15);
    for (idx_t i = 0; i < n; ++i) {
        x[i * d + 1] = (i % 2) ? 1e-40f : 0.0f;
        x[i * d + 2] = (i % 3) ? 3e-39f : -3e-39f;
    }
    const auto q = uniform(nq * d, 16);
    auto ix = make_index(x, n, d, 3, Codec::sq8);
    for (idx_t t = 0; t < d; ++t) {
        CHECK(ix->codec_b()[t] > 0);
        CHECK(std::isfinite(1.0f / ix->codec_b()[t]));
    }
    ix->add(MatrixView<const float>(x.data(), n, d), nullptr, 2);
    check_same(search(*ix, q, nq, 10, 3, 2, SearchMode::automatic), oracle(*ix, q, nq, 10, 3), "tiny range");
    // Parameters set directly with a subnormal step (1 / step overflows): values at vmin encode
    // as code 0, values above it as 255; nothing undefined on the way.
    IvfIndex direct(3, 1, Codec::sq8);
    std::vector<float> c(3, 1.0f);
    direct.set_centroids(MatrixView<const float>(c.data(), 1, 3));
    direct.set_codec_params({0.0f, 0.0f, 0.0f}, {1e-40f, 1.0f, 1.0f});
    const std::vector<float> rows = {0.0f, 0.5f, 0.5f, 1.0f, 0.5f, 0.5f};
    direct.add(MatrixView<const float>(rows.data(), 2, 3), nullptr);
    const std::vector<idx_t> ids = {0, 1};
    std::vector<float> rec(6);
    direct.reconstruct(ids.data(), 2, rec.data());
    CHECK_EQ(rec[0], 0.0f);
    CHECK_EQ(rec[3], 255 * 1e-40f);
}

TEST(bad_calls_throw_error) {
    CHECK_THROWS(IvfIndex(0, 4, Codec::f32), Error, "dim must be >= 1, got 0");
    CHECK_THROWS(IvfIndex(4, 0, Codec::f32), Error, "nlist must be >= 1, got 0");
    CHECK_THROWS(IvfIndex(4, (idx_t{1} << 31) + 1, Codec::f32), Error, "is too large");
    const idx_t d = 4;
    const auto x = uniform(20 * d, 14);
    IvfIndex ix(d, 2, Codec::sq8);
    CHECK_THROWS(ix.add(MatrixView<const float>(x.data(), 20, d), nullptr), Error, "add() before the index has centroids");
    std::vector<float> s(4);
    std::vector<idx_t> i(4);
    CHECK_THROWS(ix.search(MatrixView<const float>(x.data(), 2, d), 2, 1, MatrixView<float>(s.data(), 2, 2),
                           MatrixView<idx_t>(i.data(), 2, 2)),
                 Error, "untrained index");
    CHECK_THROWS(ix.set_centroids(MatrixView<const float>(x.data(), 3, d)), Error,
                 "centroids must have shape (2, 4), got (3, 4)");
    ix.set_centroids(MatrixView<const float>(x.data(), 2, d));
    CHECK_THROWS(ix.add(MatrixView<const float>(x.data(), 20, d), nullptr), Error, "scalar quantiser is trained");
    ix.train_codec(MatrixView<const float>(x.data(), 20, d));
    CHECK_THROWS(ix.add(MatrixView<const float>(x.data(), 5, 3), nullptr), Error, "vectors have 3 dimensions, the index 4");
    ix.add(MatrixView<const float>(x.data(), 20, d), nullptr);
    CHECK_THROWS(ix.set_centroids(MatrixView<const float>(x.data(), 2, d)), Error, "only be set on an empty index");
    CHECK_THROWS(ix.train_codec(MatrixView<const float>(x.data(), 20, d)), Error, "only be trained on an empty index");
    auto srch = [&](int k, int nprobe, idx_t cols) {
        ix.search(MatrixView<const float>(x.data(), 1, cols), k, nprobe, MatrixView<float>(s.data(), 1, 4),
                  MatrixView<idx_t>(i.data(), 1, 4));
    };
    CHECK_THROWS(srch(0, 1, d), Error, "k must be >= 1, got 0");
    CHECK_THROWS(srch(2, 0, d), Error, "nprobe must be >= 1, got 0");
    CHECK_THROWS(srch(2, 1, 3), Error, "queries have 3 dimensions, the index 4");
    // Empty index / no queries: padding, no error.
    IvfIndex empty(d, 2, Codec::f32);
    empty.set_centroids(MatrixView<const float>(x.data(), 2, d));
    empty.search(MatrixView<const float>(x.data(), 1, d), 4, 2, MatrixView<float>(s.data(), 1, 4),
                 MatrixView<idx_t>(i.data(), 1, 4));
    for (int j = 0; j < 4; ++j) CHECK_EQ(i[j], idx_t{-1});
    empty.add(MatrixView<const float>(x.data(), 0, d), nullptr);
    CHECK_EQ(empty.ntotal(), idx_t{0});
}

TEST(two_level_quantizer_exact_when_every_cell_is_scanned) {
    const idx_t n = 4000, d = 20, nlist = 150;
    auto x = uniform(n * d, 71);
    normalize(x, d);
    auto flat = make_index(x, n, d, nlist, Codec::f32);
    auto two = make_index(x, n, d, nlist, Codec::f32);
    two->set_two_level_quantizer(12, 12, 3, 2);
    CHECK(two->quantizer() && two->quantizer()->cells() == 12);
    const MatrixView<const float> q(x.data(), 500, d);
    for (int k : {1, 7}) {
        std::vector<float> s0(500 * k), s1(500 * k);
        std::vector<idx_t> l0(500 * k), l1(500 * k);
        flat->coarse_search(q, k, MatrixView<float>(s0.data(), 500, k), MatrixView<idx_t>(l0.data(), 500, k));
        for (int t : {1, 3}) {
            two->coarse_search(q, k, MatrixView<float>(s1.data(), 500, k), MatrixView<idx_t>(l1.data(), 500, k), t);
            CHECK(l0 == l1);
            for (std::size_t j = 0; j < s0.size(); ++j) CHECK_BITS(s0[j], s1[j]);
        }
    }
    // fewer cells scanned: a subset of the centroids, so never a better score than exact
    two->set_quantizer_probe(2);
    std::vector<float> s0(n), s1(n);
    std::vector<idx_t> l0(n), l1(n);
    const MatrixView<const float> all(x.data(), n, d);
    flat->coarse_search(all, 1, MatrixView<float>(s0.data(), n, 1), MatrixView<idx_t>(l0.data(), n, 1));
    two->coarse_search(all, 1, MatrixView<float>(s1.data(), n, 1), MatrixView<idx_t>(l1.data(), n, 1));
    idx_t same = 0;
    for (idx_t i = 0; i < n; ++i) {
        CHECK(s1[i] <= s0[i]);
        same += l0[i] == l1[i];
    }
    CHECK(same > n / 2 && same < n);  // measured: close to exact, and not trivially exact
    // saved with the index, the fingerprint covers it
    const std::string path = temp_path("quantizer");
    two->add(all, nullptr);
    two->save(path);
    auto back = IvfIndex::load(path, true, true);
    std::remove(path.c_str());
    CHECK(back->quantizer() && back->quantizer()->probe() == 2 && back->fingerprint() == two->fingerprint());
    CHECK(back->fingerprint() != flat->fingerprint());
    for (idx_t l = 0; l < nlist; ++l) CHECK(back->list_ids(l) == two->list_ids(l));
    CHECK_THROWS(two->set_quantizer_probe(0), Error, "probe must be >= 1");
    CHECK_THROWS(flat->set_quantizer_probe(3), Error, "flat quantizer");
    CHECK_THROWS(flat->set_two_level_quantizer(0, 3, 0), Error, "cells must be in [1, nlist=150]");
    IvfIndex tiny(d, 3, Codec::f32);
    tiny.set_centroids(MatrixView<const float>(x.data(), 3, d));
    CHECK_THROWS(tiny.set_two_level_quantizer(2, 1, 0), Error, "too small for a two-level quantizer");
}

TEST(checksum64_is_stable_and_sensitive) {
    std::vector<std::uint8_t> data(1000);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 31 + 7);
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{31},
                          std::size_t{32}, std::size_t{33}, std::size_t{1000}}) {
        const std::uint64_t h = checksum64(data.data(), n);
        CHECK_EQ(h, checksum64(data.data(), n));
        if (n) CHECK(h != checksum64(data.data(), n, 1));
        if (n) CHECK(h != checksum64(data.data(), n - 1));
        for (std::size_t byte = 0; byte < n; byte += 1 + n / 5)
            for (int bit = 0; bit < 8; bit += 3) {
                auto copy = data;
                copy[byte] ^= static_cast<std::uint8_t>(1u << bit);
                CHECK(checksum64(copy.data(), n) != h);
            }
    }
}

int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
