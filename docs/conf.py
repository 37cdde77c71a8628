"""Sphinx configuration of pyro_nf's API reference (the same tool Pyro's own documentation uses)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "pyro_nf"
author = "the pyro_nf developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
# torch's and Pyro's own docstrings, inherited into ours, are not ours to fix
autodoc_inherit_docstrings = False
