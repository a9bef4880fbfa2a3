"""Every assignment through the real grading CLI: each sample submission of its spec (the
full solution, the blank release, and its partial and buggy ones) scores exactly the
points it deserves, and every lost point carries a message. Assignment 1 is graded with
a larger class in test_grading.py and test_adversarial.py."""

import csv
import json

import nbformat
import pytest

from autograder import spec
from autograder.course import REPO
from autograder.grade import manual_answers
from autograder.samples import write_samples
from conftest import run_cli

LATER = [a for a in spec.available() if a != "01_attention"]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", LATER)
def test_samples_score_what_they_deserve(assignment, tmp_path):
    expected = write_samples(assignment, tmp_path / "submissions")
    assert expected["solution"] == spec.load(assignment).max_points and expected["blank"] == 0
    run_cli("grade", assignment, "--submissions", str(tmp_path / "submissions"),
            "--out", str(tmp_path / "out"), "--workers", "2", "--quiet",
            "--cell-timeout", "180", timeout=1500)  # training cells on a busy machine
    totals, rows = {}, []
    with open(tmp_path / "out" / "grades.csv") as f:
        for r in csv.DictReader(f):
            totals[r["student"]] = totals.get(r["student"], 0) + float(r["points"])
            rows.append(r)
    assert totals == expected, {s: (totals.get(s), expected[s]) for s in expected}
    for r in rows:
        assert (float(r["points"]) < float(r["max_points"])) == bool(r["message"]), r

    # written answers: the solution's waits for the instructor, the blank release's scores 0
    release = nbformat.read(REPO / "assignments" / assignment / spec.load(assignment).notebook, as_version=4)
    graded_cells = {c.cell for c in spec.load(assignment).checks}
    manual = manual_answers(release, graded_cells)
    if manual:
        from nbgrader.api import Gradebook

        notebook = spec.load(assignment).notebook.removesuffix(".ipynb")
        with Gradebook(f"sqlite:///{tmp_path / 'out' / 'gradebook.db'}") as gb:
            for student, answered in (("solution", True), ("blank", False)):
                output = json.loads((tmp_path / "out" / student / "results.json").read_text())["output"]
                for grade_id, (points, _) in manual.items():
                    grade = gb.find_grade(grade_id, notebook, assignment, student)
                    assert grade.needs_manual_grade == answered, (student, grade_id)
                    assert grade.auto_score == (None if answered else 0), (student, grade_id)
                    said = "graded by hand" if answered else "left as released"
                    assert f"`{grade_id}` ({points:g} points): {said}" in output, output
