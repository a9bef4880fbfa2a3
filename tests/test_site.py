"""The course website builds without a single warning, and every page renders in a browser.

1. ``sphinx-build -W --keep-going`` builds ``site/`` into a temporary folder, executing the
   lectures with ``GENLAB_QUICK=1`` (and a temporary checkpoint cache).
2. The HTML holds one page per lecture, assignment notebook and site page; lecture pages
   show outputs and figures, assignment pages none (they are shown unexecuted).
3. Headless Chromium (Debian's ``/usr/bin/chromium``, driven over the DevTools protocol)
   opens every page and checks: a title, real text, every ``<img>`` loaded
   (``naturalWidth > 0``), every formula typeset (MathJax is served locally), no error
   output or traceback in a lecture, and nothing cut at the right edge (no table, code
   block or figure reaching past the article's column unless it sits in a box that scrolls
   sideways, and no page wider than the window); all of this at a laptop's width (1280 px)
   and a phone's (390 px).  It saves a full-page screenshot of each page at each width
   (printed: where) and checks that it is not blank.
4. Built in quick mode, every output of a lecture carries the "quick run" badge.

The browser part is skipped, with the reason, where Chromium is missing; the Makefile's
``chromium`` target installs it (``make site``, ``make setup`` as root on Debian/Ubuntu).
"""

from __future__ import annotations

import base64
import io
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = os.environ.get("GENLAB_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(tempfile.gettempdir()) / "genlab-site-screenshots"
WIDTHS = {"laptop": 1280, "phone": 390}  # px
WIDTH, HEIGHT = WIDTHS["laptop"], 1000
MAX_SHOT_HEIGHT = 16_000  # px; long lecture pages are cut there

LECTURES = sorted(p.stem for p in (REPO / "course").glob("*.ipynb"))
ASSIGNMENTS = sorted(p.relative_to(REPO / "assignments").with_suffix("").as_posix()
                     for p in (REPO / "assignments").glob("*/*.ipynb")
                     if ".ipynb_checkpoints" not in p.parts)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site's HTML folder."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, GENLAB_QUICK="1", MPLBACKEND="Agg", GENLAB_CACHE=str(out / "checkpoints"),
               PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
         "-d", str(out / "doctrees"), str(REPO / "site"), str(out / "html")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    log = proc.stdout[-4000:] + proc.stderr[-8000:]
    assert proc.returncode == 0, f"sphinx-build -W failed after {seconds:.0f} s:\n{log}"
    assert "build succeeded" in proc.stdout, log
    print(f"site built in {seconds:.0f} s into {out / 'html'}")
    return out / "html"


def pages(site: Path) -> list[Path]:
    """Every HTML page of the site (the theme's template fragments in _static are not pages)."""
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def text_of(page: Path) -> str:
    """A page's visible text, roughly: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_every_page_is_built(site):
    built = {p.relative_to(site).as_posix() for p in pages(site)}
    expected = {"index.html", "syllabus.html", "lectures.html", "assignments.html", "instructors.html"}
    expected |= {f"lectures/{name}.html" for name in LECTURES}
    expected |= {f"assignments/{name}.html" for name in ASSIGNMENTS}
    assert len(LECTURES) >= 3 and len(ASSIGNMENTS) >= 1
    assert expected <= built, f"missing pages: {sorted(expected - built)}"


def test_every_lecture_output_says_it_comes_from_a_quick_run(site):
    for name in LECTURES:
        html = (site / "lectures" / f"{name}.html").read_text()
        outputs = html.split('class="cell_output')[1:]  # each piece starts with one cell's output
        assert outputs, f"{name}: no output"
        unbadged = [i for i, piece in enumerate(outputs)
                    if "genlab-quick" not in piece.split('class="cell ')[0]]
        assert not unbadged, f"{name}: outputs {unbadged} of {len(outputs)} carry no quick-run badge"


def test_lectures_are_executed_and_assignments_are_not(site):
    for name in LECTURES:
        html = (site / "lectures" / f"{name}.html").read_text()
        assert html.count('class="cell_output') >= 5, f"{name}: the lecture was not executed"
        assert "<img" in html, f"{name}: no figure"
        assert "Traceback" not in html and "output error" not in html, f"{name}: an error output"
        assert "quick run: True" in html, f"{name}: not built with GENLAB_QUICK=1"
    for name in ASSIGNMENTS:
        html = (site / "assignments" / f"{name}.html").read_text()
        assert "YOUR CODE HERE" in html, f"{name}: not the student release"
        assert 'class="cell_output' not in html, f"{name}: the release must be shown unexecuted"
    syllabus = text_of(site / "syllabus.html")
    assert "Week 15" in syllabus and "02_bert_pretraining.ipynb" in syllabus
    instructors = text_of(site / "instructors.html")
    for command in ("make release", "references build", "references verify", "autograder grade",
                    "grades.csv", "nbgrader export", "bubblewrap"):
        assert command in instructors, f"instructors page: {command!r} missing"


# ---------------------------------------------------------------------------------------------
# the browser


class DevTools:
    """Just enough of the Chrome DevTools protocol: send a command, wait for its answer."""

    def __init__(self, url: str):
        import websocket  # websocket-client, a test dependency

        self.socket = websocket.create_connection(url, timeout=120, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def __call__(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 300.0) -> None:  # hang guard
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.events.append(json.loads(self.socket.recv()))
        self.events.clear()

    def close(self):
        self.socket.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with `apt-get install chromium` "
                    "(`make site` does so when run as root on Debian/Ubuntu)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 300  # hang guard: Chromium starts in seconds
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start (exit code {process.poll()})")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = json.load(answer)
        page = next(t for t in targets if t["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        devtools("Page.enable")
        yield devtools
        devtools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


INSPECT = """
// Tables, code blocks and figures that reach past the right edge of the article's column
// (or of the window) without sitting in a box that scrolls sideways: content a reader
// cannot see.  With `scrolled`, those in a box that scrolls sideways count too: on a laptop
// a reader should not have to scroll to see a table's last column or a line's end.
function cutAtTheRight(scrolled) {
  const article = document.querySelector("article") || document.querySelector("main") || document.body;
  const limit = Math.min(article.getBoundingClientRect().right, window.innerWidth) + 1;
  const scrolls = el => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  const cut = [];
  for (const el of article.querySelectorAll("table, pre, img, .cell_output, mjx-container")) {
    let box = el;
    while (box && box !== article && !scrolls(box)) box = box.parentElement;
    const inScroller = box && box !== article;
    const visible = inScroller ? box : el;  // what the reader sees of it
    const right = (scrolled && inScroller) ? box.getBoundingClientRect().left + box.scrollWidth
                                           : visible.getBoundingClientRect().right;
    if (right > limit && el.getBoundingClientRect().width > 0) {
      const text = (el.innerText || el.getAttribute("src") || "").trim().slice(0, 40);
      cut.push(`${el.tagName.toLowerCase()} "${text}" ends at ${Math.round(right)} px, ` +
               `the column at ${Math.round(limit)} px`);
    }
  }
  return cut;
}

(async () => {
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const main = document.querySelector("main") || document.body;
  return {
    title: document.title,
    text: main.innerText.length,
    bodyText: document.body.innerText,
    images: images.map(img => ({src: img.getAttribute("src"), complete: img.complete,
                                width: img.naturalWidth})),
    errors: document.querySelectorAll(".output.error, .output.traceback, .cell_output .error, .traceback").length,
    formulas: document.querySelectorAll(".math").length,
    typeset: document.querySelectorAll("mjx-container").length,
    height: Math.ceil(document.documentElement.scrollHeight),
    pageWidth: document.documentElement.scrollWidth,
    windowWidth: window.innerWidth,
    cut: cutAtTheRight(window.innerWidth >= 1000),
  };
})()
"""


def _not_blank(png: bytes) -> float:
    """Standard deviation of the screenshot's grey levels (0 for a one-colour image)."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(grey.std())


def test_every_page_renders_in_chromium(site, browser):
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    problems, report = [], []
    for device, width in WIDTHS.items():
        for path in pages(site):
            problems += _inspect_page(browser, site, path, device, width, report)
    print(f"screenshots of {len(report)} page views in {SCREENSHOTS}:")
    print("\n".join("  " + line for line in report))
    assert not problems, "\n".join(problems)
    assert len(report) == len(WIDTHS) * len(pages(site))


def _inspect_page(browser, site, path, device, width, report) -> list[str]:
    """Open one page at one window width; check it, save its screenshot; return the problems."""
    problems = []
    name = path.relative_to(site).as_posix()
    metrics = dict(width=width, deviceScaleFactor=1, mobile=device == "phone")
    browser("Emulation.setDeviceMetricsOverride", height=HEIGHT, **metrics)
    browser("Page.navigate", url=path.as_uri())
    browser.wait_for("Page.loadEventFired")
    state = browser("Runtime.evaluate", expression=INSPECT, awaitPromise=True,
                    returnByValue=True)["result"]["value"]
    if not state["title"].strip():
        problems.append(f"{name}: no title")
    if state["text"] < (30 if name == "search.html" else 200):  # the search page is a form
        problems.append(f"{name}: only {state['text']} characters of text")
    if state["formulas"] and not state["typeset"]:
        problems.append(f"{name}: {state['formulas']} formula(s), none typeset by MathJax")
    for image in state["images"]:
        if not image["complete"] or image["width"] == 0:
            problems.append(f"{name}: image {image['src']} did not load")
    if name.startswith("lectures/"):
        if state["errors"]:
            problems.append(f"{name}: {state['errors']} error output element(s)")
        if "Traceback" in state["bodyText"]:
            problems.append(f"{name}: a traceback is shown")
        if not state["images"]:
            problems.append(f"{name}: no figure")

    if state["pageWidth"] > state["windowWidth"] + 1:
        problems.append(f"{name} at {width} px: the page is {state['pageWidth']} px wide")
    problems += [f"{name} at {width} px: {cut}" for cut in state["cut"]]

    # full page: make the viewport as tall as the page, take the shot, restore the viewport
    height = min(state["height"], MAX_SHOT_HEIGHT)
    browser("Emulation.setDeviceMetricsOverride", height=height, **metrics)
    shot = browser("Page.captureScreenshot", format="png")
    browser("Emulation.clearDeviceMetricsOverride")
    png = base64.b64decode(shot["data"])
    target = SCREENSHOTS / device / (name.replace("/", "__").removesuffix(".html") + ".png")
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(png)
    if _not_blank(png) < 5:
        problems.append(f"{name}: the screenshot is blank")
    report.append(f"{device}/{name}: {len(state['images'])} image(s), {state['text']} characters")
    return problems

