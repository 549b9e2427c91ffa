"""Sphinx configuration of lcstack's documentation (built offline by tests/test_docs.py with -W)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

from lcstack._version import __version__  # noqa: E402

project = "lcstack"
author = "lcstack contributors"
copyright = "lcstack contributors"  # noqa: A001
release = version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "config_reference",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc sections carry the types
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# The build is offline by default (CI, tests); LCSTACK_DOCS_ONLINE=1 links to the other projects' docs.
intersphinx_mapping = (
    {
        "python": ("https://docs.python.org/3", None),
        "xarray": ("https://docs.xarray.dev/en/stable", None),
        "dask": ("https://docs.dask.org/en/stable", None),
        "odc-stac": ("https://odc-stac.readthedocs.io/en/latest", None),
    }
    if os.environ.get("LCSTACK_DOCS_ONLINE")
    else {}
)

html_theme = "pydata_sphinx_theme"
html_title = f"lcstack {version}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "github_url": "https://github.com/lcstack/lcstack",
}
html_static_path: list[str] = []
