"""The grading guard: the first code of the student's kernel during grading.

``python -m autograder.guard -f CONNECTION_FILE`` installs an audit hook (PEP 578), then
starts the ordinary IPython kernel. An audit hook cannot be removed or replaced from
Python, so what it does holds whatever the notebook's code does afterwards:

* **It attests records.** The autograder's recorder (``genlab.checks.Recorder``) raises an
  audit event for each case it records, with the sha256 of the outputs it publishes. The
  hook checks that the event comes from the recorder's own code (the code object it
  captured before any student code ran) and reports it at once through a pipe to the
  executor, outside the kernel. The grader accepts a published record only with a
  matching attestation from the same test cell: a replaced or re-implemented recorder
  records nothing.
* **It reports forbidden calls the moment they happen.** The recorder's call tracer
  raises an event for each forbidden call it sees; the hook passes it on at once, so
  clearing or patching anything afterwards changes nothing.
* **It blocks, and reports, introspection from the notebook's code** that could reach the
  recorder or switch the tracer off: ``sys.setprofile``/``sys.settrace`` (except the
  recorder's own), frames (``sys._getframe``, ``sys._current_frames``, ``tb_frame`` and
  generator frames, also through ``inspect``/``traceback`` helpers that hand frames out),
  ``gc.get_objects``/``get_referrers``/``get_referents``, new code objects
  (``code.replace``, copies of other code under a new name), compiling code under a file
  name of the library, ``ctypes``, setting ``__code__``/``__defaults__`` of functions or
  attributes of the recorder's classes, and ``/proc/<pid>/mem``; while a function is
  being recorded, also starting processes.

"The notebook's code" is any frame whose file lies outside the Python installation,
the virtual environment, ``lib/`` and ``autograder/``: notebook cells, ``exec`` of
strings, files the notebook wrote.

* **It traces new threads.** The call tracer is per thread; every thread started while a
  function is recorded (``threading``, ``concurrent.futures``, ``_thread``) runs under the
  same tracer, so a forbidden call made there is reported too.

What it cannot see: work handed to a thread that already existed when the recording
began. Such threads are reported (a thread started by the notebook, alive when a
function's recording begins, costs that function its points); the kernel's own threads
(ipykernel, IPython, zmq, tornado, tqdm's monitor) are not counted.
"""

from __future__ import annotations

import _thread
import hashlib
import inspect
import json
import os
import sys
import threading
import types
from pathlib import Path

import genlab
import torch

REPO = Path(__file__).resolve().parents[1]
GUARD_FD = "GENLAB_GUARD_FD"
GUARD_FORBIDDEN = "GENLAB_GUARD_FORBIDDEN"

BLOCKED_FROM_NOTEBOOK = frozenset({
    "sys._getframe", "sys._current_frames", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "code.__new__", "sys.setprofile", "sys.settrace", "marshal.loads",
})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
FUNCTION_ATTRIBUTES = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__globals__"})
PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn",
                            "os.exec", "os.system", "os.spawn", "pty.spawn"})
RECORD_EVENTS = frozenset({"genlab.record.begin", "genlab.record.output", "genlab.record.end",
                           "genlab.forbidden"})
# events with paths: the recorder's folder (".rec") is the recorder's alone
PATH_EVENTS = frozenset({"open", "os.listdir", "os.scandir", "os.chmod", "os.chown", "os.rename",
                         "os.remove", "os.rmdir", "os.symlink", "os.link", "os.chdir",
                         "os.truncate", "os.utime", "os.mkdir", "shutil.rmtree", "shutil.copytree",
                         "shutil.move", "glob.glob", "os.walk", "os.fwalk"})
RECORDER_FOLDER = ".rec"
WATCHED = (BLOCKED_FROM_NOTEBOOK | RECORD_EVENTS | PROCESS_EVENTS | PATH_EVENTS
           | {"object.__getattr__", "object.__setattr__", "object.__delattr__", "compile"})
# helpers that hand frames to their caller: the caller is who asked
# threads of the kernel itself and of common libraries, by the file their code comes from
KERNEL_THREAD_PACKAGES = ("ipykernel", "IPython", "zmq", "tornado", "jupyter_client", "tqdm",
                          "traitlets", "debugpy")
FRAME_HELPERS = {"inspect.py": {"currentframe", "stack", "trace", "getouterframes", "getinnerframes"},
                 "traceback.py": {"walk_stack", "walk_tb"}}


def _trusted_roots() -> tuple[str, ...]:
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    roots |= {str(REPO / "lib" / "genlab"), str(REPO / "autograder")}
    roots.add(os.path.dirname(os.path.abspath(genlab.__file__)))  # the grading build, without the sandbox
    roots |= {p for p in (sys.prefix, sys.base_prefix)}
    return tuple(sorted(r.rstrip("/") + "/" for r in roots)) + ("<frozen ",)


def install(fd: int, forbidden: dict[str, list[str]] | None = None) -> None:
    """Install the hook; it reports on ``fd`` (a pipe to the executor). ``forbidden``: the
    calls each graded function must not make, as the grader sent them (the recorder's own
    copy, read in the kernel, could have been tampered with)."""
    from genlab import checks

    write, fstat, exit_now, getframe = os.write, os.fstat, os._exit, sys._getframe
    current_frames, sha256, dumps = sys._current_frames, hashlib.sha256, json.dumps
    identity = (fstat(fd).st_dev, fstat(fd).st_ino)
    trusted = _trusted_roots()
    record_code = checks.Recorder.__call__.__code__
    tracer_codes = {checks.CallTracer.__enter__.__code__, checks.CallTracer.__exit__.__code__}
    profile_code = checks.CallTracer._profile.__code__
    hit_codes = {profile_code, checks._TorchCallWatch.__torch_function__.__code__,
                 checks.CallTracer.__exit__.__code__}
    tracer_class, profile_function = checks.CallTracer, checks.CallTracer._profile
    trusted_names = {f: tuple(sorted(n)) for f, n in (forbidden or {}).items()}
    protected = {id(x) for x in (checks.Recorder, checks.CallTracer, checks.Recorder.__call__,
                                 checks.CallTracer.__enter__, checks.CallTracer.__exit__,
                                 checks.CallTracer._profile, checks.CallTracer.__init__,
                                 checks._TorchCallWatch, checks._TorchCallWatch.__torch_function__)}
    watches: dict[tuple, tuple] = {}  # forbidden names -> the real tracer's tables

    def tables(names: tuple) -> tuple:
        if names not in watches:
            reference = tracer_class(list(names))
            watches[names] = (reference._codes, reference._builtins)
        return watches[names]

    for names in trusted_names.values():  # resolved now, before any student code can swap them
        tables(names)
    local = threading.local()
    recording: list[dict] = []  # the functions being recorded, innermost last

    def current() -> str | None:
        return recording[-1]["function"] if recording else None

    def report(**message) -> None:
        try:
            st = fstat(fd)
            same = (st.st_dev, st.st_ino) == identity
        except OSError:
            same = False
        if not same:  # the notebook closed or replaced the guard's pipe: stop the kernel
            exit_now(86)
        data = (dumps(message) + "\n").encode()
        while data:
            data = data[write(fd, data):]

    def exact(value):
        """A str or bytes argument as a plain str/bytes: a subclass's methods would run the
        notebook's code inside the hook."""
        if isinstance(value, str):
            return str.__getitem__(value, slice(None))
        if isinstance(value, bytes):
            return bytes.__getitem__(value, slice(None))
        return ""

    def untrusted(frame) -> bool:
        return not frame.f_code.co_filename.startswith(trusted)

    def nearest_notebook(frame, past_recorder: bool = True):
        """The notebook's frame nearest on the stack (None: none, or with ``past_recorder``
        False, none nearer than the recorder's own code)."""
        while frame is not None:
            if frame.f_code is record_code and not past_recorder:
                return None
            if untrusted(frame):
                return frame
            frame = frame.f_back
        return None

    def notebook_on_stack(frame) -> bool:
        return nearest_notebook(frame) is not None

    def asker(frame):
        """The frame that asked: past the stdlib helpers that hand frames back."""
        while frame is not None:
            name = os.path.basename(frame.f_code.co_filename)
            if frame.f_code.co_name in FRAME_HELPERS.get(name, ()) and not untrusted(frame):
                frame = frame.f_back
                continue
            return frame
        return None

    def where(frame) -> str:
        return f"{frame.f_code.co_filename}, line {frame.f_lineno}" if frame else "unknown"

    def block(event: str, frame, why: str):
        detail = f"{event} from your code ({where(frame)}): {why}"
        report(event="blocked", detail=detail, function=current())
        raise PermissionError(f"{event} is not allowed while grading: {why}")

    def student_threads() -> list[str]:
        """Threads other than this one that run the notebook's code, or that the notebook
        started (anything but the kernel's and its libraries' own threads)."""
        me, found = threading.get_ident(), []
        for thread in threading.enumerate():  # read without running any of the thread's code
            state = vars(thread)
            if state.get("_ident") in (me, None) or thread is threading.main_thread():
                continue
            target = state.get("_target")
            if isinstance(target, types.MethodType):  # ipykernel's threads run bound methods
                target = target.__func__
            code = target.__code__ if isinstance(target, types.FunctionType) else None
            run = inspect.getattr_static(type(thread), "run", None)
            if code is None and isinstance(run, types.FunctionType):
                code = run.__code__
            path = code.co_filename if code else ""
            if not any(f"/{p}/" in path for p in KERNEL_THREAD_PACKAGES):
                found.append(f"thread {exact(state.get('_name'))!r}")
        for ident, frame in current_frames().items():
            if ident != me and notebook_on_stack(frame):
                found.append(where(frame))
        return found

    start_new_thread = _thread.start_new_thread
    push_function_mode = torch._C._push_on_torch_function_stack
    active = []  # the profile functions of the tracers now running, innermost last

    def traced_start_new_thread(function, args, kwargs=None):
        """Every new thread runs under the tracer that is active when it starts."""
        profile = active[-1] if active else None
        if profile is None:  # no tracer running (or not the real one: nothing to carry over)
            return start_new_thread(function, args, kwargs or {})

        watch = vars(profile.__self__).get("_watch")  # its torch function mode, if any

        def run(*a, **k):
            sys.setprofile(profile)
            if watch is not None:  # torch's mode stack is per thread
                push_function_mode(watch)
            return function(*a, **k)
        return start_new_thread(run, args, kwargs or {})

    _thread.start_new_thread = traced_start_new_thread
    threading._start_new_thread = traced_start_new_thread
    runner_code = next(c for c in traced_start_new_thread.__code__.co_consts
                       if isinstance(c, types.CodeType) and c.co_name == "run")
    real_getprofile = sys.getprofile

    def getprofile():
        """The notebook never gets the tracer (it could clear its tables)."""
        return None if notebook_on_stack(getframe(1)) else real_getprofile()

    sys.getprofile = getprofile

    def check_threads(function: str) -> None:
        threads = student_threads()
        if threads:
            report(event="thread", function=function, detail=f"a thread running your code "
                   f"({threads[0]}) was alive while `{function}` was recorded: grading cannot "
                   "see what it computed")

    def handle(event: str, args: tuple, caller) -> None:
        if event in RECORD_EVENTS:
            if event == "genlab.forbidden":
                if caller.f_code in hit_codes:
                    report(event="forbidden", name=exact(args[0]), function=current())
                return
            if caller.f_code is not record_code:
                report(event="forged record", detail=f"{event} raised by {where(caller)}, not by "
                       "the autograder's recorder", function=exact(args[0]) if args else None)
                return
            function = exact(args[0])
            if event == "genlab.record.begin":
                names = trusted_names.get(function, tuple(sorted(exact(n) for n in args[1])))
                codes, builtins = tables(names)
                runs_code = len(args) > 2 and args[2] is True  # False: no function to run
                recording.append({"function": function, "watch": runs_code and bool(codes or builtins),
                                  "tables": (codes, builtins), "traced": False})
                check_threads(function)
            elif event == "genlab.record.output" and recording:
                state = recording[-1]
                if state["watch"] and not state["traced"]:
                    report(event="untraced", function=function, detail=f"`{function}` ran without "
                           "the autograder's call tracer (it was replaced or switched off)")
                else:
                    report(event="attest", function=function, case=exact(args[1]), digest=exact(args[2]))
                state["traced"] = False
            elif event == "genlab.record.end" and recording:
                recording.pop()
            return
        if event in ("sys.setprofile", "sys.settrace"):
            if caller.f_code in tracer_codes and caller.f_back is not None \
                    and caller.f_back.f_code is record_code:
                if event == "sys.setprofile" and caller.f_code.co_name == "__enter__":
                    tracer = caller.f_locals.get("self")  # (read without running its code)
                    genuine = (type(tracer) is tracer_class and inspect.getattr_static(
                        tracer_class, "_profile", None) is profile_function)
                    state = vars(tracer) if genuine else {}
                    if recording and genuine and \
                            (state.get("_codes"), state.get("_builtins")) == recording[-1]["tables"]:
                        recording[-1]["traced"] = True
                    active.append(types.MethodType(profile_function, tracer) if genuine else None)
                elif event == "sys.setprofile" and active:
                    active.pop()
                return
            if caller.f_code is runner_code and not notebook_on_stack(caller):
                return  # a thread started while recording takes on the tracer
            if recording or notebook_on_stack(caller):
                block(event, nearest_notebook(caller) or caller,
                      "it would switch off the autograder's call tracer")
            return
        if event in PROCESS_EVENTS:
            if recording and notebook_on_stack(caller):
                block(event, caller, f"no process may start while `{current()}` is recorded")
            return
        if event in PATH_EVENTS:
            # str and bytes only: a path object's __fspath__ would run the notebook's code here
            paths = [os.fsdecode(exact(a)) for a in args if isinstance(a, (str, bytes))]
            proc = event == "open" and paths and paths[0].startswith("/proc/") \
                and paths[0].endswith(("/mem", "/environ"))
            if proc:
                who = asker(caller)
                if who is not None and untrusted(who):
                    block(event, who, "another process's memory is not yours to read while grading")
                return
            who = nearest_notebook(caller, past_recorder=False)
            if who is not None and any(RECORDER_FOLDER in p.split("/") for p in paths):
                block(event, who, "the recorder's folder is the autograder's alone")
            return
        if event == "object.__getattr__":
            if exact(args[1]) not in FRAME_ATTRIBUTES:
                return
        elif event in ("object.__setattr__", "object.__delattr__"):
            target, name = args[0], exact(args[1])
            if not (id(target) in protected or (name in FUNCTION_ATTRIBUTES and callable(target))):
                return
        elif event == "compile":
            filename = exact(args[1]) if len(args) > 1 else ""
            if not filename.startswith(trusted):
                return
        elif event not in BLOCKED_FROM_NOTEBOOK and not event.startswith("ctypes."):
            return
        who = asker(caller)
        if event.startswith("ctypes."):  # past ctypes' own Python wrappers (CDLL, ...)
            while who is not None and "/ctypes/" in who.f_code.co_filename and not untrusted(who):
                who = who.f_back
        if who is not None and untrusted(who):
            block(event, who, "code that inspects the autograder's frames, objects or code "
                              "could change what is recorded")

    def hook(event: str, args: tuple) -> None:
        if event not in WATCHED and not event.startswith("ctypes."):
            return
        if getattr(local, "busy", False):
            return
        local.busy = True
        try:
            caller = getframe(1)
            handle(event, args, caller)
        finally:
            local.busy = False

    sys.addaudithook(hook)


def digest(npz_base64: str) -> str:
    """What the recorder's audit event carries for one published record."""
    return hashlib.sha256(npz_base64.encode()).hexdigest()


def main() -> None:
    fd = os.environ.pop(GUARD_FD, None)
    forbidden = json.loads(os.environ.pop(GUARD_FORBIDDEN, "{}"))
    if fd is not None:
        install(int(fd), forbidden)
    from ipykernel import kernelapp

    sys.argv = [sys.argv[0], *sys.argv[1:]]
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
