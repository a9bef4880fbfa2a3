"""Grading a class is resumable and loses nothing: a killed run keeps every finished grade,
a re-run skips unchanged submissions, a regrade keeps the earlier result, and the grades
are the same whatever the number of workers, locally or on a Dask cluster."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from autograder import spec
from autograder.samples import write_samples
from conftest import REPO, run_cli

A = "01_attention"
NOTEBOOK = spec.load(A).notebook


def grades(out):
    with open(out / "grades.csv") as f:
        return sorted(tuple(r.values()) for r in csv.DictReader(f))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    subs = tmp_path_factory.mktemp("samples") / "submissions"
    write_samples(A, subs)
    return subs


def test_a_killed_run_loses_no_finished_grade_and_resumes(samples, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "autograder", "grade", A, "--submissions", str(samples),
                             "--out", str(out), "--workers", "1", "--quiet"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*/grading.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of the class
    proc.wait()
    finished = sorted(p.parent.name for p in out.glob("*/grading.json"))
    assert 1 <= len(finished) < 4, finished
    kept = {}
    for name in finished:  # every finished grade is whole
        kept[name] = json.loads((out / name / "grading.json").read_text())
        json.loads((out / name / "results.json").read_text())
    assert not (out / "grades.csv").exists()

    resumed = run_cli("grade", A, "--submissions", str(samples), "--out", str(out), "--workers", "1")
    assert f"{len(finished)} submission(s) unchanged since they were graded: kept" in resumed.stderr
    for name in finished:  # not graded again
        assert json.loads((out / name / "grading.json").read_text())["graded_at"] == kept[name]["graded_at"]
    totals = {}
    for student, _, _, points, _, _ in grades(out):
        totals[student] = totals.get(student, 0) + float(points)
    assert totals == {"solution": 16, "blank": 0, "partial": 8, "polarity": 14}


def test_a_regrade_keeps_the_earlier_result(samples, tmp_path):
    subs = tmp_path / "subs"
    (subs / "polarity").mkdir(parents=True)
    os.symlink(samples / "polarity" / A, subs / "polarity" / A)
    out = tmp_path / "out"
    run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--quiet")
    first = json.loads((out / "polarity" / "results.json").read_text())
    # the student resubmits with the bug fixed
    (subs / "polarity" / A).unlink()
    (subs / "polarity" / A).mkdir()
    nb = nbformat.read(samples / "solution" / A / NOTEBOOK, as_version=4)
    nbformat.write(nb, subs / "polarity" / A / NOTEBOOK)
    second = run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--quiet")
    assert "regrading polarity" in second.stderr
    history = list((out / "polarity" / "history").glob("*/results.json"))
    assert len(history) == 1 and json.loads(history[0].read_text()) == first
    assert json.loads((out / "polarity" / "results.json").read_text())["score"] == 16 != first["score"]


def test_same_grades_with_any_number_of_workers_and_on_dask(samples, tmp_path):
    from distributed import LocalCluster

    run_cli("grade", A, "--submissions", str(samples), "--out", str(tmp_path / "w1"), "--workers", "1", "--quiet")
    run_cli("grade", A, "--submissions", str(samples), "--out", str(tmp_path / "w2"), "--workers", "2", "--quiet")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        run_cli("grade", A, "--submissions", str(samples), "--out", str(tmp_path / "dask"),
                "--scheduler", cluster.scheduler_address, "--quiet")
    assert grades(tmp_path / "w1") == grades(tmp_path / "w2") == grades(tmp_path / "dask")
    assert len(grades(tmp_path / "w1")) == 4 * len(spec.load(A).checks)
