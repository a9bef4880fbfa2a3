"""Run a command for one submission inside a sandbox.

On Linux with bubblewrap (``bwrap``): new user, PID, network, IPC and UTS namespaces;
the student's code runs without capabilities and without network (not even the host's
loopback). Only what the kernel needs is mounted, read-only: the system, the Python
installation, and the public parts of the repository (``lib/``, ``assignments/``,
``course/``, the autograder's code, the virtual environment). ``solutions/``, the hidden
references, the grading specs, ``.git``, the gradebook, other submissions and the
grading output are not there at all; the assignment's *public* references are mounted
where the references live, and the grading build of genlab (``grading_build.py``) where
the library lives. The only writable places are a private ``/tmp`` and the
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
killed. Without bubblewrap the same command runs with the limits only, in a temporary
folder removed afterwards, and :attr:`Sandbox.sandboxed` is False so that every result
says so.
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
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from autograder.channel import Inbox

REPO = Path(__file__).resolve().parents[1]
PUBLIC_REPO_PARTS = ("lib", "autograder", "assignments", "course", ".venv", "pyproject.toml")
PRIVATE_AUTOGRADER_PARTS = ("references", "specs")
SANDBOX_UID_BASE = 61000


@dataclass
class Limits:
    memory_bytes: int = 6 << 30        # address space of each process
    cpu_seconds: int = 900             # CPU time of each process
    file_bytes: int = 256 << 20        # largest file a process may write
    disk_bytes: int = 512 << 20        # everything the submission writes (the sandbox's /tmp)
    shm_bytes: int = 64 << 20          # its shared memory (/dev/shm)
    stream_bytes: int = 256 << 10      # what is kept of its standard output and error, each
    processes: int = 256               # tasks (processes and threads) of the submission's user
    wall_seconds: int = 600            # the whole notebook
    cell_seconds: int = 60             # each cell


@dataclass
class Result:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    inbox: Inbox = field(default_factory=Inbox)


class _Capture(threading.Thread):
    """Reads a stream to its end, keeping its first ``cap`` bytes."""

    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap = stream, cap
        self.kept, self.dropped = bytearray(), 0

    def run(self) -> None:
        while chunk := self.stream.read1(1 << 16):
            room = self.cap - len(self.kept)
            self.kept += chunk[:max(room, 0)]
            self.dropped += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        text = self.kept.decode(errors="replace")
        return text + (f"\n[{self.dropped:,} more bytes not kept]" if self.dropped else "")


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
        # root whose Python others cannot read: bubblewrap runs with root's rights and the
        # sandbox's first command (autograder/drop.py) becomes the submission's user
        self.drop_inside = root and self.sandboxed and not self.own_users

    def uid_for(self, slot: int) -> int | None:
        """The unprivileged user a submission in worker ``slot`` runs as (None: as ourselves)."""
        if not (self.own_users or self.drop_inside):
            return None
        return SANDBOX_UID_BASE + (os.getpid() % 500) * 32 + slot % 32

    WORK = "/tmp/work"

    def _bwrap(self, public_refs: Path | None, library: Path | None) -> list[str]:
        args = ["bwrap"]
        if not self.drop_inside:
            args += ["--unshare-user", "--uid", "1000", "--gid", "1000", "--cap-drop", "ALL"]
        args += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--die-with-parent", "--new-session", "--hostname", "grading"]
        for top in ("/usr", "/etc", "/opt"):
            if os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        args += ["--dev", "/dev", "--proc", "/proc",
                 "--perms", "1777", "--size", str(self.limits.disk_bytes), "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", str(self.limits.shm_bytes), "--tmpfs", "/dev/shm",
                 "--perms", "0777", "--dir", "/tmp/home", "--perms", "0777", "--dir", self.WORK]
        python_home = Path(os.path.realpath(sys.base_prefix))
        installs = [python_home]
        if not Path(sys.prefix).resolve().is_relative_to(REPO):
            installs.append(Path(sys.prefix))
        installs += [REPO / part for part in PUBLIC_REPO_PARTS if (REPO / part).exists()]
        bound, made = ("/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib64", "/lib32"), set()
        for install in installs:
            for parent in reversed(install.parents):  # searchable by the submission's user
                if str(parent) != "/" and parent not in made \
                        and not any(parent.is_relative_to(top) for top in bound):
                    args += ["--perms", "0755", "--dir", str(parent)]
                    made.add(parent)
            args += ["--ro-bind", str(install), str(install)]
        for private in PRIVATE_AUTOGRADER_PARTS:
            if (REPO / "autograder" / private).exists():
                args += ["--tmpfs", str(REPO / "autograder" / private)]
        if public_refs is not None:
            target = REPO / "autograder" / "references" / public_refs.name
            args += ["--ro-bind", str(public_refs), str(target)]
        if library is not None:  # the grading build of genlab, where the library was
            args += ["--ro-bind", str(library), str(REPO / "lib" / "genlab")]
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", self.WORK]
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
            env["TMPDIR"] = str(workdir / ".tmp")
        return env

    def _preexec(self, uid: int | None, runs_as: int | None, cgroup: Cgroup):
        """Limits for the child; ``uid``: become that user here (``runs_as``: the user the
        submission ends up as, here or inside the sandbox)."""
        lim = self.limits
        nproc = None
        if not cgroup.caps_processes:
            nproc = lim.processes if runs_as is not None else _user_process_count() + lim.processes

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

    def run(self, argv: list[str], stdin: bytes = b"", public_refs: Path | None = None,
            slot: int = 0, library: Path | None = None) -> Result:
        """Run ``argv`` (where ``{channel_fd}`` stands for the write end of the result
        channel) with ``stdin`` as its input; nothing outlives the timeout, nothing it
        wrote stays behind. ``library``: a ``genlab`` folder that replaces the library
        (mounted in its place; without the sandbox, first on the import path)."""
        host_work = None if self.sandboxed else Path(tempfile.mkdtemp(prefix="genlab-grading-"))
        workdir = Path(self.WORK) if self.sandboxed else host_work
        env = self.environment(workdir)
        uid = self.uid_for(slot)
        read_end, write_end = os.pipe()
        argv = [a.replace("{channel_fd}", str(write_end)) for a in argv]
        if self.sandboxed:
            if self.drop_inside:
                argv = [sys.executable, "-m", "autograder.drop", str(uid), "--"] + argv
            argv = self._bwrap(public_refs, library) + argv
        else:
            if library is not None:
                env["PYTHONPATH"] = str(Path(library).parent)
            for folder in (env["HOME"], env["TMPDIR"]):
                Path(folder).mkdir(parents=True, exist_ok=True)
            if public_refs is not None:
                shutil.copytree(public_refs, workdir / ".references" / public_refs.name)
            if uid is not None:
                for path in [workdir, *workdir.rglob("*")]:
                    os.chown(path, uid, uid, follow_symlinks=False)
        cgroup = Cgroup(f"genlab-{os.getpid()}-{secrets.token_hex(4)}", self.limits.processes,
                        self.limits.memory_bytes)
        inbox = Inbox(max_bytes=self.limits.disk_bytes)
        try:
            proc = subprocess.Popen(argv, cwd=workdir if host_work else "/", env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    pass_fds=(write_end,),
                                    preexec_fn=self._preexec(None if self.drop_inside else uid, uid, cgroup))
            os.close(write_end)
            readers = [_Capture(proc.stdout, self.limits.stream_bytes),
                       _Capture(proc.stderr, self.limits.stream_bytes),
                       threading.Thread(target=inbox.read_all, args=(read_end,), daemon=True)]
            for reader in readers:
                reader.start()
            threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
            try:
                proc.wait(timeout=self.limits.wall_seconds)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            self._kill(proc, uid, cgroup)
            for reader in readers:
                reader.join(timeout=10)
            result = Result(None if timed_out else proc.returncode, readers[0].text(),
                            readers[1].text(), timed_out, inbox)
        finally:
            cgroup.kill_and_remove()
            os.close(read_end)
            if host_work is not None:
                _remove(host_work)
        return result

    @staticmethod
    def _kill(proc: subprocess.Popen, uid: int | None, cgroup: Cgroup) -> None:
        """End every process of the submission: its session, its cgroup, its user."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cgroup.kill_and_remove()
        if uid is not None:
            _kill_user(uid)
        proc.kill()
        proc.wait()


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):  # the run ended before reading its job
        pass


def _remove(folder: Path) -> None:
    """Remove a work folder whatever the submission did to its permissions."""
    def retry(function, path, _):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
            function(path)
        except OSError:
            pass

    shutil.rmtree(folder, onerror=retry)
