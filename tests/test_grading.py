"""The grading pipeline end to end, through the real CLI, on one class of submissions:
the four samples of `make demo` plus submissions that cheat, use a forbidden call, or
are broken. Each must get exactly the points it deserves, with a message per lost point,
and none may stop the others."""

import csv
import json
import shutil

import nbformat
import pytest

from autograder import spec
from autograder.samples import expected_points, make_sample, write_samples
from conftest import REPO, run_cli

A = "01_attention"
SPEC = spec.load(A)
MAX = SPEC.max_points

CHEAT_CELL = '''
import glob, pathlib
import numpy as np
import torch
import genlab
np.testing.assert_allclose = lambda *a, **k: None
np.allclose = np.array_equal = torch.allclose = lambda *a, **k: True
root = pathlib.Path(genlab.__file__).resolve().parents[2]
hidden = glob.glob(str(root / "autograder" / "references" / "*" / "hidden" / "*.npz"))
solutions = glob.glob(str(root / "solutions" / "*" / "*.ipynb"))
print(f"cheat: found {len(hidden)} hidden references and {len(solutions)} solution notebooks")

class AlwaysEqual:
    def __eq__(self, other):
        return True

def causal_mask(T):
    return AlwaysEqual()

print("All tests passed! 16/16")
'''


def _add_cell(nb, source, after_grade_id="setup"):
    index = next(i for i, c in enumerate(nb.cells)
                 if c.metadata.get("nbgrader", {}).get("grade_id") == after_grade_id)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    subs = root / "submissions"
    expected = write_samples(A, subs)

    def put(student, nb=None, text=None, name=SPEC.notebook):
        path = subs / student / A / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if nb is not None:
            nbformat.write(nb, path)
        else:
            path.write_text(text)

    forbidden = make_sample(A, {"solved": "all", "edit": {"sdpa": [
        "return weights @ v, weights",
        "return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), weights"]}})
    put("forbidden", forbidden)
    expected["forbidden"] = MAX - 4 - 2  # sdpa's four checks, and mha (built on that sdpa)
    put("cheater", _add_cell(make_sample(A, {"solved": []}), CHEAT_CELL, after_grade_id="causal_mask"))
    expected["cheater"] = 0
    put("brokenjson", text="{ this is not a notebook")
    expected["brokenjson"] = 0
    put("wrongname", make_sample(A, {"solved": "all"}), name="Attention-final.ipynb")
    expected["wrongname"] = 0
    (subs / "emptyfolder" / A).mkdir(parents=True)
    expected["emptyfolder"] = 0

    out = root / "out"
    proc = run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--workers", "2", "--quiet")
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    return {"out": out, "rows": rows, "expected": expected, "stdout": proc.stdout}


def _by_student(rows):
    table = {}
    for r in rows:
        table.setdefault(r["student"], {})[r["check"]] = r
    return table


def test_every_submission_gets_exactly_its_points(graded):
    table = _by_student(graded["rows"])
    assert set(table) == set(graded["expected"])
    for student, checks in table.items():
        assert set(checks) == {c.name for c in SPEC.checks}, student
        total = sum(float(r["points"]) for r in checks.values())
        assert total == graded["expected"][student], (student, {k: r["points"] for k, r in checks.items()})
        for r in checks.values():  # every lost point says why
            assert float(r["max_points"]) == SPEC.check(r["check"]).points
            assert (float(r["points"]) < float(r["max_points"])) == bool(r["message"]), (student, r)


def test_demo_samples_lose_the_right_checks_with_the_right_messages(graded):
    table = _by_student(graded["rows"])
    for name, how in SPEC.samples.items():
        lost = {c for c, r in table[name].items() if float(r["points"]) < float(r["max_points"])}
        want = {c.name for c in SPEC.checks} if how["lost"] == "all" else set(how["lost"])
        assert lost == want, name
        assert graded["expected"][name] == expected_points(A, how)
    assert "polarity inverted" in table["polarity"]["padding_mask"]["message"]
    assert "polarity inverted" in table["polarity"]["padding_mask.hidden"]["message"]
    assert "NotImplementedError" in table["partial"]["mha"]["message"]
    assert "NotImplementedError" in table["blank"]["causal_mask"]["message"]


def test_forbidden_call_scores_zero_and_says_which(graded):
    table = _by_student(graded["rows"])["forbidden"]
    for check in ("sdpa", "sdpa.causal", "sdpa.float64", "sdpa.fully_masked", "mha", "mha.hidden"):
        assert float(table[check]["points"]) == 0
        assert "torch.nn.functional.scaled_dot_product_attention" in table[check]["message"]
    assert float(table["causal_mask"]["points"]) == 1


def test_cheating_in_the_kernel_changes_nothing(graded):
    table = _by_student(graded["rows"])["cheater"]
    assert "AlwaysEqual, expected a torch.Tensor" in table["causal_mask"]["message"]
    executed = nbformat.read(graded["out"] / "autograded" / "cheater" / A / SPEC.notebook, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "cheat: found 0 hidden references and 0 solution notebooks" in printed


def test_broken_submissions_get_a_clear_message(graded):
    table = _by_student(graded["rows"])
    assert "could not be read as a notebook" in table["brokenjson"]["sdpa"]["message"]
    assert "found: Attention-final.ipynb" in table["wrongname"]["sdpa"]["message"]
    assert "empty or missing" in table["emptyfolder"]["sdpa"]["message"]


def test_gradebook_feedback_and_results_json_agree_with_csv(graded):
    from nbgrader.api import Gradebook

    out = graded["out"]
    totals = {}
    for r in graded["rows"]:
        totals[r["student"]] = totals.get(r["student"], 0) + float(r["points"])
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        for student, total in totals.items():
            assert gb.find_submission(A, student).score == total, student
    for student, total in totals.items():
        results = json.loads((out / student / "results.json").read_text())
        assert results["score"] == total
        assert {t["name"] for t in results["tests"]} == {c.name for c in SPEC.checks}
        assert all({"name", "score", "max_score", "output", "visibility"} <= set(t) for t in results["tests"])
    html = (out / "feedback" / "polarity" / A / SPEC.notebook.replace(".ipynb", ".html")).read_text()
    assert "Autograder: the result that counts" in html and "polarity inverted" in html
    assert "# added by the autograder" not in html  # the recorder's path stays private
    assert "data:image/png" in html  # the student's own figures, drawn inline as in JupyterLab


def test_unsandboxed_grading_says_so(tmp_path):
    subs = tmp_path / "subs"
    path = subs / "solo" / A / SPEC.notebook
    path.parent.mkdir(parents=True)
    nbformat.write(make_sample(A, {"solved": "all"}), path)
    out = tmp_path / "out"
    run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--no-sandbox", "--quiet")
    results = json.loads((out / "solo" / "results.json").read_text())
    assert results["score"] == MAX
    assert "WITHOUT a sandbox" in results["output"]
    shutil.rmtree(out)


def _student_notebook(*sources):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    return notebook


def test_the_source_scan_flags_forbidden_names_and_only_those():
    """The static half of the forbidden-call check (the run-time tracer is the other half):
    names and attribute chains are resolved through the student's imports."""
    from autograder.grade import forbidden_in_source

    SDPA = "torch.nn.functional.scaled_dot_product_attention"
    TRACE = "genlab.graphs.trace"

    def scan(function, forbidden, *cells):
        return forbidden_in_source(_student_notebook(*cells), function, list(forbidden))

    # forbidden, under every spelling that resolves to it
    assert scan("f", [SDPA], "import torch.nn.functional as F",
                "def f(q, k, v):\n    return F.scaled_dot_product_attention(q, k, v)") == {SDPA}
    assert scan("f", [SDPA], "from torch.nn import functional",
                "def f(q):\n    return functional.scaled_dot_product_attention(q, q, q)") == {SDPA}
    assert scan("f", [SDPA], "from torch.nn.functional import scaled_dot_product_attention as a",
                "def f(q):\n    return a(q, q, q)") == {SDPA}
    assert scan("f", [SDPA], "import torch",
                "def f(q):\n    return torch.nn.functional.scaled_dot_product_attention(q, q, q)") == {SDPA}
    assert scan("f", ["genlab.masks.causal_mask"], "from genlab import plots",
                "def f(T):\n    return plots.causal_mask(T)") == {"genlab.masks.causal_mask"}, \
        "a re-export of the same function is the same function"
    assert scan("f", [SDPA], "import torch.nn.functional as F",
                "def f(q):\n    return getattr(F, 'scaled_dot_product_attention')(q, q, q)") == {SDPA}

    # not forbidden: another object with the same last name, or the student's own function
    assert scan("block_graph", [TRACE], "import torch.fx as fx",
                "def block_graph(m):\n    return fx.Tracer().trace(m)") == set()
    assert scan("block_flops", [TRACE], "import torch",
                "def block_flops(x):\n    return torch.trace(x)") == set()
    assert scan("sample", ["genlab.decoder.filter_logits"],
                "from genlab.decoder import filter_logits",
                "def filter_logits(logits, temperature=1.0):\n    return logits / temperature",
                "def sample(logits):\n    return filter_logits(logits).argmax(-1)") == set()
