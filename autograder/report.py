"""The grade table, and ``make demo``: sample submissions -> the real grading CLI path -> table."""

from __future__ import annotations

import shutil
from pathlib import Path

from autograder.grade import SubmissionResult, grade


def print_table(results: list[SubmissionResult]) -> None:
    """Rows: checks; columns: students; then totals and every lost point with its message."""
    if not results:
        print("no submissions found")
        return
    students = [r.student for r in results]
    checks = [c.check for c in results[0].checks]
    width = max(len(c) for c in checks + ["check"]) + 2
    cols = [max(len(s), 7) + 2 for s in students]
    print("check".ljust(width) + "".join(s.rjust(w) for s, w in zip(students, cols)))
    print("-" * (width + sum(cols)))
    for i, name in enumerate(checks):
        cells = [f"{r.checks[i].points:g}/{r.checks[i].max_points:g}" for r in results]
        print(name.ljust(width) + "".join(c.rjust(w) for c, w in zip(cells, cols)))
    print("-" * (width + sum(cols)))
    totals = [f"{r.score:g}/{sum(c.max_points for c in r.checks):g}" for r in results]
    print("TOTAL".ljust(width) + "".join(t.rjust(w) for t, w in zip(totals, cols)))
    for r in results:
        lost = [c for c in r.checks if c.points < c.max_points]
        if lost or r.notes:
            print(f"\n{r.student}: lost {sum(c.max_points - c.points for c in lost):g} point(s)")
            for note in r.notes:
                print(f"  note: {note}")
            for c in lost:
                print(f"  - {c.check}: {c.message}")


def print_totals(grades) -> None:
    """One line per student of ``exports.export_all``'s result: the gradebook's total,
    and what still waits for grading by hand."""
    if not grades:
        print("no submissions in the gradebook")
        return
    width = max(len(g.student) for g in grades) + 2
    for g in grades:
        pending = [line.name for line in g.lines if line.pending]
        print(g.student.ljust(width) + f"{g.score:g}/{g.max_score:g}"
              + (f"  (pending manual grading: {', '.join(pending)})" if pending else ""))


def demo(out: Path, workers: int | None = None) -> int:
    """Write each assignment's sample submissions, grade them, print the table, and fail
    when a sample does not score exactly the points the spec says it deserves."""
    from autograder.course import generate_release
    from autograder.samples import write_samples
    from autograder.spec import available

    out = Path(out)
    status = 0
    for assignment in available():
        submissions = out / assignment / "submissions"
        shutil.rmtree(out / assignment, ignore_errors=True)
        (out / assignment).mkdir(parents=True)
        release = generate_release(assignment, release_root=out / assignment / "release",
                                   db_url=f"sqlite:///{out / assignment / 'release.db'}")
        print(f"\n=== {assignment}: released solutions/{assignment} -> {release}")
        expected = write_samples(assignment, submissions, release)
        print(f"=== {assignment}: grading {len(expected)} sample submissions "
              f"({', '.join(expected)}) ===")
        results = grade(assignment, submissions, out / assignment / "graded", workers=workers)
        print_table(results)
        print()
        for r in results:
            ok = r.score == expected[r.student]
            status |= not ok
            print(f"{'ok  ' if ok else 'FAIL'} {r.student}: {r.score:g} points, deserves {expected[r.student]}")
    return status
