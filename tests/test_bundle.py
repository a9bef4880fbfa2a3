"""The student bundle holds what students need and nothing of the instructor's:
no solution code, no hidden test, no hidden reference, no grading spec."""

import json
import re
import zipfile

import pytest

from autograder import spec
from autograder.bundle import build_bundle
from conftest import REPO, run_cli


# Lines that ship anyway (genlab's own source) reveal nothing when a solution shares them,
# e.g. ``with torch.no_grad():``.
LIBRARY_TEXT = "\n".join(p.read_text() for p in (REPO / "lib" / "genlab").rglob("*.py"))


def _solution_lines(text: str) -> list[str]:
    """Code lines between BEGIN/END SOLUTION and inside hidden-test blocks of the sources
    (as they appear in the notebook's JSON), except lines genlab's source holds too."""
    lines = []
    for begin, end in (("### BEGIN SOLUTION", "### END SOLUTION"),
                       ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")):
        for block in re.findall(re.escape(begin) + r"(.*?)" + re.escape(end), text, flags=re.S):
            for line in block.split("\\n"):
                line = line.strip().strip('",').strip().lstrip('"')
                if len(line) > 12 and not line.startswith("#") and line.strip() not in LIBRARY_TEXT:
                    lines.append(line)
    return lines


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "student-bundle.zip"
    run_cli("bundle", "--out", str(path))
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_bundle_has_what_students_need(bundle):
    names = set(bundle)
    for assignment in spec.available():
        notebook = spec.load(assignment).notebook
        assert f"assignments/{assignment}/{notebook}" in names
        assert f"autograder/references/{assignment}/manifest.json" in names
    assert {"environment.yml", "pyproject.toml", "README.md", "lib/genlab/attention.py"} <= names
    assert not any(n.startswith(("solutions/", "autograder/specs", "tests/", ".git")) for n in names)
    assert not any(n.endswith((".py", ".db")) and n.startswith("autograder/") for n in names)


def test_bundle_holds_no_solution_and_no_hidden_test(bundle):
    secret_lines = []
    for source in (REPO / "solutions").rglob("*.ipynb"):
        secret_lines += _solution_lines(source.read_text())
    assert len(secret_lines) > 20  # the scan found the solutions it is looking for
    text = {name: data.decode("utf-8", "replace") for name, data in bundle.items()
            if not name.endswith(".npz")}
    for line in secret_lines:
        hits = [name for name, content in text.items() if line in content]
        assert not hits, f"solution or hidden-test line {line!r} found in {hits}"


def test_bundle_holds_no_hidden_reference(bundle):
    assert not any("/hidden/" in name for name in bundle)
    for assignment in spec.available():
        public = json.loads(bundle[f"autograder/references/{assignment}/manifest.json"])
        assert public["checks"] and all(c["public"] for c in public["checks"].values())
        full = json.loads((REPO / "autograder" / "references" / assignment / "manifest.json").read_text())
        hidden_hashes = {e["sha256"] for c in full["checks"].values() if not c["public"] for e in c["cases"]}
        blob = b"".join(bundle.values()).decode("latin-1")
        assert not any(h in blob for h in hidden_hashes)


def test_public_checks_work_from_the_bundle(bundle, tmp_path, monkeypatch):
    for name, data in bundle.items():
        if name.startswith("autograder/references/"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
    monkeypatch.setenv("GENLAB_REFERENCES", str(tmp_path / "autograder" / "references"))
    from genlab.checks import AssignmentChecks
    from genlab.masks import causal_mask

    checks = AssignmentChecks("01_attention")
    checks.check("causal_mask", lambda T: causal_mask(T))
    with pytest.raises(AssertionError, match="polarity inverted"):
        checks.check("causal_mask", lambda T: ~causal_mask(T))
    checks.record("causal_mask", lambda T: causal_mask(T))  # no hidden references: does nothing


def test_public_checks_find_the_references_when_genlab_is_installed_non_editable(bundle, tmp_path):
    """``pip install .`` (not ``-e``) of the unzipped bundle, as on Colab or in a conda
    environment: genlab then lives in site-packages, away from autograder/references/, and a
    notebook opened inside the bundle still finds them, from its own folder upwards."""
    import os
    import subprocess
    import sys

    root = tmp_path / "bundle"
    for name, data in bundle.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    site = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(root)],
                   check=True, capture_output=True, timeout=300)
    assert (site / "genlab" / "checks.py").is_file()
    installed = {str(p.relative_to(site).with_suffix("")).replace("/", ".")
                 for p in (site / "genlab").rglob("*.py")}
    shipped = {str(p.relative_to(REPO / "lib").with_suffix("")).replace("/", ".")
               for p in (REPO / "lib" / "genlab").rglob("*.py") if "__pycache__" not in p.parts}
    assert shipped - installed == set(), "modules the notebooks import are missing after pip install ."
    script = ("import genlab.checks as c, genlab.masks as m; "
              "print(c.__file__); print(c.references_root()); "
              "checks = c.AssignmentChecks('01_attention'); "
              "checks.check('causal_mask', lambda T: m.causal_mask(T)); print('passed')")
    env = {k: v for k, v in os.environ.items() if k != "GENLAB_REFERENCES"}
    env["PYTHONPATH"] = str(site)
    run = lambda cwd: subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env,  # noqa: E731
                                     capture_output=True, text=True, timeout=120)
    found = run(root / "assignments" / "01_attention")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    module, references, verdict = lines[0], lines[1], lines[-1]
    assert module.startswith(str(site)) and verdict == "passed"
    assert references == str((root / "autograder" / "references").resolve())

    lost = run(tmp_path)  # a notebook opened outside the bundle: told what to do
    assert lost.returncode != 0
    assert "open the notebook from inside the unzipped course bundle" in lost.stderr
    assert "GENLAB_REFERENCES" in lost.stderr
