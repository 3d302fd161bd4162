"""Sphinx configuration of the course website (`make site`; see tools/site/build.py).

tools/site/build.py lays out the pages in build/site-src (the README as the home page, the notebooks with the
outputs of the test run, the glossary, the docs/ pages) and runs `sphinx-build -c docs`. Everything the pages need is
shipped with the site: MathJax comes from the sphinx-mathjax-offline package, the theme's fonts and icons from
pydata-sphinx-theme, the Colab badge from docs/_static, so the site works offline and loads nothing from the internet.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_repo = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
REPOSITORY = _repo.group(1) if _repo else ""

project = "Inside DeepSeek"
author = "Inside DeepSeek contributors"
copyright = "Inside DeepSeek contributors, MIT licence"
language = "en"

extensions = ["myst_nb", "sphinx-mathjax-offline"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "conf.py"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# The notebooks arrive executed (outputs of `make test`, or of tools/site/build.py's own run): never run them here.
nb_execution_mode = "off"
nb_output_stderr = "show"
nb_merge_streams = True
# Widgets are shown as their static figures (COURSE_WIDGETS=static); never load the widget manager from a CDN.
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = "Inside DeepSeek"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
# Light by default (the notebooks' figures have white backgrounds); an empty mode makes the theme log a console error.
html_context = {"default_mode": "light"}
html_theme_options = {
    "repository_url": REPOSITORY,
    "repository_branch": "main",
    "path_to_docs": "",
    "use_repository_button": bool(REPOSITORY),
    "use_download_button": False,   # pages link to the repository and to Colab instead
    "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    "home_page_in_toc": True,
    "show_toc_level": 2,
}
# MathJax 3 from the site itself (sphinx-mathjax-offline copies it to _static/mathjax); SVG output needs no web fonts.
mathjax3_config = {"tex": {"tags": "ams"}, "svg": {"fontCache": "global"}}


def setup(app):
    def local_mathjax(app, config):
        config.mathjax_path = "mathjax/tex-svg.js"
    app.connect("config-inited", local_mathjax, priority=900)
