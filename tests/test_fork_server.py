"""The test suite's fork server (runner.fork_server) must not change what a test sees of an `aurora-sync` process:
the same output and exit status as a cold start, signals passed on, and the command gone the moment the script is
killed, as a `kill -9` of a real process would leave it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    path = str(tmp_path / "s")
    process = subprocess.Popen([sys.executable, "-m", "runner.fork_server", path], stdin=subprocess.PIPE,
                               cwd=PROJECT_ROOT)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        assert time.monotonic() < deadline and process.poll() is None, "the fork server did not start"
        time.sleep(0.05)
    yield process, path
    assert process.stdin is not None
    process.stdin.close()
    process.wait(10)


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a command connecting to it waits."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def env_for(path: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AURORA_SYNC_FORK_SERVER"}
    if path:
        env["AURORA_SYNC_FORK_SERVER"] = path
    env.update(extra)
    return env


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_output_and_exit_status_are_a_cold_starts(server: tuple[subprocess.Popen[bytes], str],
                                                  tmp_path: Path) -> None:
    _, path = server
    for args in (["--help"], ["run", "--mode", "bogus"], ["--json-logs", "run", "--pipeline", "no_such_pipeline"]):
        forked = subprocess.run([AURORA_SYNC, *args], env=env_for(path), cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        cold = subprocess.run([AURORA_SYNC, *args], env=env_for(None), cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert (forked.returncode, forked.stdout) == (cold.returncode, cold.stdout), args
        strip = [line for line in forked.stderr.splitlines() if '"ts"' not in line]  # JSON lines carry a time
        assert strip == [line for line in cold.stderr.splitlines() if '"ts"' not in line], args


def print_sys_path(_argv: list[str]) -> int:
    """An entry for `delegate`: what a command sees of sys.path."""
    print("\n".join(sys.path))
    return 0


SHOW_PATH = ("import sys; from runner.fork_server import delegate; "
             "code = delegate(sys.argv, entry='tests.test_fork_server:print_sys_path'); sys.exit(97 if code is None "
             "else code)")
COLD_PATH = "import sys; from tests.test_fork_server import print_sys_path; print_sys_path([])"


def test_a_pythonpath_the_server_imports_from_is_served_with_a_cold_starts_sys_path(
        server: tuple[subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    """The race harness starts `python -m local.fakesnow_client` from its work directory with the project root on
    PYTHONPATH: served (97 would mean it was refused, and ran cold), with the same sys.path as a cold start."""
    _, path = server
    env = env_for(path, PYTHONPATH=str(PROJECT_ROOT))
    forked = subprocess.run([sys.executable, "-c", SHOW_PATH], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    cold = subprocess.run([sys.executable, "-c", COLD_PATH], env=env_for(None, PYTHONPATH=str(PROJECT_ROOT)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert forked.returncode == 0, forked.stderr
    assert forked.stdout == cold.stdout and str(PROJECT_ROOT) in cold.stdout.splitlines()


def test_a_pythonpath_with_a_directory_the_server_does_not_import_from_is_refused(
        server: tuple[subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    _, path = server
    for pythonpath in (f"{PROJECT_ROOT}{os.pathsep}{tmp_path}", f"{PROJECT_ROOT}{os.pathsep}"):
        refused = subprocess.run([sys.executable, "-c", SHOW_PATH], env=env_for(path, PYTHONPATH=pythonpath),
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 97, (pythonpath, refused.stdout, refused.stderr)


def test_kill_9_of_the_script_kills_the_command(server: tuple[subprocess.Popen[bytes], str], silent_port: int,
                                                tmp_path: Path) -> None:
    process, path = server
    dsn = f"postgresql://u:p@127.0.0.1:{silent_port}/db?connect_timeout=60"
    script = subprocess.Popen([AURORA_SYNC, "--json-logs", "run"], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              env=env_for(path, SOURCES__POSTGRES__CREDENTIALS=dsn, DLT_DATA_DIR=str(tmp_path)))
    deadline = time.monotonic() + 60
    while not children(process.pid):
        assert time.monotonic() < deadline and script.poll() is None, "no command was forked"
        time.sleep(0.05)
    [command] = children(process.pid)
    time.sleep(1)  # connecting, waiting on the silent port
    script.kill()
    assert script.wait(10) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while command in children(process.pid):
        assert time.monotonic() < deadline, "the command outlived its script"
        time.sleep(0.01)


def test_signals_reach_the_command(server: tuple[subprocess.Popen[bytes], str], silent_port: int,
                                   tmp_path: Path) -> None:
    """SIGTERM ends a run waiting on its source as it ends a cold one: at once, and with the same status."""
    _, path = server
    dsn = f"postgresql://u:p@127.0.0.1:{silent_port}/db?connect_timeout=60"
    ended = []
    for server_path in (path, None):
        script = subprocess.Popen([AURORA_SYNC, "--json-logs", "run"], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True,
                                  env=env_for(server_path, SOURCES__POSTGRES__CREDENTIALS=dsn,
                                              DLT_DATA_DIR=str(tmp_path / str(server_path is None))))
        deadline = time.monotonic() + 60
        assert script.stderr is not None
        while "run started" not in script.stderr.readline():  # the command is running, cold start included
            assert time.monotonic() < deadline and script.poll() is None, "the run did not start"
        script.send_signal(signal.SIGTERM)
        script.communicate(timeout=10)  # a run retrying its connection would take a minute
        ended.append(script.returncode)
    assert ended == [-signal.SIGTERM, -signal.SIGTERM], ended
