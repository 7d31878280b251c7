"""Sphinx configuration of pnode's documentation site (``make docs`` builds it into docs/_build/html)."""

from __future__ import annotations

import os
import re
import sys

# Build against this checkout's pnode, whatever is installed in the environment.
sys.path.insert(0, os.path.abspath(".."))

# The method table, generated from pnode itself for docs/api/pnode.md (under _build: never committed).
GENERATED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build", "generated")
os.makedirs(GENERATED, exist_ok=True)
import pnode  # noqa: E402

with open(os.path.join(GENERATED, "method_table.txt"), "w", encoding="utf-8") as handle:
    handle.write(pnode.method_table() + "\n")

project = "pnode"
author = "pnode developers"
copyright = "2026, pnode developers"   # noqa: A001 - Sphinx's name
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: anchors for headings down to ### so that [text](page.md#a-heading) links resolve (and are checked).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]
# docs/benchmarks.md is appended to by benchmark scripts and several people: a skipped heading level there
# must not fail the build (every other warning does: -W).
suppress_warnings = ["myst.header"]

# NumPy-style docstrings.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_attr_annotations = True
# "Attributes" sections as fields of the class: properties documented with :members: are not duplicated
napoleon_use_ivar = True

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = "pnode"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_copy_source = False
pygments_style = "friendly"
# "--iters" stays two hyphens and quotes stay straight: the pages are full of command lines.
smartquotes = False


# pnode's docstrings define no reST substitutions, so "|x|" in their prose is an absolute value, not a
# substitution reference (which docutils would report as undefined): escape it outside inline literals,
# doctest lines and literal blocks.
_ABSOLUTE = re.compile(r"(?<![\\`])\|(?=[^|\s`][^|`]*\|)")


def _escape_absolute_values(app, what, name, obj, options, lines):
    literal_indent = None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None and line.strip() and indent <= literal_indent:
            literal_indent = None
        stripped = line.strip()
        if literal_indent is not None or stripped.startswith((">>>", "...")):
            continue
        parts = line.split("``")
        parts[::2] = [_ABSOLUTE.sub(r"\\|", part) for part in parts[::2]]   # even parts: outside ``...``
        lines[i] = "``".join(parts)
        if stripped.endswith("::"):
            literal_indent = indent


def setup(app):
    app.connect("autodoc-process-docstring", _escape_absolute_values)
