"""Every assignment through the real grading CLI: each sample submission of its spec (the
full solution, the blank release, and its partial and buggy ones) scores exactly the
points it deserves, and every lost point carries a message. Assignment 1 is graded with
a larger class in test_grading.py and test_adversarial.py."""

import csv

import pytest

from autograder import spec
from autograder.samples import write_samples
from conftest import run_cli

LATER = [a for a in spec.available() if a != "01_attention"]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", LATER)
def test_samples_score_what_they_deserve(assignment, tmp_path):
    expected = write_samples(assignment, tmp_path / "submissions")
    assert expected["solution"] == spec.load(assignment).max_points and expected["blank"] == 0
    run_cli("grade", assignment, "--submissions", str(tmp_path / "submissions"),
            "--out", str(tmp_path / "out"), "--workers", "2", "--quiet", timeout=1500)
    totals, rows = {}, []
    with open(tmp_path / "out" / "grades.csv") as f:
        for r in csv.DictReader(f):
            totals[r["student"]] = totals.get(r["student"], 0) + float(r["points"])
            rows.append(r)
    assert totals == expected, {s: (totals.get(s), expected[s]) for s in expected}
    for r in rows:
        assert (float(r["points"]) < float(r["max_points"])) == bool(r["message"]), r
