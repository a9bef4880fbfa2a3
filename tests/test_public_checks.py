"""No surprise after submitting: every kind of behaviour a hidden case tests, a public case
of the same function shows first (autograder/spec.py, ``CaseSpec.kind``). Hidden cases
differ from public ones only in values, shapes, dtypes and seeds."""

from __future__ import annotations

import pytest

from autograder import spec


@pytest.mark.parametrize("assignment", spec.available())
def test_every_hidden_kind_has_a_public_case(assignment):
    public: dict[str, set[str]] = {}
    hidden: dict[str, set[str]] = {}
    for check in spec.load(assignment).checks:
        kinds = public if check.public else hidden
        kinds.setdefault(check.function, set()).update(case.kind for case in check.cases)
    missing = {function: sorted(kinds - public.get(function, set()))
               for function, kinds in hidden.items() if kinds - public.get(function, set())}
    assert not missing, f"behaviours only hidden cases test: {missing}"
