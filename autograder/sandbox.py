"""Run a command for one submission inside a sandbox.

On Linux with bubblewrap (``bwrap``): a new user, PID, network, IPC and UTS namespace;
the student's code runs as an unprivileged user with no capabilities and no network.
Only what the kernel needs is mounted, read-only: the system, the Python installation,
the repository. The repository's private parts (``solutions/``, the hidden references,
the grading specs, ``.git``) are replaced by empty folders, the assignment's *public*
references are mounted in their place, and the only writable places are a private
``/tmp`` and the submission's own work folder. Nothing else of the grader (other
submissions, the gradebook, the output folder) is visible.

Limits on every process tree, sandboxed or not: address space (memory), CPU time,
file size; a wall-clock timeout for the whole run after which every process of the
submission is killed. Without bubblewrap the same command runs with those limits only,
and :data:`Sandbox.sandboxed` is False so that every result says so.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRIVATE = ("solutions", "autograder/references", "autograder/specs", ".git")


@dataclass
class Limits:
    memory_bytes: int = 6 << 30        # address space of each process
    cpu_seconds: int = 900             # CPU time of each process
    file_bytes: int = 256 << 20        # largest file a process may write
    wall_seconds: int = 600            # the whole notebook
    cell_seconds: int = 60             # each cell


@dataclass
class Result:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


@dataclass
class Sandbox:
    limits: Limits = field(default_factory=Limits)
    use_bwrap: bool | None = None  # None: when available

    def __post_init__(self):
        available = shutil.which("bwrap") is not None and sys.platform.startswith("linux")
        self.sandboxed = available if self.use_bwrap is None else (self.use_bwrap and available)

    def _bwrap(self, workdir: Path, public_refs: Path | None, hidden: list[Path]) -> list[str]:
        args = ["bwrap", "--unshare-user", "--uid", "1000", "--gid", "1000", "--cap-drop", "ALL",
                "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--die-with-parent", "--new-session", "--hostname", "grading"]
        for top in ("/usr", "/etc", "/opt"):
            if os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        python_home = Path(os.path.realpath(sys.base_prefix))
        args += ["--ro-bind", str(python_home), str(python_home)]
        if Path(sys.prefix).resolve() != python_home:
            args += ["--ro-bind", sys.prefix, sys.prefix]
        args += ["--ro-bind", str(REPO), str(REPO)]
        for private in PRIVATE:
            if (REPO / private).exists():
                args += ["--tmpfs", str(REPO / private)]
        for path in hidden:  # e.g. the grading output folder when it lies inside the repo
            if path.exists():
                args += ["--tmpfs", str(path)]
        if public_refs is not None:
            target = REPO / "autograder" / "references" / public_refs.name
            args += ["--ro-bind", str(public_refs), str(target)]
        args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
        return args

    def environment(self, workdir: Path) -> dict[str, str]:
        home = "/tmp/home" if self.sandboxed else str(workdir / ".home")
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": home, "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.mpl",
            "IPYTHONDIR": f"{home}/.ipython", "JUPYTER_RUNTIME_DIR": f"{home}/.jupyter",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LANG": "C.UTF-8",
        }
        if not self.sandboxed:  # limits only: keep the repo's public references visible
            env["GENLAB_REFERENCES"] = str(workdir / ".references")
        return env

    def _set_limits(self) -> None:
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def run(self, argv: list[str], workdir: Path, public_refs: Path | None = None,
            hidden: list[Path] = ()) -> Result:
        """Run ``argv`` with ``workdir`` as its only writable folder; never outlives the timeout."""
        env = self.environment(workdir)
        if self.sandboxed:
            argv = self._bwrap(workdir, public_refs, list(hidden)) + argv
        else:
            Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
            refs = workdir / ".references"
            if public_refs is not None and not refs.exists():
                shutil.copytree(public_refs, refs / public_refs.name)
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=self._set_limits)
        try:
            out, err = proc.communicate(timeout=self.limits.wall_seconds)
            return Result(proc.returncode, out, err, timed_out=False)
        except subprocess.TimeoutExpired:
            return Result(None, *self._kill(proc), timed_out=True)
        finally:
            if proc.poll() is None:
                self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> tuple[str, str]:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: kernel and children
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        return out or "", err or ""
