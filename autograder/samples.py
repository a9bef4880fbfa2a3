"""Sample submissions made from an assignment's source and release (for ``make demo`` and tests).

Each sample is the *release* notebook with some solution cells filled in from the
source, as a student would hand it in (without nbgrader's solution markers), optionally
with a deliberate bug. The spec says which checks each sample must fail.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from autograder import spec as spec_module
from autograder.course import REPO

MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def without_markers(source: str) -> str:
    return "".join(line for line in source.splitlines(keepends=True)
                   if line.strip() not in MARKERS)


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def make_sample(assignment: str, how: dict, release: Path | None = None):
    """The release notebook (from ``release``, default ``assignments/<assignment>``) with the
    solution cells ``how['solved']`` filled in and ``how['edit']`` ({grade_id: [old, new]}) applied."""
    spec = spec_module.load(assignment)
    source = nbformat.read(REPO / "solutions" / assignment / spec.notebook, as_version=4)
    release = release or REPO / "assignments" / assignment
    nb = nbformat.read(release / spec.notebook, as_version=4)
    solutions = {_grade_id(c): c.source for c in source.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    solved = set(solutions) if how["solved"] == "all" else set(how["solved"])
    unknown = solved - set(solutions)
    if unknown:
        raise ValueError(f"sample names unknown solution cells: {sorted(unknown)}")
    edits = dict(how.get("edit", {}))
    for cell in nb.cells:
        grade_id = _grade_id(cell)
        if grade_id in solved:
            cell.source = without_markers(solutions[grade_id])
        if grade_id in edits:
            old, new = edits.pop(grade_id)
            if old not in cell.source:
                raise ValueError(f"sample edit: {old!r} not found in cell {grade_id}")
            cell.source = cell.source.replace(old, new)
    if edits:
        raise ValueError(f"sample edits for cells not in the notebook: {sorted(edits)}")
    return nb


def expected_points(assignment: str, how: dict) -> int:
    spec = spec_module.load(assignment)
    lost = {c.name for c in spec.checks} if how["lost"] == "all" else set(how["lost"])
    return sum(c.points for c in spec.checks if c.name not in lost)


def write_samples(assignment: str, submissions: Path, release: Path | None = None) -> dict[str, int]:
    """Write every sample of ``assignment`` in nbgrader's layout; return the points each deserves."""
    spec = spec_module.load(assignment)
    expected = {}
    for name, how in spec.samples.items():
        path = Path(submissions) / name / assignment / spec.notebook
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(make_sample(assignment, how, release), path)
        expected[name] = expected_points(assignment, how)
    return expected
