"""The grading guard (autograder/guard.py) on its own, without a notebook: a fresh Python
process installs it, runs snippets compiled as notebook cells are (their file is not part
of the library), and the reports it wrote to its pipe are checked, event by event."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO

DRIVER = r'''
import json, os, sys
read, write = os.pipe()
from autograder.guard import install
install(write, {"causal_mask": ["genlab.masks.causal_mask"]})
results = {}
def cell(name, source):
    code = compile(source, f"/tmp/ipykernel_0/{name}.py", "exec")
    try:
        exec(code, {"__name__": "__main__", "record": record})
        results[name] = "ok"
    except Exception as exc:
        results[name] = f"{type(exc).__name__}: {exc}"[:200]

def record(function, fn, forbidden=("genlab.masks.causal_mask",)):
    import tempfile, numpy as np
    from pathlib import Path
    from genlab.checks import Recorder, write_npz
    folder = Path(tempfile.mkdtemp())
    write_npz(folder / "inputs" / function / "c-0.npz", {"in.T": np.asarray(3)})
    (folder / "inputs" / function / "forbidden.json").write_text(json.dumps(list(forbidden)))
    Recorder(str(folder))(function, fn)

CELLS
os.close(write)
reports = [json.loads(line) for line in os.fdopen(read).read().splitlines()]
print("RESULT" + json.dumps({"results": results, "reports": reports}))
'''


def run_cells(cells: dict[str, str]) -> tuple[dict, list[dict]]:
    body = "\n".join(f"cell({name!r}, {textwrap.dedent(src)!r})" for name, src in cells.items())
    proc = subprocess.run([sys.executable, "-c", DRIVER.replace("CELLS", body)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(line[len("RESULT"):])
    return data["results"], data["reports"]


def test_introspection_from_notebook_code_is_blocked_and_reported():
    results, reports = run_cells({
        "getframe": "import sys; sys._getframe(0)",
        "inspect": "import inspect; inspect.currentframe()",
        "walk_stack": "import traceback; list(traceback.walk_stack(None))",
        "tb_frame": "try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame",
        "walk_tb": "import traceback\ntry:\n    1/0\nexcept Exception as e:\n    list(traceback.walk_tb(e.__traceback__))",
        "gc": "import gc; gc.get_objects()",
        "referrers": "import gc; gc.get_referrers(1)",
        "code_copy": "import genlab.masks as m; m.causal_mask.__code__.replace(co_name='x')",
        "set_code": "def f(): pass\ndef g(): return 1\nf.__code__ = g.__code__",
        "profile": "import sys; sys.setprofile(None)",
        "trace": "import sys; sys.settrace(None)",
        "ctypes": "import ctypes; ctypes.CDLL(None)",
        "proc_mem": "open('/proc/self/mem', 'rb')",
        "recorder_folder": "import os; os.listdir('.rec')",
        "disguise": "exec(compile('x = 1', " + repr(str(REPO / "lib/genlab/masks.py")) + ", 'exec'))",
        "patch_tracer": "import genlab.checks as c; c.CallTracer._profile.__code__ = (lambda: 0).__code__",
    })
    for name, outcome in results.items():
        assert outcome.startswith("PermissionError"), (name, outcome)
    blocked = [r for r in reports if r["event"] == "blocked"]
    assert len(blocked) == len(results), reports
    for event in ("sys._getframe", "object.__getattr__", "gc.get_objects", "code.__new__",
                  "sys.setprofile", "ctypes.dlopen", "open", "os.listdir", "compile",
                  "object.__setattr__"):
        assert any(r["detail"].startswith(event) for r in blocked), event
    assert all("/tmp/ipykernel_0/" in r["detail"] for r in blocked), "each names where"


def test_what_libraries_do_for_the_notebook_still_works():
    results, reports = run_cells({
        "warnings": "import warnings; warnings.warn('x')",
        "format_exc": "import traceback\ntry:\n    1/0\nexcept Exception:\n    traceback.format_exc()",
        "namedtuple": "import collections; collections.namedtuple('P', 'x y')(1, 2)",
        "logging": "import logging; logging.getLogger('x').warning('y')",
        "signature": "import inspect; inspect.signature(print)",
        "dataclass": "import dataclasses\n@dataclasses.dataclass\nclass A:\n    x: int = 1\nA()",
        "own_class": "class A:\n    pass\nA.x = 1",
        "torch": "import torch; torch.nn.functional.scaled_dot_product_attention(*[torch.ones(1, 2, 3)] * 3)",
        "subprocess": "import subprocess; subprocess.run(['true'])",
        "files": "open('/tmp/genlab-guard-test.txt', 'w').write('x')",
    })
    assert all(v == "ok" for v in results.values()), results
    assert not [r for r in reports if r["event"] == "blocked"], reports


def test_records_are_attested_and_forbidden_calls_reported_as_they_happen():
    results, reports = run_cells({
        "honest": "import torch\nrecord('causal_mask', lambda T: torch.ones(T, T).tril().bool())",
        "reference": "from genlab.masks import causal_mask\nrecord('causal_mask', causal_mask)",
        "thread": textwrap.dedent("""
            import genlab.masks as m
            from concurrent.futures import ThreadPoolExecutor
            def f(T):
                with ThreadPoolExecutor(1) as pool:
                    return pool.submit(m.causal_mask, T).result()
            record('causal_mask', f)
            """),
        "forged": "import sys; sys.audit('genlab.record.output', 'causal_mask', 'c-0', 'ab')",
        "blind": textwrap.dedent("""
            import genlab.checks as c
            class Blind:
                def __init__(self, names): self.used = set()
                def __enter__(self): return self
                def __exit__(self, *exc): pass
            real, c.CallTracer = c.CallTracer, Blind
            try:
                record('causal_mask', lambda T: None)
            finally:
                c.CallTracer = real
            """),
        "emptied": textwrap.dedent("""
            import json, genlab.checks as c
            real = c.json
            class NoNames:
                loads = staticmethod(lambda text: [])
            c.json = NoNames
            try:
                record('causal_mask', lambda T: None)
            finally:
                c.json = real
            """),
        "patched_profile": textwrap.dedent("""
            import genlab.checks as c
            real, c.CallTracer._profile = c.CallTracer._profile, lambda self, *a: None
            try:
                record('causal_mask', lambda T: None)
            finally:
                c.CallTracer._profile = real
            """),
        "process": textwrap.dedent("""
            import subprocess
            def f(T):
                subprocess.run(['true'])
            record('causal_mask', f)
            """),
    })
    assert all(v == "ok" for v in results.values()), results
    events = [(r["event"], r.get("function")) for r in reports]
    attests = [r for r in reports if r["event"] == "attest"]
    assert len(attests) == 4 and all(r["case"] == "c-0" and len(r["digest"]) == 64 for r in attests)
    forbidden = [r for r in reports if r["event"] == "forbidden"]
    assert len(forbidden) == 2 and all(r["name"] == "genlab.masks.causal_mask" for r in forbidden), \
        "the direct call and the one in a thread started while recording"
    assert ("forged record", "causal_mask") in events
    assert events.count(("untraced", "causal_mask")) == 3, "a blind, an emptied, a patched tracer"
    assert any(r["event"] == "blocked" and r["detail"].startswith("subprocess.Popen") for r in reports)


def test_a_thread_of_the_notebook_alive_at_recording_is_reported():
    results, reports = run_cells({
        "thread": textwrap.dedent("""
            import threading, time
            stop = threading.Event()
            threading.Thread(target=stop.wait, name='mine', daemon=True).start()
            record('causal_mask', lambda T: None)
            stop.set()
            """),
    })
    assert results == {"thread": "ok"}
    threads = [r for r in reports if r["event"] == "thread"]
    assert threads and "'mine'" in threads[0]["detail"], reports


def test_a_replaced_pipe_stops_the_kernel():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, sys
        read, write = os.pipe()
        from autograder.guard import install
        install(write)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, write)
        exec(compile("import gc\\ntry:\\n    gc.get_objects()\\nexcept PermissionError:\\n    pass",
                     "/tmp/ipykernel_0/x.py", "exec"))
        print("still running")
        """)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 86 and "still running" not in proc.stdout, (proc.returncode, proc.stderr[-500:])


def test_the_tracer_cannot_be_reached_replaced_or_outlived():
    """Review findings: the tracer through sys.getprofile, sys.setprofile from a worker thread,
    a decoy put in place of the reference before the first recording, a str subclass whose
    methods would run inside the hook, code compiled under a frozen module's name."""
    results, reports = run_cells({
        "decoy": "import genlab.masks as m\nreal_mask = m.causal_mask\nm.causal_mask = lambda T: None",
        "getprofile": textwrap.dedent("""
            import sys
            def f(T):
                p = sys.getprofile()
                if p is not None:
                    p.__self__._codes.clear()
                return real_mask(T)
            record('causal_mask', f)
            """),
        "worker": textwrap.dedent("""
            import sys
            from concurrent.futures import ThreadPoolExecutor
            def f(T):
                with ThreadPoolExecutor(1) as pool:
                    try:
                        pool.submit(sys.setprofile, None).result()
                    except PermissionError:
                        pass
                    return pool.submit(real_mask, T).result()
            record('causal_mask', f)
            """),
        "str_subclass": textwrap.dedent("""
            ran = []
            class S(str):
                def split(self, *a):
                    ran.append(1)
                    return []
                def startswith(self, *a):
                    ran.append(1)
                    return False
            try:
                open(S('/tmp/.rec/x'))
            except OSError:
                pass
            assert not ran, "the notebook's code ran inside the hook"
            """),
        "frozen_name": "exec(compile('import gc; gc.get_objects()', '<frozen x>', 'exec'))",
    })
    assert results["decoy"] == results["getprofile"] == results["worker"] == "ok", results
    assert results["str_subclass"] == "ok", results  # no code of the subclass ran in the hook
    assert any(r["event"] == "blocked" and r["detail"].startswith("open") for r in reports)
    assert results["frozen_name"].startswith("PermissionError"), results
    events = [(r["event"], r.get("function")) for r in reports]
    assert events.count(("untraced", "causal_mask")) == 2, "the decoy makes the tracer's tables wrong"
    assert any(r["event"] == "blocked" and r["detail"].startswith("sys.setprofile") for r in reports)
