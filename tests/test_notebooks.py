"""Every notebook in the repository executes on CPU.

* ``solutions/``: top to bottom without an error; every public and hidden check passes.
* ``assignments/`` (the blank release): the only errors are the exercises' own
  ``NotImplementedError`` and the public checks reporting them.
* ``course/``: top to bottom without an error. The lectures are executed here only when the
  website's build is not part of the run: ``tests/test_site.py`` builds the site with
  ``GENLAB_QUICK=1`` on CPU, executing every lecture with ``nb_execution_raise_on_error``
  (an error fails the build) and checking that each lecture page shows outputs, figures and
  no error output. Executing them twice would cost the suite about a minute and a half.

Notebooks read ``GENLAB_QUICK=1`` (set here) to shrink any training they do.  How long they take
is measured by ``bench/notebooks.py`` against its budget, never asserted here: a busy machine
is slow, not wrong.  The only limit is a hang guard per cell, far above any measured time.
"""

import os
from pathlib import Path
import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted(p.relative_to(REPO) for folder in ("solutions", "assignments", "course")
                   for p in (REPO / folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
# The lectures are executed by the website's build (tests/test_site.py) when it runs too.
SITE_BUILDS_LECTURES = (REPO / "tests" / "test_site.py").exists()
EXECUTED_HERE = [p for p in NOTEBOOKS if not (SITE_BUILDS_LECTURES and p.parts[0] == "course")]
BUDGET_SECONDS = 120  # what bench/notebooks.py holds a quick run to (measured, not tested)
CELL_HANG_GUARD_SECONDS = 900  # a cell still running after this is stuck


def execute(path):
    nb = nbformat.read(REPO / path, as_version=4)
    os.environ["GENLAB_QUICK"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=CELL_HANG_GUARD_SECONDS, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str((REPO / path).parent)}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def errors(nb):
    return [(i, out) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "error"]


def text_of(nb):
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXECUTED_HERE, ids=str)
def test_notebook_executes(path):
    nb, seconds = execute(path)
    print(f"{path}: {seconds:.1f} s")  # shown with -s; bench/notebooks.py keeps the record
    problems = errors(nb)
    if path.parts[0] == "assignments":
        for i, out in problems:
            assert out.ename == "NotImplementedError" or (
                out.ename == "AssertionError" and "not implemented" in out.evalue), \
                f"{path} cell {i}: unexpected {out.ename}: {out.evalue}"
        assert problems, "a blank release should stop at its exercises"
    else:
        assert not problems, "\n".join(f"{path} cell {i}: {o.ename}: {o.evalue}" for i, o in problems)
    if path.parts[0] == "solutions":
        text = text_of(nb)
        assert "✗" not in text, f"{path}: a hidden check failed on the solution:\n{text}"
        assert text.count("✓") >= 2


def test_the_site_build_executes_every_lecture_and_fails_on_an_error():
    """What lets this file leave the lectures to tests/test_site.py."""
    import runpy

    if not SITE_BUILDS_LECTURES:
        pytest.skip("no website test: the lectures are executed above")
    conf = runpy.run_path(str(REPO / "site" / "conf.py"))
    assert conf["nb_execution_mode"] == "force"
    assert conf["nb_execution_raise_on_error"] is True
    assert not any(Path(p).parts[0] == "course" or "lectures" in p
                   for p in conf["nb_execution_excludepatterns"]), conf["nb_execution_excludepatterns"]
    lectures = sorted(p for p in NOTEBOOKS if p.parts[0] == "course")
    assert lectures and not set(lectures) & set(EXECUTED_HERE)
