"""``make student-bundle``: the zip students receive.

It holds the release (``assignments/``), the lectures (``course/``), the library
(``lib/``), ``environment.yml``, a ``pyproject.toml`` that installs ``genlab`` alone, and
the *public* references with a manifest that lists public checks only. Solutions,
hidden references, grading specs and the gradebook stay in the instructor's copy
(``tests/test_bundle.py`` proves it).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from autograder.course import REPO
from autograder.references import REFERENCES, public_manifest

SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}

STUDENT_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "genlab"
version = "{version}"
requires-python = ">=3.11"
dependencies = {dependencies}

[tool.setuptools]
package-dir = {{"genlab" = "lib/genlab"}}
packages = {packages}
"""

STUDENT_README = """\
# genlab: student bundle

    conda env create -f environment.yml && conda activate genlab    # or: pip install -e .
    jupyter lab

With pip alone (a plain `pip install .` works too): run it in the unzipped folder. The
notebooks find the public checks' references in `autograder/references/` of the folder
they run in or of a folder above it; `GENLAB_REFERENCES=/path/to/autograder/references`
points them elsewhere.

Start with `assignments/01_attention/attention.ipynb`. Each exercise is followed by
public checks that explain what is wrong and where; hidden checks run after you submit.
The lectures are in `course/`.
"""


def _files(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not SKIP_PARTS & set(path.parts):
            yield path


def _library_packages() -> list[str]:
    """genlab and every subpackage of it (a folder under lib/genlab with an __init__.py)."""
    library = REPO / "lib"
    return sorted(".".join(init.parent.relative_to(library).parts)
                  for init in (library / "genlab").rglob("__init__.py")
                  if not SKIP_PARTS & set(init.parts))


def build_bundle(dest: Path) -> Path:
    import tomllib

    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in ("assignments", "course", "lib"):
            for path in _files(REPO / folder):
                zf.write(path, path.relative_to(REPO))
        zf.write(REPO / "environment.yml", "environment.yml")
        zf.writestr("pyproject.toml", STUDENT_PYPROJECT.format(
            version=project["version"], dependencies=json.dumps(project["dependencies"], indent=4),
            packages=json.dumps(_library_packages())))
        zf.writestr("README.md", STUDENT_README)
        for manifest_path in sorted(REFERENCES.glob("*/manifest.json")):
            manifest = json.loads(manifest_path.read_text())
            public = public_manifest(manifest)
            base = Path("autograder/references") / manifest_path.parent.name
            zf.writestr(str(base / "manifest.json"), json.dumps(public, indent=1))
            for check in public["checks"].values():
                for entry in check["cases"]:
                    zf.write(manifest_path.parent / entry["file"], base / entry["file"])
    tmp.replace(dest)
    return dest
