"""nbgrader configuration of the genlab course (the instructor's copy of the repository).

The repository's layout replaces nbgrader's default folder names: the nbgrader *source*
is ``solutions/`` and the *release* is ``assignments/``. The root ``nbgrader_config.py``
loads this file, so plain ``nbgrader`` commands work from the repository root:

    nbgrader generate_assignment 01_attention --force

Grading goes through ``python -m autograder grade`` (see README), which uses the same
settings with its own output folder and gradebook.

Late work (``autograder/late.py``) is set here and nowhere else:

* due dates: ``c.DueDates.by_assignment``, one entry per assignment, with its time zone
  (``"2025-10-13 23:59:00 Europe/Zurich"``, or ISO 8601 with an offset). Each grading run and
  each ``python -m autograder export`` writes them into the gradebook (``Assignment.duedate``);
  an assignment not listed keeps the gradebook's due date (none, or one set in formgrader).
  Extensions are nbgrader's own (``SubmittedAssignment.extension``, set in formgrader).
* the policy: nbgrader's ``c.AssignLatePenalties.plugin_class``. The course's default is
  ``PercentPerDayLate``: 15 minutes of grace (clock skew, a submit started at the deadline),
  then 10% of the score per started day late, at most 50%, so late work is still worth
  finishing. Its three numbers are below; nbgrader's built-in policies are
  ``"nbgrader.plugins.LateSubmissionPlugin"`` with ``c.LateSubmissionPlugin.penalty_method``
  ``"none"`` (no penalty) or ``"zero"`` (a late submission scores 0).

A submission's time is its ``timestamp.txt`` (``nbgrader submit`` writes it); the penalty is
recomputed from the gradebook at every export, so a grade changed by hand, a new due date or an
extension is reflected in grades.csv, results.json, the feedback and canvas.csv.

The grading output folder OUT is an nbgrader course directory (``OUT/gradebook.db``,
``OUT/autograded/``, ``OUT/feedback/``): nbgrader's own commands work on it with
``--CourseDirectory.root=OUT``, e.g. ``nbgrader release_feedback 01_attention
--CourseDirectory.root=OUT``. The exchange (``nbgrader release_assignment``, ``collect``,
``release_feedback``) is ``/usr/local/share/nbgrader/exchange`` (nbgrader 0.9's default) unless ``c.Exchange.root`` says otherwise.
"""
import os

c = get_config()  # noqa: F821 (defined by traitlets when it loads this file)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

c.CourseDirectory.root = REPO
c.CourseDirectory.course_id = "genlab"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
# The gradebook: nbgrader's default, ROOT/gradebook.db, follows --CourseDirectory.root.
# For PostgreSQL: c.CourseDirectory.db_url = "postgresql://user:password@host/genlab"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "*.npz"]
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# Cells whose grade comes from the trusted comparison may not be deleted or edited.
c.LockCells.lock_grade_cells = True
c.LockCells.lock_readonly_cells = True
# Feedback shows what a submission printed and displayed: never run its scripts in the
# browser of whoever opens it (script tags, event handlers and javascript: URLs are
# removed from markdown and HTML outputs; images are kept).
c.HTMLExporter.sanitize_html = True

# Late work (see the top of this file).
c.DueDates.by_assignment = {
    # "01_attention": "2025-10-13 23:59:00 Europe/Zurich",
}
c.AssignLatePenalties.plugin_class = "autograder.late.PercentPerDayLate"
c.PercentPerDayLate.grace_minutes = 15
c.PercentPerDayLate.percent_per_day = 10
c.PercentPerDayLate.max_percent = 50
