"""References: stored files match the manifest, rebuild byte for byte from the seeds, verify
on this machine's devices; the spec, the manifest and the notebooks agree."""

import json
import shutil

import nbformat
import pytest

from autograder import references, spec
from conftest import REPO

ASSIGNMENTS = spec.available()


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_stored_files_match_manifest(assignment):
    manifest = references.load_manifest(assignment)
    folder = references.REFERENCES / assignment
    listed = set()
    for name, check in manifest["checks"].items():
        assert check["cases"], f"{name} has no cases"
        for entry in check["cases"]:
            listed.add(entry["file"])
            assert entry["file"].startswith("public/" if check["public"] else "hidden/")
            assert references.sha256(folder / entry["file"]) == entry["sha256"], entry["file"]
        assert "cpu" in check["verified_on"], f"{name}: run `make verify`"
    on_disk = {str(p.relative_to(folder)) for p in folder.glob("*/*.npz")}
    assert on_disk == listed, "files on disk and in the manifest differ"


def _same_case(fresh_path, stored_path) -> str | None:
    """None when a rebuilt case equals the stored one: inputs and parameters bit for bit;
    outputs bit for bit, or for floating point within a few ulps (100 eps): the BLAS and
    oneDNN kernels of another processor may round reductions differently."""
    import numpy as np

    with np.load(fresh_path) as fresh, np.load(stored_path) as stored:
        if sorted(fresh.files) != sorted(stored.files):
            return f"keys {sorted(fresh.files)} != {sorted(stored.files)}"
        for key in fresh.files:
            a, b = fresh[key], stored[key]
            if a.dtype != b.dtype or a.shape != b.shape:
                return f"{key}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
            if key.startswith(("out.", "alt.")) and a.dtype.kind == "f":
                eps = 100 * np.finfo(a.dtype).eps
                if not np.allclose(a, b, rtol=eps, atol=eps, equal_nan=True):
                    return f"{key}: differs by {np.nanmax(np.abs(a - b)):.3g}"
            elif not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
                return f"{key} differs"
    return None


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_rebuild_matches_and_verifies(assignment, tmp_path):
    """The references come from the reference code and the seeds, nothing else."""
    references.build(assignment, root=tmp_path)
    fresh = json.loads((tmp_path / assignment / "manifest.json").read_text())
    stored = references.load_manifest(assignment)
    assert fresh["checks"].keys() == stored["checks"].keys()
    for name, check in fresh["checks"].items():
        assert [c["file"] for c in check["cases"]] == [c["file"] for c in stored["checks"][name]["cases"]]
        for case in check["cases"]:
            problem = _same_case(tmp_path / assignment / case["file"],
                                 references.REFERENCES / assignment / case["file"])
            assert problem is None, f"{case['file']}: {problem}"
        fields = {k: v for k, v in check.items() if k not in ("cases", "verified_on")}
        assert fields == {k: v for k, v in stored["checks"][name].items()
                          if k not in ("cases", "verified_on")}, f"{name}: rebuild the manifest"
    verified = references.verify(assignment, root=tmp_path)
    assert verified["cpu"]["max_deviation"] == 0.0


def test_verify_detects_a_tampered_file(tmp_path):
    shutil.copytree(references.REFERENCES / "01_attention", tmp_path / "01_attention")
    victim = next((tmp_path / "01_attention" / "hidden").glob("*.npz"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(SystemExit, match="sha256"):
        references.verify("01_attention", root=tmp_path)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_spec_manifest_and_notebook_agree(assignment):
    a = spec.load(assignment)
    manifest = references.load_manifest(assignment)
    assert manifest["max_points"] == a.max_points
    assert {c.name: c.points for c in a.checks} == {n: c["points"] for n, c in manifest["checks"].items()}
    nb = nbformat.read(REPO / "solutions" / assignment / a.notebook, as_version=4)
    grade_cells = {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
                   if c.metadata.get("nbgrader", {}).get("grade")}
    for cell, checks in a.cells().items():
        assert cell in grade_cells, f"spec names grade cell {cell} that the notebook lacks"
        assert grade_cells[cell].metadata["nbgrader"]["points"] == sum(c.points for c in checks), cell
        for c in checks:  # the cell records the function it grades, in its hidden part
            assert f'record_outputs("{c.function}", {c.function})' in grade_cells[cell].source
    solution_code = "\n".join(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
    for c in a.checks:
        assert f"def {c.function}(" in solution_code or f"class {c.function}(" in solution_code, \
            f"no solution cell defines {c.function}"
    assert any(not c.public for c in a.checks) and any(c.public for c in a.checks)
