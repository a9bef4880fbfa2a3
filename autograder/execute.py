"""Execute one notebook; run *inside* the sandbox: ``python -m autograder.execute IN OUT``.

Every cell runs even when an earlier one fails; a cell that exceeds its timeout is
interrupted and the next one runs. The partly executed notebook is written after
every cell, so a kill of the whole run keeps what was done. A summary line
(JSON, prefixed ``EXECUTION:``) says how the run ended.
"""

from __future__ import annotations

import argparse
import json
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("--cell-timeout", type=int, default=60)
    parser.add_argument("--kernel", default="python3")
    args = parser.parse_args(argv)

    nb = nbformat.read(args.notebook, as_version=4)

    def save(**_):
        nbformat.write(nb, args.output)

    client = NotebookClient(
        nb, timeout=args.cell_timeout, kernel_name=args.kernel, allow_errors=True,
        interrupt_on_timeout=True, record_timing=False, on_cell_executed=save,
        error_on_timeout={"ename": "CellTimeoutError",
                          "evalue": f"the cell ran past {args.cell_timeout} s and was interrupted "
                                    "by the autograder; the next cells ran on"},
        resources={"metadata": {"path": "."}},
    )
    status = {"ended": "completed"}
    try:
        client.execute()
    except DeadKernelError as exc:
        status = {"ended": "kernel died", "detail": str(exc)[:300]}
    except CellTimeoutError as exc:
        status = {"ended": "cell timeout", "detail": str(exc)[:300]}
    except Exception as exc:  # a broken notebook must still produce a result
        status = {"ended": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    save()
    print("EXECUTION:" + json.dumps(status), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
