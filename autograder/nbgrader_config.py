"""nbgrader configuration of the genlab course (the instructor's copy of the repository).

The repository's layout replaces nbgrader's default folder names: the nbgrader *source*
is ``solutions/`` and the *release* is ``assignments/``. The root ``nbgrader_config.py``
loads this file, so plain ``nbgrader`` commands work from the repository root:

    nbgrader generate_assignment 01_attention --force

Grading goes through ``python -m autograder grade`` (see README), which uses the same
settings with its own output folder and gradebook.
"""
import os

c = get_config()  # noqa: F821 (defined by traitlets when it loads this file)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

c.CourseDirectory.root = REPO
c.CourseDirectory.course_id = "genlab"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
# The gradebook; for PostgreSQL: "postgresql://user:password@host/genlab"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(REPO, "gradebook.db")
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
