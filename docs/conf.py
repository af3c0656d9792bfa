"""Sphinx configuration of the vaeprobe site (``make docs`` builds it into docs/_build/html).

Offline builds: the intersphinx inventories of Python, torch, numpy and xarray are fetched only
when their host resolves (or read from ``docs/_intersphinx/<name>.inv`` when such a cached file
exists); where neither is possible the mapping is left out, said once in the build log, and
references to those projects render as plain text (``nitpick_ignore_regex`` below covers only
those outside names; every reference to a vaeprobe name must still resolve).
"""

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VAEPROBE_OFFLINE", "1")

import vaeprobe  # noqa: E402

project = "vaeprobe"
author = "the vaeprobe authors"
copyright = "2026, the vaeprobe authors"
release = version = vaeprobe.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "vaeprobe_docs",
]

exclude_patterns = ["_build", "generated/*.rst", "paper-patches32/README.md",
                    "paper-patches32/claims.md", "realworld-audits/README.md",
                    "gallery/README.txt", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
default_role = "py:obj"
nitpicky = True
smartquotes = False  # "--help" stays two hyphens on a site full of command lines
suppress_warnings = []

# numpydoc: parse every public docstring; no class member tables (each name has its page)
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = False
autosummary_generate = False
autodoc_typehints = "none"
autodoc_default_options = {"member-order": "bysource"}
add_module_names = True

# intersphinx: offline-first (see the module docstring)
INTERSPHINX = {
    "python": "https://docs.python.org/3/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "numpy": "https://numpy.org/doc/stable/",
    "xarray": "https://docs.xarray.dev/en/stable/",
}
EXTERNAL_PATTERNS = {  # reference targets that belong to each outside project
    "python": [r"(builtins\.)?(int|float|str|bool|bytes|dict|list|tuple|set|callable|object|"
               r"type|None|Path|os\.PathLike|pathlib\..*|collections\..*|typing\..*|"
               r"Callable|Iterable|Iterator|Sequence|Mapping|Any|optional|default|"
               r"ValueError|TypeError|KeyError|RuntimeError|FileNotFoundError|Exception|"
               r"argparse\..*|io\..*|dataclasses\..*|contextlib\..*)"],
    "torch": [r"(torch|nn|Tensor)(\..*)?"],
    "numpy": [r"(numpy|np)(\..*)?", r"ndarray"],
    "xarray": [r"(xarray|xr)(\..*)?", r"(Dataset|DataArray)"],
}


def _reachable(url: str) -> bool:
    try:
        socket.setdefaulttimeout(3)
        socket.getaddrinfo(urlparse(url).hostname, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


intersphinx_mapping = {}
intersphinx_skipped = []
nitpick_ignore_regex = []
for _name, _url in INTERSPHINX.items():
    _cached = HERE / "_intersphinx" / f"{_name}.inv"
    if _cached.exists():
        intersphinx_mapping[_name] = (_url, str(_cached))
    elif _reachable(_url):
        intersphinx_mapping[_name] = (_url, None)
    else:
        intersphinx_skipped.append(_name)
    if _name not in intersphinx_mapping:
        nitpick_ignore_regex += [(r"py:.*", pattern) for pattern in EXTERNAL_PATTERNS[_name]]
if intersphinx_skipped:  # said once, at the top of the build log (not a warning: expected offline)
    print(f"intersphinx: no inventory reachable or cached for {', '.join(intersphinx_skipped)}; "
          f"their names render as code (cache one as docs/_intersphinx/<name>.inv)")
# plain words numpydoc turns into references in "Parameters" types ("int or None", "shape (N,)")
nitpick_ignore_regex += [(r"py:.*", r"(or|of|shape|optional|default|None|array-like|"
                                    r"file-like|path-like|\(.*|.*\))")]
intersphinx_timeout = 5

# sphinx-gallery: the scripts in gallery/ run at build time (each under 30 s on 2 cores)
sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "show_memory": False,
    "min_reported_time": 1,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
}

html_theme = "pydata_sphinx_theme"
html_title = f"vaeprobe {release}"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_theme_options = {
    "navbar_end": ["navbar-icon-links"],
    "secondary_sidebar_items": ["page-toc"],
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sourcelink = False
html_context = {"default_mode": "light"}
