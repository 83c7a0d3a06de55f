"""The scikit-learn estimator protocol, with or without scikit-learn.

When scikit-learn is importable the estimators derive from its ``BaseEstimator`` and mixins and
raise its ``NotFittedError``, so ``clone``, ``Pipeline``, ``GridSearchCV`` and ``check_estimator``
treat them like any scikit-learn estimator. Without it, look-alike bases give the same protocol
(``get_params`` / ``set_params``, ``fit_predict``, ``fit_transform``, the same repr and errors), so
the core keeps working with numpy alone.

Also here: the input checks every estimator method shares (``check_input``,
``record_features``), written to give
scikit-learn's error messages for the cases its conventions fix (sparse, complex and 1-D input,
a feature count or feature names that differ from ``fit``'s).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np

from ._arrays import as_matrix

__all__ = ["HAVE_SKLEARN", "BaseEstimator", "ClusterMixin", "TransformerMixin", "NotFittedError",
           "EstimatorNotFittedError", "check_fitted", "check_input", "record_features"]

try:
    from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
    from sklearn.exceptions import NotFittedError
    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False

    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]  # the stand-in when scikit-learn is not installed
        """Raised by a method that needs a fitted estimator (scikit-learn's class, when it is
        installed, has the same two bases)."""

    def _differs(value, default) -> bool:
        if value is default:
            return False
        try:
            return bool(value != default)
        except (TypeError, ValueError):  # arrays compare elementwise
            return True

    class BaseEstimator:  # type: ignore[no-redef]  # the stand-in when scikit-learn is not installed
        """Parameters are the constructor's keyword arguments, stored unchanged as attributes."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values()
                          if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

        def get_params(self, deep: bool = True) -> dict:
            out: dict[str, Any] = {}
            for name in self._get_param_names():
                value = getattr(self, name)
                if deep and hasattr(value, "get_params") and not isinstance(value, type):
                    out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
                out[name] = value
            return out

        def set_params(self, **params):
            valid = self.get_params(deep=True)
            nested: dict = {}
            for key, value in params.items():
                name, _, sub = key.partition("__")
                if name not in valid:
                    raise ValueError(f"Invalid parameter {name!r} for estimator {self!r}. Valid parameters "
                                     f"are: {self._get_param_names()!r}.")
                if sub:
                    nested.setdefault(name, {})[sub] = value
                else:
                    setattr(self, name, value)
                    valid[name] = value
            for name, sub_params in nested.items():
                valid[name].set_params(**sub_params)
            return self

        def __repr__(self):
            sig = inspect.signature(type(self).__init__)
            changed = [f"{name}={getattr(self, name)!r}" for name, p in sig.parameters.items()
                       if name in self._get_param_names() and _differs(getattr(self, name), p.default)]
            return f"{type(self).__name__}({', '.join(changed)})"

    class ClusterMixin:  # type: ignore[no-redef]  # the stand-in when scikit-learn is not installed
        pass

    class TransformerMixin:  # type: ignore[no-redef]  # the stand-in when scikit-learn is not installed
        def fit_transform(self, X, y=None, **fit_params):
            return self.fit(X, y, **fit_params).transform(X)


class EstimatorNotFittedError(NotFittedError, RuntimeError):
    """What a method of an unfitted estimator raises: a NotFittedError (so a ValueError and an
    AttributeError, as in scikit-learn), and a RuntimeError as these estimators raised before they
    followed scikit-learn's conventions."""


def check_fitted(estimator, attribute: str) -> None:
    """Raises EstimatorNotFittedError unless ``fit`` has set ``attribute``."""
    if not hasattr(estimator, attribute):
        raise EstimatorNotFittedError(f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
                             "appropriate arguments before using this estimator.")


def _feature_names(x):
    """Column names of a data frame as an object array, when they are all strings; else None."""
    columns = getattr(x, "columns", None)
    if columns is None or isinstance(x, np.ndarray):
        return None
    names = np.asarray(list(columns), dtype=object)
    is_str = [isinstance(n, str) for n in names]
    if names.size and all(is_str):
        return names
    if any(is_str):
        raise TypeError("Feature names are only supported if all input features have string names, but "
                        f"the input has {sorted({type(n).__name__ for n in names})} as feature name types. "
                        "Convert all column names to str (X.columns = X.columns.astype(str)).")
    return None


def _check_feature_names(estimator, names) -> None:
    cls = type(estimator).__name__
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is None and names is None:
        return
    if fitted is None:
        warnings.warn(f"X has feature names, but {cls} was fitted without feature names", UserWarning,
                      stacklevel=4)
        return
    if names is None:
        warnings.warn(f"X does not have valid feature names, but {cls} was fitted with feature names",
                      UserWarning, stacklevel=4)
        return
    if len(fitted) == len(names) and (fitted == names).all():
        return
    msg = "The feature names should match those that were passed during fit.\n"
    unseen = sorted(set(names) - set(fitted))
    missing = sorted(set(fitted) - set(names))

    def listing(items):
        shown = "".join(f"- {n}\n" for n in items[:5])
        return shown + ("- ...\n" if len(items) > 5 else "")

    if unseen:
        msg += "Feature names unseen at fit time:\n" + listing(unseen)
    if missing:
        msg += "Feature names seen at fit time, yet now missing:\n" + listing(missing)
    if not unseen and not missing:
        msg += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(msg)


def check_input(estimator, x, *, fitting: bool, name: str = "X", dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 matrix for a method of ``estimator``.

    fitting=False (every method but ``fit``): the estimator must be fitted, ``x`` may have zero
    rows, and its feature names and count must match those ``fit`` saw (``record_features``).
    ``dim``: the number of columns ``x`` must have (fit's second array).
    """
    if hasattr(x, "tocsr") or hasattr(x, "toarray"):  # scipy.sparse matrices and arrays
        raise TypeError(f"{name} is a sparse matrix, but sparse input is not supported: pass a dense array "
                        f"({name}.toarray())")
    if not fitting:
        check_fitted(estimator, "n_features_in_")
        _check_feature_names(estimator, _feature_names(x))
    a = np.asarray(x)
    if a.dtype == object:  # numbers held as Python objects (a list of mixed types, a data frame)
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name} holds values that are not numbers ({e}); pass a numeric array") from None
    if a.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {a.dtype}; pass real values")
    if a.ndim == 1:
        raise ValueError(f"Expected a 2-D array of shape (n_samples, n_features) for {name}, got a 1-D array "
                         f"of shape {a.shape}. Reshape your data either using array.reshape(-1, 1) if it "
                         "has a single feature or array.reshape(1, -1) if it contains a single sample.")
    if a.ndim == 2 and a.shape[1] == 0:
        raise ValueError(f"{name} has zero columns: 0 feature(s) (shape={a.shape}) while a minimum of 1 is "
                         "required; vectors need at least one dimension")
    if not fitting and a.ndim == 2 and a.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {a.shape[1]} features, but {type(estimator).__name__} is expecting "
                         f"{estimator.n_features_in_} features as input.")
    return as_matrix(a, name=name, dim=dim, allow_empty=not fitting)


def record_features(estimator, x, n_features: int) -> None:
    """After a successful ``fit`` on ``x``: sets ``n_features_in_``, and ``feature_names_in_`` when
    ``x`` is a data frame with string column names (removes a stale one otherwise)."""
    estimator.n_features_in_ = int(n_features)
    names = _feature_names(x)
    if names is None:
        estimator.__dict__.pop("feature_names_in_", None)
    else:
        estimator.feature_names_in_ = names
