"""The attacks on the recorder and the tracer, on assignments 2 to 5 (assignment 1 has its
own, larger class in test_adversarial.py). Each assignment's class is graded through the
real CLI; each submission must get exactly the points it earned.

In one solved notebook (``attacked``):

* ``thread``: the graded function also runs genlab's reference, on its own arguments (by
  position where the names differ), in a worker thread (the name assembled from pieces, so
  only the run-time tracer can see it);
* ``frame``: another graded function reaches for its caller's frame (``sys._getframe``);
* assignment 3: ``aten``, torch's fused attention through ``torch.ops.aten`` (its name
  assembled from pieces) in ``CausalSelfAttention``.

Each in a notebook of its own:

* ``fake_recorder``: a blank notebook whose recorder records genlab's reference instead;
* ``forged``: a blank notebook whose last cell publishes records for every function;
* assignment 3: ``exact_posterior`` (the "trained model" answered by a forward pass over the
  language's own parameters).
"""

from __future__ import annotations

import csv
import json

import nbformat
import pytest

from autograder import spec
from autograder.samples import make_sample
from conftest import REPO, run_cli

# per assignment: the function the `thread` attack wraps, the reference it calls, and the
# function the `frame` attack wraps (one that no training loop of the notebook calls: a
# blocked call there would also leave the model untrained)
TARGETS = {"02_bert": ("mask_tokens", "genlab.encoder.mask_tokens", "fill_masks"),
           "03_gpt": ("lm_loss", "genlab.decoder.lm_loss", "next_token_logprobs"),
           "04_scgpt": ("scgpt_mask", "genlab.masks.known_unknown_mask", "generation_step"),
           "05_graphs_quantum": ("pyramid_size", "genlab.quantum.pyramid_gates", "block_flops"),
           "06_tokenizer": ("train_merges_on_arrays", "genlab.tokenizers.learn_merges", "decode_on_arrays"),
           # assignment 7: every other graded function runs inside its training loop; rotary runs
           # inside the block, the model and the trained model's predictions, which lose too
           "07_language_model": ("rotary", "genlab.decoder.apply_rotary", "next_token_logprobs")}
# graded functions the attacked notebook loses besides the two attacked (their checks see the attack too)
CALLERS = {"03_gpt": ("CausalSelfAttention",), "07_language_model": ("Block", "LanguageModel")}

THREAD = """
import importlib as _il, concurrent.futures as _cf
_own_{f} = {f}
def {f}(*args, **kwargs):
    def forbidden():
        module, _, name = ({r0!r} + {r1!r}).rpartition(".")
        reference = getattr(_il.import_module(module), name)
        try:
            reference(*args, **kwargs)
        except TypeError:  # other parameter names (assignment 6's arrays): the same values in a row
            try:
                reference(*args, *kwargs.values())
            except Exception:
                pass
        except Exception:
            pass
    with _cf.ThreadPoolExecutor(1) as pool:
        pool.submit(forbidden).result()
    return _own_{f}(*args, **kwargs)
"""

FRAME = """
import sys as _sys
_own_{f} = {f}
def {f}(*args, **kwargs):
    _sys._getframe(1)
    return _own_{f}(*args, **kwargs)
"""

FAKE_RECORDER = """
import importlib as _il, genlab.checks as _c
class _Recorder(_c.Recorder):
    def __call__(self, function, fn=None):
        module, _, name = {references!r}.get(function, "builtins.print").rpartition(".")
        super().__call__(function, getattr(_il.import_module(module), name))
_c.Recorder = _Recorder
"""

FORGED = """
import base64, io, numpy as np
from IPython.display import publish_display_data
buffer = io.BytesIO(); np.savez(buffer, **{{"out.0": np.zeros(3)}})
for function, case in {cases!r}:
    publish_display_data({{"application/vnd.genlab.record+json": {{
        "function": function, "case": case, "npz": base64.b64encode(buffer.getvalue()).decode()}}}})
"""

EXACT_POSTERIOR = """
def next_token_logprobs(input_ids):
    from genlab.data import HMMLanguage, Vocab
    hmm = HMMLanguage(seed=0)
    symbols = hmm.vocab.ids_to_symbols(input_ids.long())
    likelihoods = hmm.emission.T[symbols]
    predicted = hmm.start_probs.expand(symbols.shape[0], -1)
    out = []
    for t in range(symbols.shape[1]):
        joint = predicted * likelihoods[:, t]
        predicted = (joint / joint.sum(dim=1, keepdim=True)) @ hmm.transition
        out.append(predicted @ hmm.emission)
    probs = torch.stack(out, dim=1)
    specials = torch.zeros(*probs.shape[:2], Vocab.n_special, dtype=probs.dtype)
    return torch.cat([specials, probs], dim=-1).log()
"""

ATEN = ("        y = scores.softmax(dim=-1) @ v  # (B, H, T, D)",
        "        y = getattr(torch.ops.aten, 'scaled_dot_product_' + 'attention')(q, k, v, attn_mask=allowed)")


def solution_cell(assignment: str, function: str) -> str:
    """The grade id of the solution cell that defines ``function``."""
    a = spec.load(assignment)
    nb = nbformat.read(REPO / "solutions" / assignment / a.notebook, as_version=4)
    return next(c.metadata["nbgrader"]["grade_id"] for c in nb.cells
                if c.metadata.get("nbgrader", {}).get("solution")
                and (f"def {function}(" in c.source or f"class {function}(" in c.source))


def after(nb, grade_id: str, source: str):
    index = next(i for i, c in enumerate(nb.cells)
                 if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


def first(nb, source: str):
    nb.cells.insert(0, nbformat.v4.new_code_cell(source))
    return nb


def points_of(assignment: str, *functions: str) -> int:
    return sum(c.points for c in spec.load(assignment).checks if c.function in functions)


def build_class(assignment: str) -> dict[str, tuple[object, int]]:
    a = spec.load(assignment)
    full = a.max_points
    target, reference, framed = TARGETS[assignment]
    solved = lambda: make_sample(assignment, {"solved": "all"})  # noqa: E731
    blank = lambda: make_sample(assignment, {"solved": []})  # noqa: E731
    references = {c.function: c.reference for c in a.checks if c.reference.startswith("genlab.")
                  and c.reference in c.forbidden}
    cases = [(c.function, f"{c.name}-{i}") for c in a.checks for i in range(len(c.cases))]
    forged = blank()
    forged.cells.append(nbformat.v4.new_code_cell(FORGED.format(cases=cases)))
    # the attacks on different functions share one solved notebook: each solved notebook of
    # assignments 2 and 3 trains a model, the slowest part of grading
    attacked = make_sample(assignment, {"solved": "all", "edit": {"attention": ATEN}}) \
        if assignment == "03_gpt" else solved()
    attacked = after(attacked, solution_cell(assignment, target),
                     THREAD.format(f=target, r0=reference[:-3], r1=reference[-3:]))
    attacked = after(attacked, solution_cell(assignment, framed), FRAME.format(f=framed))
    klass = {
        "attacked": (attacked, full - points_of(assignment, target, framed, *CALLERS.get(assignment, ()))),
        "fake_recorder": (first(blank(), FAKE_RECORDER.format(references=references)), 0),
        "forged": (forged, 0),
    }
    if assignment == "03_gpt":
        klass["exact_posterior"] = (after(solved(), solution_cell(assignment, "next_token_logprobs"),
                                          EXACT_POSTERIOR),
                                    full - points_of(assignment, "next_token_logprobs"))
    return klass


@pytest.fixture(scope="module", params=sorted(TARGETS))
def graded(request, tmp_path_factory):
    assignment = request.param
    a = spec.load(assignment)
    root = tmp_path_factory.mktemp(f"adversarial-{assignment}")
    expected = {}
    for name, (nb, points) in build_class(assignment).items():
        folder = root / "submissions" / name / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / a.notebook)
        expected[name] = points
    out = root / "out"
    run_cli("grade", assignment, "--submissions", str(root / "submissions"), "--out", str(out),
            "--workers", "2", "--cell-timeout", "180", "--quiet", timeout=1800)
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    table: dict[str, dict[str, dict]] = {}
    for r in rows:
        table.setdefault(r["student"], {})[r["check"]] = r
    return assignment, table, expected, out


def test_each_attack_gets_exactly_its_points(graded):
    assignment, table, expected, out = graded
    got = {s: sum(float(r["points"]) for r in checks.values()) for s, checks in table.items()}
    assert got == expected, {s: (got.get(s), expected[s]) for s in expected}
    target, reference, framed = TARGETS[assignment]
    by_function = {c.name: c.function for c in spec.load(assignment).checks}
    messages = {f: [r["message"] for n, r in table["attacked"].items() if by_function.get(n) == f]
                for f in (target,)}
    assert all(f"uses {reference}" in m for m in messages[target]), messages
    frame = [r["message"] for n, r in table["attacked"].items() if by_function.get(n) == framed]
    assert all("sys._getframe" in m for m in frame), frame
    notes = json.loads((out / "forged" / "results.json").read_text())["output"]
    assert "record outside its test cell" in notes
    if assignment == "03_gpt":
        exact = [r["message"] for n, r in table["exact_posterior"].items()
                 if by_function.get(n) == "next_token_logprobs"]
        assert all("exact posterior" in m for m in exact), exact
        aten = [r["message"] for n, r in table["attacked"].items() if by_function.get(n) == "CausalSelfAttention"]
        assert all("torch.ops.aten.scaled_dot_product_attention" in m for m in aten), aten
