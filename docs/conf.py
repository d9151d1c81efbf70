"""Sphinx configuration: the API reference (autodoc), the guides (MyST Markdown) and the
notebooks with their stored outputs (myst-nb, never executed during the build).

Build with ``make docs``; ``tests/test_docs.py`` builds with warnings as errors.
"""

import pyro_genmodels

project = "pyro-genmodels"
author = "the pyro-genmodels developers"
copyright = "2026, the pyro-genmodels developers"
release = version = pyro_genmodels.__version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]

nb_execution_mode = "off"  # the notebooks are committed executed: render what they hold
nb_merge_streams = True
nb_render_markdown_format = "myst"  # Markdown outputs (the results tables) as MyST, with tables
myst_heading_anchors = 3  # "#the-command-line" links, as on GitHub
myst_enable_extensions = ["colon_fence"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autoclass_content = "both"

html_theme = "alabaster"
html_title = f"pyro-genmodels {release}"
html_theme_options = {"description": "Deep generative models for images as Pyro programs"}
