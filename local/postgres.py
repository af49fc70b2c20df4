"""A throwaway PostgreSQL cluster with `wal_level=logical` on a free localhost port.

initdb and postgres refuse to run as root, so when we are root the server runs as the
`postgres` OS user on a data directory it owns.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",  # throwaway cluster: durability of the stand-in does not matter
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "max_connections": "60",
    "log_min_messages": "warning",
}


class PostgresNotAvailable(RuntimeError):
    """The PostgreSQL server binaries are not installed on this machine."""


def find_bindir() -> Path:
    """Locate initdb/pg_ctl: `pg_config --bindir` first, then PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    for tool in ("pg_ctl", "initdb"):
        found = shutil.which(tool)
        if found:
            candidates.append(Path(found).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() and (bindir / "postgres").exists():
            return bindir
    raise PostgresNotAvailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. "
        "Install them with `apt-get install postgresql` (Debian/Ubuntu) or `brew install postgresql@15`."
    )


def execute(dsn: str, *statements: str) -> None:
    """Run statements in autocommit (test and bench setup against the throwaway cluster)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalPostgres:
    """Start with `start()`, stop with `stop()`; or use it as a context manager."""

    port: int = field(default_factory=free_port)
    user: str = "postgres"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    database: str = "postgres"
    base_dir: Path | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def run_as(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.run_as, *args], capture_output=True, text=True, check=True)

    def start(self) -> LocalPostgres:
        bindir = find_bindir()
        if self.base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aurora-sync-pg-")
            self.base_dir = Path(self._tmp.name)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._run(
            str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user, "--pwfile", str(pwfile),
            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        pwfile.unlink()
        conf = "\n".join(f"{k} = {v}" for k, v in SERVER_SETTINGS.items())
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write(f"\n{conf}\nport = {self.port}\nunix_socket_directories = '{self.base_dir}'\n")
        with (self.data_dir / "pg_hba.conf").open("a") as fh:
            fh.write("host replication all 127.0.0.1/32 scram-sha-256\n")
        self._run(
            str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base_dir / "server.log"),
            "-w", "-t", "60", "start",
        )
        return self

    def standby(self) -> LocalPostgres:
        """A streaming physical replica of this cluster on its own port (a stand-in for an Aurora reader)."""
        bindir = find_bindir()
        replica = LocalPostgres(user=self.user, password=self.password)
        replica._tmp = tempfile.TemporaryDirectory(prefix="aurora-sync-pg-standby-")
        replica.base_dir = Path(replica._tmp.name)
        if os.geteuid() == 0:
            shutil.chown(replica.base_dir, "postgres", "postgres")
        subprocess.run(
            [*self.run_as, "env", f"PGPASSWORD={self.password}", str(bindir / "pg_basebackup"), "-h", "127.0.0.1",
             "-p", str(self.port), "-U", self.user, "-D", str(replica.data_dir), "-R", "-X", "stream", "-c", "fast"],
            capture_output=True, text=True, check=True)
        with (replica.data_dir / "postgresql.auto.conf").open("a") as fh:
            fh.write(f"\nport = {replica.port}\nunix_socket_directories = '{replica.base_dir}'\nhot_standby = on\n")
        replica._run(str(bindir / "pg_ctl"), "-D", str(replica.data_dir), "-l", str(replica.base_dir / "server.log"),
                     "-w", "-t", "60", "start")
        return replica

    def stop(self, mode: str = "fast") -> None:
        if self.base_dir is None or not (self.data_dir / "postmaster.pid").exists():
            return
        bindir = find_bindir()
        subprocess.run(
            [*self.run_as, str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
            capture_output=True, text=True, check=False,
        )

    def restart(self) -> None:
        bindir = find_bindir()
        self._run(
            str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base_dir / "server.log"),
            "-m", "fast", "-w", "-t", "60", "restart",
        )

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def url(self, database: str | None = None, user: str | None = None, password: str | None = None) -> str:
        return URL.create(
            "postgresql",
            username=user or self.user,
            password=password if password is not None else self.password,
            host="127.0.0.1",
            port=self.port,
            database=database or self.database,
        ).render_as_string(hide_password=False)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL did not accept connections on port {self.port}")

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
