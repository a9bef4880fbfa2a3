"""Issue 19, item 7: the class report of a graded assignment, with its similarity report.

A class of five hands in assignment 1: the solution, a blank notebook, the solution
without the 1/sqrt(d) scaling (a known bug of the spec), a copy of the solution's
attention with renamed variables and rewritten comments (which also carries the mask
polarity bug), and attention written independently (correct, differently). The report is
built through ``class_report``'s command line and checked against checks.json and the
gradebook; the similarity measure must put the renamed copy above the threshold and the
independent version below it. A headless Chromium screenshot of the report is saved
(printed: where) for a person to look at."""

from __future__ import annotations

import argparse
import base64
import html
import json
import re

import pytest

from autograder import class_report, similarity
from autograder import references as refs
from autograder import spec
from autograder.samples import make_sample
from conftest import run_cli
from test_exports import _gradebook_totals, _write
from test_site import _not_blank, browser  # noqa: F401 (browser: a fixture used below)

pytestmark = pytest.mark.slow

A = "01_attention"
SPEC = spec.load(A)
SDPA = "scaled_dot_product_attention"
SCREENSHOT = "genlab-class-report.png"

# The solution's attention with every name changed, the comments rewritten, the error
# message reworded (and a comment a browser would run if it were not escaped).
RENAMED_COPY = '''def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False):
    # <script>alert("not escaped")</script> my own attention
    s = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if is_causal:
        if attn_mask is not None:
            raise ValueError("<b>attn_mask</b> and is_causal cannot both be given")
        attn_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, torch.finfo(s.dtype).min)
    p = torch.softmax(s, dim=-1)
    if attn_mask is not None:
        p = p * attn_mask   # zero rows
    return p @ value, p
'''
# Two versions written independently of the solution and of each other.
INDEPENDENT = '''def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    if is_causal and attn_mask is not None:
        raise ValueError("give attn_mask or is_causal, not both")
    d = q.size(-1)
    logits = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
    if is_causal:
        tq, tk = logits.shape[-2:]
        attn_mask = torch.tril(torch.ones((tq, tk), dtype=torch.bool, device=q.device))
    if attn_mask is None:
        probs = logits.softmax(-1)
    else:
        very_negative = torch.finfo(logits.dtype).min
        probs = torch.where(attn_mask, logits, very_negative).softmax(-1)
        probs = torch.where(attn_mask, probs, torch.zeros_like(probs))
    out = torch.matmul(probs, v)
    return out, probs
'''
INDEPENDENT_2 = '''def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    """My attention."""
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    if is_causal:
        assert attn_mask is None, "not both"
        rows = torch.arange(Tq, device=q.device)[:, None]
        cols = torch.arange(Tk, device=q.device)[None, :]
        attn_mask = cols <= rows
    w = torch.einsum("...qd,...kd->...qk", q, k) / D ** 0.5
    if attn_mask is not None:
        w = w.masked_fill(attn_mask.logical_not(), float("-inf"))
        w = torch.nan_to_num(torch.softmax(w, dim=-1), nan=0.0)
    else:
        w = torch.softmax(w, dim=-1)
    return torch.einsum("...qk,...kd->...qd", w, v), w
'''
NO_SCALE = {"sdpa": ["q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])", "q @ k.transpose(-2, -1)"]}


def _with_attention(nb, source: str):
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "sdpa")
    cell.source = source
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("class-report")
    subs, out = root / "submissions", root / "out"
    _write(subs, "solution", make_sample(A, {"solved": "all"}))
    _write(subs, "blank", make_sample(A, {"solved": []}))
    _write(subs, "noscale", make_sample(A, {"solved": "all", "edit": NO_SCALE}))
    _write(subs, "copied", _with_attention(make_sample(A, SPEC.samples["polarity"]), RENAMED_COPY))
    _write(subs, "independent", _with_attention(make_sample(A, {"solved": "all"}), INDEPENDENT))
    run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--quiet")
    return out


@pytest.fixture(scope="module")
def report(graded):
    parser = argparse.ArgumentParser()
    class_report.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", A, "--out", str(graded)])
    assert args.func(args) == 0
    return (graded / "report" / "index.html").read_text()


def _checks_json(out, student):
    return json.loads((out / student / "checks.json").read_text())["checks"]


def test_every_student_the_totals_and_the_figures(graded, report):
    book = _gradebook_totals(graded)
    assert set(book) == {"solution", "blank", "noscale", "copied", "independent"}
    assert book["independent"] == SPEC.max_points, "the independent attention is correct"
    for student, total in book.items():
        assert f"<td>{student}</td><td class=\"num\">{total:g}</td>" in report, student
    assert f"{len(book)} students" in report
    figures = re.findall(r'<img src="data:image/png;base64,([^"]+)"', report)
    assert len(figures) == 3, "totals, score per check, grading time"
    assert all(base64.b64decode(f).startswith(b"\x89PNG") for f in figures)
    assert "No due date set" in report
    for check in SPEC.checks:
        assert f"<td>{check.name}</td>" in report


def test_named_bug_counts_are_what_checks_json_says(graded, report):
    """Counted here from checks.json and the manifest's bug messages (not through the
    report's code); the report's table must say the same."""
    manifest = refs.load_manifest(A)
    expected: dict[str, int] = {}
    polarity = 0
    for student in _gradebook_totals(graded):
        for c in _checks_json(graded, student):
            for bug, message in manifest["checks"][c["check"]]["bugs"].items():
                if message in c["message"]:
                    expected[f"known bug: {bug}"] = expected.get(f"known bug: {bug}", 0) + 1
            polarity += "mask polarity inverted" in c["message"]
    assert expected == {"known bug: no_scale": 4, "known bug: sdpa_no_scale": 2}
    assert polarity == len(SPEC.samples["polarity"]["lost"])
    expected["mask polarity inverted (True must mean 'may attend')"] = polarity
    found = {d.name: d.count for d in class_report.named_diagnoses(
        class_report.exports.class_grades(A, graded), manifest)}
    assert {name: found.get(name) for name in expected} == expected
    for name, count in expected.items():
        assert f"<tr><td>{html.escape(name)}</td><td class=\"num\">{count}</td>" in report, name


def test_student_code_is_escaped(report):
    assert "<script>" not in report and "<b>attn_mask</b>" not in report
    assert "&lt;script&gt;alert(&quot;not escaped&quot;)&lt;/script&gt;" in report
    assert "never a penalty" in report


def test_a_renamed_copy_is_flagged_and_independent_work_is_not(graded, report):
    solution = class_report.student_sources(A, graded, ["solution"], {SDPA})["solution"][SDPA]
    copy_score = similarity.similarity(RENAMED_COPY, solution)
    independent = [similarity.similarity(INDEPENDENT, solution), similarity.similarity(INDEPENDENT_2, solution),
                   similarity.similarity(INDEPENDENT, INDEPENDENT_2)]
    print(f"similarity to the solution's attention: renamed copy {copy_score:.2f}; "
          f"independent versions {', '.join(f'{s:.2f}' for s in independent)}")
    assert copy_score >= similarity.THRESHOLD > max(independent)
    assert copy_score - max(independent) > 0.5
    # in the report: the copy with the solution (identical once normalised, or side by side),
    # the independent version with nobody
    pairs = re.findall(r"<h4>([^<:]+): <code>" + SDPA + r"</code></h4>.*?<h4>([^<]+) \(similarity", report, re.S)
    groups = [g.split(", ") for g in re.findall(r"<h4><code>" + SDPA + r"</code>: ([^<]+)</h4>", report)]
    together = [set(p) for p in pairs] + [set(g) for g in groups]
    assert any({"copied", "solution"} <= t for t in together), (pairs, groups)
    assert not [t for t in together if "independent" in t], (pairs, groups)
    # a function left as released is compared with nothing
    assert "not written" in report


def test_the_report_in_chromium(report, graded, browser, tmp_path_factory):  # noqa: F811
    """The page as the instructor sees it: nothing wider than the window, every figure
    loaded. The screenshot (the whole page) is saved for a person to look at."""
    browser("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)
    browser("Page.navigate", url=(graded / "report" / "index.html").as_uri())
    browser.wait_for("Page.loadEventFired")
    state = browser("Runtime.evaluate", returnByValue=True, expression="""({
        height: document.documentElement.scrollHeight, width: document.documentElement.scrollWidth,
        images: Array.from(document.images).map(i => i.naturalWidth)})""")["result"]["value"]
    assert state["width"] <= 1280, f"the page is {state['width']} px wide"
    assert len(state["images"]) == 3 and min(state["images"]) > 0
    browser("Emulation.setDeviceMetricsOverride", width=1280, height=min(state["height"], 16000),
            deviceScaleFactor=1, mobile=False)
    png = base64.b64decode(browser("Page.captureScreenshot", format="png")["data"])
    path = tmp_path_factory.getbasetemp() / SCREENSHOT
    path.write_bytes(png)
    print(f"class report screenshot: {path}")
    assert _not_blank(png) > 5
