"""Issue 19, item 5: nbgrader's exchange, end to end, on a local exchange folder.

The instructor releases assignment 1 to the exchange; two students, each with their own
nbgrader configuration (course id, exchange, student id) and folders (work, cache), fetch it, write their answers (the solution; the padding-mask
polarity bug), and submit; the instructor collects (nbgrader's ``submitted/<student>/<assignment>/``
layout, with ``timestamp.txt`` and ``submission_secret.txt``), grades with genlab's autograder,
runs nbgrader's ``generate_feedback`` and ``release_feedback`` on the autograder's OUT (an
nbgrader course directory: gradebook.db, autograded/, feedback/), and each student fetches
their own feedback with their score. Each nbgrader command runs as ``NbGraderAPI`` runs the
CLI's apps, in this process (a subprocess each would double the test's time). The due date falls before both submissions; one student
is given an extension after grading, the other keeps the course's late penalty."""

import datetime

import nbformat
import pytest

from autograder import spec
from autograder.samples import make_sample
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow

A = "01_attention"
SPEC = spec.load(A)
COURSE = "genlab"  # c.CourseDirectory.course_id in autograder/nbgrader_config.py
WRITES = {"alice": {"solved": "all"}, "bob": SPEC.samples["polarity"]}


def nbgrader(action: str, config, **attrs) -> None:
    """One nbgrader exchange command (``release_assignment``, ``fetch_assignment``, ``submit``,
    ``collect``, ``release_feedback``, ``fetch_feedback``), run in this process as nbgrader's
    ``NbGraderAPI`` runs it (the CLI's apps, their log captured); ``attrs``: the CLI's arguments."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.apps.api import capture_log

    from autograder.course import nbgrader_environment

    with nbgrader_environment():
        api = NbGraderAPI(config=config)
        for name, value in attrs.items():
            setattr(api.coursedir, name, value)
        app = getattr(api.exchange, ACTIONS[action])(coursedir=api.coursedir, authenticator=api.authenticator,
                                                    parent=api)
        outcome = capture_log(app)
    assert outcome["success"], f"nbgrader {action} failed:\n{outcome.get('error')}\n{outcome.get('log')}"


ACTIONS = {"release_assignment": "ReleaseAssignment", "fetch_assignment": "FetchAssignment",
           "submit": "Submit", "collect": "Collect", "release_feedback": "ReleaseFeedback",
           "fetch_feedback": "FetchFeedback"}


def instructor(exchange, root):
    """The course's own nbgrader configuration, with the course directory ``root``."""
    from autograder.course import nbgrader_config

    config = nbgrader_config(root=str(root), release_directory=str(REPO / "assignments"))
    config.Exchange.root = str(exchange)
    config.CollectApp.check_owner = False  # the simulated students are all this OS user
    return config


def student(exchange, name, home):
    """What a student's own nbgrader knows: the course id, the exchange, and their folders
    (no course configuration: that stays with the instructor)."""
    from traitlets.config import Config

    config = Config()
    config.CourseDirectory.course_id = COURSE
    config.CourseDirectory.root = str(home / "work")
    config.CourseDirectory.student_id = name  # on a JupyterHub: the login
    config.Exchange.root = str(exchange)
    config.Exchange.cache = str(home / "cache")
    config.Exchange.assignment_dir = str(home / "work")
    return config


def _scores(out):
    """(score, late penalty) of each student, from the gradebook."""
    from autograder.course import open_gradebook

    with open_gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        return {s: (gb.find_submission(A, s).score, gb.find_submission(A, s).late_submission_penalty)
                for s in WRITES}


def test_release_fetch_submit_collect_grade_feedback(tmp_path):
    from autograder.course import open_gradebook
    from nbgrader.apps import NbGraderAPI
    from nbgrader.utils import parse_utc

    from autograder.course import nbgrader_environment
    from autograder.exports import export_all

    exchange, course, out = tmp_path / "exchange", tmp_path / "course", tmp_path / "graded"
    exchange.mkdir()
    course.mkdir()  # the instructor's course directory: collect puts submitted/ there

    nbgrader("release_assignment", instructor(exchange, course), assignment_id=A)  # the committed release
    homes = {name: tmp_path / name for name in WRITES}
    for name, how in WRITES.items():
        (homes[name] / "work").mkdir(parents=True)
        nbgrader("fetch_assignment", student(exchange, name, homes[name]), assignment_id=A)
        fetched = homes[name] / "work" / A
        nbformat.write(make_sample(A, how, release=fetched), fetched / SPEC.notebook)
        nbgrader("submit", student(exchange, name, homes[name]), assignment_id=A)

    nbgrader("collect", instructor(exchange, course), assignment_id=A)
    submitted = course / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == ["alice", "bob"]

    # the due date, set in the gradebook before grading (as formgrader sets it): two hours
    # before both submissions, which makes them late by one started day
    stamps = {s: parse_utc((submitted / s / A / "timestamp.txt").read_text()) for s in WRITES}
    out.mkdir()
    with open_gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        gb.update_or_create_assignment(A, duedate=min(stamps.values()) - datetime.timedelta(hours=2))

    run_cli("grade", A, "--submissions", str(submitted), "--out", str(out), "--quiet")
    assert _scores(out) == {"alice": (16, pytest.approx(1.6)), "bob": (14, pytest.approx(1.4))}
    with open_gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        assert {s: gb.find_submission(A, s).timestamp for s in WRITES} == stamps, "timestamp.txt read"
        gb.grant_extension(A, "alice", days=3)  # afterwards, in formgrader
    export_all(A, out)  # what `python -m autograder export` runs
    assert _scores(out) == {"alice": (16, 0), "bob": (14, pytest.approx(1.4))}

    # nbgrader's own feedback commands, on OUT as a course directory
    with nbgrader_environment():
        made = NbGraderAPI(config=instructor(exchange, out)).generate_feedback(A, force=True)
    assert made["success"], made.get("error")
    nbgrader("release_feedback", instructor(exchange, out), assignment_id=A)

    expected = {"alice": "16", "bob": "12.6"}
    for name, home in homes.items():
        nbgrader("fetch_feedback", student(exchange, name, home), assignment_id=A)
        html, = (home / "work" / A / "feedback").glob(f"*/{SPEC.notebook.replace('.ipynb', '.html')}")
        text = html.read_text()
        assert expected[name] in text.split("Score:")[1][:40], (name, text.split("Score:")[1][:80])
        assert ("polarity inverted" in text) == (name == "bob"), f"{name} got someone else's feedback"
        assert ("Late submission penalty (Score: -1.4)" in text) == (name == "bob")
