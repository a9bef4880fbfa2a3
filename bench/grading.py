"""Grading throughput: 40 submissions of assignment 1, graded by genlab's autograder
serially and with 2 workers, beside plain ``nbgrader autograde`` on the same notebooks.

    .venv/bin/python bench/grading.py [--n 40]

Prints seconds per submission for each and the ratios from this one run: the parallel
speed-up (serial / 2 workers) and our overhead against plain nbgrader (which runs the
tests inside the student's kernel, unsandboxed, and compares nothing outside it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autograder.samples import write_samples  # noqa: E402

A = "01_attention"


def make_class(folder: Path, n: int) -> Path:
    """n submissions, cycling through the four samples (solution, blank, partial, polarity)."""
    samples = folder / "samples"
    write_samples(A, samples)
    names = sorted(p.name for p in samples.iterdir())
    subs = folder / "submissions"
    for i in range(n):
        source = samples / names[i % len(names)] / A
        shutil.copytree(source, subs / f"student{i:03d}" / A)
    return subs


def timed(argv: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start


def ours(subs: Path, out: Path, workers: int) -> float:
    return timed([sys.executable, "-m", "autograder", "grade", A, "--submissions", str(subs),
                  "--out", str(out), "--workers", str(workers), "--quiet"], cwd=REPO)


def plain_nbgrader(subs: Path, course: Path) -> float:
    """``nbgrader autograde`` for the whole class, in a course folder of its own."""
    course.mkdir()
    (course / "nbgrader_config.py").write_text(
        f"c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        f"c.CourseDirectory.source_directory = {str(REPO / 'solutions')!r}\n"
        f"c.CourseDirectory.submitted_directory = {str(subs)!r}\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{course / 'gradebook.db'}'\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    nbgrader = [str(Path(sys.executable).parent / "nbgrader")]
    subprocess.run(nbgrader + ["generate_assignment", A, "--force"], cwd=course, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return timed(nbgrader + ["autograde", A, "--force"], cwd=course, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subs = make_class(tmp, args.n)
        serial = ours(subs, tmp / "serial", 1)
        parallel = ours(subs, tmp / "parallel", 2)
        nbgrader = plain_nbgrader(subs, tmp / "course")
    n = args.n
    print(f"# grading {n} submissions of {A} on {platform.machine()}, {os.cpu_count()} cores")
    print("| run | wall s | s / submission |")
    print("|---|---|---|")
    for name, seconds in (("genlab autograder, --workers 1", serial),
                          ("genlab autograder, --workers 2", parallel),
                          ("plain nbgrader autograde", nbgrader)):
        print(f"| {name} | {seconds:.1f} | {seconds / n:.2f} |")
    print(f"\nparallel speed-up (workers 1 / workers 2): {serial / parallel:.2f}x")
    print(f"overhead against plain nbgrader (ours serial / nbgrader): {serial / nbgrader:.2f}x")
    print(f"ours with 2 workers against plain nbgrader: {parallel / nbgrader:.2f}x")


if __name__ == "__main__":
    main()
