"""What an assignment grades: checks, their cases, points and tolerances.

An assignment is a list of :class:`Check`. A check belongs to one nbgrader grade cell
(its ``cell``), grades one student function (its ``function``), and is worth
``points`` when *every* one of its cases matches the reference. Cases are built from
seeds by the assignment's spec module (``autograder/specs/``); the reference builder
turns them into ``.npz`` files and ``manifest.json``. Specs are instructor-only: they
name the hidden cases.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

# Smallest tolerances a correct from-scratch solution must meet; a reordering of the
# same arithmetic (scale q before the matmul, say) stays well inside them. The verify
# step raises them if CPU and GPU differ by more (see references.py).
TOLERANCE_FLOOR = {
    "float32": {"rtol": 1e-4, "atol": 1e-5},
    "float64": {"rtol": 1e-9, "atol": 1e-10},
    "bool": {"rtol": 0.0, "atol": 0.0},
    "int64": {"rtol": 0.0, "atol": 0.0},
}


# torch's attention kernels under their private names: the functions in torch's namespace
# (builtins) and the aten operators behind them (``torch.ops.aten.<name>``; a source that
# names ``torch.ops.aten.<name>.default`` names the operator too). Names a torch version
# lacks are skipped. Not ``....default`` itself: a forbidden name's last part is matched
# against string constants, and "default" is a common string.
TORCH_ATTENTION_KERNELS = (
    "_scaled_dot_product_attention_math",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_native_multi_head_attention",
    "_triton_scaled_dot_attention",
    "_triton_multi_head_attention",
)
# torch's own attention under every name a submission could reach it by: forbidden wherever
# an assignment asks for attention written from scratch (assignments 1, 3 and 5)
TORCH_ATTENTION_CALLS = (
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.functional.multi_head_attention_forward",
    "torch.nn.MultiheadAttention",
    "torch.ops.aten.scaled_dot_product_attention",
    *(f"torch.{name}" for name in TORCH_ATTENTION_KERNELS),
    *(f"torch.ops.aten.{name}" for name in TORCH_ATTENTION_KERNELS),
)


@dataclass
class CaseSpec:
    """One call of the graded function: ``make()`` returns its keyword arguments
    (tensors, numbers, or "genlab:<name>" callables); ``meta`` describes it in messages.

    ``kind`` names the behaviour the case exercises ("" for the plain one): a causal mask
    with Tq < Tk, a fully masked row, targets of -100. Other values, shapes, dtypes and
    seeds are the same kind. The rule (tests/test_public_checks.py): every kind a hidden
    case tests, a public case of the same function shows first; hidden cases guard against
    hard-coded answers, never against a behaviour the student could not check."""

    make: Callable[[], dict]
    meta: dict
    kind: str = ""


@dataclass
class Check:
    name: str                     # "sdpa.fully_masked": one row of grades.csv
    function: str                 # the student's function, by its name in the notebook
    cell: str                     # the nbgrader grade_id of the test cell that records it
    points: int
    public: bool                  # public references ship to students
    reference: str                # dotted name of genlab's reference implementation
    cases: list[CaseSpec]
    dtype: str = "float32"
    compare: str = "allclose"     # "exact" for masks, token ids, booleans
    outputs: tuple[str, ...] = ("output",)
    forbidden: tuple[str, ...] = ()   # calls the student's function must not make
    # known bug -> (dotted name of a buggy variant, the message a student sees on matching it)
    bugs: dict[str, tuple[str, str]] = field(default_factory=dict)
    description: str = ""
    params: dict = field(default_factory=dict)  # for compare="property:<name>" (genlab.checks.PROPERTIES)


@dataclass
class Assignment:
    name: str                     # "01_attention": folder under solutions/ and assignments/
    notebook: str                 # "attention.ipynb"
    checks: list[Check]
    # Sample submissions for `make demo`: name -> how to make it from the source notebook
    # (see samples.py); with the points each must score.
    samples: dict[str, dict] = field(default_factory=dict)
    # genlab pieces that checks forbid but the notebook's own cells call (a demo, a
    # comparison): they keep working while grading; every other forbidden genlab piece is
    # shut by the grading build (autograder/grading_build.py)
    notebook_uses: tuple[str, ...] = ()

    @property
    def max_points(self) -> int:
        return sum(c.points for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def cells(self) -> dict[str, list[Check]]:
        cells: dict[str, list[Check]] = {}
        for c in self.checks:
            cells.setdefault(c.cell, []).append(c)
        return cells


def check_maker(per_function: dict[str, dict]) -> Callable[..., Check]:
    """A spec's ``check(name, function, public, cases, description, points=1, **overrides)``:
    every check of one student function shares ``per_function[function]`` (its test cell,
    reference, comparison, forbidden calls and known bugs); ``overrides`` change one check."""

    def check(name: str, function: str, public: bool, cases: list[CaseSpec], description: str,
              points: int = 1, **overrides) -> Check:
        return Check(name=name, function=function, points=points, public=public, cases=cases,
                     description=description, **{**per_function[function], **overrides})

    return check


SPEC_MODULES = {
    "01_attention": "autograder.specs.a01_attention",
    "02_bert": "autograder.specs.a02_bert",
    "03_gpt": "autograder.specs.a03_gpt",
    "04_scgpt": "autograder.specs.a04_scgpt",
    "05_graphs_quantum": "autograder.specs.a05_graphs_quantum",
    "06_tokenizer": "autograder.specs.a06_tokenizer",
    "07_language_model": "autograder.specs.a07_language_model",
}


def available() -> list[str]:
    """The assignments whose spec exists (an assignment is added spec first)."""
    return sorted(a for a, module in SPEC_MODULES.items() if importlib.util.find_spec(module))


def load(assignment: str) -> Assignment:
    if assignment not in SPEC_MODULES:
        known = ", ".join(sorted(SPEC_MODULES))
        raise SystemExit(f"unknown assignment {assignment!r} (known: {known})")
    return importlib.import_module(SPEC_MODULES[assignment]).SPEC
