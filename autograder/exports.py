"""Every export of one assignment's grades, rebuilt from nbgrader's gradebook for the whole class.

The gradebook is the one source of truth: what the autograder wrote into it, and what an
instructor changed in formgrader afterwards (a written answer graded by hand, a score
overridden, extra credit). ``export_all`` reads it for EVERY student who has a submission
of the assignment, whichever grading run (or subset of the class) graded them, and writes

    OUT/grades.csv               one row per check, per hand-graded cell, per adjustment
    OUT/<student>/results.json   Gradescope's autograder results format
    OUT/feedback/<student>/...   nbgrader's feedback HTML
    OUT/canvas.csv               a Canvas gradebook import

Each student's total is the gradebook's, in every file: its score less its late penalty
(nbgrader's ``SubmittedNotebook.late_submission_penalty``, recomputed here through nbgrader's
own ``AssignLatePenalties`` and the course's policy, ``late.py``), as ``nbgrader export`` and
nbgrader's feedback count it. Lateness and penalty appear in each file: a "late submission
penalty" row in grades.csv, ``output`` and ``extra_data`` in results.json (whose ``score`` is
the total after the penalty, its tests' scores the points before it), nbgrader's own penalty
line in the feedback, the total after the penalty in canvas.csv. What the gradebook cannot hold
(each check's message, the grader's notes) is read from ``OUT/<student>/checks.json``,
which grading writes per student and never touches for another student.

    python -m autograder export 01_attention --out OUT     # after grading by hand
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autograder import late
from autograder import references as refs
from autograder import spec as spec_module
from autograder.course import REPO, nbgrader_config, nbgrader_environment, open_gradebook

DETAILS = "checks.json"          # OUT/<student>/checks.json: written by grading, read here
FEEDBACK_DIGEST = "feedback.sha256"  # OUT/<student>/: what the feedback HTML was made from
PENDING = "pending manual grading"
LATE_ROW = "late submission penalty"  # grades.csv's row with each student's lateness
# nbgrader's own files in a submission folder: copied into autograded/ as `nbgrader autograde`
# does, so that generate_feedback carries them to feedback/, where release_feedback needs both
SUBMISSION_FILES = (late.TIMESTAMP_FILE, "submission_secret.txt")

# Gradescope's autograder results format
# (https://gradescope-autograders.readthedocs.io/en/latest/specs/, "Output format"):
# top level: score, execution_time (seconds), output, visibility, stdout_visibility,
# extra_data, tests; each test: score, max_score, status ("passed" or "failed"), name,
# name_format, number, output, output_format, tags, visibility, extra_data. Visibility
# is one of "visible" (the default), "hidden", "after_due_date", "after_published".
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
HIDDEN_CHECKS_VISIBILITY = "after_published"  # hidden checks: shown once grades are published

CSV_COLUMNS = ["student", "assignment", "check", "points", "max_points", "message"]
# Canvas's gradebook import (Canvas's Gradebook > Import; the columns of its own export,
# as e.g. https://teaching.resources.osu.edu/toolsets/carmencanvas/guides/calculating-final-grades/import-csv-file-carmen-grades
# lists them): a student is named by "Student" ("Last, First"), "ID" or "SIS User ID";
# "SIS Login ID" and "Section" follow; then one column per assignment, "<name> (<Canvas
# id>)" for an existing assignment, a new name creating a new one.
CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]


@dataclass
class Line:
    """One graded item of one student: a check, a hand-graded cell, or a hand adjustment."""
    name: str
    points: float
    max_points: float
    message: str = ""
    public: bool = True
    pending: bool = False  # a written answer waiting to be graded by hand

    @property
    def passed(self) -> bool:
        return not self.pending and self.points >= self.max_points


@dataclass
class Lateness:
    """When a submission was due and handed in (UTC, ISO 8601), and what that cost."""
    due: str                   # the due date, with the student's extension
    submitted: str | None      # None: no readable timestamp.txt (counted as on time)
    seconds_late: float
    penalty: float             # points, nbgrader's late_submission_penalty
    extension: bool = False

    @property
    def message(self) -> str:
        due = f"due {self.due} UTC" + (" (with an extension)" if self.extension else "")
        if self.submitted is None:
            return f"{due}; no submission time recorded (no readable timestamp.txt): counted as on time"
        cost = f"late penalty {num(self.penalty)} points" if self.penalty else "no late penalty"
        return f"submitted {self.submitted} UTC, {due}: {late.describe(self.seconds_late)}, {cost}"


@dataclass
class StudentGrade:
    student: str
    display_name: str       # "Last, First" when the gradebook has the names, else the id
    score: float            # the gradebook's total, after the late penalty
    max_score: float
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lateness: Lateness | None = None  # None: the assignment has no due date

    @property
    def late_penalty(self) -> float:
        return self.lateness.penalty if self.lateness else 0.0


# ------------------------------------------------------------------ reading the gradebook


def gradebook_url(out: Path, db_url: str | None = None) -> str:
    return db_url or f"sqlite:///{Path(out).resolve() / 'gradebook.db'}"


def class_grades(assignment: str, out: Path, db_url: str | None = None,
                 students: list[str] | None = None) -> list[StudentGrade]:
    """Every student of the gradebook with a submission of ``assignment`` (or only
    ``students``), sorted by id."""
    from nbgrader.api import MissingEntry

    manifest = refs.load_manifest(assignment)
    out = Path(out).resolve()
    grades = []
    with open_gradebook(gradebook_url(out, db_url)) as gb:
        for student in sorted(gb.students, key=lambda s: s.id):
            if students is not None and student.id not in students:
                continue
            try:
                submission = gb.find_submission(assignment, student.id)
            except MissingEntry:
                continue
            grades.append(_student_grade(gb, submission, student, manifest, out))
    return grades


def _student_grade(gb, submission, student, manifest: dict, out: Path) -> StudentGrade:
    details = read_details(out, student.id)
    by_check = {c["check"]: c for c in details.get("checks", [])}
    checks_of_cell: dict[str, list[str]] = {}
    for name, check in manifest["checks"].items():
        checks_of_cell.setdefault(check["cell"], []).append(name)
    names = ", ".join(n for n in (student.last_name, student.first_name) if n)
    penalty = float(submission.late_submission_penalty or 0.0)
    grade = StudentGrade(student.id, names or student.id, max(0.0, float(submission.score) - penalty),
                         float(submission.max_score), notes=list(details.get("notes", [])),
                         seconds=float(details.get("seconds", 0.0)), lateness=_lateness(submission, penalty))
    cells = {g.name: g for notebook in submission.notebooks for g in notebook.grades}
    order = list(checks_of_cell) + sorted(set(cells) - set(checks_of_cell))
    for cell in (c for c in order if c in cells):
        g = cells[cell]
        if cell in checks_of_cell:
            grade.lines += _check_lines(g, [by_check.get(n) for n in checks_of_cell[cell]])
        else:
            grade.lines.append(_hand_graded_line(gb, g, submission))
    return grade


def _lateness(submission, penalty: float) -> Lateness | None:
    """The gradebook's due date (with the student's extension), submission time and penalty."""
    if submission.duedate is None:
        return None
    stamp = submission.timestamp
    return Lateness(submission.duedate.isoformat(sep=" "), stamp.isoformat(sep=" ") if stamp else None,
                    float(submission.total_seconds_late), penalty, extension=bool(submission.extension))


def _check_lines(g, details: list[dict | None]) -> list[Line]:
    """A cell graded by checks: one line per check (from the stored details), and one more
    when formgrader changed the cell's score (an override or extra credit)."""
    if any(d is None for d in details):  # graded elsewhere (another OUT): the cell as a whole
        return [Line(g.name, float(g.score), float(g.max_score))]
    lines = [Line(d["check"], float(d["points"]), float(d["max_points"]), d.get("message", ""),
                  bool(d.get("public", True))) for d in details]
    by_checks = sum(line.points for line in lines)
    if abs(float(g.score) - by_checks) > 1e-9:
        lines.append(Line(f"{g.name} (adjusted by hand)", float(g.score) - by_checks, 0.0,
                          f"formgrader set {g.name} to {num(g.score)}/{num(g.max_score)}; "
                          f"its checks gave {num(by_checks)}"))
    return lines


def _hand_graded_line(gb, g, submission) -> Line:
    """A cell graded by hand (a written answer): pending, graded, or left as released."""
    from nbgrader.api import MissingEntry

    if g.manual_score is not None:
        comment = ""
        try:
            notebook = next(nb.name for nb in submission.notebooks if g in nb.grades)
            found = gb.find_comment(g.name, notebook, submission.assignment.name, submission.student.id)
            comment = found.manual_comment or ""
        except (MissingEntry, StopIteration):
            pass
        message = "graded by hand" + (f": {comment}" if comment else "")
        return Line(g.name, float(g.score), float(g.max_score), message)
    if g.needs_manual_grade:
        return Line(g.name, float(g.score), float(g.max_score), PENDING, pending=True)
    return Line(g.name, float(g.score), float(g.max_score), "left as released (no answer written)")


def read_details(out: Path, student: str) -> dict:
    """What grading stored about one student (``SubmissionResult.to_dict()``), or {}."""
    try:
        return json.loads((Path(out) / student / DETAILS).read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------- writers


def gradescope_results(grade: StudentGrade, hidden_checks: str = HIDDEN_CHECKS_VISIBILITY) -> dict:
    """One student's ``results.json`` in Gradescope's format (fields: see VISIBILITIES)."""
    if hidden_checks not in VISIBILITIES:
        raise ValueError(f"visibility {hidden_checks!r}: Gradescope knows {', '.join(VISIBILITIES)}")
    tests = []
    for line in grade.lines:
        test = {"name": line.name, "score": line.points, "max_score": line.max_points,
                "status": "passed" if line.passed else "failed",
                "output": line.message or "passed",
                "visibility": "visible" if line.public else hidden_checks}
        if line.pending:
            test["extra_data"] = {"pending_manual_grade": True}
        tests.append(test)
    results = {"score": grade.score, "execution_time": round(grade.seconds, 2),
               "output": "\n".join(grade.notes), "tests": tests}
    if grade.lateness is not None:  # Gradescope has no field for it: the score is after the penalty
        late_info = asdict(grade.lateness)
        late_info["score_before_penalty"] = grade.score + grade.late_penalty
        results["extra_data"] = {"late_submission": late_info}
        results["output"] = "\n".join([f"Lateness: {grade.lateness.message}", *grade.notes])
    return results


def write_grades_csv(grades: list[StudentGrade], assignment: str, out: Path) -> Path:
    rows = []
    for g in grades:
        rows += [[g.student, assignment, line.name, num(line.points), num(line.max_points), line.message]
                 for line in g.lines]
        if g.lateness is not None:
            rows.append([g.student, assignment, LATE_ROW, num(-g.late_penalty) if g.late_penalty else "0",
                         "0", g.lateness.message])
    return _write_csv(Path(out) / "grades.csv", CSV_COLUMNS, rows)


def write_canvas_csv(grades: list[StudentGrade], assignment: str, out: Path,
                     canvas_id: str | None = None) -> Path:
    """Assumed: nbgrader's student id is the student's SIS login (as when nbgrader's ids
    come from the LMS or JupyterHub); Canvas's own ID, the SIS User ID and the section
    are not known here and stay empty."""
    column = f"{assignment} ({canvas_id})" if canvas_id else assignment
    rows = [[g.display_name, "", "", g.student, "", num(g.score)] for g in grades]
    return _write_csv(Path(out) / "canvas.csv", CANVAS_COLUMNS + [column], rows)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
    return path


def write_results(grade: StudentGrade, out: Path, hidden_checks: str = HIDDEN_CHECKS_VISIBILITY) -> None:
    atomic_write(Path(out) / grade.student / "results.json",
                  json.dumps(gradescope_results(grade, hidden_checks), indent=1))


def write_feedback(grade: StudentGrade, assignment: str, out: Path, db_url: str | None = None) -> str | None:
    """nbgrader's feedback HTML, made again only when what it shows changed (the grades,
    the notes, the autograded notebook); returns a problem, or None."""
    out = Path(out).resolve()
    notebook = spec_module.load(assignment).notebook
    autograded = out / "autograded" / grade.student / assignment / notebook
    if not autograded.exists():
        return f"no feedback for {grade.student}: no autograded notebook in {out / 'autograded'}"
    digest = hashlib.sha256(json.dumps(asdict(grade), sort_keys=True).encode() + autograded.read_bytes())
    for name in SUBMISSION_FILES:  # what release_feedback and fetch_feedback match on
        path = autograded.parent / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    digest = digest.hexdigest()
    stamp = out / grade.student / FEEDBACK_DIGEST
    html = out / "feedback" / grade.student / assignment / notebook.replace(".ipynb", ".html")
    if html.exists() and stamp.exists() and stamp.read_text() == digest:
        return None
    from nbgrader.apps import NbGraderAPI

    config = nbgrader_config(root=str(out), db_url=gradebook_url(out, db_url),
                             source_directory=str(REPO / "solutions"),
                             autograded_directory="autograded", feedback_directory="feedback")
    with nbgrader_environment():
        outcome = NbGraderAPI(config=config).generate_feedback(assignment, grade.student, force=True)
    if not outcome["success"]:
        return (f"feedback HTML for {grade.student} could not be generated: "
                + (outcome.get("error") or "")[-300:])
    atomic_write(stamp, digest)
    return None


def update_late_penalties(assignment: str, out: Path, db_url: str | None = None) -> None:
    """The course's due date into the gradebook, then every penalty recomputed from the
    gradebook's scores, times and extensions (a grade changed by hand changes its penalty)."""
    url, config = gradebook_url(out, db_url), nbgrader_config()
    late.record_duedate(url, assignment, config)
    late.assign_penalties(url, assignment, config)


def export_student(assignment: str, out: Path, student: str, db_url: str | None = None,
                   hidden_checks: str = HIDDEN_CHECKS_VISIBILITY) -> list[str]:
    """One student's ``results.json`` and feedback, as soon as they are graded."""
    problems = []
    # the due date is in the gradebook already (recorded when the grading run began)
    late.assign_penalties(gradebook_url(out, db_url), assignment, nbgrader_config(), [student])
    for grade in class_grades(assignment, out, db_url, students=[student]):
        write_results(grade, out, hidden_checks)
        problems.append(write_feedback(grade, assignment, out, db_url))
    return [p for p in problems if p]


def export_all(assignment: str, out: Path, db_url: str | None = None,
               hidden_checks: str = HIDDEN_CHECKS_VISIBILITY,
               canvas_id: str | None = None) -> list[StudentGrade]:
    """Every export, for every student of the gradebook; problems go to standard error."""
    out = Path(out).resolve()
    if hidden_checks not in VISIBILITIES:
        raise SystemExit(f"--hidden-visibility {hidden_checks!r}: one of {', '.join(VISIBILITIES)}")
    if db_url is None and not (out / "gradebook.db").exists():
        raise SystemExit(f"no gradebook at {out / 'gradebook.db'}: grade first (python -m autograder grade)")
    update_late_penalties(assignment, out, db_url)
    grades = class_grades(assignment, out, db_url)
    write_grades_csv(grades, assignment, out)
    write_canvas_csv(grades, assignment, out, canvas_id)
    for grade in grades:
        write_results(grade, out, hidden_checks)
        problem = write_feedback(grade, assignment, out, db_url)
        if problem:
            print(problem, file=sys.stderr)
    return grades


def num(x: float) -> str:
    return f"{x:g}"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


__all__ = ["export_all", "export_student", "class_grades", "gradescope_results", "StudentGrade", "Line"]
