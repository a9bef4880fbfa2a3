"""The two ways to install (pip via pyproject.toml, conda via environment.yml) agree,
and the README, the Makefile and CI agree on the commands."""

import re
import tomllib

import yaml

from conftest import REPO

CONDA_NAMES = {"pytorch": "torch"}  # conda's package name -> PyPI's


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].strip().lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_deps = {_name(r): r.replace(" ", "") for r in project["dependencies"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    conda_deps = {}
    for dep in conda:
        name = CONDA_NAMES.get(_name(dep), _name(dep))
        if name not in ("python", "pip"):
            conda_deps[name] = name + dep[len(_name(dep)):].replace(" ", "")
    assert set(conda_deps) == set(pip_deps), (
        f"only in environment.yml: {sorted(set(conda_deps) - set(pip_deps))}; "
        f"only in pyproject.toml: {sorted(set(pip_deps) - set(conda_deps))}")
    for name, requirement in pip_deps.items():
        assert conda_deps[name] == requirement, f"{name}: pyproject {requirement} vs conda {conda_deps[name]}"
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section, "environment.yml must install genlab itself"


def test_commands_agree():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for command in ("make demo", "make test"):
        assert command in readme
    for target in ("demo:", "test:", "student-bundle:"):
        assert target in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "torch==$(TORCH_VERSION)" in makefile and "TORCH_VERSION ?= 2.13.0" in makefile
