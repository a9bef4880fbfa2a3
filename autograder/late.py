"""Late work, in nbgrader's own terms.

* The due date of an assignment is the gradebook's ``Assignment.duedate``. The course sets it
  in one place, ``c.DueDates.by_assignment`` in ``autograder/nbgrader_config.py``; every grading
  run and every ``export`` writes it into the gradebook (an assignment not listed there keeps
  the gradebook's own due date, e.g. one set in formgrader).
* When a submission was handed in is the gradebook's ``SubmittedAssignment.timestamp``, read
  from ``timestamp.txt`` in the submission's folder (``nbgrader submit`` writes it, ``nbgrader
  collect`` keeps it) and parsed as nbgrader parses it (``nbgrader.utils.parse_utc``). A missing
  file counts as on time; an unreadable one as well, with a note. nbgrader then computes
  ``total_seconds_late`` itself (from the due date plus any extension the student was given).
* The penalty is nbgrader's ``LateSubmissionPlugin`` (``c.AssignLatePenalties.plugin_class``),
  run by nbgrader's own ``AssignLatePenalties`` preprocessor, which clamps it to [0, score] and
  stores it in ``SubmittedNotebook.late_submission_penalty``; ``nbgrader export`` and nbgrader's
  feedback subtract it from the score. The course's policy is ``PercentPerDayLate`` below.
"""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime
from pathlib import Path

import dateutil.tz
from nbgrader.plugins import LateSubmissionPlugin
from traitlets import Dict, Float, Unicode
from traitlets.config import Configurable

from autograder.course import nbgrader_environment, open_gradebook

TIMESTAMP_FILE = "timestamp.txt"  # written by `nbgrader submit`, kept by `nbgrader collect`
TIMESTAMP_BYTES = 4096
DAY = 24 * 3600


class DueDates(Configurable):
    """The course's due dates, one per assignment (``c.DueDates.by_assignment``)."""

    by_assignment = Dict(
        value_trait=Unicode(), default_value={},
        help="assignment -> due date, in a form nbgrader.utils.parse_utc reads, with the time "
             "zone: '2025-10-13 23:59:00 Europe/Zurich', '2025-10-13T23:59:00+02:00'",
    ).tag(config=True)

    def due(self, assignment: str) -> datetime | None:
        """The due date of ``assignment`` in UTC (naive, as nbgrader stores it), or None."""
        text = self.by_assignment.get(assignment)
        return None if text is None else parse_duedate(text, f"c.DueDates.by_assignment[{assignment!r}]")


class PercentPerDayLate(LateSubmissionPlugin):
    """A share of the score per started day of lateness, after a grace period, capped.

    With the defaults: up to 15 minutes late costs nothing; then each started day (counted from
    the due date) costs 10% of the score, up to 50%. nbgrader's ``penalty_method`` is not used by
    this policy; nbgrader's own policies are ``c.AssignLatePenalties.plugin_class =
    'nbgrader.plugins.LateSubmissionPlugin'`` with ``c.LateSubmissionPlugin.penalty_method``
    ``'none'`` or ``'zero'``."""

    grace_minutes = Float(15.0, min=0.0, help="minutes after the due date that cost nothing").tag(config=True)
    percent_per_day = Float(10.0, min=0.0, max=100.0,
                            help="percent of the score lost per started day late").tag(config=True)
    max_percent = Float(50.0, min=0.0, max=100.0, help="the most a late submission loses, in percent").tag(config=True)

    def percent(self, total_seconds_late: float) -> float:
        if total_seconds_late <= self.grace_minutes * 60:
            return 0.0
        days = math.ceil(total_seconds_late / DAY)
        return min(self.max_percent, self.percent_per_day * days)

    def late_submission_penalty(self, student_id: str, score: float, total_seconds_late: float) -> float:
        return score * self.percent(total_seconds_late) / 100.0


# --------------------------------------------------------------------- reading times


def parse_duedate(text: str, where: str) -> datetime:
    """``parse_utc``, refusing what it would silently misread: an unknown time-zone name is
    taken as UTC by ``parse_utc``, which would move a deadline by hours."""
    from nbgrader.utils import parse_utc

    parts = text.split(" ")
    if len(parts) == 3 and not parts[2].lstrip("+-").isdigit() and dateutil.tz.gettz(parts[2]) is None:
        raise SystemExit(f"{where} = {text!r}: unknown time zone {parts[2]!r}")
    try:
        return parse_utc(text)
    except (ValueError, OverflowError) as exc:
        raise SystemExit(f"{where} = {text!r} is not a date nbgrader can read ({exc})") from None


NO_TIMESTAMP = f"no {TIMESTAMP_FILE} in the submission: counted as on time"


def read_timestamp(folder: Path) -> tuple[datetime | None, str | None]:
    """When the submission in ``folder`` was handed in (UTC, naive), or None when unknown; and
    a problem when ``timestamp.txt`` exists but is not a time (also counted as on time: the
    instructor should check). A missing file is no problem: see ``NO_TIMESTAMP``."""
    from nbgrader.utils import parse_utc

    from autograder.grade import read_regular_file

    path = Path(folder) / TIMESTAMP_FILE
    if not os.path.lexists(path):
        return None, None
    try:
        text = read_regular_file(path, TIMESTAMP_BYTES).decode().strip()
        if not text:
            raise ValueError("the file is empty")
        return parse_utc(text), None
    except (OSError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        return None, (f"{TIMESTAMP_FILE} could not be read as a time ({type(exc).__name__}: "
                      f"{str(exc)[:120]}): counted as on time; check when it was submitted")


def describe(seconds_late: float) -> str:
    """'2 days 3 h 4 min late', or 'on time'."""
    if seconds_late <= 0:
        return "on time"
    minutes = math.ceil(seconds_late / 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = ([f"{days} day{'s' if days != 1 else ''}"] if days else []) + \
            ([f"{hours} h"] if hours else []) + ([f"{minutes} min"] if minutes else [])
    return " ".join(parts) + " late"


# ------------------------------------------------------------------ the gradebook


def record_duedate(db_url: str, assignment: str, config) -> datetime | None:
    """Write the configured due date of ``assignment`` into the gradebook (when the course
    configures one); return the gradebook's due date (UTC, naive) or None."""
    due = DueDates(config=config).due(assignment)
    with open_gradebook(db_url) as gb:
        if due is not None:
            gb.update_or_create_assignment(assignment, duedate=due)
        return gb.find_assignment(assignment).duedate


def assign_penalties(db_url: str, assignment: str, config, students: list[str] | None = None) -> None:
    """nbgrader's ``AssignLatePenalties`` for every submission of ``assignment`` (or of
    ``students``) that is late or carries a penalty (which a new due date, an extension or a new
    score may change): the penalty always follows the gradebook's current scores and dates."""
    import nbformat
    from nbgrader.preprocessors import AssignLatePenalties

    with open_gradebook(db_url) as gb:  # closed before nbgrader's preprocessor opens its own
        todo = [(submission.student.id, notebook.name)
                for submission in gb.assignment_submissions(assignment)
                if students is None or submission.student.id in students
                for notebook in submission.notebooks
                if submission.total_seconds_late > 0 or notebook.late_submission_penalty]
    quiet = logging.getLogger("autograder.late.nbgrader")  # nbgrader logs each penalty as a warning
    quiet.setLevel(logging.ERROR)
    with nbgrader_environment():
        for student, notebook in todo:
            resources = {"nbgrader": {"notebook": notebook, "assignment": assignment,
                                      "student": student, "db_url": db_url}}
            AssignLatePenalties(config=config, log=quiet).preprocess(nbformat.v4.new_notebook(), resources)


__all__ = ["DueDates", "PercentPerDayLate", "read_timestamp", "record_duedate", "assign_penalties", "describe"]
