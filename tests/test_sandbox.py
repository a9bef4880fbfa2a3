"""The sandbox a submission runs in: private files invisible, no network, only its own
folder writable, every process killed at the timeout."""

import shutil
import sys
import time

import pytest

from autograder.sandbox import REPO, Limits, Sandbox
from conftest import assert_no_process

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def run(code: str, tmp_path, **limits):
    sandbox = Sandbox(limits=Limits(**limits))
    assert sandbox.sandboxed
    return sandbox.run([sys.executable, "-c", code], tmp_path)


def test_private_files_are_invisible_and_repo_is_read_only(tmp_path):
    code = f"""
import os, pathlib
repo = pathlib.Path({str(REPO)!r})
print((repo / 'solutions').exists(), (repo / '.git').exists(), (repo / 'autograder' / 'specs').exists(),
      sorted(os.listdir(repo / 'autograder' / 'specs')), sorted(os.listdir(repo / 'autograder' / 'references')),
      (repo / 'lib' / 'genlab').is_dir())
try:
    (repo / 'lib' / 'genlab' / 'x.py').write_text('x')
    print('wrote')
except OSError:
    print('read-only')
pathlib.Path('mine.txt').write_text('ok')
"""
    result = run(code, tmp_path)
    assert result.stdout.split("\n")[0] == "False False True [] [] True", result.stderr
    assert "read-only" in result.stdout
    assert (tmp_path / "mine.txt").read_text() == "ok"


def test_no_network_not_even_the_hosts_loopback(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = f"""
import socket
s = socket.socket(); s.settimeout(2)
print('refused', s.connect_ex(('127.0.0.1', {port})) != 0)
"""
    try:
        assert "refused True" in run(code, tmp_path).stdout
        probe = socket.create_connection(("127.0.0.1", port), timeout=2)  # reachable from outside
        probe.close()
    finally:
        listener.close()


def test_timeout_kills_every_process(tmp_path):
    code = """
import subprocess, time
subprocess.Popen(['sleep', '300'])
open('started', 'w').close()
time.sleep(300)
"""
    start = time.perf_counter()
    result = run(code, tmp_path, wall_seconds=3)
    assert result.timed_out and time.perf_counter() - start < 20
    assert (tmp_path / "started").exists()
    assert_no_process("sleep 300")


def test_process_cap(tmp_path):
    code = """
import subprocess
procs = []
try:
    for i in range(200):
        procs.append(subprocess.Popen(['sleep', '30']))
    print('spawned all')
except OSError as exc:
    print('capped after', len(procs))
"""
    result = run(code, tmp_path, processes=40)
    assert "capped after" in result.stdout, result.stdout + result.stderr
    assert int(result.stdout.split()[-1]) < 40


def test_memory_cap(tmp_path):
    result = run("x = bytearray(3 << 30); print('allocated')", tmp_path, memory_bytes=1 << 30)
    assert "allocated" not in result.stdout and "MemoryError" in result.stderr
