"""Wall time of every notebook in the repository, of the website's build, and of ``make test``.

    .venv/bin/python bench/notebooks.py [--only SUBSTRING ...] [--full] [--site] [--make-test] [--no-quick]

The notebooks are the test suite's (``NOTEBOOKS`` of tests/test_notebooks.py: course/,
solutions/ and assignments/), each executed top to bottom with nbclient in a fresh kernel,
one at a time, with a fresh temporary ``GENLAB_CACHE`` for each mode:

* quick (default): ``GENLAB_QUICK=1``, what ``make test`` runs, against the test suite's
  120 s budget per notebook;
* ``--full``: ``GENLAB_QUICK=0``; a first run with the empty cache (the lectures' training
  is counted), then a second run with the cache the first one filled, both against the
  lectures' 3-minute limit (a promise about course/; shown for every notebook);
* ``--site``: ``make site``'s build (sphinx-build, lectures executed in full) into a temporary
  folder, twice: with an empty checkpoint cache (the lectures train) and with the cache the
  first build filled;
* ``--make-test``: ``git clone`` of HEAD (committed work only; no network) into a temporary
  folder and ``make test`` there, timed (it builds its own venv: ~10 minutes).

Errors do not stop the run; the status column reports them (a blank assignment is expected
to stop at its exercises). ``--only`` keeps the notebooks whose path
contains one of the substrings. ``--json FILE`` also writes the numbers to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_notebooks import BUDGET_SECONDS, NOTEBOOKS, errors  # noqa: E402  (the one list)

LECTURE_LIMIT_SECONDS = 180  # "runs top to bottom on a laptop CPU in under 3 minutes"
MODES = {  # mode -> (GENLAB_QUICK, limit in seconds, column title)
    "quick": ("1", BUDGET_SECONDS, "quick"),
    "full": ("0", LECTURE_LIMIT_SECONDS, "full, first run"),
    "cached": ("0", LECTURE_LIMIT_SECONDS, "full, cached"),
}


@contextmanager
def environment(**values: str):
    """Set environment variables (inherited by the kernels started meanwhile), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def status_of(path: Path, nb) -> str:
    """"ok", or what the error outputs were (a blank assignment's are expected)."""
    problems = errors(nb)
    if not problems:
        return "ok"
    if path.parts[0] == "assignments" and all(
            out.ename == "NotImplementedError" or "not implemented" in str(out.evalue) for _, out in problems):
        return f"stops at its exercises, as expected ({len(problems)} errors)"
    cell, first = problems[0]
    return f"{len(problems)} error(s), first in cell {cell}: {first.ename}"


def run_notebook(path: Path, timeout: int) -> tuple[float, str]:
    """Execute one notebook in a fresh kernel: (seconds, status)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str((REPO / path).parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start, status_of(path, nb)


def run_mode(mode: str, notebooks: list[Path], cache: Path, timeout: int) -> dict[str, dict]:
    quick, limit, title = MODES[mode]
    results = {}
    with environment(GENLAB_QUICK=quick, GENLAB_CACHE=str(cache), MPLBACKEND="Agg"):
        for path in notebooks:
            try:
                seconds, status = run_notebook(path, timeout)
            except Exception as exc:  # a cell timed out or the kernel died: record it, go on
                seconds, status = float("nan"), f"failed: {type(exc).__name__}"
            over = "" if seconds < limit else " OVER"
            print(f"  {title}: {path}  {seconds:.1f} s (limit {limit} s){over}  {status}", flush=True)
            results[str(path)] = {"seconds": seconds, "status": status, "limit": limit}
    return results


def make_test(timeout: int) -> dict:
    """``make test`` in a fresh clone of HEAD: seconds, exit status, the log's tail."""
    with tempfile.TemporaryDirectory(prefix="genlab-clone-") as tmp:
        clone = Path(tmp) / "genlab"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, check=True,
                                capture_output=True, text=True).stdout.strip()
        env = {name: value for name, value in os.environ.items()
               if name not in ("VIRTUAL_ENV", "GENLAB_QUICK", "GENLAB_CACHE", "PYTHONPATH")}
        start = time.perf_counter()
        try:
            proc = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            returncode, output = proc.returncode, proc.stderr + proc.stdout  # pytest's summary last
        except subprocess.TimeoutExpired as exc:
            returncode, output = None, f"timed out after {timeout} s\n{exc.stdout or ''}"
        seconds = time.perf_counter() - start
    tail = "\n".join(str(output).splitlines()[-15:])
    return {"commit": commit, "seconds": seconds, "returncode": returncode, "tail": tail}


def site_build(cache: Path, out: Path, timeout: int) -> dict:
    """``make site``'s sphinx-build with full lectures into ``out``: seconds and exit status."""
    env = dict(os.environ, GENLAB_QUICK="0", GENLAB_CACHE=str(cache), MPLBACKEND="Agg")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(out / "doctrees"), str(REPO / "site"), str(out / "html")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-2000:]}


def select(only: list[str] | None) -> list[Path]:
    if not only:
        return list(NOTEBOOKS)
    return [path for path in NOTEBOOKS if any(part in str(path) for part in only)]


def summary_table(notebooks: list[Path], results: dict[str, dict[str, dict]]) -> str:
    modes = [mode for mode in MODES if mode in results]
    header = ["notebook"] + [f"{MODES[m][2]} (s, limit {MODES[m][1]})" for m in modes] + ["status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in notebooks:
        cells, statuses = [], []
        for mode in modes:
            r = results[mode][str(path)]
            cells.append(f"{r['seconds']:.1f}" + (" **over**" if not r["seconds"] < r["limit"] else ""))
            if r["status"] != "ok":
                statuses.append(f"{MODES[mode][2]}: {r['status']}")
        lines.append(f"| `{path}` | " + " | ".join(cells) + " | " + ("; ".join(statuses) or "ok") + " |")
    totals = [f"{sum(results[m][str(p)]['seconds'] for p in notebooks):.0f}" for m in modes]
    lines.append("| total | " + " | ".join(totals) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING",
                        help="run only the notebooks whose path contains one of these")
    parser.add_argument("--full", action="store_true",
                        help="also GENLAB_QUICK=0: a first run with an empty cache, then a cached run")
    parser.add_argument("--site", action="store_true",
                        help="also time the website's full build: empty checkpoint cache, then cached")
    parser.add_argument("--make-test", action="store_true", help="also time `make test` in a fresh clone")
    parser.add_argument("--no-quick", action="store_true", help="skip the quick (GENLAB_QUICK=1) runs")
    parser.add_argument("--timeout", type=int, default=900, help="per-cell timeout in seconds")
    parser.add_argument("--make-timeout", type=int, default=3600, help="timeout of `make test` in seconds")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    notebooks = select(args.only)
    if not notebooks:
        parser.error(f"no notebook matches {args.only}; the notebooks are: {[str(p) for p in NOTEBOOKS]}")
    modes = ([] if args.no_quick else ["quick"]) + (["full", "cached"] if args.full else [])
    if not modes and not (args.make_test or args.site):
        parser.error("nothing to run: --no-quick without --full, --site or --make-test")

    load = os.getloadavg()
    print(f"# notebook wall times, {date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"# {len(notebooks)} notebook(s), modes: {', '.join(modes) or '-'}"
          + (", make test" if args.make_test else ""), flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="genlab-bench-cache-") as tmp:
        for mode in modes:
            # quick gets its own empty cache; "cached" reuses the one "full" filled
            cache = Path(tmp) / ("quick" if mode == "quick" else "full")
            cache.mkdir(exist_ok=True)
            results[mode] = run_mode(mode, notebooks, cache, args.timeout)
    if modes:
        print()
        print(summary_table(notebooks, results))
    if args.site:
        with tempfile.TemporaryDirectory(prefix="genlab-bench-site-") as tmp:
            for build in ("first", "cached"):  # the second build reuses the cache the first filled
                print(f"\n# site build ({build}) ...", flush=True)
                outcome = site_build(Path(tmp) / "cache", Path(tmp) / build, args.make_timeout)
                results[f"site_{build}"] = outcome
                print(f"site build, {build}: {outcome['seconds']:.0f} s, exit status {outcome['returncode']}"
                      + ("" if outcome["returncode"] == 0 else "\n" + outcome["tail"]), flush=True)
    if args.make_test:
        if shutil.which("make") is None:
            raise SystemExit("make is not installed")
        print("\n# make test in a fresh clone of HEAD ...", flush=True)
        results["make_test"] = outcome = make_test(args.make_timeout)
        print(outcome["tail"])
        print(f"make test (clone of {outcome['commit']}): {outcome['seconds']:.0f} s "
              f"({outcome['seconds'] / 60:.1f} min), exit status {outcome['returncode']}")
    load = os.getloadavg()
    print(f"# load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
