"""nbgrader's machinery, driven from Python with the course's configuration."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = Path(__file__).resolve().parent / "nbgrader_config.py"


def nbgrader_config(**course_directory) -> Config:
    """The course's nbgrader configuration, with ``CourseDirectory`` fields overridden."""
    config = PyFileConfigLoader(CONFIG_FILE.name, path=str(CONFIG_FILE.parent)).load_config()
    for key, value in course_directory.items():
        setattr(config.CourseDirectory, key, value)
    return config


@contextlib.contextmanager
def nbgrader_environment():
    """nbgrader runs ``alembic`` for its database: make the venv's scripts findable,
    and keep nbgrader's INFO logging out of our output."""
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{old_path}"
    quiet = [logging.getLogger(name) for name in ("traitlets", "nbgrader", "alembic")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        os.environ["PATH"] = old_path
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def open_gradebook(db_url: str):
    """nbgrader's ``Gradebook`` at ``db_url``, opened as nbgrader's own commands open it:
    creating a new gradebook runs ``alembic``, which must be on PATH even when the virtual
    environment is not activated (``make test`` and cron jobs call ``.venv/bin/python``)."""
    from nbgrader.api import Gradebook

    with nbgrader_environment(), Gradebook(db_url) as gb:
        yield gb


def generate_release(assignment: str, release_root: Path | None = None,
                     db_url: str | None = None) -> Path:
    """``nbgrader generate_assignment`` from ``solutions/<assignment>``; returns the release folder.

    Also records the assignment's cells (with their hidden tests) in the gradebook at
    ``db_url``, which is what lets autograding restore locked and hidden test cells."""
    from nbgrader.apps import NbGraderAPI

    overrides = {}
    if release_root is not None:
        overrides["release_directory"] = str(Path(release_root).resolve())
    if db_url is not None:
        overrides["db_url"] = db_url
    config = nbgrader_config(**overrides)
    with nbgrader_environment():
        api = NbGraderAPI(config=config)
        api.log.setLevel(logging.WARNING)
        result = api.generate_assignment(assignment, force=True, create=True)
    if not result["success"]:
        raise RuntimeError(f"nbgrader generate_assignment {assignment} failed:\n"
                           f"{result.get('error') or result.get('log')}")
    root = Path(config.CourseDirectory.release_directory)
    return (root if root.is_absolute() else REPO / root) / assignment
