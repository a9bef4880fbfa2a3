"""The grading build of genlab: the library as a submission's kernel sees it.

genlab holds the course's answer key: ``genlab.masks.causal_mask`` is what assignment 1's
``causal_mask`` must compute. During grading the sandbox mounts a copy of the library
over ``lib/genlab`` in which every piece an assignment grades (the ``genlab.*`` names of
its checks' ``forbidden`` lists) starts with a gate. The gate lets genlab's own code use
the piece (the GPT that assignment 3 trains builds genlab's attention, a plot draws a
causal mask) and raises :class:`NotAvailableWhileGrading` when anything else calls it:
the notebook directly, through a builtin (``map``, ``functools.partial``), a thread,
torch's module call or a subclass. The source on disk in the sandbox is the gated one,
so reading it and running a copy gives the gate too.

Who called is read from the call stack: the first frame that is neither torch's nor the
standard library's (those only pass calls on) must belong to the build itself. Code
cannot pretend to be genlab's: the grading guard stops code compiled under a trusted file
name and code objects built by hand.

Pieces the notebook itself calls in its own cells (scGPT's ``generate_values`` in
assignment 4, the circuit helpers in assignment 5) stay working; the spec names them in
``Assignment.notebook_uses``, and the run-time tracer still catches them inside a graded
function. What the gate cannot stop: a gated piece handed as a callback to a genlab
function that calls it (genlab's frame is then the caller), and source pasted from the
student's own copy of the library (a matter for copy detection, not for the sandbox).
"""

from __future__ import annotations

import ast
import compileall
import importlib
import inspect
import os
import shutil
from pathlib import Path

import genlab

GATE_MODULE = "_grading"
GATE_NAME = "_genlab_gate"

GATE_SOURCE = '''"""Written into the grading build of genlab by autograder/grading_build.py; not
part of the library."""

import os
import sys
import sysconfig

import torch

ASSIGNMENT = {assignment!r}
OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep
# code that only passes calls on: torch (a module's __call__, autograd) and the standard
# library; the caller that counts is the first frame outside them
PASS_THROUGH = tuple(sorted({{os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
                             os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep}}))


class NotAvailableWhileGrading(RuntimeError):
    """A piece of genlab that this assignment grades was called by the notebook."""


def gate(name):
    frame = sys._getframe(2)  # 0: here, 1: the gated piece, 2: who called it
    while frame is not None:
        file = frame.f_code.co_filename
        if file.startswith(OWN):
            return
        if not file.startswith(PASS_THROUGH):
            break
        frame = frame.f_back
    raise NotAvailableWhileGrading(
        f"{{name}} is not available while grading: assignment {{ASSIGNMENT}} grades your own "
        f"version of it. Use the function you wrote in this notebook instead (genlab's own "
        f"code may still use its version).")
'''


class BuildError(RuntimeError):
    pass


def answer_key(spec) -> list[str]:
    """The genlab pieces the gate shuts for ``spec`` (an :class:`autograder.spec.Assignment`)."""
    names = {f for check in spec.checks for f in check.forbidden if f.startswith("genlab.")}
    unknown = set(spec.notebook_uses) - names
    if unknown:
        raise BuildError(f"notebook_uses names pieces no check forbids: {sorted(unknown)}")
    return sorted(names - set(spec.notebook_uses))


def _resolve(name: str):
    """``genlab.mod.Class.method`` -> (the object, its module's file, its qualified name)."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = inspect.getattr_static(obj, attr)
        obj = getattr(obj, "__func__", obj)  # staticmethod / classmethod
        module = importlib.import_module(obj.__module__)
        return obj, Path(module.__file__), obj.__qualname__
    raise BuildError(f"cannot import {name}")


def _find(tree: ast.Module, qualname: str) -> ast.AST:
    node: ast.AST = tree
    for part in qualname.split("."):
        found = [n for n in getattr(node, "body", [])
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part]
        if not found:
            raise BuildError(f"{qualname}: no definition of {part!r}")
        node = found[-1]  # the last definition is the one the module keeps
    return node


def _gate_line(function: ast.FunctionDef, name: str) -> tuple[int, str]:
    """(index of the line to insert before, the line): after the docstring, if any."""
    body = function.body
    if body[0].lineno == function.lineno:
        raise BuildError(f"{name}: a one-line definition cannot be gated")
    docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    first = body[0]
    index = first.end_lineno if docstring else first.lineno - 1
    return index, " " * first.col_offset + f"{GATE_NAME}({name!r})\n"


def _import_line(tree: ast.Module) -> int:
    """Where the gate's import goes: after the docstring and ``from __future__`` imports."""
    index = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            index = node.end_lineno
        elif index == 0 and isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant):
            index = node.end_lineno
        else:
            break
    return index


def build(assignment: str, names: list[str], target: Path) -> Path:
    """Write the grading build of genlab for ``names`` into ``target/genlab``; return it."""
    source_root = Path(genlab.__file__).resolve().parent
    root = Path(target) / "genlab"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(source_root, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / f"{GATE_MODULE}.py").write_text(GATE_SOURCE.format(assignment=assignment))
    per_file: dict[Path, list[tuple[str, str]]] = {}
    for name in names:
        obj, file, qualname = _resolve(name)
        if not Path(file).resolve().is_relative_to(source_root):
            raise BuildError(f"{name} is not defined in genlab ({file})")
        per_file.setdefault(Path(file).resolve().relative_to(source_root), []).append((name, qualname))
    for relative, targets in per_file.items():
        path = root / relative
        text = path.read_text()
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        inserts: list[tuple[int, str]] = []
        for name, qualname in targets:
            node = _find(tree, qualname)
            functions = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] \
                if isinstance(node, ast.ClassDef) else [node]
            if not functions:
                raise BuildError(f"{name}: a class without methods of its own cannot be gated")
            inserts += [_gate_line(f, name) for f in functions]
        inserts.append((_import_line(tree), f"from genlab.{GATE_MODULE} import gate as {GATE_NAME}\n"))
        for index, line in sorted(set(inserts), key=lambda item: item[0], reverse=True):
            lines.insert(index, line)
        path.write_text("".join(lines))
    compileall.compile_dir(str(root), quiet=1)
    for folder, dirs, files in os.walk(target):  # readable by the submission's own user
        os.chmod(folder, 0o755)
        for file in files:
            os.chmod(os.path.join(folder, file), 0o644)
    return root
