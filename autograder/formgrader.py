"""nbgrader's formgrader on a graded OUT, with no configuration written by hand.

    python -m autograder formgrader 01_attention --out OUT [--port N] [--db URL]

``prepare`` makes OUT an nbgrader course directory: it writes ``OUT/nbgrader_config.py``
(the course's settings from ``autograder/nbgrader_config.py``, then: course root OUT,
the gradebook OUT/gradebook.db or ``--db``, source = the repository's ``solutions/``,
release = ``assignments/``, autograded = OUT/autograded, feedback = OUT/feedback), makes
sure the assignment and its cells are in the gradebook (as grading records them), and
mirrors each graded submission into ``OUT/submitted/<student>/<assignment>/`` (an empty
folder, with nbgrader's ``timestamp.txt`` when the gradebook holds a submission time), which
is how formgrader counts submissions and tells autograded ones from ungraded ones.

``start`` runs ``jupyter server`` in OUT with nbgrader's formgrader server extension on a
free local port, behind a fresh token; formgrader's pages and its HTTP API
(``/formgrader/api/...``) then read and write the same gradebook every export is rebuilt
from (``python -m autograder export`` after grading by hand).

Formgrader's own "autograde" button runs nbgrader's in-kernel autograder, which this
course does not trust (DESIGN.md, the trust model): regrade with ``python -m autograder
grade`` instead.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from autograder import exports
from autograder import spec as spec_module
from autograder.course import CONFIG_FILE, REPO, generate_release, open_gradebook

CONFIG_NAME = "nbgrader_config.py"
SUBMITTED = "submitted"
RUNTIME = ".formgrader-runtime"  # jupyter server's runtime files (cookie secret, server info)
EXTENSION = "nbgrader.server_extensions.formgrader"
START_SECONDS = 120  # hang guard: the server answers within seconds


def course_config_text(out: Path, db_url: str) -> str:
    """``OUT/nbgrader_config.py``: the course's configuration with OUT as the course root."""
    settings = {
        "root": str(out),
        "db_url": db_url,
        "source_directory": str(REPO / "solutions"),
        "release_directory": str(REPO / "assignments"),
        "submitted_directory": SUBMITTED,
        "autograded_directory": "autograded",
        "feedback_directory": "feedback",
    }
    lines = ["# Written by `python -m autograder formgrader`: OUT as an nbgrader course directory.",
             "# The course's settings first, then where this OUT keeps each step.",
             f"load_subconfig({str(CONFIG_FILE)!r})  # noqa: F821", "",
             "c = get_config()  # noqa: F821"]
    lines += [f"c.CourseDirectory.{key} = {value!r}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def prepare(assignment: str, out: Path, db_url: str | None = None) -> Path:
    """Make the graded ``out`` an nbgrader course directory for formgrader; returns the
    config file written."""
    spec_module.load(assignment)  # an unknown assignment: a clear error
    out = Path(out).resolve()
    if db_url is None and not (out / "gradebook.db").exists():
        raise SystemExit(f"no gradebook at {out / 'gradebook.db'}: grade first (python -m autograder grade)")
    db_url = exports.gradebook_url(out, db_url)
    _record_assignment(assignment, db_url)
    _mirror_submissions(assignment, out, db_url)
    config = out / CONFIG_NAME
    exports.atomic_write(config, course_config_text(out, db_url))
    return config


def _record_assignment(assignment: str, db_url: str) -> None:
    """The assignment's notebooks and cells in the gradebook (grading records them; a
    gradebook that lacks them gets them from a throw-away release)."""
    from nbgrader.api import MissingEntry

    with open_gradebook(db_url) as gb:
        try:
            recorded = bool(gb.find_assignment(assignment).notebooks)
        except MissingEntry:
            recorded = False
    if not recorded:
        with tempfile.TemporaryDirectory() as tmp:
            generate_release(assignment, release_root=Path(tmp), db_url=db_url)


def _mirror_submissions(assignment: str, out: Path, db_url: str) -> list[str]:
    """``OUT/submitted/<student>/<assignment>/`` for each submission in the gradebook, with
    nbgrader's ``timestamp.txt`` when the gradebook holds its time. A timestamp.txt already
    there is left alone: if it differs, formgrader rightly shows that submission as not yet
    autograded (a newer hand-in)."""
    students = []
    with open_gradebook(db_url) as gb:
        for submission in gb.assignment_submissions(assignment):
            folder = out / SUBMITTED / submission.student_id / assignment
            folder.mkdir(parents=True, exist_ok=True)
            stamp = folder / "timestamp.txt"
            if submission.timestamp is not None and not stamp.exists():
                stamp.write_text(submission.timestamp.isoformat() + "\n")
            students.append(submission.student_id)
    return students


# ---------------------------------------------------------------------- the server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running formgrader: its address, token and process."""
    process: subprocess.Popen
    base_url: str
    token: str
    log: Path

    @property
    def url(self) -> str:
        return f"{self.base_url}/formgrader?token={self.token}"

    def api(self, path: str, timeout: float = 60):
        """GET ``/formgrader/api/<path>`` with the token; the decoded JSON."""
        request = urllib.request.Request(f"{self.base_url}/formgrader/api/{path.lstrip('/')}",
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.load(answer)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (jupyter server shuts down cleanly), SIGKILL after ``timeout``; the exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        return self.process.returncode


def server_command(out: Path, port: int, token: str, host: str = "127.0.0.1") -> list[str]:
    as_root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # containers, Colab
    return [sys.executable, "-m", "jupyter_server", "--no-browser", *as_root,
            f"--ServerApp.ip={host}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={out}", f"--IdentityProvider.token={token}",
            f"--ServerApp.jpserver_extensions={EXTENSION}=True"]  # a Dict trait: key=value


def start(out: Path, port: int | None = None, host: str = "127.0.0.1") -> Server:
    """``jupyter server`` with formgrader in ``out`` (prepared); returns once formgrader answers."""
    out = Path(out).resolve()
    if not (out / CONFIG_NAME).exists():
        raise SystemExit(f"{out} is not prepared for formgrader (no {CONFIG_NAME}): call prepare first")
    port = port or free_port(host)
    token = secrets.token_hex(24)
    log = out / "formgrader.log"
    # the venv's scripts on PATH (nbgrader runs alembic); the server's runtime files in OUT
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               JUPYTER_RUNTIME_DIR=str(out / RUNTIME))
    with open(log, "w") as log_file:
        process = subprocess.Popen(server_command(out, port, token, host), cwd=out, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, f"http://{host}:{port}", token, log)
    try:
        _wait_until_answering(server)
    except BaseException:  # a failed start, Ctrl-C, SIGTERM: the server (its own session) goes too
        server.stop()
        raise
    return server


def _wait_until_answering(server: Server) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"jupyter server exited ({server.process.returncode}) before formgrader "
                               f"answered:\n{server.log.read_text()[-2000:]}")
        try:
            server.api("status", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"formgrader did not answer within {START_SECONDS} s; see {server.log}")
            time.sleep(0.3)


# ------------------------------------------------------------------ command line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("formgrader", help="start nbgrader's formgrader on a graded OUT")
    p.add_argument("assignment")
    p.add_argument("--out", required=True, help="the folder `grade` wrote")
    p.add_argument("--db", default=None, help="gradebook URL (default: sqlite in OUT)")
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.set_defaults(func=run)


def _stop(signum, frame):
    """SIGTERM ends ``run`` as Ctrl-C does: through its ``finally``, which stops the server."""
    raise SystemExit(128 + signum)


def run(args) -> int:
    signal.signal(signal.SIGTERM, _stop)
    config = prepare(args.assignment, Path(args.out), args.db)
    print(f"wrote {config}")
    server = start(Path(args.out), args.port, args.ip)
    print(f"formgrader: {server.url}\n(log: {server.log}; Ctrl-C stops it. After grading by hand, "
          f"`python -m autograder export {args.assignment} --out {args.out}` rebuilds every export.)",
          flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


__all__ = ["prepare", "start", "Server", "add_parser", "run"]
