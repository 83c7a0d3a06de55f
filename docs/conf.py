"""Sphinx configuration for the mudg_fast documentation.

Build: ``pip install ".[docs]"`` then ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(``-b doctest`` runs the code in the pages). The example gallery runs every script in
``examples/`` on each build, offline, in seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import mudg_fast  # noqa: E402  (installed package: the docs describe what users get)

project = "mudg_fast"
author = "the mudg_fast developers"
copyright = "2026, the mudg_fast developers"
release = mudg_fast.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "mudg_cli",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py.md5", "auto_examples/*.zip"]
templates_path = ["_templates"]

html_theme = "furo"
html_title = f"mudg_fast {release}"

autosummary_generate = True
# scikit-learn adds set_<method>_request methods (metadata routing) to every estimator class; its
# docstrings point into scikit-learn's own glossary, so they are left to scikit-learn's docs.
_SKLEARN_ROUTING = ",".join(f"set_{m}_request" for m in
                            ("fit", "partial_fit", "predict", "score", "transform", "fit_predict"))
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False,
                           "exclude-members": _SKLEARN_ROUTING}
autodoc_typehints = "none"  # numpydoc renders the types from the docstrings
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# The pages run their code blocks under `-b doctest`: everything they need is offline.
doctest_global_setup = """
import numpy as np
import mudg_fast
"""

sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r".*\.py$",  # run every example on every build: none may rot
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "within_subsection_order": "FileNameSortKey",
}

myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
