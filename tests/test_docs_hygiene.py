"""The repository explains itself: no file points the reader to a document it does not contain.

The method is described in docs/method.rst; code, comments, docstrings and pages refer to its
numbered sections ("docs/method.rst §1"), never to an outside briefing.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Built from pieces so that this file does not match itself.
_WORD = "SP" + "EC"
OUTSIDE_REFERENCE = re.compile(r"\b" + _WORD + r"(\s*§|\s+section\b|\.md\b)", re.IGNORECASE)

SCANNED = ["python", "cpp", "docs", "tests", "benchmarks", "examples", "README.md"]
SKIPPED_DIRS = {"_build", "generated", "auto_examples", "__pycache__", ".pytest_cache"}
TEXT_SUFFIXES = {".py", ".pyi", ".cpp", ".hpp", ".h", ".cc", ".txt", ".rst", ".md", ".toml", ".cfg",
                 ".cmake", ".json", ".yaml", ".yml", ".in", ""}


def scanned_files():
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            yield path
            continue
        for f in sorted(path.rglob("*")):
            if not f.is_file() or SKIPPED_DIRS.intersection(f.relative_to(ROOT).parts):
                continue
            if f.suffix in TEXT_SUFFIXES or f.name == "CMakeLists.txt":
                yield f


def test_scan_covers_the_package_and_the_core():
    files = {f.relative_to(ROOT).as_posix() for f in scanned_files()}
    for expected in ["python/mudg_fast/__init__.py", "python/mudg_fast/select.py",
                     "cpp/include/mudg_fast/kmeans.hpp", "docs/method.rst", "README.md",
                     "python/mudg_fast/data/descriptors.txt"]:
        assert expected in files


@pytest.mark.parametrize("text", [_WORD + " §1", _WORD + " §4.2", _WORD + " section 2",
                                  "see " + _WORD + ".md", _WORD.lower() + " Section 3"])
def test_pattern_catches_outside_references(text):
    assert OUTSIDE_REFERENCE.search(text)


@pytest.mark.parametrize("text", ["SPECIAL_VALUES", "docs/method.rst §1", "the specification",
                                  "inspect section 2"])
def test_pattern_leaves_ordinary_text_alone(text):
    assert not OUTSIDE_REFERENCE.search(text)


def test_no_file_refers_to_an_outside_method_document():
    hits = []
    for f in scanned_files():
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_REFERENCE.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not hits, ("refer to the section of docs/method.rst instead (e.g. 'docs/method.rst §1'):\n"
                      + "\n".join(hits))
