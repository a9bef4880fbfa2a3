"""Sphinx configuration of the genlab course website.

Build it with ``make site`` (or ``sphinx-build -W --keep-going -b html site site/_build/html``).

The pages come from three places of the repository:

- ``site/*.md``: the home page, the syllabus (which includes ``course/README.md``), the
  lecture and assignment indexes and the instructors' page on grading;
- ``course/*.ipynb``: the lectures, **executed** during the build by myst-nb;
- ``assignments/*/*.ipynb``: the student release, shown **as released** (not executed:
  its exercises raise ``NotImplementedError`` until a student fills them in).

Sphinx only reads files under its source folder, so the notebooks are copied into
``site/lectures/`` and ``site/assignments/`` when this file is loaded (those two folders
are generated and git-ignored; edit the originals).

The lectures run in full (``GENLAB_QUICK=0``) unless the environment says otherwise: what
the site shows is what the lectures' prose describes.  The first build trains their models
(about 10 minutes on a shared 2-core CPU, BENCHMARKS.md); later builds load them from the
checkpoint cache of ``genlab.checkpoints`` and take two to three minutes.  ``GENLAB_QUICK=1`` (the test suite's
build) cuts training to seconds, and then every output of a lecture carries a badge saying
that it comes from a quick run (``genlab.quick.mark_results``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent

os.environ.setdefault("GENLAB_QUICK", "0")  # inherited by the kernels myst-nb starts: full runs
os.environ.setdefault("MPLBACKEND", "Agg")  # the notebooks choose `%matplotlib inline` themselves


def _sync(sources: dict[str, Path], folder: Path) -> None:
    """Make ``folder`` hold exactly ``sources`` (relative name -> original), copying only changes."""
    folder.mkdir(exist_ok=True)
    for name, original in sources.items():
        copy = folder / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.exists() or copy.read_bytes() != original.read_bytes():
            shutil.copyfile(original, copy)
    for stale in sorted(folder.rglob("*.ipynb"), reverse=True):
        if stale.relative_to(folder).as_posix() not in sources:
            stale.unlink()
    for empty in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(empty.iterdir()):
            empty.rmdir()


def _real(paths):
    return sorted(p for p in paths if ".ipynb_checkpoints" not in p.parts)


_sync({p.name: p for p in _real((ROOT / "course").glob("*.ipynb"))}, SITE / "lectures")
_sync({p.relative_to(ROOT / "assignments").as_posix(): p
       for p in _real((ROOT / "assignments").glob("*/*.ipynb"))}, SITE / "assignments")

# -- project -----------------------------------------------------------------------------

project = "genlab"
author = "the genlab course team"
copyright = "the genlab course team"
release = "0.1.0"

# sphinx-mathjax-offline ships MathJax 3 into _static: formulas render without a CDN
# (a student's laptop offline, the headless browser of tests/test_site.py).
extensions = ["myst_nb", "sphinx-mathjax-offline"]
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]  # widget-state mimetypes, if any, are not rendered

# -- MyST markdown and notebooks ------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

nb_execution_mode = "force"  # the lectures run at every build: what the site shows is what ran
nb_execution_excludepatterns = ["assignments/*/*.ipynb"]  # the release is shown unexecuted (matched from the right)
nb_execution_timeout = 1200  # per cell; a full (GENLAB_QUICK=0) first run trains for minutes
nb_execution_raise_on_error = True  # an error in a lecture fails the build
nb_execution_show_tb = True
nb_merge_streams = True

# -- HTML -----------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "genlab · generative AI, hands on"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_static_path = ["_static"]
html_css_files = ["genlab.css"]
html_use_index = False  # no index entries: an empty genindex page would only confuse
html_last_updated_fmt = None
