"""The grading build of genlab (autograder/grading_build.py): every piece an assignment
grades raises NotAvailableWhileGrading when the notebook calls it, by any route, and still
works for genlab's own code. (That whole notebooks still run and score as before under the
build is shown by test_assignments.py and test_adversarial*.py, which grade through it.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from autograder import grading_build, spec
from genlab.checks import resolve
from conftest import REPO

# Calls each name as a notebook would, by every route, from a file outside genlab, torch and
# the standard library; prints {name: {route: exception type or "ran"}} as JSON.
PROBE = '''
import functools, importlib, inspect, json, sys
from concurrent.futures import ThreadPoolExecutor
from autograder.grading_build import _resolve

def nones(function, skip_self):
    params = [p for p in inspect.signature(function).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [None] * (len(params) - (1 if skip_self else 0))

def outcome(call):
    try:
        call()
        return "ran"
    except BaseException as exc:
        return type(exc).__name__

def routes(name):
    obj, _, qualname = _resolve(name)
    if inspect.isclass(obj):
        args = nones(obj.__init__, skip_self=True)
        subclass = type("Mine", (obj,), {})
        return {"direct": lambda: obj(*args), "subclass": lambda: subclass(*args),
                "map": lambda: list(map(obj, *[[a] for a in args])) if args else list(map(lambda _: obj(), [0])),
                "partial": lambda: functools.partial(obj, *args)(),
                "thread": lambda: ThreadPoolExecutor(1).submit(obj, *args).result()}
    method = "." in qualname  # a method: None stands for self
    args = ([None] if method else []) + nones(obj, skip_self=method)
    torch_file = importlib.import_module("torch").__file__
    via_torch = {}
    exec(compile("def call(f, args):\\n    return f(*args)\\n", torch_file, "exec"), via_torch)
    return {"direct": lambda: obj(*args), "partial": lambda: functools.partial(obj, *args)(),
            "map": lambda: list(map(lambda a: obj(*a), [args])),
            "thread": lambda: ThreadPoolExecutor(1).submit(obj, *args).result(),
            "from_torch_file": lambda: via_torch["call"](obj, args)}

names = json.loads(sys.argv[1])
import genlab
print(json.dumps({"genlab": genlab.__file__,
                  "calls": {n: {r: outcome(c) for r, c in routes(n).items()} for n in names}}))
'''


def probe(names: list[str], tmp_path, library=None) -> dict:
    script = tmp_path / "notebook_cell.py"
    script.write_text(PROBE)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    if library is not None:
        env["PYTHONPATH"] = str(library.parent)
    run = subprocess.run([sys.executable, str(script), json.dumps(names)], capture_output=True,
                         text=True, env=env, timeout=600)  # hang guard; it takes a few seconds
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.parametrize("assignment", spec.available())
def test_every_graded_piece_is_shut_to_the_notebook(assignment, tmp_path):
    names = grading_build.answer_key(spec.load(assignment))
    assert names, "every assignment grades pieces that genlab also implements"
    library = grading_build.build(assignment, names, tmp_path / "build")
    shut = probe(names, tmp_path, library)
    assert shut["genlab"].startswith(str(library)), shut["genlab"]
    not_shut = {n: r for n, routes in shut["calls"].items() for r, got in routes.items()
                if got != "NotAvailableWhileGrading"}
    assert not not_shut, not_shut
    # positive control: the real library does not raise it (the same calls fail otherwise,
    # on their None arguments, or run)
    real = probe(names, tmp_path)
    assert real["genlab"].startswith(str(REPO / "lib" / "genlab"))
    assert not any(got == "NotAvailableWhileGrading" for routes in real["calls"].values()
                   for got in routes.values())


@pytest.mark.parametrize("assignment", spec.available())
def test_every_forbidden_genlab_name_resolves(assignment):
    """The call tracer and the source check pass over a forbidden name that does not resolve,
    so each must name a function genlab defines, also a re-export (``genlab.scgpt.X``, defined
    in a module of the package), and the notebook's ``notebook_uses`` that the build skips."""
    a = spec.load(assignment)
    names = sorted({f for check in a.checks for f in check.forbidden if f.startswith("genlab.")})
    for name in names:
        obj, file, _ = grading_build._resolve(name)
        traced = resolve(name)  # what the tracer and the source check see
        assert getattr(traced, "__func__", traced) is obj, name
        assert Path(file).resolve().is_relative_to(REPO / "lib" / "genlab"), (name, file)


# genlab's own code still uses the shut pieces: one call per assignment that goes through them
INTERNAL_USE = {
    "01_attention": """
        import torch
        from genlab import plots
        plots.plot_encoder_vs_decoder()  # genlab's MultiHeadAttention and causal_mask
    """,
    "02_bert": """
        import torch
        from genlab.data import HMMLanguage
        from genlab.encoder import BertConfig, BertForPreTraining
        hmm = HMMLanguage(seed=1)
        symbols = hmm.sample(4, 8, seed=0)
        masked = torch.zeros_like(symbols, dtype=torch.bool); masked[:, 3] = True
        print(hmm.bayes_masked_accuracy(symbols, masked))
    """,
    "03_gpt": """
        import torch
        from genlab.decoder import GPT, GPTConfig
        model = GPT(GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2), seed=0)
        print(model(torch.zeros(1, 4, dtype=torch.long))[0].shape)
    """,
    "04_scgpt": """
        import torch
        from genlab.scgpt import ScGPT, ScGPTConfig, generate_values
        model = ScGPT(ScGPTConfig(vocab_size=12, d_model=8, n_heads=2, n_layers=1, d_ff=16,
                                  attention_backend="scratch")).eval()
        gene_ids = torch.arange(2, 12).expand(2, -1)
        values = torch.rand(2, 10) * 50
        unknown = torch.zeros(2, 10, dtype=torch.bool); unknown[:, 5:] = True
        print(generate_values(model, gene_ids, values, unknown, steps=2).values.shape)
    """,
    "05_graphs_quantum": """
        import torch
        from genlab import quantum
        layer = quantum.OrthogonalLayer(4, "pyramid")
        print(layer(torch.randn(2, 4)).shape)
    """,
    "06_tokenizer": """
        from genlab.properties.tokenizer import counts_at_step  # a check's message replays the merges
        print(counts_at_step("low lower<|endoftext|>low", ["<|endoftext|>"], [(b"l", b"o")]).most_common(2))
    """,
    "07_language_model": """
        import torch
        from genlab.properties.language_model import build_test_model  # the checks' models: rotary, RMSNorm, SwiGLU
        model = build_test_model("lm07_train")
        print(model(torch.zeros(1, 4, dtype=torch.long)).shape)
    """,
}


@pytest.mark.parametrize("assignment", spec.available())
def test_genlab_still_uses_them_itself(assignment, tmp_path):
    a = spec.load(assignment)
    library = grading_build.build(assignment, grading_build.answer_key(a), tmp_path / "build")
    script = tmp_path / "cell.py"
    script.write_text(textwrap.dedent(INTERNAL_USE[assignment]))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(library.parent),
                              "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("assignment", spec.available())
def test_what_stays_open_is_what_the_notebook_calls(assignment):
    """``notebook_uses`` is no wider than the notebook: each piece it keeps working is called
    by name in the released notebook's own cells."""
    a = spec.load(assignment)
    nb = nbformat.read(REPO / "assignments" / assignment / a.notebook, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    unused = [n for n in a.notebook_uses if f"{n.rsplit('.', 1)[-1]}(" not in source]
    assert not unused, unused
