"""The sandbox that runs model-written code: every hostile program gets the right verdict, and nothing
outside the sandbox changes (files, processes, the environment, the harness itself)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from wmss.errors import ConfigError
from wmss.evaluation.sandbox import (
    CONSENT_KEY,
    LAUNCHER,
    SANDBOX_UID_BASE,
    SandboxLimits,
    require_consent,
    run_program,
    run_programs,
)

LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=1024, max_processes=16)
SECRET = "wmss-test-secret-do-not-leak"


def _sandbox_processes() -> list[int]:
    """Live processes of a sandbox: running under a sandbox user id (root), or forked from the launcher."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{name}/cmdline", "rb") as f:
                launched = LAUNCHER.encode() in f.read()
        except OSError:
            continue
        uid = int(fields["Uid"].split()[0])
        own_user = SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + 2**23
        if (own_user or launched) and not fields["State"].strip().startswith("Z"):
            found.append(int(name))
    return found


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """Files, a home folder, a secret and a process outside the sandbox; checked unchanged afterwards."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "precious.txt").write_text("keep me")
    (work / "data.txt").write_text("keep me too")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WMSS_TEST_SECRET", SECRET)
    monkeypatch.chdir(work)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    yield {"home": home, "work": work}
    try:
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, "files outside the sandbox changed"
        assert (home / "precious.txt").read_text() == "keep me"
        assert (work / "data.txt").read_text() == "keep me too"
        assert bystander.poll() is None, "a process outside the sandbox was killed"
        assert _sandbox_processes() == [], "processes of the sandbox outlived it"
    finally:
        bystander.kill()
        bystander.wait()


NO_WRITE_GUARD = "neither root nor a mount namespace here: the program can write where wmss can"


def _needs_write_guard(execution) -> None:
    if not (execution.own_user or execution.read_only_outside):
        pytest.skip(NO_WRITE_GUARD)


def test_a_correct_program_passes(outside):
    run = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('done')\n", LIMITS)
    assert run.passed and run.status == "passed" and run.stdout == "done\n"


def test_a_failed_assert_fails(outside):
    run = run_program("assert 1 + 1 == 3, 'arithmetic'\n", LIMITS)
    assert not run.passed and run.status == "failed" and "AssertionError: arithmetic" in run.stderr


def test_an_infinite_loop_times_out(outside):
    start = time.monotonic()
    run = run_program("while True:\n    pass\n", LIMITS)
    assert run.status == "timeout" and not run.passed
    assert time.monotonic() - start < LIMITS.timeout_s + 3


def test_allocating_10_gb_fails(outside):
    run = run_program("block = bytearray(10 * 2**30)\n", LIMITS)
    assert not run.passed and "MemoryError" in run.stderr


def test_a_fork_bomb_is_contained_and_killed(outside):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n        os.setsid()\n    except OSError:\n        pass\n"  # noqa: E501
    run = run_program(bomb, LIMITS)
    assert not run.passed and run.status == "timeout"
    if not (run.own_user or run.pid_namespace):
        pytest.skip("no PID namespace nor own user id here: processes that left the group cannot be found")
    time.sleep(0.2)  # the kernel kills the rest of a PID namespace when its init ends
    assert _sandbox_processes() == []


EARLY_EXITS = ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"]


@pytest.mark.parametrize("exit_call", EARLY_EXITS)
def test_exiting_early_before_the_asserts_fails(outside, exit_call):
    run = run_program(f"def f():\n    return 1\n\n{exit_call}\nassert f() == 2\n", LIMITS)
    assert not run.passed and run.status == "failed"


def test_deleting_files_in_home_and_the_working_directory_touches_only_the_sandbox(outside):
    program = (
        "import os, shutil\n"
        "assert os.path.expanduser('~') == os.getcwd()\n"
        "for name in os.listdir('.'):\n"
        "    os.remove(name)\n"
        "shutil.rmtree(os.path.expanduser('~'), ignore_errors=True)\n"
        f"for path in [{str(outside['home'] / 'precious.txt')!r}, {str(outside['work'] / 'data.txt')!r}]:\n"
        "    try:\n"
        "        os.remove(path)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    run = run_program(program, LIMITS)
    assert run.passed  # it ran to its end; the fixture checks that the files outside are still there
    _needs_write_guard(run)


@pytest.mark.parametrize("where", ["work", "tmp"])
def test_writing_outside_the_sandbox_fails(outside, where, tmp_path_factory):
    target = outside["work"] / "planted.txt" if where == "work" else tmp_path_factory.getbasetemp() / "x.txt"
    run = run_program(f"open({str(target)!r}, 'w').write('planted')\n", LIMITS)
    if not (run.own_user or run.read_only_outside):
        target.unlink(missing_ok=True)
        pytest.skip(NO_WRITE_GUARD)
    assert not run.passed and ("Permission denied" in run.stderr or "Read-only file system" in run.stderr)
    assert not target.exists()


def test_a_socket_cannot_reach_the_host(outside):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        connect = f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')"
        run = run_program(f"import socket\n{connect}\n", LIMITS)
        if not run.network_cut:
            pytest.skip("this OS does not let wmss cut the network (no network namespace)")
        assert not run.passed and "OSError" in run.stderr
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_the_environment_holds_no_secret(outside):
    run = run_program(
        "import os\nprint(sorted(os.environ))\nassert 'WMSS_TEST_SECRET' not in os.environ\n"
        "assert not any('TOKEN' in k or 'KEY' in k or 'SECRET' in k for k in os.environ)\n",
        LIMITS,
    )
    assert run.passed and SECRET not in run.stdout
    assert os.environ["WMSS_TEST_SECRET"] == SECRET  # the harness's own environment is untouched


def test_printing_100_mb_keeps_only_the_cap(outside):
    start = time.monotonic()
    run = run_program("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)\n", LIMITS)
    assert len(run.stdout) == LIMITS.max_output_bytes and set(run.stdout) == {"x"}
    assert time.monotonic() - start < LIMITS.timeout_s + 3


@pytest.mark.parametrize(
    "tamper",
    [
        "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})",
        "import os\nos._exit = lambda code=0: None\nos.write = lambda fd, data: len(data)",
        "import atexit, os\natexit.register(os._exit, 0)",
        "import sys\nsys.excepthook = lambda *args: None\nsys.stderr = open('/dev/null', 'w')",
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32 + b'\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)",
    ],
    ids=["assert", "os-functions", "atexit", "excepthook", "forged-token"],
)
def test_tampering_with_assert_or_the_harness_does_not_pass(outside, tamper):
    run = run_program(f"{tamper}\nassert 1 == 2\n", LIMITS)
    assert not run.passed


@pytest.mark.parametrize("limit", ["", "import sys\nsys.setrecursionlimit(10**6)\n"], ids=["default", "high"])
def test_deep_recursion_fails(outside, limit):
    run = run_program(f"{limit}def down(n):\n    return down(n + 1)\n\ndown(0)\n", LIMITS)
    assert not run.passed and run.status in ("failed", "killed", "timeout")


def test_programs_run_in_parallel_in_order(outside):
    programs = [f"import time\ntime.sleep(0.3)\nassert {i} % 2 == 0\n" for i in range(6)]
    runs = run_programs(programs, LIMITS, workers=6)
    assert [r.passed for r in runs] == [i % 2 == 0 for i in range(6)]


def test_running_code_needs_consent():
    with pytest.raises(ConfigError, match=CONSENT_KEY.replace(".", r"\.")):
        require_consent(False)
    require_consent(True)
