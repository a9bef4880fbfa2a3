"""A class report of one graded assignment: one self-contained HTML page for the instructor.

    python -m autograder report 01_attention --out OUT [--threshold 0.6]

writes ``OUT/report/index.html`` (figures inline as PNG data URIs) from the gradebook and
``OUT/<student>/checks.json``, as every export is made (``exports.class_grades``):

* the class: size, mean and median total;
* per check, the fraction of students with full, partial and zero points (a figure);
* the named diagnoses seen most: the known bugs of the spec (``Check.bugs``, whose
  messages ``genlab.checks`` gives when an output equals a buggy variant's) and the
  diagnoses ``genlab.checks`` and grading name in words (inverted mask polarity, NaN,
  a forbidden call, ...), each with how often and one example message;
* grading time per submission (a figure);
* lateness: each student's due date (extensions included), submission time and penalty, as
  the exports read them from the gradebook;
* similarity (``similarity.py``): each student's graded functions against each other and
  against genlab's own implementation; pairs at or above the threshold side by side.
  Information for a person to judge, never a penalty.
"""

from __future__ import annotations

import ast
import base64
import html
import inspect
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from autograder import exports, similarity
from autograder import references as refs
from autograder import spec as spec_module
from autograder.course import REPO
from autograder.grade import _is_student_cell, _parse
from genlab.checks import resolve

MAX_PAIRS_SHOWN = 40  # side by side; the rest are counted

# Diagnoses that genlab.checks and grading put in words (the spec's own bugs come from the
# manifest): a phrase of the message -> the name shown. Anything else that loses points is
# counted as "other".
NAMED_DIAGNOSES = {
    "mask polarity inverted": "mask polarity inverted (True must mean 'may attend')",
    "the map is inverted": "dependence map inverted",
    "leaks the future": "causal mask leaks the future",
    "contains NaN": "NaN in the output",
    "come from a float32 step": "a float32 step in a float64 case",
    "this exercise asks you to write it yourself": "uses a forbidden call",
    "raised NotImplementedError": "not attempted (left as released)",
    "did not complete (the kernel died": "no output recorded (kernel died, timeout, or stopped)",
    "was not made by the autograder's recorder": "record not made by the recorder",
}


def diagnose(message: str, bugs: dict[str, str]) -> str | None:
    """The named diagnosis a check's message gives, or None. ``bugs``: the check's known
    bugs from the manifest (bug -> message)."""
    for bug, bug_message in bugs.items():
        if bug_message and bug_message in message:
            return f"known bug: {bug}"
    for phrase, name in NAMED_DIAGNOSES.items():
        if phrase in message:
            return name
    return None


@dataclass
class Diagnosis:
    name: str
    count: int = 0                       # checks it cost, over the class
    students: set[str] = field(default_factory=set)
    checks: set[str] = field(default_factory=set)
    example: str = ""


def named_diagnoses(grades: list[exports.StudentGrade], manifest: dict) -> list[Diagnosis]:
    """Every named diagnosis among the lost checks, most frequent first."""
    found: dict[str, Diagnosis] = {}
    for grade in grades:
        for line in grade.lines:
            check = manifest["checks"].get(line.name)
            if check is None or line.points >= line.max_points:
                continue
            name = diagnose(line.message, check.get("bugs", {}))
            if name is None:
                continue
            d = found.setdefault(name, Diagnosis(name, example=line.message))
            d.count += 1
            d.students.add(grade.student)
            d.checks.add(line.name)
    return sorted(found.values(), key=lambda d: (-d.count, d.name))


# ------------------------------------------------------------------------- sources


def functions_in(nb, names: set[str], student_cells_only: bool = True) -> dict[str, str]:
    """The top-level definitions of ``names`` in a notebook's (student) code cells: name -> source."""
    found = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or (student_cells_only and not _is_student_cell(cell)):
            continue
        tree = _parse(cell.source)
        if tree is None:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
                found[node.name] = ast.get_source_segment(cell.source, node) or ""
    return found


def reference_sources(spec) -> dict[str, str]:
    """function -> the source of genlab's implementation the spec names as its reference."""
    found = {}
    for check in spec.checks:
        if check.function in found:
            continue
        try:
            found[check.function] = inspect.getsource(resolve(check.reference))
        except (ImportError, AttributeError, OSError, TypeError):
            pass
    return found


def student_sources(assignment: str, out: Path, students: list[str], functions: set[str]) -> dict[str, dict[str, str]]:
    """student -> function -> source, from the autograded notebooks in OUT."""
    notebook = spec_module.load(assignment).notebook
    sources = {}
    for student in students:
        path = Path(out) / "autograded" / student / assignment / notebook
        try:
            sources[student] = functions_in(nbformat.read(path, as_version=4), functions)
        except (OSError, ValueError, nbformat.ValidationError):
            sources[student] = {}
    return sources


# ------------------------------------------------------------------------- figures


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def check_outcomes(grades: list[exports.StudentGrade], checks: list[str]) -> dict[str, tuple[int, int, int]]:
    """check -> (students with full, partial, zero points)."""
    outcomes = {}
    for check in checks:
        full = partial = zero = 0
        for grade in grades:
            line = next((x for x in grade.lines if x.name == check), None)
            if line is None or line.points <= 0:
                zero += 1
            elif line.points >= line.max_points:
                full += 1
            else:
                partial += 1
        outcomes[check] = (full, partial, zero)
    return outcomes


def outcomes_figure(outcomes: dict[str, tuple[int, int, int]]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(outcomes)[::-1]  # the first check on top
    counts = np.array([outcomes[n] for n in names], dtype=float)  # (checks, 3)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(names) + 1.2))
    left = np.zeros(len(names))
    for column, (label, colour) in enumerate((("full", "#2e7d32"), ("partial", "#f9a825"), ("zero", "#c62828"))):
        ax.barh(names, fractions[:, column], left=left, color=colour, label=label)
        left += fractions[:, column]
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the class")
    ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def bars_figure(labels: list[str], values: list[float], xlabel: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(labels) + 1.0))
    ax.barh(labels[::-1], values[::-1], color="#1565c0")
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def totals_figure(totals: list[float], max_points: float) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    ax.hist(totals, bins=min(20, int(max_points) + 1), range=(0, max_points), color="#1565c0")
    ax.set_xlabel(f"total points (of {max_points:g})")
    ax.set_ylabel("students")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


# ------------------------------------------------------------------------- the page

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; font-size: 0.9em; }
td.num, th.num { text-align: right; }
img { max-width: 100%; }
.note { background: #fff8e1; border-left: 4px solid #f9a825; padding: 0.6em 1em; }
.scroll { overflow-x: auto; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 0.6em; margin-bottom: 1.5em; }
.pair pre, pre.same { background: #f6f8fa; padding: 0.6em; white-space: pre-wrap; font-size: 0.8em; margin: 0 0 1.5em; }
.pair h4 { margin: 0 0 0.3em; font-size: 0.9em; }
"""


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    def cell(tag, i, value):
        klass = ' class="num"' if i in numeric else ""
        return f"<{tag}{klass}>{html.escape(str(value))}</{tag}>"

    # long snake_case headers may break after an underscore
    head = "".join(cell("th", i, h).replace("_", "_<wbr>") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _pair_html(pair: similarity.Pair) -> str:
    second = "genlab's own implementation" if pair.second == "genlab" else pair.second
    return (f'<div class="pair"><div><h4>{html.escape(pair.first)}: <code>{html.escape(pair.function)}</code></h4>'
            f"<pre>{html.escape(pair.first_source)}</pre></div>"
            f"<div><h4>{html.escape(second)} (similarity {pair.score:.2f})</h4>"
            f"<pre>{html.escape(pair.second_source)}</pre></div></div>")


def build(assignment: str, out: Path, db_url: str | None = None,
          threshold: float = similarity.THRESHOLD) -> Path:
    """Write ``OUT/report/index.html``; returns its path."""
    spec = spec_module.load(assignment)
    out = Path(out).resolve()
    if db_url is None and not (out / "gradebook.db").exists():
        raise SystemExit(f"no gradebook at {out / 'gradebook.db'}: grade first (python -m autograder grade)")
    if not 0 <= threshold <= 1:
        raise SystemExit(f"--threshold {threshold}: a similarity between 0 and 1")
    manifest = refs.load_manifest(assignment)
    grades = exports.class_grades(assignment, out, db_url)
    if not grades:
        raise SystemExit(f"no submissions of {assignment} in the gradebook")
    totals = [g.score for g in grades]
    checks = list(manifest["checks"])
    parts = [f"<h1>{html.escape(assignment)}: class report</h1>",
             f"<p>{len(grades)} students; total points: mean {statistics.mean(totals):.2f}, "
             f"median {statistics.median(totals):g}, of {grades[0].max_score:g}. "
             f"From the gradebook ({html.escape(exports.gradebook_url(out, db_url))}) and each "
             "student's checks.json.</p>",
             _figure(totals_figure(totals, grades[0].max_score), "distribution of the totals"),
             _table(["student", "total", "of"], [[g.student, f"{g.score:g}", f"{g.max_score:g}"] for g in grades],
                    numeric={1, 2})]

    parts.append("<h2>Score per check</h2>")
    outcomes = check_outcomes(grades, checks)
    parts.append(_figure(outcomes_figure(outcomes), "fraction of the class with full, partial, zero points per check"))
    parts.append(_table(["check", "full", "partial", "zero"], [[c, *outcomes[c]] for c in checks], numeric={1, 2, 3}))

    parts.append("<h2>Named diagnoses, most frequent first</h2>")
    diagnoses = named_diagnoses(grades, manifest)
    if diagnoses:
        parts.append(_table(["diagnosis", "checks lost", "students", "checks", "one example message"],
                            [[d.name, d.count, len(d.students), ", ".join(sorted(d.checks)), d.example]
                             for d in diagnoses], numeric={1, 2}))
    else:
        parts.append("<p>No named diagnosis in this class.</p>")

    parts.append("<h2>Grading time per submission</h2>")
    parts.append(_figure(bars_figure([g.student for g in grades], [g.seconds for g in grades],
                                     "seconds (sanitize, run in the sandbox, compare)"), "grading time per submission"))

    parts.append("<h2>Lateness</h2>")
    late_grades = [g for g in grades if g.lateness is not None]  # exports read it from the gradebook
    if not late_grades:
        parts.append("<p>No due date set for this assignment in the gradebook.</p>")
    else:
        parts.append(_table(["student", "due (UTC)", "submitted (UTC)", "seconds late", "late penalty"],
                            [[g.student, g.lateness.due + (" (extension)" if g.lateness.extension else ""),
                              g.lateness.submitted or "no time recorded", f"{g.lateness.seconds_late:g}",
                              f"{g.lateness.penalty:g}"] for g in late_grades], numeric={3, 4}))

    parts += similarity_section(assignment, spec, out, [g.student for g in grades], threshold)
    report = out / "report" / "index.html"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(assignment)}: class report</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    exports.atomic_write(report, page)
    return report


def identical_groups(sources: dict[str, dict[str, str]], stubs: dict[str, str]) -> list[tuple[str, list[str], str]]:
    """(function, students, one source) for each version two or more students share once
    normalised; functions left as released are left out."""
    by_form: dict[tuple[str, str], list[str]] = {}
    for student in sorted(sources):
        for function, source in sources[student].items():
            try:
                form = similarity.normalise(source)
            except (SyntaxError, ValueError):
                continue
            if function in stubs and form == similarity.normalise(stubs[function]):
                continue
            by_form.setdefault((function, form), []).append(student)
    return sorted((function, students, sources[students[0]][function])
                  for (function, _), students in by_form.items() if len(students) > 1)


def similarity_section(assignment: str, spec, out: Path, students: list[str], threshold: float) -> list[str]:
    functions = {c.function for c in spec.checks}
    sources = student_sources(assignment, out, students, functions)
    release = nbformat.read(REPO / "assignments" / assignment / spec.notebook, as_version=4)
    stubs = functions_in(release, functions, student_cells_only=False)
    pairs = similarity.compare_class(sources, reference_sources(spec), stubs)
    shown = [p for p in pairs if p.score >= threshold]
    parts = ["<h2>Similarity</h2>",
             '<p class="note">Information for a person to judge, never a penalty: short, tightly '
             "specified functions written correctly by different people are often alike. Nothing "
             "here changes a grade.</p>",
             f"<p>Each student's graded functions ({', '.join(f'<code>{html.escape(f)}</code>' for f in sorted(functions))}) "
             "compared with each other and with genlab's own implementation (the spec's reference): "
             "docstrings, comments, annotations and string constants removed, the names the code "
             "chose renamed in order of appearance, then the Jaccard index of token "
             f"{similarity.NGRAM}-grams (autograder/similarity.py). Functions left as released are "
             f"not compared. {len(pairs)} pairs; {len(shown)} at or above {threshold:g}.</p>"]
    to_genlab = {(p.function, p.first): p.score for p in pairs if p.second == "genlab"}
    if to_genlab:
        names = sorted(functions)
        rows = [[s, *(f"{to_genlab[(f, s)]:.2f}" if (f, s) in to_genlab else "not written" for f in names)]
                for s in students]
        parts.append("<h3>Similarity to genlab's own implementation</h3>")
        parts.append(_table(["student", *names], rows, numeric=set(range(1, len(names) + 1))))
    groups = identical_groups(sources, stubs)
    if groups:
        parts.append("<h3>Identical after normalisation</h3><p>Students whose version is the same once "
                     "names, comments and docstrings are set aside (one version shown); expected for "
                     "one-line functions, worth a look for long ones.</p>")
        for function, students_alike, source in groups:
            parts.append(f"<h4><code>{html.escape(function)}</code>: {html.escape(', '.join(students_alike))}</h4>"
                         f'<pre class="same">{html.escape(source)}</pre>')
    same = {(f, a, b) for f, alike, _ in groups for a in alike for b in alike}
    shown = [p for p in shown if (p.function, p.first, p.second) not in same]
    parts.append(f"<h3>Other pairs at or above {threshold:g}, side by side</h3>")
    parts += [_pair_html(p) for p in shown[:MAX_PAIRS_SHOWN]]
    if len(shown) > MAX_PAIRS_SHOWN:
        parts.append(f"<p>... and {len(shown) - MAX_PAIRS_SHOWN} more pairs at or above the threshold.</p>")
    if not shown:
        parts.append("<p>None.</p>")
    return parts


# ------------------------------------------------------------------ command line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="the class report of a graded assignment (OUT/report/index.html)")
    p.add_argument("assignment")
    p.add_argument("--out", required=True, help="the folder `grade` wrote")
    p.add_argument("--db", default=None, help="gradebook URL (default: sqlite in OUT)")
    p.add_argument("--threshold", type=float, default=similarity.THRESHOLD,
                   help=f"similarity shown side by side from this value (default {similarity.THRESHOLD})")
    p.set_defaults(func=run)


def run(args) -> int:
    path = build(args.assignment, Path(args.out), args.db, args.threshold)
    print(f"wrote {path}")
    return 0


__all__ = ["build", "named_diagnoses", "diagnose", "check_outcomes", "add_parser", "run"]
