"""Execute one submission's notebook inside the sandbox and report through the channel.

``python -m autograder.execute --channel-fd N`` reads its job (JSON) from standard input:
the sanitized notebook, which cells are graded and which functions each one records, the
inputs of those functions' cases and the calls each must not make. It never reads the
notebook or the inputs from a file the submission could have touched.

Every cell runs even when an earlier one fails; a cell that exceeds its timeout is
interrupted and the next one runs. Just before a graded test cell runs, its functions'
inputs are written to a fresh folder with a random name (and removed after the cell),
and a recorder line is put at the top of the cell; the recorder publishes each case's
outputs as a display message of the cell. The executor takes, per function and case, the
first record that arrives *as an output of that function's own test cell*, and sends it
to the grader at once: nothing a later cell (or another function) does can change it.

Each executed cell (its outputs capped in size), every flag of the grading guard
(``autograder.guard``, which runs inside the kernel before any student code) and the
final status go out through the channel too. This process makes itself non-dumpable
first, so the student's kernel (same user) can neither trace it nor open its files
descriptors through ``/proc``; it can only kill it, which the grader reports.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import secrets
import shutil
import sys
import threading
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from autograder import channel

RECORD_MIME = "application/vnd.genlab.record+json"
KERNEL_NAME = "genlab-grading"
RECORDER_LINE = ("record_outputs = __import__('genlab.checks', fromlist=['Recorder'])"
                 ".Recorder({path!r}, publish=True)  # added by the autograder\n")
PR_SET_DUMPABLE = 4
GUARD_FIELDS = ("event", "detail", "function", "case", "digest", "name")


def make_undumpable() -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class OutputCap:
    """Caps what one notebook's outputs may hold: ``cell_bytes`` of text per cell,
    ``notebook_bytes`` in all; anything past a cap is cut, with a note saying how much."""

    def __init__(self, cell_bytes: int, notebook_bytes: int):
        self.cell_bytes, self.notebook_bytes, self.left = cell_bytes, notebook_bytes, notebook_bytes
        self.cut = 0

    def apply(self, outputs: list) -> list:
        budget = min(self.cell_bytes, self.left)
        kept, cut = [], 0
        for out in outputs:
            size = len(json.dumps(out))
            if size <= budget:
                kept.append(out)
            elif out.get("output_type") == "stream" and budget > 0:
                text = out.get("text", "")[:budget]
                kept.append(nbformat.v4.new_output("stream", name=out["name"], text=text))
                cut, size = cut + size - len(text), len(text)
            else:
                cut, size = cut + size, 0
            budget -= size
            self.left -= size
        if cut:
            self.cut += cut
            kept.append(nbformat.v4.new_output("stream", name="stderr", text=(
                f"\n[autograder: {cut:,} bytes of this cell's output were cut; a cell keeps at "
                f"most {self.cell_bytes:,} bytes, the notebook {self.notebook_bytes:,}]\n")))
        return kept


class Run:
    def __init__(self, job: dict, channel_fd: int):
        self.job = job
        self.fd = channel_fd
        self.nb = nbformat.from_dict(job["notebook"])
        self.graded: dict[str, list[str]] = job["graded"]
        self.cap = OutputCap(job.get("max_cell_output_bytes", 1 << 20),
                             job.get("max_output_bytes", 16 << 20))
        self.sources: dict[int, str] = {}
        self.folders: dict[int, Path] = {}
        self.recorded: set[tuple[str, str]] = set()
        self.current_cell: int | None = None
        self.lock = threading.Lock()

    def send(self, kind: str, **payload) -> None:
        with self.lock:
            channel.send(self.fd, kind, **payload)

    def grade_id(self, cell) -> str | None:
        return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")

    # -- hooks
    def on_cell_start(self, cell, cell_index: int, **_) -> None:
        self.current_cell = cell_index
        functions = self.graded.get(self.grade_id(cell)) if cell.cell_type == "code" else None
        if not functions:
            return
        folder = Path(".rec") / secrets.token_hex(16)
        for function in functions:
            entry = self.job["inputs"][function]
            target = folder / "inputs" / function
            target.mkdir(parents=True, exist_ok=True)
            for name, data in entry["cases"].items():
                (target / f"{name}.npz").write_bytes(base64.b64decode(data))
            (target / "forbidden.json").write_text(json.dumps(entry["forbidden"]))
        Path(".rec").chmod(0o311)  # enter, but not list
        self.folders[cell_index] = folder
        self.sources[cell_index] = cell.source
        cell.source = RECORDER_LINE.format(path=str(folder.resolve())) + cell.source

    def on_cell_executed(self, cell, cell_index: int, **_) -> None:
        self.finish_cell(cell, cell_index)

    def finish_cell(self, cell, cell_index: int) -> None:
        if cell_index in self.sources:
            cell.source = self.sources.pop(cell_index)
        folder = self.folders.pop(cell_index, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        allowed = set(self.graded.get(self.grade_id(cell)) or ())
        outputs = []
        for out in cell.get("outputs", []):
            record = out.get("data", {}).get(RECORD_MIME) if out.get("output_type") == "display_data" else None
            if record is None:
                outputs.append(out)
                continue
            self.take_record(record, allowed, cell_index)
        cell.outputs = self.cap.apply(outputs)
        self.send("cell", index=cell_index, outputs=cell.outputs,
                  execution_count=cell.get("execution_count"))

    def take_record(self, record, allowed: set[str], cell_index: int) -> None:
        if not isinstance(record, dict):
            return
        function, case = record.get("function"), record.get("case")
        if function not in allowed:
            self.send("flag", event="record outside its test cell", cell=cell_index,
                      detail=f"a grading record for `{function}` was published by cell {cell_index}, "
                             "which does not record it; ignored")
            return
        if (function, case) in self.recorded or case not in self.job["inputs"][function]["cases"]:
            return
        self.recorded.add((function, case))
        self.send("record", function=function, case=case, npz=record.get("npz", ""), cell=cell_index)

    def on_notebook_start(self, **_) -> None:
        os.close(self.guard_write)  # the kernel has it; the executor only reads

    # -- the guard's reports, from the kernel
    def read_guard(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self.send("flag", cell=self.current_cell,
                              **{k: str(v)[:500] for k, v in message.items() if k in GUARD_FIELDS})

    def execute(self, cell_timeout: int) -> dict:
        home = Path(os.environ.get("HOME", "."))
        spec_dir = home / ".genlab-kernels" / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "autograder.guard", "-f", "{connection_file}"],
            "display_name": "genlab grading", "language": "python"}))
        os.environ["JUPYTER_PATH"] = str(home / ".genlab-kernels")
        read, self.guard_write = os.pipe()
        os.set_inheritable(self.guard_write, True)
        os.environ["GENLAB_GUARD_FD"] = str(self.guard_write)
        os.environ["GENLAB_GUARD_FORBIDDEN"] = json.dumps(
            {function: entry["forbidden"] for function, entry in self.job["inputs"].items()})
        reader = threading.Thread(target=self.read_guard, args=(read,), daemon=True)
        reader.start()
        client = NotebookClient(
            self.nb, timeout=cell_timeout, kernel_name=KERNEL_NAME, allow_errors=True,
            interrupt_on_timeout=True, record_timing=False,
            on_cell_start=self.on_cell_start, on_cell_executed=self.on_cell_executed,
            on_notebook_start=self.on_notebook_start,
            error_on_timeout={"ename": "CellTimeoutError",
                              "evalue": f"the cell ran past {cell_timeout} s and was interrupted "
                                        "by the autograder; the next cells ran on"},
            resources={"metadata": {"path": "."}},
        )
        status = {"ended": "completed"}
        try:
            client.execute(pass_fds=(self.guard_write,))
        except DeadKernelError as exc:
            status = {"ended": "kernel died", "detail": str(exc)[:300]}
        except CellTimeoutError as exc:
            status = {"ended": "cell timeout", "detail": str(exc)[:300]}
        except Exception as exc:  # a broken notebook must still produce a result
            status = {"ended": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
        reader.join(timeout=5)
        if self.cap.cut:
            status["output_cut_bytes"] = self.cap.cut
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channel-fd", type=int, required=True)
    args = parser.parse_args(argv)
    os.set_inheritable(args.channel_fd, False)
    undumpable = make_undumpable()
    job = json.loads(sys.stdin.buffer.read())
    run = Run(job, args.channel_fd)
    if not undumpable:
        run.send("flag", event="executor", detail="the executor could not make itself non-dumpable")
    status = run.execute(job.get("cell_timeout", 60))
    run.send("status", **status)
    os.close(args.channel_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
