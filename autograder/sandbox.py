"""Run a command for one submission inside a sandbox.

On Linux with bubblewrap (``bwrap``): new user, PID, network, IPC and UTS namespaces;
the student's code runs without capabilities and without network (not even the host's
loopback). Only what the kernel needs is mounted, read-only: the system, the Python
installation, and the public parts of the repository (``lib/``, ``assignments/``,
``course/``, the autograder's code, the virtual environment). ``solutions/``, the hidden
references, the grading specs, ``.git``, the gradebook, other submissions and the
grading output are not there at all; the assignment's *public* references are mounted
where the references live. The only writable places are a private ``/tmp`` and the
submission's own work folder.

Limits: address space, CPU time and file size of each process (``resource``); the
number of processes of the whole submission, by the first mechanism that works here:

1. a cgroup of its own (the ``pids`` controller, v1 or v2, when the grader may create
   cgroups, i.e. runs as root): ``pids.max``, and ``memory`` too where writable; every
   process in it is killed when grading ends;
2. when the grader runs as root and the Python installation and the repository are
   readable by others: its own unprivileged user (uid ``SANDBOX_UID_BASE + slot``) with
   ``RLIMIT_NPROC`` (root ignores that limit, other users do not);
3. otherwise ``RLIMIT_NPROC`` over the grader's own user, raised by what it already runs.

A wall-clock timeout ends the whole run; afterwards every process of the submission is
killed. Without bubblewrap the same command runs with the limits only, and
:attr:`Sandbox.sandboxed` is False so that every result says so.
"""

from __future__ import annotations

import os
import resource
import secrets
import stat
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PUBLIC_REPO_PARTS = ("lib", "autograder", "assignments", "course", ".venv", "pyproject.toml")
PRIVATE_AUTOGRADER_PARTS = ("references", "specs")
SANDBOX_UID_BASE = 61000


@dataclass
class Limits:
    memory_bytes: int = 6 << 30        # address space of each process
    cpu_seconds: int = 900             # CPU time of each process
    file_bytes: int = 256 << 20        # largest file a process may write
    processes: int = 256               # tasks (processes and threads) of the submission's user
    wall_seconds: int = 600            # the whole notebook
    cell_seconds: int = 60             # each cell


@dataclass
class Result:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


def _readable_by_others(path: Path) -> bool:
    """Can an unprivileged user reach ``path`` (every folder on the way searchable)?"""
    path = Path(os.path.realpath(path))
    for folder in [path, *path.parents]:
        try:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _user_process_count() -> int:
    uid = os.getuid()
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


class Cgroup:
    """A pids (and, where possible, memory) cgroup for one submission, v1 or v2."""

    def __init__(self, name: str, processes: int, memory_bytes: int):
        self.dirs: list[Path] = []
        v2 = Path("/sys/fs/cgroup")
        v1 = {"pids": v2 / "pids", "memory": v2 / "memory"}
        if (v2 / "cgroup.controllers").exists():
            self._make(v2 / name, {"pids.max": processes, "memory.max": memory_bytes})
        else:
            if v1["pids"].is_dir():
                self._make(v1["pids"] / name, {"pids.max": processes})
            if v1["memory"].is_dir():
                self._make(v1["memory"] / name, {"memory.limit_in_bytes": memory_bytes})

    def _make(self, folder: Path, settings: dict[str, int]) -> None:
        try:
            folder.mkdir()
        except OSError:
            return
        for key, value in settings.items():
            try:
                (folder / key).write_text(str(value))
            except OSError:
                if key.startswith("pids"):  # a cgroup that cannot cap processes is no use
                    folder.rmdir()
                    return
        self.dirs.append(folder)

    @property
    def caps_processes(self) -> bool:
        return any((d / "pids.max").exists() for d in self.dirs)

    def enter(self) -> None:
        """Move the calling process (in the child, before exec) into the cgroup."""
        for folder in self.dirs:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    def kill_and_remove(self) -> None:
        for folder in self.dirs:
            for _ in range(200):  # until the cgroup is empty (10 s at most)
                try:
                    pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            try:
                folder.rmdir()
            except OSError:
                pass


def _kill_user(uid: int) -> None:
    """Kill every process of ``uid`` (what a submission may have left behind)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


@dataclass
class Sandbox:
    limits: Limits = field(default_factory=Limits)
    use_bwrap: bool | None = None  # None: when available

    def __post_init__(self):
        available = shutil.which("bwrap") is not None and sys.platform.startswith("linux")
        self.sandboxed = available if self.use_bwrap is None else (self.use_bwrap and available)
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.own_users = root and all(_readable_by_others(p) for p in
                                      (sys.base_prefix, sys.prefix, REPO))

    def uid_for(self, slot: int) -> int | None:
        """The unprivileged user a submission in worker ``slot`` runs as (None: as ourselves)."""
        if not self.own_users:
            return None
        return SANDBOX_UID_BASE + (os.getpid() % 500) * 32 + slot % 32

    def _bwrap(self, workdir: Path, public_refs: Path | None) -> list[str]:
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
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--dir", "/tmp/home"]
        python_home = Path(os.path.realpath(sys.base_prefix))
        args += ["--ro-bind", str(python_home), str(python_home)]
        if not Path(sys.prefix).resolve().is_relative_to(REPO):
            args += ["--ro-bind", sys.prefix, sys.prefix]
        for part in PUBLIC_REPO_PARTS:
            if (REPO / part).exists():
                args += ["--ro-bind", str(REPO / part), str(REPO / part)]
        for private in PRIVATE_AUTOGRADER_PARTS:
            if (REPO / "autograder" / private).exists():
                args += ["--tmpfs", str(REPO / "autograder" / private)]
        if public_refs is not None:
            target = REPO / "autograder" / "references" / public_refs.name
            args += ["--ro-bind", str(public_refs), str(target)]
        args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
        return args

    def environment(self, workdir: Path) -> dict[str, str]:
        home = "/tmp/home" if self.sandboxed else str(workdir / ".home")
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": home, "MPLCONFIGDIR": f"{home}/.mpl",
            "IPYTHONDIR": f"{home}/.ipython", "JUPYTER_RUNTIME_DIR": f"{home}/.jupyter",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LANG": "C.UTF-8",
            # figures inline, as in JupyterLab, so that the feedback shows the student's plots
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        }
        if not self.sandboxed:  # limits only: point genlab at a copy of the public references
            env["GENLAB_REFERENCES"] = str(workdir / ".references")
        return env

    def _preexec(self, uid: int | None, cgroup: Cgroup):
        lim = self.limits
        nproc = None
        if not cgroup.caps_processes:
            nproc = lim.processes if uid is not None else _user_process_count() + lim.processes

        def set_limits():
            cgroup.enter()
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            if nproc is not None:
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
            resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds))
            resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        return set_limits

    def run(self, argv: list[str], workdir: Path, public_refs: Path | None = None,
            slot: int = 0) -> Result:
        """Run ``argv`` with ``workdir`` as its only writable folder; nothing outlives the timeout."""
        env = self.environment(workdir)
        uid = self.uid_for(slot)
        if self.sandboxed:
            argv = self._bwrap(workdir, public_refs) + argv
        else:
            Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
            refs = workdir / ".references"
            if public_refs is not None and not refs.exists():
                shutil.copytree(public_refs, refs / public_refs.name)
        if uid is not None:
            for path in [workdir, *workdir.rglob("*")]:
                if not path.name == "rec" or path.parent != workdir:  # 'rec' stays unlistable
                    os.chown(path, uid, uid, follow_symlinks=False)
        cgroup = Cgroup(f"genlab-{os.getpid()}-{secrets.token_hex(4)}", self.limits.processes,
                        self.limits.memory_bytes)
        try:
            proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True,
                                    preexec_fn=self._preexec(uid, cgroup))
            try:
                out, err = proc.communicate(timeout=self.limits.wall_seconds)
                result = Result(proc.returncode, out, err, timed_out=False)
            except subprocess.TimeoutExpired:
                result = Result(None, "", "", timed_out=True)
            self._kill(proc, uid, cgroup, result)
        finally:
            cgroup.kill_and_remove()
        return result

    @staticmethod
    def _kill(proc: subprocess.Popen, uid: int | None, cgroup: Cgroup, result: Result) -> None:
        """End every process of the submission: its session, its cgroup, its user."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cgroup.kill_and_remove()
        if uid is not None:
            _kill_user(uid)
        if result.timed_out:
            try:
                out, err = proc.communicate(timeout=10)
                result.stdout, result.stderr = out or "", err or ""
            except subprocess.TimeoutExpired:  # a grandchild outside our reach holds the pipe
                proc.kill()
        proc.wait()
