"""The library is the answer key: for every check, each genlab function or module that
computes the check's reference outputs on all of its cases must be forbidden to the
student's function (and so, outside ``notebook_uses``, shut by the grading build).

The candidates are found by running them, not listed by hand: every public function and
``nn.Module`` of genlab's model modules whose parameters fit a case's inputs is called on
every case of the check (public and hidden) and judged with the check's own rule.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from torch import nn

from autograder import references as refs
from autograder import spec
from genlab.checks import Case, judge, resolve, run_case

MODULES = ("genlab.attention", "genlab.masks", "genlab.encoder", "genlab.decoder", "genlab.scgpt",
           "genlab.quantum", "genlab.graphs", "genlab.data")


def submodules(module_name: str) -> list[str]:
    """The module, and each module of it if it is a package (``genlab.scgpt.tokens``, ...):
    a package defines its pieces in its modules and only re-exports them."""
    module = importlib.import_module(module_name)
    return [module_name] + [f"{module_name}.{info.name}"
                            for info in pkgutil.iter_modules(getattr(module, "__path__", []))]


def candidates() -> dict[str, object]:
    """Public functions and modules defined in genlab's model modules, by dotted name."""
    found = {}
    for module_name in (name for package in MODULES for name in submodules(package)):
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(obj, nn.Module)):
                found[f"{module_name}.{name}"] = obj
    return found


def fits(obj, inputs: set[str]) -> bool:
    """Could ``obj`` be called with exactly these keyword arguments?"""
    target = obj.forward if inspect.isclass(obj) else obj
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    if inspect.isclass(obj):
        params = params[1:]  # self
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = {p.name for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    return required <= inputs and (inputs <= names or takes_any)


def same_outputs(obj, check: dict, cases: list[Case]) -> bool:
    results = [run_case(obj, case) for case in cases]
    return not any(error for _, error in results) and judge(check, cases, results) is None


@pytest.mark.parametrize("assignment", spec.available())
def test_every_genlab_piece_that_answers_a_check_is_forbidden(assignment):
    manifest = refs.load_manifest(assignment)
    root = refs.REFERENCES / assignment
    pool = candidates()
    unforbidden, answering = {}, 0
    for name, check in manifest["checks"].items():
        if check["compare"].startswith("property:"):
            continue  # judged by a property, not by the reference's outputs
        cases = [Case.load(root / entry["file"]) for entry in check["cases"]]
        inputs = {k for k in cases[0].inputs if not k.startswith("__")}
        forbidden = set()
        for dotted in check["forbidden"]:
            try:
                forbidden.add(id(resolve(dotted)))
            except (ImportError, AttributeError):
                pass
        for dotted, obj in pool.items():
            if not fits(obj, inputs) or not same_outputs(obj, check, cases):
                continue
            answering += 1
            if id(obj) not in forbidden:
                unforbidden.setdefault(name, []).append(dotted)
    assert not unforbidden, f"genlab answers these checks without being forbidden: {unforbidden}"
    print(f"{assignment}: {answering} (check, genlab piece) pairs answer a check; all forbidden")
