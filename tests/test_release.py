"""assignments/ is exactly what `nbgrader generate_assignment` makes from solutions/."""

import nbformat
import pytest

from autograder import spec
from autograder.course import generate_release
from conftest import REPO


@pytest.mark.parametrize("assignment", spec.available())
def test_release_in_sync_with_source(assignment, tmp_path):
    fresh = generate_release(assignment, release_root=tmp_path / "release",
                             db_url=f"sqlite:///{tmp_path / 'gradebook.db'}")
    committed = REPO / "assignments" / assignment
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed_files = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert fresh_files == committed_files
    for rel in fresh_files:
        if rel.suffix == ".ipynb":
            a = nbformat.read(fresh / rel, as_version=4)
            b = nbformat.read(committed / rel, as_version=4)
            assert a == b, f"{committed / rel} is stale: run `make release`"
        else:
            assert (fresh / rel).read_bytes() == (committed / rel).read_bytes()


@pytest.mark.parametrize("assignment", spec.available())
def test_release_has_no_solution_and_no_hidden_test(assignment):
    text = (REPO / "assignments" / assignment / spec.load(assignment).notebook).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "record_outputs(\""):
        assert marker not in text
    assert "raise NotImplementedError()" in text
