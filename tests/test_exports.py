"""Issue 19: every export comes from the gradebook, for the whole class, after every run.

One class of assignment 1 (the solution, a blank notebook, the polarity bug, and the
solution saved without cell ids) is graded through the CLI once: a first run is stopped
with SIGTERM in the middle, the second finishes it. The tests then regrade one student,
grade by hand through nbgrader's gradebook API (as formgrader does), run ``export``, and
check that grades.csv, canvas.csv, every results.json and the gradebook agree."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import nbformat
import numpy as np
import pytest

from autograder import spec
from autograder.samples import make_sample
from conftest import REPO, run_cli

A = "01_attention"
SPEC = spec.load(A)
NOTEBOOK_ID = SPEC.notebook.replace(".ipynb", "")
SAMPLES = {"solution": {"solved": "all"}, "blank": {"solved": []},
           "polarity": SPEC.samples["polarity"]}

# Gradescope's results.json, as documented at
# https://gradescope-autograders.readthedocs.io/en/latest/specs/ ("Output format"): only
# the documented fields, each with its documented type or values.
VISIBILITY = {"enum": ["visible", "hidden", "after_due_date", "after_published"]}
GRADESCOPE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "anyOf": [{"required": ["score"]}, {"required": ["tests"]}],
    "properties": {
        "score": {"type": "number"},
        "execution_time": {"type": "number"},
        "output": {"type": "string"},
        "output_format": {"type": "string"},
        "test_output_format": {"type": "string"},
        "test_name_format": {"type": "string"},
        "visibility": VISIBILITY,
        "stdout_visibility": VISIBILITY,
        "extra_data": {"type": "object"},
        "tests": {"type": "array", "items": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "score": {"type": "number"},
                "max_score": {"type": "number"},
                "status": {"enum": ["passed", "failed"]},
                "name": {"type": "string"},
                "name_format": {"type": "string"},
                "number": {"type": "string"},
                "output": {"type": "string"},
                "output_format": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "visibility": VISIBILITY,
                "extra_data": {"type": "object"},
            }}},
        "leaderboard": {"type": "array"},
    },
}


def _write(subs, student, nb):
    path = subs / student / A / SPEC.notebook
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _strip_cell_ids(path):
    """The notebook as older tools save it: nbformat 4.5 declared, no cell ids."""
    data = json.loads(path.read_text())
    for cell in data["cells"]:
        cell.pop("id", None)
    path.write_text(json.dumps(data))


def _grade_cmd(subs, out, *extra):
    return [sys.executable, "-m", "autograder", "grade", A, "--submissions", str(subs),
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    subs, out = root / "submissions", root / "out"
    for student, how in SAMPLES.items():
        _write(subs, student, make_sample(A, how))
    _strip_cell_ids(_write(subs, "noids", make_sample(A, {"solved": "all"})))

    # a run stopped by SIGTERM in the middle of the class
    proc = subprocess.Popen(_grade_cmd(subs, out, "--workers", "1", "--quiet"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*/grading.json")) and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, terminated_stderr = proc.communicate(timeout=300)
    terminated = {"returncode": proc.returncode, "work_left": (out / ".work").exists(),
                  "stderr": terminated_stderr}

    (out / ".work" / "stale").mkdir(parents=True)  # as a SIGKILLed run leaves it
    finished = run_cli(*_grade_cmd(subs, out, "--quiet")[3:])
    return {"root": root, "subs": subs, "out": out, "terminated": terminated, "finished": finished}


def _gradebook_totals(out, assignment=A):
    """Each student's total as ``nbgrader export`` computes it (its score less its late
    penalty), for the students with a submission of ``assignment``."""
    import tempfile

    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.plugins import CsvExportPlugin

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb, tempfile.TemporaryDirectory() as tmp:
        submitted = set()
        for student in gb.students:
            try:
                gb.find_submission(assignment, student.id)
                submitted.add(student.id)
            except MissingEntry:
                pass
        CsvExportPlugin(to=f"{tmp}/grades.csv").export(gb)
        with open(f"{tmp}/grades.csv") as f:
            return {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)
                    if row["assignment"] == assignment and row["student_id"] in submitted}


def _csv_totals(path, column="points", key="student"):
    totals = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            totals[row[key]] = totals.get(row[key], 0.0) + float(row[column])
    return totals


def assert_exports_agree_with_gradebook(out, assignment=A):
    """grades.csv, canvas.csv and every results.json give each gradebook student the
    gradebook's total; each results.json's total is the sum of its tests."""
    book = _gradebook_totals(out, assignment)
    assert book, "no students in the gradebook"
    assert _csv_totals(out / "grades.csv") == pytest.approx(book)
    canvas_column = next(c for c in next(csv.reader(open(out / "canvas.csv"))) if c.startswith(assignment))
    assert _csv_totals(out / "canvas.csv", column=canvas_column, key="SIS Login ID") == pytest.approx(book)
    for student, total in book.items():
        results = json.loads((out / student / "results.json").read_text())
        assert results["score"] == pytest.approx(total), student
        penalty = results.get("extra_data", {}).get("late_submission", {}).get("penalty", 0)
        assert sum(t["score"] for t in results["tests"]) - penalty == pytest.approx(total), student
    return book


def test_a_class_subset_regrade_manual_grade_and_export_agree(graded, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(graded["out"], out)
    before = assert_exports_agree_with_gradebook(out)
    assert before == {"solution": 16, "blank": 0, "polarity": 14, "noids": 16}

    # regrade one student from a folder holding only that student
    subset = tmp_path / "subset"
    shutil.copytree(graded["subs"] / "polarity", subset / "polarity")
    run_cli("grade", A, "--submissions", str(subset), "--out", str(out), "--force", "--quiet")
    assert assert_exports_agree_with_gradebook(out) == before, "a subset regrade lost or changed rows"

    # the instructor overrides a cell's score in formgrader: what the gradebook API does
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        grade = gb.find_grade("test_padding_mask", NOTEBOOK_ID, A, "polarity")
        grade.manual_score = grade.max_score
        gb.db.commit()
    run_cli("export", A, "--out", str(out))
    after = assert_exports_agree_with_gradebook(out)
    assert after == {**before, "polarity": 16}
    with open(out / "grades.csv") as f:
        adjusted = [r for r in csv.DictReader(f) if r["student"] == "polarity" and "adjusted by hand" in r["check"]]
    assert [float(r["points"]) for r in adjusted] == [2.0]
    html = (out / "feedback" / "polarity" / A / SPEC.notebook.replace(".ipynb", ".html")).read_text()
    assert "16" in html.split("Score:")[1][:40], "the feedback shows the gradebook's new total"


def test_results_json_follows_gradescopes_format(graded):
    jsonschema = pytest.importorskip("jsonschema")
    out = graded["out"]
    public = {c.name: c.public for c in SPEC.checks}
    for student in SAMPLES:
        results = json.loads((out / student / "results.json").read_text())
        jsonschema.validate(results, GRADESCOPE_SCHEMA)
        assert [t["name"] for t in results["tests"]] == [c.name for c in SPEC.checks]
        for t in results["tests"]:
            assert t["visibility"] == ("visible" if public[t["name"]] else "after_published"), t
            assert t["status"] == ("passed" if t["score"] == t["max_score"] else "failed"), t
    polarity = {t["name"]: t for t in json.loads((out / "polarity" / "results.json").read_text())["tests"]}
    assert polarity["padding_mask.hidden"]["status"] == "failed"
    assert "polarity inverted" in polarity["padding_mask.hidden"]["output"]
    # a schema that accepts anything would accept this too
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"score": 1, "tests": [{"status": "pending"}]}, GRADESCOPE_SCHEMA)


def test_hidden_checks_visibility_is_configurable(graded, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(graded["out"], out)
    run_cli("export", A, "--out", str(out), "--hidden-visibility", "hidden", "--canvas-assignment-id", "4711")
    public = {c.name: c.public for c in SPEC.checks}
    tests = json.loads((out / "solution" / "results.json").read_text())["tests"]
    assert {t["visibility"] for t in tests if not public[t["name"]]} == {"hidden"}
    assert {t["visibility"] for t in tests if public[t["name"]]} == {"visible"}
    with open(out / "canvas.csv") as f:
        assert next(csv.reader(f))[-1] == f"{A} (4711)"


def test_canvas_csv_has_canvas_columns_and_every_student(graded):
    with open(graded["out"] / "canvas.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", A]
    assert {r[3]: float(r[5]) for r in rows[1:]} == {"solution": 16, "blank": 0, "polarity": 14, "noids": 16}


def test_unchanged_submissions_are_kept_unless_forced(graded, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(graded["out"], out)
    graded_at = {s: json.loads((out / s / "grading.json").read_text())["graded_at"] for s in SAMPLES}
    time.sleep(1.1)  # graded_at has a resolution of one second
    kept = run_cli("grade", A, "--submissions", str(graded["subs"]), "--out", str(out), "--student", "blank")
    assert "1 submission(s) unchanged since they were graded: kept" in kept.stderr
    assert json.loads((out / "blank" / "grading.json").read_text())["graded_at"] == graded_at["blank"]
    forced = run_cli("grade", A, "--submissions", str(graded["subs"]), "--out", str(out),
                     "--student", "blank", "--force", "--quiet")
    assert "regrading blank (forced since" in forced.stderr
    assert json.loads((out / "blank" / "grading.json").read_text())["graded_at"] != graded_at["blank"]
    for other in ("solution", "polarity"):  # --student: the others are not graded again
        assert json.loads((out / other / "grading.json").read_text())["graded_at"] == graded_at[other]
    assert_exports_agree_with_gradebook(out)


def test_unknown_student_is_a_clear_error(graded, tmp_path):
    proc = subprocess.run(_grade_cmd(graded["subs"], tmp_path / "out", "--student", "nobody", "--quiet"),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--student nobody: no such folder" in proc.stderr


def test_a_clean_console_and_no_scratch_space_left(graded):
    out, finished, terminated = graded["out"], graded["finished"], graded["terminated"]
    said = [line for line in finished.stderr.splitlines() if line.strip()]
    assert all(line.endswith("submission(s) unchanged since they were graded: kept") for line in said), \
        finished.stderr
    assert not (out / ".work").exists(), "scratch space left after a run (and the stale one not removed)"
    assert terminated["returncode"] != 0, "the SIGTERMed run ended as if it had finished"
    assert not terminated["work_left"], "scratch space left after a SIGTERMed run"
    assert "Warning" not in terminated["stderr"], terminated["stderr"]
    assert _gradebook_totals(out)["noids"] == 16, "a notebook without cell ids grades as the solution"


def test_float32_hint_does_not_overflow():
    """A large error where the expected value is zero: no 'overflow encountered in divide'."""
    from genlab.checks import _float32_hint

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _float32_hint(np.array([10.0, 1e-9]), np.array([0.0, 1.0])) == ""
        assert "float32 step" in _float32_hint(np.array([1e-9, 1e-8]), np.array([1.0, 2.0]))


def test_written_answer_pending_then_graded_by_hand(tmp_path):
    """Assignment 4's written answer: pending after grading, in every export; graded by
    hand through the gradebook API, then ``export``: in every export, with the total."""
    a4 = "04_scgpt"
    spec4 = spec.load(a4)
    subs, out = tmp_path / "subs", tmp_path / "out"
    path = subs / "solution" / a4 / spec4.notebook
    path.parent.mkdir(parents=True)
    nbformat.write(make_sample(a4, {"solved": "all"}), path)
    run_cli("grade", a4, "--submissions", str(subs), "--out", str(out), "--quiet")
    from autograder.grade import manual_answers

    release = nbformat.read(REPO / "assignments" / a4 / spec4.notebook, as_version=4)
    written = manual_answers(release, {c.cell for c in spec4.checks})
    assert written, "assignment 4 has a written answer"
    (cell, (points, _)), = written.items()

    results = json.loads((out / "solution" / "results.json").read_text())
    pending = {t["name"]: t for t in results["tests"]}[cell]
    assert pending["extra_data"] == {"pending_manual_grade": True} and pending["score"] == 0
    assert results["score"] == spec4.max_points
    with open(out / "grades.csv") as f:
        assert [r["message"] for r in csv.DictReader(f) if r["check"] == cell] == ["pending manual grading"]

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        grade = gb.find_grade(cell, spec4.notebook.replace(".ipynb", ""), a4, "solution")
        grade.manual_score = points - 1
        gb.db.commit()
    run_cli("export", a4, "--out", str(out))
    results = json.loads((out / "solution" / "results.json").read_text())
    graded_by_hand = {t["name"]: t for t in results["tests"]}[cell]
    assert graded_by_hand["score"] == points - 1 and "extra_data" not in graded_by_hand
    assert results["score"] == spec4.max_points + points - 1
    assert_exports_agree_with_gradebook(out, a4)
