"""Issue 19, item 2: late work, in nbgrader's own terms (autograder/late.py).

One class of assignment 1 is graded once through the CLI: two submissions with a
``timestamp.txt`` (nbgrader's own format, and the same moment written with a time-zone name),
one without, one whose file is not a time. The due date is set in the gradebook before grading
(as formgrader sets it; the course's config file is tested separately). Moving the due date or
granting an extension in the gradebook and running ``export`` then gives each case: on time,
late within the grace period, late within the penalty window, very late. Each time, the total
of every export equals the gradebook's as ``nbgrader export`` computes it.

The expected numbers follow the policy documented in autograder/nbgrader_config.py: 15
minutes of grace, then 10% of the score per started day late, at most 50%."""

import csv
import datetime
import json
import shutil

import nbformat
import pytest
from test_exports import NOTEBOOK_ID, SPEC, assert_exports_agree_with_gradebook

from autograder.samples import make_sample
from conftest import run_cli

pytestmark = pytest.mark.slow

A = "01_attention"
SUBMITTED = datetime.datetime(2025, 10, 10, 12, 0, 0)  # UTC
STAMPS = {  # what each student's timestamp.txt holds (None: no file)
    "solution": "2025-10-10 12:00:00.000000 UTC",   # as `nbgrader submit` writes it
    "polarity": "2025-10-10 14:00:00 Europe/Zurich",  # the same moment (CEST = UTC+2)
    "nostamp": None,
    "badstamp": "handed in on Friday",
}
RAW = {"solution": 16, "polarity": 14, "nostamp": 16, "badstamp": 16}
HOUR = datetime.timedelta(hours=1)


def _set_duedate(out, due):
    from autograder.course import open_gradebook

    with open_gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        gb.update_or_create_assignment(A, duedate=due)


def _penalties(out):
    """nbgrader's late_submission_penalty of each student's notebook (None: not set)."""
    from autograder.course import open_gradebook

    with open_gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        return {s: gb.find_submission_notebook(NOTEBOOK_ID, A, s).late_submission_penalty for s in RAW}


def _late_rows(out):
    with open(out / "grades.csv") as f:
        return {r["student"]: r for r in csv.DictReader(f) if r["check"] == "late submission penalty"}


def _feedback(out, student):
    return (out / "feedback" / student / A / SPEC.notebook.replace(".ipynb", ".html")).read_text()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("late")
    subs, out = root / "submissions", root / "out"
    how = {"solution": {"solved": "all"}, "polarity": SPEC.samples["polarity"],
           "nostamp": {"solved": "all"}, "badstamp": {"solved": "all"}}
    for student, stamp in STAMPS.items():
        folder = subs / student / A
        folder.mkdir(parents=True)
        nbformat.write(make_sample(A, how[student]), folder / SPEC.notebook)
        if stamp is not None:
            (folder / "timestamp.txt").write_text(stamp)
    out.mkdir()
    # 1 day 4 h before the submissions: late by two started days, 20%
    _set_duedate(out, SUBMITTED - datetime.timedelta(days=1, hours=4))
    run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--quiet")
    return out


@pytest.fixture
def out(graded, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(graded, copy)
    return copy


def test_late_within_the_penalty_window(graded):
    out = graded
    totals = assert_exports_agree_with_gradebook(out)
    assert totals == pytest.approx({"solution": 12.8, "polarity": 11.2, "nostamp": 16, "badstamp": 16})
    penalties = _penalties(out)
    assert penalties["solution"] == pytest.approx(3.2) and penalties["polarity"] == pytest.approx(2.8)
    assert not penalties["nostamp"] and not penalties["badstamp"]

    rows = _late_rows(out)
    assert set(rows) == set(RAW), "a lateness row for every student"
    assert float(rows["polarity"]["points"]) == pytest.approx(-2.8)
    assert "1 day 4 h late" in rows["polarity"]["message"] and "2025-10-10 12:00:00" in rows["polarity"]["message"]

    results = json.loads((out / "polarity" / "results.json").read_text())
    late = results["extra_data"]["late_submission"]
    assert late["seconds_late"] == 28 * 3600 and late["penalty"] == pytest.approx(2.8)
    assert late["score_before_penalty"] == 14 and results["score"] == pytest.approx(11.2)
    assert results["output"].startswith("Lateness: submitted 2025-10-10 12:00:00 UTC")

    html = _feedback(out, "polarity")  # nbgrader's own feedback, from the gradebook
    assert "Late submission penalty (Score: -2.8)" in html
    assert "11.2" in html.split("Score:")[1][:40]
    assert "Late submission penalty" not in _feedback(out, "nostamp")

    with open(out / "canvas.csv") as f:
        assert {r["SIS Login ID"]: float(r[A]) for r in csv.DictReader(f)} == pytest.approx(totals)


def test_missing_and_malformed_timestamps_count_as_on_time_with_a_note(graded):
    from autograder.course import open_gradebook

    def notes(student):
        return json.loads((graded / student / "checks.json").read_text())["notes"]

    assert "no timestamp.txt in the submission: counted as on time" in notes("nostamp")
    said = [n for n in notes("badstamp") if n.startswith("timestamp.txt could not be read as a time")]
    assert len(said) == 1 and "check when it was submitted" in said[0], notes("badstamp")
    assert not [n for n in notes("solution") if "timestamp" in n]
    with open_gradebook(f"sqlite:///{graded / 'gradebook.db'}") as gb:
        stamps = {s: gb.find_submission(A, s).timestamp for s in RAW}
    assert stamps == {"solution": SUBMITTED, "polarity": SUBMITTED, "nostamp": None, "badstamp": None}
    for student in ("nostamp", "badstamp"):
        assert "no submission time recorded" in _late_rows(graded)[student]["message"]
        assert json.loads((graded / student / "results.json").read_text())["score"] == 16


@pytest.mark.parametrize("due, expected, said", [
    (SUBMITTED + HOUR, 0.0, "on time"),                                   # on time
    (SUBMITTED - datetime.timedelta(minutes=10), 0.0, "10 min late, no late penalty"),  # grace
    (SUBMITTED - datetime.timedelta(days=12), 0.5, "12 days late"),        # very late: capped
])
def test_moving_the_due_date_changes_every_export(out, due, expected, said):
    _set_duedate(out, due)
    run_cli("export", A, "--out", str(out))
    totals = assert_exports_agree_with_gradebook(out)
    for student, raw in RAW.items():
        on_time_anyway = student in ("nostamp", "badstamp")  # no readable time
        assert totals[student] == pytest.approx(raw if on_time_anyway else raw * (1 - expected)), student
    assert said in _late_rows(out)["solution"]["message"]
    assert ("Late submission penalty" in _feedback(out, "solution")) == (expected > 0)


def test_an_extension_granted_in_the_gradebook_removes_the_penalty(out):
    from autograder.course import open_gradebook

    with open_gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        gb.grant_extension(A, "polarity", days=2)
    run_cli("export", A, "--out", str(out))
    totals = assert_exports_agree_with_gradebook(out)
    assert totals["polarity"] == 14 and totals["solution"] == pytest.approx(12.8)
    assert "(with an extension): on time" in _late_rows(out)["polarity"]["message"]
    assert not _penalties(out)["polarity"]


def test_a_grade_changed_by_hand_changes_its_penalty(out):
    from autograder.course import open_gradebook

    with open_gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        grade = gb.find_grade("test_padding_mask", NOTEBOOK_ID, A, "polarity")
        grade.manual_score = grade.max_score
        gb.db.commit()
    run_cli("export", A, "--out", str(out))
    assert assert_exports_agree_with_gradebook(out)["polarity"] == pytest.approx(16 * 0.8)


def test_the_policy_in_numbers():
    from autograder.course import nbgrader_config
    from autograder.late import PercentPerDayLate

    policy = PercentPerDayLate(config=nbgrader_config())
    minute, day = 60, 24 * 3600
    cases = {0: 0, 15 * minute: 0, 15 * minute + 1: 10, day: 10, day + 1: 20, 4 * day + 1: 50, 40 * day: 50}
    assert {s: policy.percent(s) for s in cases} == cases
    assert policy.late_submission_penalty("x", 14.0, day + 1) == pytest.approx(2.8)


def test_due_dates_in_the_course_config_reach_the_gradebook(tmp_path):
    from autograder.course import nbgrader_config
    from autograder.late import record_duedate

    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    config = nbgrader_config()
    config.DueDates.by_assignment = {A: "2025-10-13 23:59:00 Europe/Zurich"}
    assert record_duedate(url, A, config) == datetime.datetime(2025, 10, 13, 21, 59)
    config.DueDates.by_assignment = {}  # not listed: the gradebook's own due date stays
    assert record_duedate(url, A, config) == datetime.datetime(2025, 10, 13, 21, 59)
    config.DueDates.by_assignment = {A: "2025-10-13 23:59:00 Europe/Atlantis"}
    with pytest.raises(SystemExit, match="unknown time zone 'Europe/Atlantis'"):
        record_duedate(url, A, config)
    config.DueDates.by_assignment = {A: "next Monday"}
    with pytest.raises(SystemExit, match="is not a date nbgrader can read"):
        record_duedate(url, A, config)
