"""Every public name has a docstring: what ``mudg_fast`` exports, what its public submodules
export, and every public method and property of the public classes (the API reference of the
docs is generated from them)."""

import importlib
import inspect

import pytest

import mudg_fast

# The submodules of the API reference (docs/api.rst); their __all__ (or, without one, their
# public functions and classes defined there) is public.
SUBMODULES = ["augment", "build", "datasets", "engines", "evaluation", "index", "interop", "kmeans",
              "outofcore", "parts", "pipeline", "quantizer", "recall", "reranking", "retrieve", "search",
              "select", "shards", "synthetic", "train"]
NEEDS_TORCH = {"evaluation", "train", "ClipEncoder", "evaluate", "finetune"}


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _doc(obj) -> str:
    return (inspect.getdoc(obj) or "").strip()


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module.__name__]
    return list(names)


def _objects():
    """(qualified name, object) of every public name to check."""
    out = []
    for name in mudg_fast.__all__:
        if name == "__version__" or (name in NEEDS_TORCH and not _has_torch()):
            continue
        out.append((f"mudg_fast.{name}", getattr(mudg_fast, name)))
    for sub in SUBMODULES:
        if sub in NEEDS_TORCH and not _has_torch():
            continue
        module = importlib.import_module(f"mudg_fast.{sub}")
        out.append((module.__name__, module))
        for name in _public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj):
                out.append((f"{module.__name__}.{name}", obj))
    return out


def _members(cls):
    """Public methods and properties defined by cls (inherited ones are checked on their class)."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (property, staticmethod, classmethod)) or inspect.isfunction(value):
            yield name, value


def test_the_check_sees_the_public_api():
    names = {n for n, _ in _objects()}
    assert {"mudg_fast.IVFIndex", "mudg_fast.ShardedIndex", "mudg_fast.merge_parts", "mudg_fast.rerank",
            "mudg_fast.available_simd_levels", "mudg_fast.quantizer.quantizer_agreement",
            "mudg_fast.parts.open_index"} <= names
    members = {n for n, _ in _members(mudg_fast.IVFIndex)}
    assert {"ntotal", "search", "quantizer_probe", "set_quantizer"} <= members


def test_every_public_name_has_a_docstring():
    missing = sorted({name for name, obj in _objects() if not _doc(obj)})
    assert not missing, "no docstring: " + ", ".join(missing)


def test_every_public_method_and_property_has_a_docstring():
    classes = {id(obj): (name, obj) for name, obj in _objects() if inspect.isclass(obj)}
    missing = []
    for name, cls in classes.values():
        if not cls.__module__.startswith("mudg_fast"):
            continue  # a re-exported class of another library
        for member, value in _members(cls):
            target = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if not _doc(target):
                missing.append(f"{name}.{member}")
    assert not missing, "no docstring: " + ", ".join(sorted(missing))


@pytest.mark.parametrize("bad", [lambda: None, property(lambda self: 0)])
def test_the_check_catches_a_missing_docstring(bad):
    class Public:
        """Documented class."""

    Public.member = bad
    assert [n for n, v in _members(Public) if not _doc(v)] == ["member"]
