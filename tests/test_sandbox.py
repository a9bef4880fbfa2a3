"""The sandbox a submission runs in: private files invisible, no network, only its own
tmpfs writable (with a quota, nosuid, gone afterwards), output capped, every process
killed at the timeout."""

import shutil
import sys

import pytest

from autograder.sandbox import REPO, Limits, Sandbox
from conftest import assert_no_process

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def run(code: str, tmp_path=None, **limits):
    sandbox = Sandbox(limits=Limits(**limits))
    assert sandbox.sandboxed
    return sandbox.run([sys.executable, "-c", code])


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
print('mine', pathlib.Path('mine.txt').read_text(), os.getcwd())
for place in ('/', '/dev', '/usr', '/root', '/etc'):
    try:
        open(os.path.join(place, 'x'), 'w').close()
        print('writable', place)
    except OSError:
        pass
"""
    result = run(code, tmp_path)
    assert result.stdout.split("\n")[0] == "False False True [] [] True", result.stderr
    assert "read-only" in result.stdout
    assert "mine ok /tmp/work" in result.stdout
    assert "writable" not in result.stdout, "only the sandbox's own /tmp is writable"


def test_a_root_grader_runs_the_submission_as_a_user_of_its_own():
    """Also when the grader's Python lives under root's home (the interpreter is made
    reachable inside the sandbox, and the submission drops to its own user)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("the grader is not root here")
    code = """
import os
print('ids', os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
print('caps', [l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapBnd'))])
"""
    out = run(code).stdout
    uid, euid, gid = (int(x) for x in out.split("ids ")[1].split()[:3])
    assert uid == euid == gid != 0 and uid >= 61000, out
    assert "'0000000000000000', '0000000000000000'" in out, out


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
    result = run(code, tmp_path, wall_seconds=3)  # were the limit ignored, this would block 300 s
    assert result.timed_out
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


def test_one_quota_for_everything_written_nosuid_and_nothing_left_behind():
    """The 6 x 250 MB and setuid-python attacks: one tmpfs for all a submission writes,
    mounted nosuid,nodev, and gone when the sandbox ends (nothing on the host's disk)."""
    import glob

    code = """
import os, shutil, sys
written = 0
try:
    for i in range(6):
        with open(f'big{i}', 'wb') as f:
            for _ in range(25):
                f.write(b'x' * (10 << 20))
                written += 10 << 20
except OSError as exc:
    print('stopped after', written >> 20, 'MiB', type(exc).__name__)
for name in os.listdir('.'):
    os.remove(name)
shutil.copy(sys.executable, 'python-suid'); os.chmod('python-suid', 0o4755)
print('mount', [line.split()[3] for line in open('/proc/mounts') if line.split()[1] in ('/tmp', '/dev/shm')])
"""
    before = set(glob.glob("/tmp/genlab-grading-*"))
    result = run(code, disk_bytes=64 << 20)
    assert "stopped after" in result.stdout, result.stdout + result.stderr
    assert int(result.stdout.split("stopped after")[1].split()[0]) <= 64
    options = result.stdout.split("mount ")[1].splitlines()[0]
    assert options.count("nosuid") == 2 and options.count("nodev") == 2, options
    assert set(glob.glob("/tmp/genlab-grading-*")) == before


def test_output_is_capped_and_the_channel_carries_messages():
    code = """
import os, sys
from autograder import channel
channel.send(int(sys.argv[1]), "status", ended="completed")
os.write(1, b"y" * (8 << 20))
"""
    sandbox = Sandbox(limits=Limits(stream_bytes=1 << 16))
    result = sandbox.run([sys.executable, "-c", code, "{channel_fd}"])
    assert len(result.stdout) < (1 << 16) + 100 and "more bytes not kept" in result.stdout
    assert result.inbox.of_kind("status") == [{"kind": "status", "ended": "completed"}]
