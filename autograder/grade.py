"""Grade a class: ``python -m autograder grade 01_attention --submissions DIR --out OUT``.

For each submission (``DIR/<student>/<assignment>/<notebook>.ipynb``, nbgrader's layout):

1. *sanitize* with nbgrader's autograde preprocessors: clear outputs, de-duplicate cell
   ids, put back the kernelspec and every locked and hidden test cell from the gradebook
   (missing ones are added back);
2. *execute* it in the sandbox (``sandbox.py``, ``execute.py``): the job (notebook, inputs,
   forbidden calls) goes in on standard input; each graded test cell records what the
   student's functions return on the grader's inputs, and the records, each executed cell
   and the run's status come back through a pipe the moment they exist (``channel.py``).
   The grading guard in the kernel (``guard.py``) attests each record and reports each
   forbidden call as it happens. Nothing is read back from a file the submission could
   touch, and nothing it wrote outlives its sandbox;
3. *score* in this, trusted, process: decode the arrays (no pickle), compare each case
   with the reference, per check, with the manifest's tolerances; a check scores 0 when
   its function uses a forbidden call (found in its source, or reported while it ran), or
   its record was not attested by the guard.

The scores are then written into nbgrader's gradebook (so ``nbgrader export``,
formgrader and feedback agree), with the submission's time (its ``timestamp.txt``, as
``nbgrader collect`` leaves it; the due date and the late penalty: ``late.py``), each check's
message into ``OUT/<student>/checks.json``;
at the end of every run ``exports.export_all`` rebuilds ``OUT/grades.csv``, every
``OUT/<student>/results.json`` (Gradescope's format), nbgrader's feedback HTML in
``OUT/feedback/`` and ``OUT/canvas.csv`` from the gradebook, for the whole class.

``--student NAME`` grades that submission only (the others keep their grades); a
submission unchanged since it was graded is kept unless ``--force``. Scratch space
(the release, the public references, the grading build) lives in ``OUT/.work`` and is
removed when the run ends, however it ends (a stale one from a killed run at the next start).
"""

from __future__ import annotations

import ast
import copy
import datetime
import hashlib
import json
import os
import queue
import secrets
import shutil
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed as as_completed_futures
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from autograder import exports, grading_build, late
from autograder import references as refs
from autograder import spec as spec_module
from autograder.channel import Inbox, decode_npz, encode_npz
from autograder.course import REPO, generate_release, nbgrader_config, nbgrader_environment
from autograder.exports import atomic_write as _atomic_write
from autograder.exports import num as _num
from autograder.guard import digest
from autograder.sandbox import Limits, Sandbox
from genlab.checks import Case, judge, resolve

NOTEBOOK_BYTES = 64 << 20   # the largest submitted notebook read
RECORD_BYTES = 64 << 20     # the largest record of one case, unpacked
UNSANDBOXED = ("WARNING: graded WITHOUT a sandbox (bubblewrap not found): the submission's code "
               "ran with the grader's file access; only resource limits applied.")


@dataclass
class CheckResult:
    check: str
    points: float
    max_points: float
    message: str = ""
    public: bool = True


@dataclass
class SubmissionResult:
    student: str
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    executed: object | None = None  # the executed notebook, as the executor reported it
    seconds: float = 0.0
    final: bool = True  # False: a grader error; the next run grades it again
    # written answers graded by hand (grade_id -> whether the student wrote anything)
    answered: dict[str, bool] = field(default_factory=dict)
    submitted_at: str | None = None  # from timestamp.txt: UTC, ISO 8601; None = unknown (on time)

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    def to_dict(self) -> dict:
        return {"student": self.student, "checks": [asdict(c) for c in self.checks],
                "notes": self.notes, "seconds": round(self.seconds, 3), "answered": self.answered,
                "submitted_at": self.submitted_at}

    @classmethod
    def from_dict(cls, data: dict) -> "SubmissionResult":
        return cls(data["student"], [CheckResult(**c) for c in data["checks"]],
                   list(data["notes"]), seconds=data["seconds"], answered=dict(data.get("answered", {})),
                   submitted_at=data.get("submitted_at"))


# --------------------------------------------------------------------------- sanitize


def sanitize(nb, assignment: str, notebook_id: str, student: str, db_url: str):
    """nbgrader's autograde sanitizing: the locked and hidden cells come back from the gradebook."""
    from nbgrader.preprocessors import (CheckCellMetadata, ClearOutput, DeduplicateIds,
                                        OverwriteCells, OverwriteKernelspec)

    resources = {"nbgrader": {"notebook": notebook_id, "assignment": assignment,
                              "student": student, "db_url": db_url}}
    steps = [ClearOutput(), DeduplicateIds(), OverwriteKernelspec(),
             OverwriteCells(add_missing_cells=True), CheckCellMetadata()]
    for step in steps:
        nb, resources = step.preprocess(nb, resources)
        if isinstance(step, DeduplicateIds):
            # DeduplicateIds demotes all but the last copy of a cell by emptying its
            # nbgrader metadata, which later steps cannot read: drop the empty dicts.
            for cell in nb.cells:
                if "nbgrader" in cell.metadata and not cell.metadata.nbgrader:
                    del cell.metadata["nbgrader"]
    return nb


# ------------------------------------------------------------------ forbidden calls


def _is_student_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.cell_type == "code" and not meta.get("locked", False)


# ast.parse is not thread-safe in some CPython 3.11 releases (python/cpython#106905):
# grading threads parse one at a time.
_AST_LOCK = threading.Lock()


def _parse(source: str):
    lines = [("pass" if line.lstrip().startswith(("%", "!")) else line)
             for line in source.splitlines()]
    try:
        with _AST_LOCK:
            return ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, SystemError):
        return None


def _bindings(trees) -> tuple[dict[str, str], set[str]]:
    """What the student's cells bind at top level: imported names -> the dotted path they
    stand for (``import torch.nn.functional as F``: F -> torch.nn.functional; ``from
    genlab.graphs import trace``: trace -> genlab.graphs.trace), and the names the student
    defines (``def``, ``class``, assignments)."""
    imported: dict[str, str] = {}
    defined: set[str] = set()
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        imported[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        imported[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined.update(t.id for t in targets if isinstance(t, ast.Name))
    return imported, defined


def _dotted(node: ast.AST, imported: dict[str, str]) -> str | None:
    """``F.scaled_dot_product_attention`` -> 'torch.nn.functional.scaled_dot_product_attention'
    when its base name is an import; None when the base is anything else (a local
    variable, a call's result: ``fx.Tracer().trace`` is not ``genlab.graphs.trace``)."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in imported:
        return None
    return ".".join([imported[node.id], *reversed(attributes)])


def forbidden_in_source(nb, function: str, forbidden: list[str]) -> set[str]:
    """Forbidden calls named in the student's definition of ``function``: a name or an
    attribute chain that resolves through the student's imports to a forbidden name, or a
    ``getattr`` string equal to a forbidden name's last part.  A name the student defines
    themselves (``def filter_logits``) is theirs, even if an import of the same name came
    first.  Calls through anything else (methods of objects, local aliases) are left to the
    run-time ``CallTracer``, which sees what actually runs."""
    if not forbidden:
        return set()
    forbidden = set(forbidden)
    last = {name.rsplit(".", 1)[-1]: name for name in forbidden}
    trees = [t for t in (_parse(c.source) for c in nb.cells if _is_student_cell(c)) if t]
    imported, defined = _bindings(trees)
    imported = {local: path for local, path in imported.items() if local not in defined}

    by_object = {}  # the forbidden callables themselves, to recognise them under other names
    for name in forbidden:
        try:
            by_object[id(resolve(name))] = name
        except (ImportError, AttributeError):
            pass

    def resolves(path: str | None) -> str | None:
        if path is None or path in forbidden:
            return path
        # the same object under another path: `from torch.nn import functional as F`, or a
        # name genlab re-exports (genlab.decoder.causal_mask is genlab.masks.causal_mask)
        if path.split(".")[0] not in ("torch", "genlab") or path.rsplit(".", 1)[-1] not in last:
            return None
        try:
            return by_object.get(id(resolve(path)))
        except (ImportError, AttributeError):
            return None

    found = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == function):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Attribute):
                    hit = resolves(_dotted(inner, imported))
                elif isinstance(inner, ast.Name):
                    hit = resolves(imported.get(inner.id))
                elif isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    hit = last.get(inner.value)
                else:
                    hit = None
                if hit:
                    found.add(hit)
    return found


# ------------------------------------------------------------------------- grading


class Grader:
    def __init__(self, assignment: str, submissions: Path, out: Path, db_url: str | None = None,
                 sandbox: Sandbox | None = None, references: Path = refs.REFERENCES,
                 only: list[str] | None = None, force: bool = False,
                 hidden_checks: str = exports.HIDDEN_CHECKS_VISIBILITY, canvas_id: str | None = None):
        self.assignment = assignment
        self.only = list(only) if only else None  # --student: grade these submissions only
        self.force = force                        # --force: regrade even when unchanged
        self.hidden_checks = hidden_checks
        self.canvas_id = canvas_id
        self.spec = spec_module.load(assignment)
        self.notebook_id = Path(self.spec.notebook).stem
        self.submissions = Path(submissions).resolve()
        self.out = Path(out).resolve()
        self.db_url = exports.gradebook_url(self.out, db_url)
        self.work = self.out / ".work"  # scratch: removed at the end of every run
        self.sandbox = sandbox or Sandbox()
        self.references = references / assignment
        self.manifest = refs.load_manifest(assignment, references)
        self.manual: dict[str, tuple[float, str]] = {}  # written answers, from the release (prepare)
        self.duedate = None  # the gradebook's, once prepared
        self.cases = {name: [Case.load(self.references / e["file"]) for e in check["cases"]]
                      for name, check in self.manifest["checks"].items()}

    # -- set-up, once per run
    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.clean_up()  # a killed run's scratch space
        # nbgrader's sanitizing needs the assignment's cells in the gradebook
        release = generate_release(self.assignment, release_root=self.work / "release", db_url=self.db_url)
        self.manual = manual_answers(nbformat.read(release / self.spec.notebook, as_version=4),
                                     {c["cell"] for c in self.manifest["checks"].values()})
        self.duedate = late.record_duedate(self.db_url, self.assignment, nbgrader_config())
        public = self.work / "public" / self.assignment
        (public / "public").mkdir(parents=True)
        for entry in (e for c in self.manifest["checks"].values() if c["public"] for e in c["cases"]):
            shutil.copy(self.references / entry["file"], public / entry["file"])
        refs.write_manifest(public, refs.public_manifest(self.manifest))
        self.public_references = public
        self.library = self._grading_build()

    def _grading_build(self) -> Path:
        """genlab with this assignment's answer key shut (autograder/grading_build.py)."""
        return grading_build.build(self.assignment, grading_build.answer_key(self.spec), self.work / "build")

    def clean_up(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def students(self) -> list[str]:
        if not self.submissions.is_dir():
            raise SystemExit(f"no submissions folder at {self.submissions}")
        found = sorted(p.name for p in self.submissions.iterdir()
                       if p.is_dir() and not p.name.startswith("."))
        if self.only is None:
            return found
        missing = sorted(set(self.only) - set(found))
        if missing:
            raise SystemExit(f"--student {', '.join(missing)}: no such folder in {self.submissions}")
        return sorted(set(self.only))

    # -- one submission
    def grade_one(self, student: str, slot: int = 0) -> SubmissionResult:
        """Grade one submission; an error of the grader itself costs this submission a
        retry on the next run (its result is not marked final), never the class."""
        try:
            return self._grade_one(student, slot)
        except Exception as exc:
            result = SubmissionResult(student, final=False)
            self._note_submission_time(result)
            result.notes.append(f"internal grading error, graded again on the next run: "
                                f"{type(exc).__name__}: {str(exc)[:300]}")
            self._score(None, None, result)
            return result

    def _note_submission_time(self, result: SubmissionResult) -> None:
        """When the submission was handed in (its timestamp.txt), and a note when unknown
        and a due date makes it matter."""
        submitted, problem = late.read_timestamp(self.submissions / result.student / self.assignment)
        result.submitted_at = submitted.isoformat() if submitted else None
        if problem:
            result.notes.append(problem)
        elif submitted is None and self.duedate is not None:
            result.notes.append(late.NO_TIMESTAMP)

    def _grade_one(self, student: str, slot: int) -> SubmissionResult:
        start = time.perf_counter()
        result = SubmissionResult(student)
        if not self.sandbox.sandboxed:
            result.notes.append(UNSANDBOXED)
        self._note_submission_time(result)
        folder = self.submissions / student / self.assignment
        path = folder / self.spec.notebook
        nb = None
        if not path.exists():
            found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
            result.notes.append(f"no {self.spec.notebook} in {folder.relative_to(self.submissions)}"
                                + (f" (found: {', '.join(found)})" if found else " (the folder is empty or missing)"))
        else:
            try:
                nb = read_notebook(read_regular_file(path, NOTEBOOK_BYTES).decode())
                nb = sanitize(nb, self.assignment, self.notebook_id, student, self.db_url)
            except Exception as exc:
                result.notes.append(f"{self.spec.notebook} could not be read as a notebook "
                                    f"({type(exc).__name__}: {str(exc)[:200]})")
                nb = None
        recording = None
        if nb is not None:
            self._note_answers(nb, result)
            recording = self._execute(nb, result, slot)
            result.executed = recording.executed
        self._score(nb, recording, result)
        result.seconds = time.perf_counter() - start
        return result

    def _note_answers(self, nb, result: SubmissionResult) -> None:
        """Written answers are graded by hand: say which wait for the instructor and which
        were left as released (those score 0 in the gradebook, as nbgrader does)."""
        sources = {cell.metadata.get("nbgrader", {}).get("grade_id"): cell.source for cell in nb.cells}
        for grade_id, (points, released) in self.manual.items():
            answered = sources.get(grade_id, released).strip() != released.strip()
            result.answered[grade_id] = answered
            result.notes.append(
                f"written answer `{grade_id}` ({_num(points)} points): "
                + ("graded by hand in nbgrader's formgrader (not included in this score)" if answered
                   else "left as released (no answer written): 0 points"))

    def job(self, nb) -> dict:
        """What the executor needs, all of it sent on its standard input."""
        graded: dict[str, list[str]] = {}
        inputs: dict[str, dict] = {}
        for name, check in self.manifest["checks"].items():
            function = check["function"]
            graded.setdefault(check["cell"], [])
            if function not in graded[check["cell"]]:
                graded[check["cell"]].append(function)
            entry = inputs.setdefault(function, {"cases": {}, "forbidden": []})
            for i, case in enumerate(self.cases[name]):
                entry["cases"][f"{name}-{i}"] = encode_npz({f"in.{k}": v for k, v in case.inputs.items()})
            entry["forbidden"] = sorted(set(entry["forbidden"]) | set(check["forbidden"]))
        return {"notebook": nb, "graded": graded, "inputs": inputs,
                "cell_timeout": self.sandbox.limits.cell_seconds}

    def _execute(self, nb, result: SubmissionResult, slot: int) -> "Recording":
        run = self.sandbox.run(
            [sys.executable, "-m", "autograder.execute", "--channel-fd", "{channel_fd}"],
            stdin=json.dumps(self.job(nb)).encode(), public_refs=self.public_references, slot=slot,
            library=self.library)
        recording = Recording(run.inbox, nb)
        status = recording.status
        if run.timed_out:
            result.notes.append(f"the notebook ran past the {self.sandbox.limits.wall_seconds} s "
                                "limit and was stopped; checks after that point got no output")
        elif status is None:
            result.notes.append(f"the notebook runner stopped abnormally (exit {run.returncode}): "
                                + (run.stderr.strip().splitlines() or ["no message"])[-1][:300])
        elif status.get("ended") != "completed":
            result.notes.append(f"execution: {status.get('ended')} ({str(status.get('detail', ''))[:300]})")
        if status and status.get("output_cut_bytes"):
            result.notes.append(f"{int(status['output_cut_bytes']):,} bytes of the notebook's output "
                                "were cut (too much printed or displayed)")
        if run.inbox.dropped or run.inbox.malformed:
            result.notes.append(f"{run.inbox.dropped + run.inbox.malformed} message(s) from the "
                                "notebook run were too large or malformed and were ignored")
        result.notes.extend(recording.notes)
        return recording

    def _score(self, nb, recording: "Recording | None", result: SubmissionResult) -> None:
        static: dict[str, set[str]] = {}
        for name, check in self.manifest["checks"].items():
            function = check["function"]
            if nb is not None and function not in static:
                static[function] = forbidden_in_source(
                    nb, function, sorted({f for c in self.manifest["checks"].values()
                                          if c["function"] == function for f in c["forbidden"]}))
            points, message = self._score_check(name, check, recording, static.get(function, set()))
            if nb is None and not message:
                message = "no notebook to grade"
            result.checks.append(CheckResult(name, points, check["points"], message, check["public"]))
        if nb is None:
            for c in result.checks:
                c.message = result.notes[-1] if result.notes else c.message

    def _score_check(self, name: str, check: dict, recording: "Recording | None",
                     static_forbidden: set[str]) -> tuple[float, str]:
        if recording is None:
            return 0, "not graded"
        function = check["function"]
        forbidden = set(check["forbidden"])
        used = (static_forbidden | recording.forbidden.get(function, set())) & forbidden
        results, unattested = [], False
        for i in range(len(self.cases[name])):
            case = f"{name}-{i}"
            record = recording.records.get((function, case))
            if record is None:
                results = None
                break
            if digest(record) not in recording.attested.get((function, case), ()):
                unattested = True
                continue
            try:
                got, error, traced = _outputs(decode_npz(record, RECORD_BYTES))
            except Exception as exc:
                return 0, f"the recorded output of case {i + 1} is unreadable ({type(exc).__name__})"
            used |= traced & forbidden
            results.append((got, error))
        if used:  # the cause, whatever else went wrong
            return 0, (f"`{function}` uses {', '.join(sorted(used))}: this exercise asks you to "
                       "write it yourself, so this check scores 0 even if the values match")
        if function in recording.penalties:
            return 0, recording.penalties[function]
        if results is None:
            return 0, (f"no output recorded for `{function}`: the recording in its "
                       f"test cell ({check['cell']}) did not complete (the kernel died, the "
                       "cell timed out, or the notebook stopped before it)")
        if unattested:
            return 0, (f"the record of `{function}` was not made by the autograder's recorder "
                       "(it was replaced, patched or bypassed), so it cannot be graded")
        problem = judge(check, self.cases[name], results)
        if problem:
            return 0, problem
        return check["points"], ""

    # -- the whole class
    def fingerprint(self, student: str) -> str:
        """Changes when the submission or anything that grades it changes."""
        digest = hashlib.sha256(self._grading_fingerprint.encode())
        folder = self.submissions / student / self.assignment
        for path in sorted(folder.rglob("*")) if folder.is_dir() and not folder.is_symlink() else []:
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            try:
                digest.update(read_regular_file(path, NOTEBOOK_BYTES) + b"\0")
            except OSError as exc:  # a link, a pipe, a folder, too large: its name and kind count
                digest.update(type(exc).__name__.encode() + b"\0")
        return digest.hexdigest()

    @property
    def _grading_fingerprint(self) -> str:
        source = (REPO / "solutions" / self.assignment / self.spec.notebook).read_bytes()
        return hashlib.sha256(json.dumps(self.manifest["checks"], sort_keys=True).encode()
                              + source + repr((self.sandbox.limits, self.sandbox.sandboxed,
                                               grading_build.answer_key(self.spec))).encode()
                              ).hexdigest()

    def previous(self, student: str) -> dict | None:
        path = self.out / student / "grading.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def run(self, workers: int | None = None, progress: bool = True,
            scheduler: str | None = None) -> list[SubmissionResult]:
        """Grade every submission not already graded in its current form (every one with
        ``force``); write each result as soon as it is known (a killed run loses no
        finished grade); then rebuild every export for the whole class."""
        try:
            self.prepare()
            results: dict[str, SubmissionResult] = {}
            todo: dict[str, str] = {}
            for student in self.students():
                fingerprint, prev = self.fingerprint(student), self.previous(student)
                kept = None if self.force or not prev or prev["fingerprint"] != fingerprint \
                    else self.kept_result(student)
                if kept is not None:
                    results[student] = kept
                else:
                    todo[student] = fingerprint
            if results and progress:
                print(f"{len(results)} submission(s) unchanged since they were graded: kept", file=sys.stderr)
            bar = _progress(len(todo), f"grading {self.assignment}", progress)
            for res in self._grade_all(list(todo), workers, scheduler):
                self.finalize(res, todo[res.student])
                results[res.student] = res
                bar.update(1)
            bar.close()
            exports.export_all(self.assignment, self.out, self.db_url, self.hidden_checks, self.canvas_id)
            return [results[s] for s in sorted(results)]
        finally:
            self.clean_up()

    def kept_result(self, student: str) -> SubmissionResult | None:
        details = exports.read_details(self.out, student)
        try:
            return SubmissionResult.from_dict(details)
        except (KeyError, TypeError):
            return None

    def _grade_all(self, students: list[str], workers: int | None, scheduler: str | None):
        """Yield results as they finish: on a Dask cluster, or on local threads (one
        sandbox slot each)."""
        if not students:
            return
        if scheduler:
            from distributed import Client, as_completed

            with Client(scheduler) as client:
                futures = [client.submit(self.grade_one, s, pure=False, key=f"grade-{s}-{secrets.token_hex(4)}")
                           for s in students]
                for future in as_completed(futures):
                    yield future.result()
            return
        workers = max(1, min(workers or os.cpu_count() or 1, len(students)))
        slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(workers):
            slots.put(slot)

        def in_slot(student: str) -> SubmissionResult:
            slot = slots.get()
            try:
                return self.grade_one(student, slot)
            finally:
                slots.put(slot)

        # stopped early (an interrupt, a signal): submissions not yet started are dropped,
        # the ones running finish in their sandboxes, none is left half-graded
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for future in as_completed_futures([pool.submit(in_slot, s) for s in students]):
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- outputs
    def finalize(self, res: SubmissionResult, fingerprint: str) -> None:
        """Everything about one graded submission, written in an order that a kill at
        any point cannot corrupt: ``grading.json`` (what resuming trusts) goes last.
        A regrade first moves the earlier result into ``<student>/history/``."""
        folder = self.out / res.student
        prev = self.previous(res.student)
        if prev is not None:
            history = folder / "history" / prev["graded_at"].replace(":", "-")
            history.mkdir(parents=True, exist_ok=True)
            for name in ("grading.json", exports.DETAILS, "results.json"):
                if (folder / name).exists():
                    shutil.copy2(folder / name, history / name)
            why = "forced" if self.force and prev["fingerprint"] == fingerprint else "changed"
            print(f"regrading {res.student} ({why} since {prev['graded_at']}); "
                  f"the earlier result is kept in {history}", file=sys.stderr)
        _atomic_write(folder / exports.DETAILS, json.dumps(res.to_dict(), indent=1))
        self._save_autograded(res)
        self._write_gradebook(res)
        for problem in exports.export_student(self.assignment, self.out, res.student, self.db_url,
                                              self.hidden_checks):
            print(problem, file=sys.stderr)
        if not res.final:
            return
        graded_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        _atomic_write(folder / "grading.json", json.dumps(
            {"fingerprint": fingerprint, "graded_at": graded_at}, indent=1))

    def _save_autograded(self, res: SubmissionResult) -> None:
        """The executed notebook, without the recorder lines, each graded cell followed by
        the trusted verdict: what nbgrader's feedback shows."""
        dest = self.out / "autograded" / res.student / self.assignment / self.spec.notebook
        dest.parent.mkdir(parents=True, exist_ok=True)
        if res.executed is None:
            source = REPO / "assignments" / self.assignment / self.spec.notebook
            nb = nbformat.read(source, as_version=4)
        else:
            nb = res.executed
        by_cell: dict[str, list[CheckResult]] = {}
        for c in res.checks:
            by_cell.setdefault(self.manifest["checks"][c.check]["cell"], []).append(c)
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.cell_type != "code" or grade_id not in by_cell:
                continue
            cell.source = _without_recorder(cell.source)
            for out in cell.outputs:
                if out.output_type == "error":
                    out.traceback = [_without_recorder(frame) for frame in out.traceback]
            lines = ["Autograder: the result that counts (compared outside your notebook):"]
            for c in by_cell[grade_id]:
                mark = "✓" if c.points == c.max_points else "✗"
                lines.append(f"  {mark} {c.check}: {_num(c.points)}/{_num(c.max_points)}"
                             + (f"  {c.message}" if c.message else ""))
            printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            if "✓" in printed and any(c.points < c.max_points for c in by_cell[grade_id]):
                lines.append("  (the ✓ above was printed by the notebook's own public check, which runs "
                             "inside your notebook and sees only the public cases; the lines here are "
                             "the grade)")
            cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="\n".join(lines) + "\n"))
        if res.notes:
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(
                "**Autograder notes**\n\n" + "\n".join(f"* {n}" for n in res.notes)))
        _atomic_write(dest, nbformat.writes(nb))
        self._copy_submission_files(res.student, dest.parent)

    def _copy_submission_files(self, student: str, autograded: Path) -> None:
        """nbgrader's own files of the submission (``exports.SUBMISSION_FILES``), copied as
        ``nbgrader autograde`` copies them: ``generate_feedback`` takes them along into the
        feedback folder, where ``release_feedback`` needs both."""
        folder = self.submissions / student / self.assignment
        for name in exports.SUBMISSION_FILES:
            try:
                text = read_regular_file(folder / name, late.TIMESTAMP_BYTES).decode()
            except (OSError, UnicodeDecodeError):
                (autograded / name).unlink(missing_ok=True)  # none in this submission
                continue
            _atomic_write(autograded / name, text)

    def _write_gradebook(self, res: SubmissionResult) -> None:
        from nbgrader.api import Gradebook

        cells: dict[str, float] = {}
        # nbgrader's own submission bookkeeping triggers SQLAlchemy autoflush warnings
        # that say nothing about the grades: keep them out of the instructor's output.
        with nbgrader_environment(), warnings.catch_warnings(), Gradebook(self.db_url) as gb:
            warnings.filterwarnings("ignore", message=".*not in session.*")
            gb.update_or_create_student(res.student)
            gb.update_or_create_submission(self.assignment, res.student, timestamp=res.submitted_at)
            for c in res.checks:
                cell = self.manifest["checks"][c.check]["cell"]
                cells[cell] = cells.get(cell, 0) + c.points
            for cell, score in cells.items():
                grade = gb.find_grade(cell, self.notebook_id, self.assignment, res.student)
                grade.auto_score = score
                grade.needs_manual_grade = False
            for cell, answered in res.answered.items():
                grade = gb.find_grade(cell, self.notebook_id, self.assignment, res.student)
                grade.auto_score = None if answered else 0
                grade.needs_manual_grade = answered
            gb.db.commit()



def read_notebook(text: str):
    """``nbformat.reads``, after giving every cell of an nbformat >= 4.5 notebook a unique
    id (what nbformat's ``normalize`` repairs, without its MissingIDFieldWarning): notebooks
    saved by older tools grade without noise on the console."""
    from nbformat.corpus.words import generate_corpus_id

    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if (isinstance(data, dict) and isinstance(data.get("cells"), list) and data.get("nbformat") == 4
            and isinstance(data.get("nbformat_minor"), int) and data["nbformat_minor"] >= 5):
        seen: set[str] = set()
        for cell in data["cells"]:
            if not isinstance(cell, dict):
                continue
            if not isinstance(cell.get("id"), str) or cell["id"] in seen:
                cell["id"] = generate_corpus_id()
            seen.add(cell["id"])
        text = json.dumps(data)
    return nbformat.reads(text, as_version=4)


def manual_answers(release, graded_cells: set[str]) -> dict[str, tuple[float, str]]:
    """The release's cells graded by hand (nbgrader grade + solution cells that no check
    grades, such as a written answer): grade_id -> (points, the text they are released with)."""
    found = {}
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and meta.get("solution") and meta.get("grade_id") not in graded_cells:
            found[meta["grade_id"]] = (float(meta.get("points", 0)), cell.source)
    return found


def _without_recorder(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if "# added by the autograder" not in line)


def _outputs(arrays: dict):
    """A record's arrays -> (outputs in order, error message or None, traced forbidden calls)."""
    got, error, traced = {}, None, set()
    for key, value in arrays.items():
        if key.startswith("out."):
            got[int(key[4:])] = value
        elif key == "error":
            error = str(value)
        elif key == "forbidden":
            traced = {str(x) for x in value.ravel()}
    return [got[i] for i in sorted(got)], error, traced


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``: never follows
    a symbolic link, never blocks on a pipe or a device (OSError otherwise)."""
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


class Recording:
    """What one run reported through its channel, in the grader's terms."""

    def __init__(self, inbox: Inbox, nb):
        self.records: dict[tuple[str, str], str] = {}
        self.attested: dict[tuple[str, str], set[str]] = {}
        self.forbidden: dict[str, set[str]] = {}
        self.penalties: dict[str, str] = {}
        self.notes: list[str] = []
        self.status: dict | None = None
        self.executed = None
        cells: dict[int, dict] = {}
        for m in inbox.messages:
            kind = m["kind"]
            if kind == "record":
                key = (str(m.get("function")), str(m.get("case")))
                self.records.setdefault(key, str(m.get("npz", "")))
            elif kind == "cell" and isinstance(m.get("index"), int):
                cells[m["index"]] = m
            elif kind == "status":
                self.status = m
            elif kind == "flag":
                self._flag(m)
        if cells:
            self.executed = _with_outputs(nb, cells)

    def _flag(self, m: dict) -> None:
        event, function = str(m.get("event")), m.get("function")
        if event == "attest":
            key = (str(function), str(m.get("case")))
            self.attested.setdefault(key, set()).add(str(m.get("digest")))
        elif event == "forbidden":
            if function:
                self.forbidden.setdefault(str(function), set()).add(str(m.get("name")))
        else:
            detail = str(m.get("detail", ""))[:400]
            note = f"grading guard ({event}): {detail}"
            if note not in self.notes:
                self.notes.append(note)
            if function and event in ("blocked", "thread", "untraced"):
                self.penalties.setdefault(str(function), f"while `{function}` was recorded: {detail}")


def _with_outputs(nb, cells: dict[int, dict]):
    """The submitted notebook with each executed cell's reported outputs."""
    executed = copy.deepcopy(nb)
    for index, m in cells.items():
        if 0 <= index < len(executed.cells) and executed.cells[index].cell_type == "code":
            cell = executed.cells[index]
            try:
                cell.outputs = [nbformat.from_dict(o) for o in m.get("outputs") or []
                                if isinstance(o, dict) and o.get("output_type") in
                                ("stream", "display_data", "execute_result", "error")]
                for out in cell.outputs:
                    nbformat.validator.validate(out, ref="output", version=4, version_minor=5)
            except Exception:  # anything malformed is dropped, never trusted
                cell.outputs = [nbformat.v4.new_output(
                    "stream", name="stderr", text="[autograder: this cell's output was malformed]\n")]
            count = m.get("execution_count")
            cell.execution_count = count if isinstance(count, int) else None
    return executed


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="submission", disable=not enabled, file=sys.stderr)


def grade(assignment: str, submissions: Path, out: Path, workers: int | None = None,
          db_url: str | None = None, sandbox: Sandbox | None = None, progress: bool = True,
          scheduler: str | None = None, students: list[str] | None = None, force: bool = False,
          hidden_checks: str = exports.HIDDEN_CHECKS_VISIBILITY,
          canvas_id: str | None = None) -> list[SubmissionResult]:
    return Grader(assignment, submissions, out, db_url, sandbox, only=students, force=force,
                  hidden_checks=hidden_checks, canvas_id=canvas_id).run(workers, progress, scheduler)


__all__ = ["grade", "Grader", "SubmissionResult", "CheckResult", "Limits", "Sandbox"]
