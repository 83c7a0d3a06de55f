"""KMeans / PairedKMeans as scikit-learn estimators: check_estimator, clone, Pipeline in
GridSearchCV, pickling, transform/score against numpy, and the same protocol without scikit-learn."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import unit_rows

import mudg_fast

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is part of the [test] extra")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

# Checks that cannot apply, with the reason (scikit-learn's check_estimator declares them as
# expected failures; the tests below also assert that each one does fail, and for that reason).
# KMeans: none; every check applies and passes.
KMEANS_NOT_APPLICABLE: dict = {}

_CAPTIONS = ("PairedKMeans.fit takes the caption embeddings (n_captions, d) as its second argument; "
             "this check passes class labels (1-D) there")
_NO_CAPTIONS = "this check calls fit(X) alone; paired k-means needs the captions as well as the images"
PAIRED_NOT_APPLICABLE = {
    **{name: _CAPTIONS for name in [
        "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self", "check_readonly_memmap_input",
        "check_n_features_in_after_fitting", "check_positive_only_tag_during_fit", "check_estimators_dtypes",
        "check_dtype_object", "check_pipeline_consistency", "check_estimators_nan_inf",
        "check_estimators_pickle", "check_array_api_input", "check_f_contiguous_array_estimator",
        "check_transformer_data_not_an_array", "check_transformer_general",
        "check_transformer_preserve_dtypes", "check_transformer_n_iter",
        "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
        "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
        "check_n_features_in", "check_fit2d_predict1d"]},
    "check_clustering": _NO_CAPTIONS,
}

# check_estimator runs in a child process: check_array_api_input needs SCIPY_ARRAY_API=1 before
# scipy is first imported (in this process it may already be), and would be skipped otherwise.
_RUNNER = textwrap.dedent("""
    import json, sys, warnings
    from sklearn.utils.estimator_checks import check_estimator
    import mudg_fast

    class PairedOnItself(mudg_fast.PairedKMeans):
        '''PairedKMeans whose captions are its images (pairing="given"): plain k-means through
        PairedKMeans's own code, so every check can reach its methods.'''
        def fit(self, x, y=None):
            return super().fit(x, x, pairing="given")
        def fit_predict(self, x, y=None):
            return self.fit(x).labels_

    name, declared = sys.argv[1], json.loads(sys.argv[2])
    est = PairedOnItself() if name == "PairedOnItself" else getattr(mudg_fast, name)()
    def chain(e):
        out = []
        while e is not None and len(out) < 4:
            out.append(f"{type(e).__name__}: {e}")
            e = e.__cause__ or e.__context__
        return " <- ".join(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = check_estimator(est, expected_failed_checks=declared, on_fail=None, on_skip=None)
    json.dump([dict(check=r["check_name"], status=r["status"], error=chain(r["exception"]))
               for r in res], sys.stdout)
""")


def run_check_estimator(name, declared):
    env = dict(os.environ, SCIPY_ARRAY_API="1", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _RUNNER, name, json.dumps(declared)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def summarise(results):
    failed = [r for r in results if r["status"] not in ("passed", "xfail")]
    assert not failed, "\n".join(f"{r['check']}: {r['status']}: {r['error'][:500]}" for r in failed)
    return ({r["check"] for r in results if r["status"] == "passed"},
            {r["check"]: r["error"] for r in results if r["status"] == "xfail"})


def test_check_estimator_kmeans():
    results = run_check_estimator("KMeans", KMEANS_NOT_APPLICABLE)
    passed, xfail = summarise(results)
    assert not xfail and len(results) >= 45
    # the checks this estimator's kind brings in did run (clusterer, transformer, array API)
    assert {"check_clustering", "check_transformer_general", "check_array_api_input",
            "check_methods_subset_invariance", "check_fit2d_predict1d"} <= passed


def test_check_estimator_paired_kmeans():
    results = run_check_estimator("PairedKMeans", PAIRED_NOT_APPLICABLE)
    passed, xfail = summarise(results)
    # Every declared check does fail, and for the declared reason: the labels refused as captions.
    assert set(xfail) == set(PAIRED_NOT_APPLICABLE), set(PAIRED_NOT_APPLICABLE) ^ set(xfail)
    for check, error in xfail.items():
        assert ("PairedKMeans.fit takes the caption embeddings" in error
                or "PairedKMeans.fit needs images and captions" in error), (check, error)
    assert {"check_estimators_unfitted", "check_get_params_invariance", "check_set_params",
            "check_estimator_repr", "check_mixin_order", "check_no_attributes_set_in_init"} <= passed


def test_check_estimator_paired_kmeans_code_paths():
    """The declared checks, run on PairedKMeans's code with captions = images: all pass."""
    results = run_check_estimator("PairedOnItself", {})
    passed, xfail = summarise(results)
    assert not xfail and set(PAIRED_NOT_APPLICABLE) <= passed


def test_sklearn_checks_outside_check_estimator(rng):
    """Checks scikit-learn runs on its own estimators only: output feature names, set_output,
    column-name consistency with data frames."""
    from sklearn.utils import estimator_checks as ec
    pytest.importorskip("pandas", reason="pandas is part of the [test] extra")
    for check in (ec.check_transformer_get_feature_names_out, ec.check_set_output_transform,
                  ec.check_dataframe_column_names_consistency):
        check("KMeans", mudg_fast.KMeans())
    km = mudg_fast.KMeans(3).fit(unit_rows(rng, 30, 4))
    np.testing.assert_array_equal(km.get_feature_names_out(), ["kmeans0", "kmeans1", "kmeans2"])


def test_get_set_params_and_clone(rng):
    init = unit_rows(rng, 4, 6)
    est = mudg_fast.KMeans(4, init=init, seed=3, spherical=False, num_threads=2)
    params = est.get_params()
    assert params["n_clusters"] == 4 and params["seed"] == 3 and params["init"] is init
    assert set(params) == {"n_clusters", "max_iter", "init", "seed", "spherical", "max_points_per_centroid",
                           "num_threads", "verbose", "method", "n_coarse"}
    copy = clone(est)
    assert copy is not est and copy.get_params()["seed"] == 3
    np.testing.assert_array_equal(copy.init, init)
    est.fit(unit_rows(rng, 50, 6))
    assert not hasattr(clone(est), "cluster_centers_")  # a clone is unfitted
    assert est.set_params(seed=9, max_iter=3) is est and est.seed == 9 and est.max_iter == 3
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(random_state=0)
    # The constructor stores, fit validates.
    bad = mudg_fast.KMeans(n_clusters=-3, seed="x")
    assert bad.n_clusters == -3
    with pytest.raises(ValueError, match="n_clusters"):
        bad.fit(unit_rows(rng, 10, 3))
    assert repr(mudg_fast.KMeans(5, seed=2)) == "KMeans(n_clusters=5, seed=2)"


def test_pipeline_in_grid_search(rng):
    """Normalizer + KMeans under GridSearchCV: every fold's score is the numpy objective."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    directions = unit_rows(rng, 6, 12)
    x = (3 * directions[np.arange(600) % 6] + 0.3 * rng.standard_normal((600, 12))).astype(np.float32)
    pipe = Pipeline([("norm", Normalizer()), ("km", mudg_fast.KMeans(seed=0, max_iter=10))])
    cv = KFold(3, shuffle=True, random_state=0)
    grid = GridSearchCV(pipe, {"km__n_clusters": [2, 6, 12], "km__spherical": [True, False]}, cv=cv)
    grid.fit(x)
    assert grid.best_params_ in grid.cv_results_["params"]
    for i, params in enumerate(grid.cv_results_["params"]):
        for split, (train, test) in enumerate(cv.split(x)):
            km = mudg_fast.KMeans(params["km__n_clusters"], spherical=params["km__spherical"], seed=0,
                                  max_iter=10)
            xs = x / np.linalg.norm(x, axis=1, keepdims=True)
            c = km.fit(xs[train]).cluster_centers_.astype(np.float64)
            t = xs[test].astype(np.float64)
            if params["km__spherical"]:
                expect = (t @ c.T).max(axis=1).sum()
            else:
                expect = -((t[:, None, :] - c[None]) ** 2).sum(-1).min(axis=1).sum()
            got = grid.cv_results_[f"split{split}_test_score"][i]
            assert got == pytest.approx(expect, rel=1e-5, abs=1e-5), (params, split)
    best = grid.best_estimator_
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(best.predict(x), best.named_steps["km"].predict(xs))


@pytest.mark.parametrize("paired", [False, True])
def test_pickle_fitted(rng, paired):
    x, y = unit_rows(rng, 300, 10), unit_rows(rng, 300, 10)
    est = mudg_fast.PairedKMeans(7, seed=1) if paired else mudg_fast.KMeans(7, seed=1)
    est.fit(x, y) if paired else est.fit(x)
    back = pickle.loads(pickle.dumps(est))
    assert type(back) is type(est) and back.get_params() == est.get_params()
    for attr in ("cluster_centers_", "labels_", "objective_history_") + (("pairs_",) if paired else ()):
        np.testing.assert_array_equal(getattr(back, attr), getattr(est, attr))
    np.testing.assert_array_equal(back.predict(x), est.predict(x))
    np.testing.assert_array_equal(back.transform(x), est.transform(x))
    assert back.score(x) == est.score(x) and back.n_features_in_ == 10


def test_transform_and_score_spherical(rng):
    x = unit_rows(rng, 2000, 24)
    km = mudg_fast.KMeans(16, seed=0).fit(x)
    c = km.cluster_centers_.astype(np.float64)
    t = km.transform(x)
    assert t.shape == (2000, 16) and t.dtype == np.float32
    np.testing.assert_allclose(t, x.astype(np.float64) @ c.T, atol=1e-5)
    # the scores predict compares: the row maximum marks the label exactly (ties: lower index)
    np.testing.assert_array_equal(np.argmax(t, axis=1), km.predict(x))
    assert km.score(x) == pytest.approx((x.astype(np.float64) @ c.T).max(axis=1).sum(), rel=1e-6)
    assert km.transform(x[:0]).shape == (0, 16) and km.score(x[:0]) == 0.0


def test_transform_and_score_euclidean(rng):
    x = (rng.standard_normal((1500, 9)) * 4).astype(np.float32)
    km = mudg_fast.KMeans(12, spherical=False, seed=0).fit(x)
    x64, c = x.astype(np.float64), km.cluster_centers_.astype(np.float64)
    dist = np.sqrt(((x64[:, None, :] - c[None]) ** 2).sum(-1))
    t = km.transform(x)
    assert t.dtype == np.float32
    np.testing.assert_allclose(t, dist, rtol=1e-6, atol=1e-5)
    clear = np.sort(dist, axis=1)[:, 1] - dist.min(axis=1) > 1e-3  # no near tie
    np.testing.assert_array_equal(np.argmin(t, axis=1)[clear], km.predict(x)[clear])
    assert km.score(x) == pytest.approx(-(dist.min(axis=1) ** 2).sum(), rel=1e-6)
    # on the training points, the score is minus the inertia
    assert km.score(x) == pytest.approx(-km.inertia_, rel=1e-5)


def test_fit_transform_equals_fit_then_transform(rng):
    x = unit_rows(rng, 500, 8)
    a = mudg_fast.KMeans(5, seed=4).fit_transform(x)
    b = mudg_fast.KMeans(5, seed=4).fit(x).transform(x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["predict", "transform", "score", "get_feature_names_out"])
def test_unfitted_raises_not_fitted_error(method):
    est = mudg_fast.KMeans(3)
    args = () if method == "get_feature_names_out" else (np.ones((2, 2)),)
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(est, method)(*args)
    with pytest.raises(RuntimeError):  # what the estimators raised before
        getattr(est, method)(*args)


def test_method_input_errors(rng):
    km = mudg_fast.KMeans(3).fit(unit_rows(rng, 20, 4))
    with pytest.raises(ValueError, match="X has 3 features, but KMeans is expecting 4 features"):
        km.predict(np.ones((2, 3)))
    with pytest.raises(ValueError, match="Reshape your data"):
        km.transform(np.ones(4))
    with pytest.raises(ValueError, match="Complex data not supported"):
        km.predict(np.ones((2, 4), dtype=complex))
    with pytest.raises(TypeError, match="not numbers"):
        km.predict(np.array([[1, 2, 3, {}]], dtype=object))
    objects = np.array([[1, 2, 3, 4.5]], dtype=object)  # numbers as Python objects are numbers
    np.testing.assert_array_equal(km.predict(objects), km.predict(objects.astype(np.float32)))
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse"):
        km.predict(scipy_sparse.csr_matrix(np.ones((2, 4))))


class _Frame:
    """A minimal data frame: named columns and the array protocol (what pandas gives numpy)."""

    def __init__(self, values, columns):
        self.values, self.columns = np.asarray(values), list(columns)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


def test_feature_names(rng):
    x = unit_rows(rng, 40, 3)
    km = mudg_fast.KMeans(2).fit(_Frame(x, ["a", "b", "c"]))
    assert km.feature_names_in_.dtype == object and list(km.feature_names_in_) == ["a", "b", "c"]
    np.testing.assert_array_equal(km.predict(_Frame(x, ["a", "b", "c"])), km.labels_)
    with pytest.raises(ValueError, match="must be in the same order"):
        km.predict(_Frame(x, ["c", "b", "a"]))
    with pytest.raises(ValueError, match="unseen at fit time:\n- z"):
        km.predict(_Frame(x, ["a", "b", "z"]))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        km.predict(x)
    km.fit(x)  # refitting on a plain array forgets the names
    assert not hasattr(km, "feature_names_in_")
    with pytest.warns(UserWarning, match="fitted without feature names"):
        km.predict(_Frame(x, ["a", "b", "c"]))


def test_core_works_without_sklearn():
    """With scikit-learn unimportable the estimators keep the same protocol on numpy alone."""
    code = textwrap.dedent("""
        import pickle, sys
        sys.modules["sklearn"] = None  # any import of scikit-learn now raises ImportError
        import numpy as np
        import mudg_fast
        from mudg_fast import _sklearn_protocol as proto
        assert not proto.HAVE_SKLEARN and "sklearn.base" not in sys.modules
        rng = np.random.default_rng(0)
        x = rng.standard_normal((300, 8)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        km = mudg_fast.KMeans(5, seed=1)
        try:
            km.predict(x)
            raise SystemExit("predict before fit did not raise")
        except proto.NotFittedError as e:
            assert isinstance(e, ValueError) and isinstance(e, AttributeError) and isinstance(e, RuntimeError)
        assert km.fit(x) is km and km.n_features_in_ == 8
        np.testing.assert_array_equal(km.predict(x), km.labels_)
        np.testing.assert_array_equal(km.fit_predict(x), km.labels_)
        np.testing.assert_array_equal(np.argmax(km.transform(x), axis=1), km.labels_)
        np.testing.assert_array_equal(km.fit_transform(x), km.transform(x))
        assert abs(km.score(x) - (x @ km.cluster_centers_.T).max(1).sum()) < 1e-3
        p = km.get_params()
        assert p["n_clusters"] == 5 and p["seed"] == 1 and p["spherical"] is True
        assert km.set_params(seed=2, n_clusters=4) is km and km.seed == 2
        try:
            km.set_params(bogus=1)
            raise SystemExit("set_params accepted an unknown name")
        except ValueError:
            pass
        assert repr(km) == "KMeans(n_clusters=4, seed=2)", repr(km)
        fresh = type(km)(**km.get_params())  # what clone does
        assert fresh.get_params() == km.get_params() and not hasattr(fresh, "cluster_centers_")
        back = pickle.loads(pickle.dumps(km))
        np.testing.assert_array_equal(back.predict(x), km.predict(x))
        pk = mudg_fast.PairedKMeans(4, seed=0).fit(x, x[::-1])
        assert pk.labels_.shape == (300,) and pk.transform(x).shape == (300, 4)
        try:
            km.predict(x[0])
            raise SystemExit("1-D input accepted")
        except ValueError as e:
            assert "Reshape your data" in str(e)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
