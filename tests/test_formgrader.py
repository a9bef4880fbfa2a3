"""Issue 19, item 4: nbgrader's formgrader on a graded OUT, out of the box.

A class of two (the solution and the polarity bug of assignment 1) is graded through the
CLI; one submission then gets a hand-in time in the gradebook (as late-work bookkeeping
records it). ``formgrader.prepare`` + ``formgrader.start`` run jupyter server with nbgrader's
formgrader extension; through formgrader's HTTP API the tests check that the course's
assignments are listed, that each student's score is the gradebook's, and that a grade set
through formgrader reaches every export. A headless Chromium screenshot of formgrader's
page is saved (printed: where). Stopping the server leaves no process behind."""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from autograder import exports
from autograder import formgrader
from autograder import spec
from autograder.samples import make_sample
from conftest import REPO, assert_no_process, run_cli
from test_exports import _gradebook_totals, _write
from test_site import _not_blank, browser  # noqa: F401 (browser: a fixture used below)

pytestmark = pytest.mark.slow

A = "01_attention"
SPEC = spec.load(A)
NOTEBOOK_ID = SPEC.notebook.replace(".ipynb", "")
HANDED_IN = datetime.datetime(2026, 3, 2, 9, 30, 15)  # naive UTC, as the gradebook stores times
SCREENSHOT = "genlab-formgrader.png"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("formgrader")
    subs, out = root / "submissions", root / "out"
    for student, how in {"solution": {"solved": "all"}, "polarity": SPEC.samples["polarity"]}.items():
        _write(subs, student, make_sample(A, how))
    run_cli("grade", A, "--submissions", str(subs), "--out", str(out), "--quiet")
    from nbgrader.api import Gradebook

    with Gradebook(exports.gradebook_url(out)) as gb:
        gb.find_submission(A, "polarity").timestamp = HANDED_IN
        gb.db.commit()
    return out


@pytest.fixture(scope="module")
def server(graded):
    formgrader.prepare(A, graded)
    running = formgrader.start(graded)
    yield running
    running.stop()


def test_prepare_writes_a_course_directory_config(graded, server):
    text = (graded / "nbgrader_config.py").read_text()
    assert f"c.CourseDirectory.root = {str(graded.resolve())!r}" in text
    assert f"c.CourseDirectory.source_directory = {str(REPO / 'solutions')!r}" in text
    assert f"c.CourseDirectory.release_directory = {str(REPO / 'assignments')!r}" in text
    assert exports.gradebook_url(graded) in text
    assert (graded / "submitted" / "solution" / A).is_dir()
    assert (graded / "submitted" / "polarity" / A / "timestamp.txt").read_text().strip() == HANDED_IN.isoformat()


def test_the_course_assignments_are_listed(server, graded):
    listed = {a["name"]: a for a in server.api("assignments")}
    assert set(listed) == {p.name for p in (REPO / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit()}
    graded_one = listed[A]
    assert graded_one["num_submissions"] == 2
    assert graded_one["max_score"] == SPEC.max_points
    assert [n["name"] for n in server.api(f"notebooks/{A}")] == [NOTEBOOK_ID]


def test_each_score_is_the_gradebooks(server, graded):
    book = _gradebook_totals(graded)
    assert book == {"solution": 16, "polarity": 14}
    submissions = server.api(f"submissions/{A}")
    assert {s["student"]: s["score"] for s in submissions} == pytest.approx(book)
    assert all(s["autograded"] for s in submissions), submissions
    stamped = next(s for s in submissions if s["student"] == "polarity")
    assert datetime.datetime.fromisoformat(stamped["timestamp"]).replace(tzinfo=None) == HANDED_IN


def _put(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{server.base_url}/formgrader/api/{path}", method="PUT",
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"token {server.token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def test_a_grade_set_in_formgrader_reaches_every_export(server, graded):
    notebook = next(n for n in server.api(f"submitted_notebooks/{A}/{NOTEBOOK_ID}") if n["student"] == "polarity")
    grades = {g["name"]: g for g in server.api(f"grades?submission_id={notebook['id']}")}
    cell = grades["test_padding_mask"]
    assert cell["auto_score"] == 0 and cell["max_score"] == 2
    changed = _put(server, f"grade/{cell['id']}", {"manual_score": 2})
    assert changed["manual_score"] == 2 and changed["needs_manual_grade"] is False, changed
    run_cli("export", A, "--out", str(graded))
    assert json.loads((graded / "polarity" / "results.json").read_text())["score"] == 16
    assert {s["student"]: s["score"] for s in server.api(f"submissions/{A}")}["polarity"] == 16


def test_formgrader_page_in_chromium(server, browser, tmp_path_factory):  # noqa: F811
    """The assignments page as an instructor sees it: the list filled in by formgrader's
    JavaScript from the API. The screenshot is saved for a person to look at."""
    browser("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    browser("Page.navigate", url=f"{server.base_url}/formgrader/manage_assignments?token={server.token}")
    browser.wait_for("Page.loadEventFired")
    listed = browser("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression="""
        (async () => {
          for (let i = 0; i < 300 && !document.body.innerText.includes('01_attention'); i++)
            await new Promise(done => setTimeout(done, 100));
          return document.body.innerText;
        })()""")["result"]["value"]
    assert A in listed and "02_bert" in listed, listed[:2000]
    import base64

    png = base64.b64decode(browser("Page.captureScreenshot", format="png")["data"])
    path = tmp_path_factory.getbasetemp() / SCREENSHOT
    path.write_bytes(png)
    print(f"formgrader screenshot: {path}")
    assert _not_blank(png) > 5


CLI = """
import argparse, sys
from autograder import formgrader
parser = argparse.ArgumentParser()
formgrader.add_parser(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_the_command_runs_until_stopped_and_takes_its_server_along(graded):
    """``run`` as the CLI calls it: it prints the address with the token; SIGTERM (as Ctrl-C)
    stops it and its server, whose port then refuses connections."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, "formgrader", A, "--out", str(graded)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300  # hang guard
        line = ""
        while not line.startswith("formgrader: ") and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert line.startswith("formgrader: http://127.0.0.1:") and "?token=" in line, line
        url = line.split()[1]
        with urllib.request.urlopen(url.replace("/formgrader?", "/formgrader/api/status?"), timeout=60) as answer:
            assert json.load(answer) == {"status": True}
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(url.replace("/formgrader?", "/formgrader/api/status?"), timeout=10)


def test_the_command_line_and_stopping_leaves_nothing(server, graded):
    parser = argparse.ArgumentParser()
    formgrader.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["formgrader", A, "--out", str(graded), "--port", "8899"])
    assert (args.func, args.assignment, args.port) == (formgrader.run, A, 8899)
    with pytest.raises(SystemExit, match="no gradebook"):
        formgrader.prepare(A, graded / "nowhere")

    assert server.stop() is not None
    assert server.process.poll() is not None
    assert_no_process(f"ServerApp.root_dir={graded.resolve()}")
