"""For the test suite only: `aurora-sync` processes forked from one that has already imported everything.

`make test` starts hundreds of `aurora-sync` processes (a race scenario alone 40-50), and each spent about a second
of CPU importing dlt, SQLAlchemy, pyarrow and DuckDB before it did anything: on a 2-core machine the suite is
CPU-bound, so that second was paid again and again (issue 17). With `AURORA_SYNC_FORK_SERVER` naming the socket
of a running server (`python -m runner.fork_server SOCKET`, started per pytest worker by tests/conftest.py), the
`aurora-sync` script passes its arguments, environment, working directory, umask and standard streams to the
server, which forks its pre-imported process to run the same `runner.cli.main`.

The script stays the process the test sees:
- its exit status is the command's, and it dies of the signal that killed the command;
- signals sent to it (TERM, INT, HUP, QUIT, USR1, USR2) are passed on to the command;
- when it dies (`kill -9`), the command kills itself at once (a thread waits for the socket to close);
- without a server (or with other `PYTHON*` settings than the server's, or a PYTHONPATH naming a directory the
  server does not import from) it runs the command itself; a PYTHONPATH of directories the server has on its path
  (the race harness's project root) is served, with the sys.path a cold start would have.

What is shared with the server, and not with a fresh interpreter: the imported modules and the hash seed. No
command reads its environment at import (the server checks that no dlt context exists before it forks). Outside
the tests nothing sets the variable, and `aurora-sync` imports nothing here (the test-only scripts,
`local.fakesnow_client` and `tests.cdc.cdc_worker`, ask through `delegate_or_run`).
"""

from __future__ import annotations

import array
import atexit
import contextlib
import importlib
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

ENV = "AURORA_SYNC_FORK_SERVER"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_LENGTH = struct.Struct("!I")
_STATUS = struct.Struct("!i")


def _python_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON") and k != "PYTHONPATH"}


def _pythonpath(env: dict[str, str], cwd: str) -> list[str] | None:
    """PYTHONPATH's entries as the interpreter puts them on sys.path (absolute), or None for one it would not
    (an empty entry)."""
    entries = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
    if not all(entries):
        return None
    return [os.path.abspath(os.path.join(cwd, entry)) for entry in entries]


# sys.path as this interpreter started: [its directory, *its PYTHONPATH, *the standard library and site-packages]
_STARTED_PATH = list(sys.path)
_STARTED_PYTHONPATH = _pythonpath(dict(os.environ), os.getcwd()) or []


# the script's side


def delegate(argv: list[str], entry: str = "runner.cli:main") -> int | None:
    """Run `entry(argv[1:])` in a process forked by the server; its exit status, or None when there is no server
    to ask (the caller then runs the command itself). `entry`: `module:function`, which returns the exit code."""
    path = os.environ.get(ENV, "")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    streams = [fd for fd in (0, 1, 2) if _is_open(fd)]
    umask = os.umask(0)
    os.umask(umask)
    request = json.dumps({"argv": argv, "entry": entry, "path0": sys.path[0], "env": dict(os.environ),
                          "cwd": os.getcwd(), "umask": umask, "streams": streams}).encode()
    conn.sendmsg([_LENGTH.pack(len(request))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", streams))])
    conn.sendall(request)
    if conn.recv(1) != b"+":  # the server would not run it (other PYTHON* settings)
        conn.close()
        return None
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, _frame: conn.sendall(bytes([signum])))
    status = _recv_exactly(conn, _STATUS.size)
    if status is None:  # the server went away: the command died with it
        return 1
    (wait_status,) = _STATUS.unpack(status)
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        if signum != signal.SIGKILL:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return os.waitstatus_to_exitcode(wait_status)


def delegate_or_run(entry: str, main: Callable[[list[str]], int]) -> int:
    """A test script's exit status: `entry` (which names `main`) in a process the server forks, when
    AURORA_SYNC_FORK_SERVER names one that will run it; else `main(sys.argv[1:])` here."""
    code = delegate(sys.argv, entry) if os.environ.get(ENV) else None
    return main(sys.argv[1:]) if code is None else code


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# the server's side


def serve(path: str, preload: list[str]) -> None:
    """Import every command (and the modules `preload` names), then fork one process per request until stdin
    closes (the test session ended)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)  # requests made while the imports run wait here

    from dlt.common.configuration.container import Container

    from runner import cli
    for command in cli.SUBCOMMANDS:
        cli.command_module(command)
    import pipelines.registry  # noqa: F401  (what main imports once the arguments parse)
    import runner.errors
    import runner.vault  # noqa: F401
    for module in preload:
        importlib.import_module(module)
    if any(contexts for contexts, _lock in Container().thread_contexts.values()):
        raise RuntimeError("a dlt context exists after the imports: forked commands would share it")

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    running: dict[int, socket.socket] = {}
    try:
        while True:
            ready, _, _ = select.select([listener, wake_r, sys.stdin], [], [])
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1024):
                return
            if wake_r in ready:
                os.read(wake_r, 1024)
            _reap(running)
            if listener in ready:
                conn, _ = listener.accept()
                try:
                    pid = _start(conn, listener, running, (wake_r, wake_w))
                except OSError:  # the script died while it asked: there is nothing to run it for
                    pid = 0
                if pid:
                    running[pid] = conn
                else:
                    conn.close()
    finally:
        listener.close()
        os.unlink(path)


def _reap(running: dict[int, socket.socket]) -> None:
    while running:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        conn = running.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):  # the script is gone (killed): nobody to tell
                conn.sendall(_STATUS.pack(wait_status))
            conn.close()


def _start(conn: socket.socket, listener: socket.socket, running: dict[int, socket.socket],
           wake: tuple[int, int]) -> int:
    server = os.getpid()
    header, fds = _recv_fds(conn)
    if header is None:
        return 0
    body = _recv_exactly(conn, _LENGTH.unpack(header)[0])
    if body is None:
        _close(fds)
        return 0
    try:
        request = json.loads(body)
        path = _sys_path_for(request)
        if path is None or _python_settings(request["env"]) != _python_settings(dict(os.environ)):
            conn.sendall(b"-")
            return 0
        conn.sendall(b"+")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    finally:
        if os.getpid() == server:  # the forked process keeps them: they become its streams
            _close(fds)
    if pid:
        return pid
    try:  # the command's process: nothing below returns
        listener.close()
        for other in running.values():
            other.close()
        for fd in wake:
            os.close(fd)
        _become(request, path, fds, conn)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    return 0  # not reached


def _recv_fds(conn: socket.socket) -> tuple[bytes | None, list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(_LENGTH.size, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return (data if len(data) == _LENGTH.size else None), list(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _become(request: dict[str, Any], path: list[str], fds: list[int], conn: socket.socket) -> None:
    """In the forked process: take on the script's streams, directory and environment, then run the command."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    received = dict(zip(request["streams"], fds, strict=True))
    for target in (0, 1, 2):
        source = received.get(target)
        if source is None:
            source = os.open(os.devnull, os.O_RDWR)
        os.dup2(source, target)
        os.close(source)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[:] = path
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = _writer(1, line_buffering=os.isatty(1))
    sys.stderr = _writer(2, errors="backslashreplace", line_buffering=True)
    threading.Thread(target=_follow_the_script, args=(conn,), daemon=True).start()

    module, function = request["entry"].split(":")
    try:
        code: Any = getattr(importlib.import_module(module), function)(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter does at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code & 0xFF)


def _sys_path_for(request: dict[str, Any]) -> list[str] | None:
    """The sys.path a cold start of the request would have: its directory and PYTHONPATH, then the server's
    standard library and site-packages. None when its PYTHONPATH names a directory that is not on the server's
    path: modules the server imported could then resolve elsewhere for a cold start (run it cold instead)."""
    wanted = _pythonpath(request["env"], request["cwd"])
    if wanted is None or not set(wanted) <= set(_STARTED_PATH):
        return None
    return [request["path0"], *wanted, *_STARTED_PATH[1 + len(_STARTED_PYTHONPATH):]]


def _writer(fd: int, **options: Any) -> io.TextIOWrapper:
    """sys.stdout or sys.stderr as the interpreter opens them, PYTHONUNBUFFERED included."""
    raw = io.FileIO(fd, "w", closefd=False)
    if os.environ.get("PYTHONUNBUFFERED"):
        return io.TextIOWrapper(raw, write_through=True, **options)  # type: ignore[arg-type]
    return io.TextIOWrapper(io.BufferedWriter(raw), **options)


def _follow_the_script(conn: socket.socket) -> None:
    """Signals the script received, passed on; its death (kill -9), ours."""
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data:
            os.kill(os.getpid(), signal.SIGKILL)
        for signum in data:
            os.kill(os.getpid(), signum)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
