"""Become the submission's own unprivileged user inside the sandbox, then run the command:
``python -m autograder.drop UID -- ARGV...``.

Used when the grader runs as root and its Python lives where no other user may read (a
private prefix under root's home): bubblewrap then builds the sandbox with root's rights,
and this step, its first command, drops them for good (the capability bounding set
emptied, every id set to ``UID``, no supplementary groups) before anything of the
submission runs. The submission's processes then belong to a user that owns nothing of
the grader's, on the host as in the sandbox.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_CAPBSET_DROP = 24
LAST_CAPABILITY = 63


def drop(uid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in range(LAST_CAPABILITY + 1):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)  # unknown ones fail: fine
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit(f"could not become user {uid}")


def main() -> None:
    uid, separator, *argv = sys.argv[1:]
    if separator != "--" or not argv:
        raise SystemExit(__doc__)
    drop(int(uid))
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
