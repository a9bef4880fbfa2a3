"""An adversarial class: every known way to fool an in-kernel autograder, each a submission
built from the release, graded together through the real CLI. Each must end with exactly
the points it earned, a clear message, and the rest of the class graded as usual.

The attacks follow nbgrader's own reports (monkeypatched asserts, always-equal objects,
hidden tests read from disk, hung or killed kernels) and the trust model in README.md ("How grading works").
"""

from __future__ import annotations

import copy
import csv
import json
import socket
import threading

import nbformat
import pytest

from autograder import spec
from autograder.samples import make_sample
from conftest import assert_no_process, run_cli

A = "01_attention"
SPEC = spec.load(A)
FULL = SPEC.max_points
POINTS = {c.name: c.points for c in SPEC.checks}


def lost(*checks: str) -> int:
    """The points of a submission that fails exactly these checks."""
    return FULL - sum(POINTS[c] for c in checks)


def earned(*checks: str) -> int:
    """The points of a submission that passes exactly these checks."""
    return sum(POINTS[c] for c in checks)


CAUSAL = ("causal_mask", "causal_mask.hidden")
PADDING = ("padding_mask", "padding_mask.hidden")
SDPA = ("sdpa", "sdpa.causal", "sdpa.float64", "sdpa.fully_masked")
HEADS = ("split_heads", "split_heads.hidden", "merge_heads", "merge_heads.hidden")
MHA = ("mha", "mha.hidden")
DEPENDENCE = ("dependence_map", "dependence_map.hidden")


def solved():
    return make_sample(A, {"solved": "all"})


def blank():
    return make_sample(A, {"solved": []})


def grade_id(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def insert(nb, after: str, source: str):
    """A student's own cell, right after the cell with nbgrader id ``after``."""
    index = next(i for i, c in enumerate(nb.cells) if grade_id(c) == after)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


def replace(nb, cell_id: str, source: str):
    next(c for c in nb.cells if grade_id(c) == cell_id).source = source
    return nb


PATCH_ASSERTS = """
import numpy as np, numpy.testing, torch, torch.testing
np.testing.assert_allclose = np.testing.assert_array_equal = lambda *a, **k: None
np.allclose = np.array_equal = torch.allclose = torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
"""

ALWAYS_EQUAL = """
class AlwaysEqual:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    shape = property(lambda self: (4, 4))
def causal_mask(T): return AlwaysEqual()
def padding_mask(attention_mask): return AlwaysEqual()
"""

LYING_TENSOR = """
import numpy as np, torch
class Liar(torch.Tensor):
    def __eq__(self, other): return torch.ones_like(other, dtype=torch.bool)
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.__array__):
            T = args[0].shape[0]
            return np.tril(np.ones((T, T), dtype=bool))  # the right answer, if anyone asks politely
        return super().__torch_function__(func, types, args, kwargs or {})
def causal_mask(T):
    return torch.zeros(T, T, dtype=torch.bool).as_subclass(Liar)
"""

CALLS_REFERENCE = {
    "causal_mask": """
import importlib
def causal_mask(T):
    masks = importlib.import_module("genlab." + "masks")
    return getattr(masks, "causal_" + "mask")(T)  # hidden from a source scan: the tracer sees it
""",
    "sdpa": """
from genlab.attention import scaled_dot_product_attention as _reference
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    return _reference(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
""",
}

SNOOP = """
import glob, os, pathlib
import genlab
root = pathlib.Path(genlab.__file__).resolve().parents[2]
found = {
    "hidden references": glob.glob(str(root / "autograder/references/*/hidden/*.npz")),
    "specs": glob.glob(str(root / "autograder/specs/*.py")),
    "solutions": glob.glob(str(root / "solutions/*/*.ipynb")),
    "git": glob.glob(str(root / ".git/HEAD")),
    "gradebooks": glob.glob(str(root / "**/gradebook.db"), recursive=True)
                  + glob.glob("/tmp/**/gradebook.db", recursive=True),
    "other submissions": glob.glob("/tmp/**/submissions/*/01_attention/*.ipynb", recursive=True),
}
try:
    listing = os.listdir(".rec")
except OSError as exc:
    listing = type(exc).__name__
print("snoop:", {k: len(v) for k, v in found.items()}, "recorder folder listing:", listing)
for name in ("grades.csv", "results.json", "../grades.csv", "../../grades.csv", "/tmp/grades.csv"):
    try:
        pathlib.Path(name).write_text("student,assignment,check,points\\nsnoop,01_attention,all,999\\n")
    except OSError:
        pass
import numpy as np
for guess in ("outputs", "rec/outputs", "export", "/tmp/export"):
    try:
        os.makedirs(f"{guess}/causal_mask", exist_ok=True)
        np.savez(f"{guess}/causal_mask/causal_mask-0.npz", **{"out.0": np.tril(np.ones((4, 4), bool))})
    except OSError:
        pass
"""

DETECT = """
import os, socket, sys
print("detect:", {k: v for k, v in os.environ.items() if "NBGRADER" in k or "GRADE" in k},
      socket.gethostname(), "genlab.checks" in sys.modules)
"""

FAKE_PASS = """
print("✓ causal_mask: 2 public case(s) match the reference.")
print("All tests passed! Score: 16/16")
"""

NO_TRACEBACKS = """
ip = get_ipython()
ip.showtraceback = lambda *a, **k: None
ip.showsyntaxerror = lambda *a, **k: None
import sys
sys.excepthook = lambda *a: None
"""

PROCESS_BOMB = """
import subprocess
children = []
try:
    for _ in range(2000):
        children.append(subprocess.Popen(["sleep", "601"]))
except OSError as exc:
    print("process bomb stopped after", len(children), type(exc).__name__)
for child in children:  # bounded: the bomb itself is not what is graded below
    child.kill()
"""

ORPHANS = """
import subprocess
for _ in range(5):  # detached from the kernel's session: they must still die with the grading
    subprocess.Popen(["sleep", "600"], start_new_session=True)
"""

MEMORY_BOMB = """
blocks = []
try:
    for _ in range(64):
        blocks.append(bytearray(1 << 30))  # 64 GiB if nothing stops it
except MemoryError:
    pass
reached = len(blocks)
del blocks  # (printing needs memory too: report after freeing it)
print("memory bomb stopped after", reached, "GiB")
"""

WARNINGS = """
import sys, warnings
_sdpa = scaled_dot_product_attention
def scaled_dot_product_attention(*args, **kwargs):
    warnings.warn("DeprecationWarning-looking noise")
    print("debug: on stderr", file=sys.stderr)
    return _sdpa(*args, **kwargs)
"""


# ---- attacks on the recorder, the tracer and the trusted side (issues 21 and 22)

# the walk through the callers' frames, clearing every tracer's record
_WALK = """
    fr = sys._getframe(1)
    while fr is not None:
        for val in list(fr.f_locals.values()):
            used = getattr(val, "used", None)
            if isinstance(used, (set, list, dict)):
                used.clear()
        fr = fr.f_back"""

# the first attack of issue 21: call genlab's reference, then erase what the tracer saw
FRAME_WALK = """
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    import sys, importlib
    m = importlib.import_module("gen" + "lab.att" + "ention")
    f = getattr(m, "scaled_dot_" + "product_attention")
    out = f(q, k, v, attn_mask=attn_mask, is_causal=is_causal)""" + _WALK + """
    return out
"""

# the same walk before the call: the grading build refuses genlab's function before the
# first version gets to its walk, so this one shows the guard at work
FRAME_WALK_FIRST = """
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    import sys, importlib""" + _WALK + """
    m = importlib.import_module("gen" + "lab.att" + "ention")
    return getattr(m, "scaled_dot_" + "product_attention")(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
"""

# the second: causal_mask left as released; later code writes its outputs
OVERWRITE_LATER = """
import glob, os, numpy as np, io, base64
from IPython.display import publish_display_data
target = record_outputs.directory  # the recorder of the causal-mask cell, now gone
for T in (1, 2, 3, 4, 5, 6, 7, 8):
    arrays = {"out.0": np.tril(np.ones((T, T), bool)), "forbidden": np.asarray([], dtype=str)}
    buffer = io.BytesIO(); np.savez(buffer, **arrays)
    for case in ("causal_mask-0", "causal_mask-1", "causal_mask.hidden-0", "causal_mask.hidden-1",
                 "causal_mask.hidden-2"):
        publish_display_data({"application/vnd.genlab.record+json": {
            "function": "causal_mask", "case": case, "npz": base64.b64encode(buffer.getvalue()).decode()}})
        try:
            os.makedirs(target / "outputs" / "causal_mask", exist_ok=True)
            with open(target / "outputs" / "causal_mask" / f"{case}.npz", "wb") as f:
                f.write(buffer.getvalue())
        except OSError as exc:
            print("overwrite refused:", type(exc).__name__)
"""

# a recorder of one's own: publish genlab's answers for every case it is asked
FAKE_RECORDER = """
import torch, genlab.checks as checks, genlab.masks as masks

class Recorder(checks.Recorder):
    def __call__(self, function, fn=None):
        if function == "causal_mask":  # publish answers directly (the case names are public)
            import base64, io, numpy as np
            from IPython.display import publish_display_data
            for case, T in (("causal_mask-0", 4), ("causal_mask-1", 7), ("causal_mask.hidden-0", 1),
                            ("causal_mask.hidden-1", 5), ("causal_mask.hidden-2", 9)):
                buffer = io.BytesIO()
                np.savez(buffer, **{"out.0": torch.ones(T, T, dtype=torch.bool).tril().numpy()})
                publish_display_data({checks.RECORD_MIME: {"function": function, "case": case,
                                      "npz": base64.b64encode(buffer.getvalue()).decode()}})
            return
        if function == "padding_mask":  # the real recorder, on genlab's answer
            fn = masks.padding_mask
        super().__call__(function, fn)

checks.Recorder = Recorder
"""

NOOP_TRACER = """
import genlab.checks as checks

class Blind:
    def __init__(self, names): self.used = set()
    def __enter__(self): return self
    def __exit__(self, *exc): pass

checks.CallTracer = Blind
from genlab.masks import causal_mask as _reference
def causal_mask(T):
    return _reference(T)
"""

PROFILE_OFF = """
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    import sys, importlib
    sys.setprofile(None)
    m = importlib.import_module("genlab.attention")
    return m.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
"""

IN_A_THREAD = """
def causal_mask(T):
    from concurrent.futures import ThreadPoolExecutor
    import importlib
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(getattr(importlib.import_module("genlab.masks"), "causal_mask"), T).result()
"""

OLD_THREAD = """
import queue, threading, importlib
jobs, answers = queue.Queue(), queue.Queue()
def worker():
    while True:
        T = jobs.get()
        try:
            answers.put(getattr(importlib.import_module("genlab.masks"), "causal_mask")(T))
        except Exception as exc:  # the grading build refuses the call: stay alive all the same
            answers.put(exc)
threading.Thread(target=worker, daemon=True).start()
def causal_mask(T):
    jobs.put(T)
    return answers.get()
"""

CODE_COPY = """
import types, genlab.masks as masks
_code = masks.padding_mask.__code__.replace(co_name="mine")
padding_mask = types.FunctionType(_code, masks.padding_mask.__globals__)
"""

# torch's fused attention called from C code (map), where sys.setprofile sees nothing
SDPA_FROM_C = """
import torch
_own_sdpa = scaled_dot_product_attention
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    out, weights = _own_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    fused = list(map(getattr(torch._C._nn, "scaled_dot_" + "product_attention"), [q], [k], [v]))[0]
    return fused if attn_mask is None and not is_causal else out, weights
"""

# genlab's answers computed in an ordinary cell, where no recording watches, then looked up
PRECOMPUTE = """
import importlib
_masks = importlib.import_module("genlab." + "masks")
try:
    _TABLE = {T: getattr(_masks, "causal_" + "mask")(T) for T in range(1, 129)}
except Exception as exc:
    print("precompute refused:", type(exc).__name__)
    _TABLE = {}
def causal_mask(T):
    return _TABLE[T].clone()
"""

GC_WALK = """
import gc
def dependence_map(attention, x):
    for obj in gc.get_objects():
        if type(obj).__name__ == "CallTracer":
            obj.used.clear()
    raise NotImplementedError
"""

# the trusted side must not open what the notebook leaves behind (issue 22)
LEFT_BEHIND = """
import os, glob
for name in ("executed-attention.ipynb", "attention.ipynb", "grades.csv"):
    for path in (name, os.path.join(".rec", name)):
        try:
            os.mkfifo(path)
        except OSError:
            pass
import genlab, pathlib
repo = pathlib.Path(genlab.__file__).resolve().parents[2]
for ref in glob.glob(str(repo / "autograder/references/*/hidden/*.npz")) + [str(repo / "solutions/01_attention/attention.ipynb")]:
    try:
        os.symlink(ref, os.path.basename(ref))
    except OSError:
        pass
try:
    os.chmod(".rec", 0o755)
    print("listing:", os.listdir(".rec"))
except OSError as exc:
    print("recorder folder:", type(exc).__name__)
"""

FORGED_STATUS = """
import os
os.write(1, b'EXECUTION:{"ended": "kernel died", "detail": "forged"}\\n')
os.write(2, b'EXECUTION:{"ended": "kernel died", "detail": "forged"}\\n')
"""

FLOOD = """
import os
for _ in range(40):
    print("x" * (1 << 20))
os.write(1, b"y" * (32 << 20))
"""

SCRIPT_IN_FEEDBACK = """
from IPython.display import HTML, Markdown, display
display(HTML('<b>bold</b><script>document.title = "PWNED-SCRIPT"</script>'
             '<a href="javascript:document.title=1">link</a>'))
display(Markdown('<img src="x" onerror="document.title = \\'PWNED-IMG\\'">'))
"""


def socket_cell(port: int) -> str:
    return f"""
import socket
s = socket.socket(); s.settimeout(3)
print("socket to the host's loopback:", "refused" if s.connect_ex(("127.0.0.1", {port})) else "CONNECTED")
"""


def build_class(port: int) -> dict[str, tuple[object, int]]:
    """name -> (notebook, or text for a broken file, or None for an empty folder; points)."""
    dup = solved()
    cell = next(c for c in dup.cells if grade_id(c) == "test_causal_mask")
    dup.cells.insert(dup.cells.index(cell), copy.deepcopy(cell))  # same cell id, same grade id
    deleted = solved()
    deleted.cells = [c for c in deleted.cells if grade_id(c) not in ("test_sdpa", "test_mha")]
    hung = make_sample(A, {"solved": "all", "edit": {"dependence_map": [
        "    T = x.shape[1]", "    while True:\n        pass\n    T = x.shape[1]"]}})
    return {
        "patch_asserts": (insert(blank(), "setup", PATCH_ASSERTS), 0),
        "patch_builtins": (insert(blank(), "setup", "import builtins\nbuiltins.isinstance = lambda *a: True\n"
                                                    "builtins.type = lambda *a: object"), 0),
        "always_equal": (insert(blank(), "padding_mask", ALWAYS_EQUAL), 0),
        "lying_tensor": (insert(blank(), "causal_mask", LYING_TENSOR), 0),
        "calls_reference": (replace(replace(solved(), "causal_mask", CALLS_REFERENCE["causal_mask"]),
                                    "sdpa", CALLS_REFERENCE["sdpa"]), lost(*CAUSAL, *SDPA, *MHA)),
        "snoop_and_write": (insert(blank(), "setup", SNOOP), 0),
        "sys_exit": (insert(blank(), "setup", "import sys\nsys.exit(0)"), 0),
        "os_exit": (insert(solved(), "test_causal_mask", "import os\nos._exit(0)"), earned(*CAUSAL)),
        "kill_kernel": (insert(solved(), "test_padding_mask",
                               "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
                        earned(*CAUSAL, *PADDING)),
        "kill_runner": (insert(solved(), "test_causal_mask",
                               "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"),
                        earned(*CAUSAL)),
        "no_tracebacks": (insert(make_sample(A, SPEC.samples["partial"]), "setup", NO_TRACEBACKS),
                          lost(*HEADS, *MHA, *DEPENDENCE)),
        "fake_pass": (insert(blank(), "setup", FAKE_PASS), 0),
        "detect_grading": (insert(blank(), "setup", DETECT), 0),
        "infinite_loop": (insert(solved(), "test_padding_mask", "while True:\n    pass"), FULL),
        "hung_function": (hung, lost(*DEPENDENCE)),
        "memory_bomb": (insert(solved(), "setup", MEMORY_BOMB), FULL),
        "process_bomb": (insert(solved(), "setup", PROCESS_BOMB), FULL),
        "orphans": (insert(solved(), "setup", ORPHANS), FULL),
        "socket": (insert(solved(), "setup", socket_cell(port)), FULL),
        "stderr_warnings": (insert(solved(), "sdpa", WARNINGS), FULL),
        "duplicated_cells": (dup, FULL),
        "deleted_cells": (deleted, FULL),
        "edited_tests": (replace(replace(blank(), "test_causal_mask", "print('passed')"),
                                 "test_sdpa", "pass"), 0),
        "edited_tests_solved": (replace(solved(), "test_causal_mask", "print('passed')"), FULL),
        "malformed_json": ('{"cells": [', 0),
        "frame_walk": (replace(solved(), "sdpa", FRAME_WALK), lost(*SDPA, *MHA)),
        "frame_walk_first": (replace(solved(), "sdpa", FRAME_WALK_FIRST), lost(*SDPA, *MHA)),
        "overwrite_later": (insert(replace(solved(), "causal_mask", "def causal_mask(T):\n"
                                           "    raise NotImplementedError()"),
                                   "test_causal_mask", OVERWRITE_LATER), lost(*CAUSAL)),
        "fake_recorder": (insert(blank(), "setup", FAKE_RECORDER), 0),
        # a replaced tracer, or a thread of one's own left running, makes every later
        # recording untrustworthy: each of them scores 0
        "noop_tracer": (replace(solved(), "causal_mask", NOOP_TRACER), 0),
        "profile_off": (replace(solved(), "sdpa", PROFILE_OFF), lost(*SDPA, *MHA)),
        "in_a_thread": (replace(solved(), "causal_mask", IN_A_THREAD), lost(*CAUSAL)),
        "old_thread": (replace(solved(), "causal_mask", OLD_THREAD), 0),
        "code_copy": (replace(solved(), "padding_mask", CODE_COPY), lost(*PADDING)),
        "sdpa_from_c": (insert(solved(), "sdpa", SDPA_FROM_C), lost(*SDPA, *MHA)),
        "precompute": (replace(solved(), "causal_mask", PRECOMPUTE), lost(*CAUSAL)),
        "gc_walk": (insert(solved(), "dependence_map", GC_WALK), lost(*DEPENDENCE)),
        "left_behind": (insert(blank(), "test_dependence", LEFT_BEHIND), 0),
        "left_behind_solved": (insert(solved(), "test_dependence", LEFT_BEHIND), FULL),
        "forged_status": (insert(solved(), "setup", FORGED_STATUS), FULL),
        "flood": (insert(solved(), "setup", FLOOD), FULL),
        "script_in_feedback": (insert(solved(), "setup", SCRIPT_IN_FEEDBACK), FULL),
        "wrong_file_name": (solved(), 0),
        "empty_folder": (None, 0),
    }


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    connections = []

    def accept():
        while listener.fileno() != -1:
            try:
                connections.append(listener.accept()[0])
            except OSError:
                if listener.fileno() == -1:
                    return

    threading.Thread(target=accept, daemon=True).start()
    root = tmp_path_factory.mktemp("adversarial")
    subs = root / "submissions"
    expected = {}
    for name, (content, points) in build_class(listener.getsockname()[1]).items():
        folder = subs / name / A
        folder.mkdir(parents=True)
        file_name = "attention (1).ipynb" if name == "wrong_file_name" else SPEC.notebook
        if isinstance(content, str):
            (folder / file_name).write_text(content)
        elif name == "duplicated_cells":  # nbformat would refuse to write duplicate cell ids
            (folder / file_name).write_text(json.dumps(content))
        elif content is not None:
            nbformat.write(content, folder / file_name)
        expected[name] = points
    out = root / "out"
    run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--workers", "2",
            "--cell-timeout", "8", "--timeout", "120", "--quiet", timeout=1200)
    listener.close()
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    table = {}
    for r in rows:
        table.setdefault(r["student"], {})[r["check"]] = r
    return {"table": table, "expected": expected, "out": out, "connections": connections}


def printed(out, student) -> str:
    nb = nbformat.read(out / "autograded" / student / A / SPEC.notebook, as_version=4)
    return "".join(o.get("text", "") + o.get("evalue", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)


def notes(out, student) -> str:
    return json.loads((out / student / "results.json").read_text())["output"]


def total(table, student) -> float:
    return sum(float(r["points"]) for r in table[student].values())


def test_each_attack_gets_exactly_its_points(adversarial):
    table, expected = adversarial["table"], adversarial["expected"]
    assert set(table) == set(expected), "every submission is graded, none stops the class"
    report = {s: (total(table, s), expected[s]) for s in sorted(expected)}
    print("\n".join(f"{s:22s} {got:g}/{FULL} (expected {want})" for s, (got, want) in report.items()))
    wrong = {s: v for s, v in report.items() if v[0] != v[1]}
    assert not wrong, wrong
    for student, checks in table.items():
        for r in checks.values():
            assert (float(r["points"]) < float(r["max_points"])) == bool(r["message"]), (student, r)


def test_attack_messages(adversarial):
    t, out = adversarial["table"], adversarial["out"]
    assert "expected a torch.Tensor" in t["always_equal"]["padding_mask"]["message"]
    assert "query 0 may not attend to key 0" in t["lying_tensor"]["causal_mask"]["message"]
    assert "uses genlab.masks.causal_mask" in t["calls_reference"]["causal_mask"]["message"]
    assert "uses genlab.attention.scaled_dot_product_attention" in t["calls_reference"]["sdpa"]["message"]
    assert "NotImplementedError" in t["patch_asserts"]["sdpa"]["message"]
    assert "kernel died" in notes(out, "os_exit") and "kernel died" in notes(out, "kill_kernel")
    assert "stopped abnormally" in notes(out, "kill_runner")
    assert "no output recorded" in t["os_exit"]["sdpa"]["message"]
    assert "no output recorded" in t["hung_function"]["dependence_map"]["message"]
    assert "could not be read as a notebook" in t["malformed_json"]["sdpa"]["message"]
    # issue 21: the first attack is named by its forbidden call, the second gets nothing
    assert "uses genlab.attention.scaled_dot_product_attention" in t["frame_walk"]["sdpa"]["message"]
    assert "not available while grading" in printed(out, "frame_walk")  # the grading build
    assert "sys._getframe" in notes(out, "frame_walk_first")
    assert "NotImplementedError" in t["overwrite_later"]["causal_mask"]["message"]
    assert "overwrite refused: PermissionError" in printed(out, "overwrite_later")
    assert "record outside its test cell" in notes(out, "overwrite_later")
    assert "not made by the autograder's recorder" in t["fake_recorder"]["causal_mask"]["message"]
    assert "uses genlab.masks.padding_mask" in t["fake_recorder"]["padding_mask"]["message"]
    assert "call tracer" in t["noop_tracer"]["sdpa"]["message"]
    assert "blocked" in notes(out, "snoop_and_write")
    assert "sys.setprofile" in t["profile_off"]["sdpa"]["message"]
    assert "uses genlab.masks.causal_mask" in t["in_a_thread"]["causal_mask"]["message"]
    assert "thread" in t["old_thread"]["causal_mask"]["message"]
    assert "code.__new__" in notes(out, "code_copy")
    assert "gc.get_objects" in t["gc_walk"]["dependence_map"]["message"]
    assert "uses torch.nn.functional.scaled_dot_product_attention" in t["sdpa_from_c"]["sdpa"]["message"]
    assert "precompute refused: NotAvailableWhileGrading" in printed(out, "precompute")
    assert "found: attention (1).ipynb" in t["wrong_file_name"]["sdpa"]["message"]
    assert "empty or missing" in t["empty_folder"]["sdpa"]["message"]


def test_the_sandbox_held(adversarial):
    out = adversarial["out"]
    snoop = printed(out, "snoop_and_write")
    assert ("snoop: {'hidden references': 0, 'specs': 0, 'solutions': 0, 'git': 0, 'gradebooks': 0, "
            "'other submissions': 0} recorder folder listing: PermissionError") in snoop
    with open(out / "grades.csv") as f:
        assert "snoop" not in f.read().replace("snoop_and_write", "")
    assert "socket to the host's loopback: refused" in printed(out, "socket")
    assert not adversarial["connections"], "a submission reached a listener on the host"
    assert "process bomb stopped after" in printed(out, "process_bomb")
    # the memory bomb's own cell output is not asserted: inside the full notebook its print
    # is sometimes lost (under investigation); that the kernel survived it and every later
    # check scored is asserted by test_each_attack_gets_exactly_its_points
    assert "'NBGRADER_EXECUTION'" not in printed(out, "detect_grading")
    assert_no_process("sleep 60[01]")


def test_nothing_left_behind_is_read_and_status_comes_from_the_executor(adversarial):
    """Issue 22: fifos, links and a chmod in the work folder change nothing and stall no one;
    a status line printed by the notebook is not the executor's; flooding is capped."""
    t, out = adversarial["table"], adversarial["out"]
    assert "recorder folder: PermissionError" in printed(out, "left_behind_solved")
    assert "kernel died" not in notes(out, "forged_status")
    flood = out / "autograded" / "flood" / A / SPEC.notebook
    assert flood.stat().st_size < 20 << 20, flood.stat().st_size
    assert "bytes of the notebook's output were cut" in notes(out, "flood")
    assert not (out / ".work").exists(), "no work folder on the grading host"
    feedback = list((out / "feedback").rglob("*.html"))
    assert len(feedback) >= len(t) - 3, "every notebook that ran has feedback"
    for page in feedback:  # the solutions are never mounted, and nothing is read back
        assert "BEGIN SOLUTION" not in page.read_text(), page
    assert "output was malformed" not in printed(out, "stderr_warnings")


def test_feedback_runs_no_script_of_the_submission(adversarial):
    import shutil
    import subprocess

    html_path = adversarial["out"] / "feedback" / "script_in_feedback" / A / "attention.html"
    import re

    html = html_path.read_text()
    assert "<b>bold</b>" in html, "the submission's own (harmless) HTML is kept"
    assert not re.search(r"<script[^>]*>\s*document\.title", html)
    assert not re.search(r"<img[^>]*\sonerror=", html)
    assert not re.search(r"<a[^>]*href=.javascript:", html)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:  # open it as an instructor would: a script that ran would have set the title

        def title(path) -> str:
            dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                  "--dump-dom", path.as_uri()], capture_output=True, text=True,
                                 timeout=120).stdout
            return re.search(r"<title>(.*?)</title>", dom).group(1)

        control = html_path.parent / "control.html"  # the same attack, unsanitized
        control.write_text('<html><head><title>attention</title></head><body><img src="x" '
                           'onerror="document.title = \'PWNED-IMG\'"></body></html>')
        assert title(control) == "PWNED-IMG", "the browser runs scripts: the check can fail"
        assert title(html_path) == "attention"
