"""The autograder's command line.

    python -m autograder grade 01_attention --submissions DIR --out OUT [--workers N | --scheduler ADDR]
                                            [--student NAME] [--force]
    python -m autograder export 01_attention --out OUT      # grades.csv, results.json, feedback, canvas.csv
    python -m autograder formgrader 01_attention --out OUT  # nbgrader's formgrader on OUT [--port N]
    python -m autograder report 01_attention --out OUT      # OUT/report/index.html [--threshold 0.6]
    python -m autograder references build 01_attention      # or: all
    python -m autograder references verify 01_attention     # on every device present
    python -m autograder release 01_attention               # nbgrader generate_assignment
    python -m autograder samples 01_attention DIR           # sample submissions
    python -m autograder demo [--out DIR]                    # samples -> grades -> table
    python -m autograder bundle --out student-bundle.zip     # what students receive

Submissions are nbgrader's layout, DIR/<student>/<assignment>/ (what `nbgrader collect` writes
to submitted/), with its timestamp.txt; due dates and the late policy live in
autograder/nbgrader_config.py. OUT is an nbgrader course directory (gradebook.db, autograded/,
feedback/): `nbgrader release_feedback ASSIGNMENT --CourseDirectory.root=OUT` releases the feedback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def _assignments(name: str) -> list[str]:
    from autograder.spec import available

    return available() if name == "all" else [name]


def cmd_grade(args) -> int:
    from autograder.grade import grade
    from autograder.report import print_table
    from autograder.sandbox import Limits, Sandbox

    limits = Limits(cell_seconds=args.cell_timeout, wall_seconds=args.timeout)
    sandbox = Sandbox(limits=limits, use_bwrap=None if not args.no_sandbox else False)
    if not sandbox.sandboxed:
        print("WARNING: bubblewrap (bwrap) is not available: grading runs UNSANDBOXED, "
              "with resource limits only. Install it: apt-get install bubblewrap", file=sys.stderr)
    results = grade(args.assignment, Path(args.submissions), Path(args.out), workers=args.workers,
                    db_url=args.db, sandbox=sandbox, progress=not args.quiet,
                    scheduler=args.scheduler, students=args.student, force=args.force,
                    hidden_checks=args.hidden_visibility, canvas_id=args.canvas_assignment_id)
    print_table(results)
    print(f"\nwrote {Path(args.out) / 'grades.csv'}, canvas.csv, <student>/results.json and feedback/ "
          "for every student in the gradebook")
    return 0


def cmd_export(args) -> int:
    from autograder.exports import export_all
    from autograder.report import print_totals

    grades = export_all(args.assignment, Path(args.out), db_url=args.db,
                        hidden_checks=args.hidden_visibility, canvas_id=args.canvas_assignment_id)
    print_totals(grades)
    print(f"\nwrote {Path(args.out) / 'grades.csv'}, canvas.csv, <student>/results.json and feedback/ "
          "from the gradebook")
    return 0


def _stop(signum, frame):
    """SIGTERM ends a run as Ctrl-C does: through every ``finally`` (scratch space removed)."""
    raise SystemExit(128 + signum)


def _export_options(p) -> None:
    from autograder.exports import HIDDEN_CHECKS_VISIBILITY, VISIBILITIES

    p.add_argument("--db", default=None, help="gradebook URL (default: sqlite in OUT)")
    p.add_argument("--hidden-visibility", default=HIDDEN_CHECKS_VISIBILITY, choices=VISIBILITIES,
                   help="Gradescope visibility of the hidden checks in results.json "
                        f"(default: {HIDDEN_CHECKS_VISIBILITY})")
    p.add_argument("--canvas-assignment-id", default=None,
                   help="the Canvas assignment's id: canvas.csv's column becomes 'ASSIGNMENT (ID)' "
                        "(default: a column named ASSIGNMENT, which Canvas imports as a new assignment)")


def cmd_references(args) -> int:
    from autograder import references

    for assignment in _assignments(args.assignment):
        if args.action == "build":
            folder = references.build(assignment)
            print(f"built {folder}")
        else:
            verified = references.verify(assignment)
            for device_class, entry in verified.items():
                print(f"{assignment}: verified on {device_class} ({entry['device']}): "
                      f"largest deviation {entry['max_deviation']:.3g}")
    return 0


def cmd_release(args) -> int:
    import tempfile

    from autograder.course import generate_release

    with tempfile.TemporaryDirectory() as tmp:  # a throw-away gradebook
        for assignment in _assignments(args.assignment):
            print(f"released {generate_release(assignment, db_url=f'sqlite:///{tmp}/gradebook.db')}")
    return 0


def cmd_samples(args) -> int:
    from autograder.samples import write_samples

    for name, points in write_samples(args.assignment, Path(args.dir)).items():
        print(f"{name}: deserves {points} points")
    return 0


def cmd_demo(args) -> int:
    from autograder.report import demo

    return demo(Path(args.out), workers=args.workers)


def cmd_bundle(args) -> int:
    from autograder.bundle import build_bundle

    path = build_bundle(Path(args.out))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("grade", help="grade a class's submissions")
    p.add_argument("assignment")
    p.add_argument("--submissions", required=True, help="DIR/<student>/<assignment>/<notebook>.ipynb")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=None, help="parallel submissions (default: cores)")
    p.add_argument("--scheduler", default=None,
                   help="grade on a Dask cluster: the scheduler's address (tcp://host:8786); "
                        "its workers need this repository and OUT at the same paths")
    p.add_argument("--student", action="append", default=None, metavar="NAME",
                   help="grade this student's submission only (repeatable); the others keep their grades")
    p.add_argument("--force", action="store_true",
                   help="regrade submissions even when unchanged since they were graded")
    _export_options(p)
    p.add_argument("--timeout", type=int, default=600, help="seconds per notebook")
    p.add_argument("--cell-timeout", type=int, default=60, help="seconds per cell")
    p.add_argument("--no-sandbox", action="store_true", help="resource limits only (not recommended)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("export", help="rebuild grades.csv, results.json, feedback and canvas.csv "
                                      "from the gradebook, late penalties recomputed (after grading "
                                      "by hand, a new due date or an extension)")
    p.add_argument("assignment")
    p.add_argument("--out", required=True)
    _export_options(p)
    p.set_defaults(func=cmd_export)

    from autograder import class_report, formgrader

    formgrader.add_parser(sub)
    class_report.add_parser(sub)

    p = sub.add_parser("references", help="build or verify reference outputs")
    p.add_argument("action", choices=["build", "verify"])
    p.add_argument("assignment", help="an assignment, or 'all'")
    p.set_defaults(func=cmd_references)

    p = sub.add_parser("release", help="generate the student release from solutions/")
    p.add_argument("assignment", help="an assignment, or 'all'")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("samples", help="write sample submissions")
    p.add_argument("assignment")
    p.add_argument("dir")
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("demo", help="grade the sample submissions and print the table")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bundle", help="build the zip students receive")
    p.add_argument("--out", default="student-bundle.zip")
    p.set_defaults(func=cmd_bundle)

    args = parser.parse_args(argv)
    if args.command in ("grade", "export"):
        signal.signal(signal.SIGTERM, _stop)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
