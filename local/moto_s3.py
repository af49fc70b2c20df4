"""A throwaway S3 endpoint (`moto_server`) on 127.0.0.1 and a free port, for tests and the Snowflake demo.

A real server process, not moto's in-process mocks: dlt (s3fs/aiobotocore), boto3 and fakesnow's DuckDB
all talk HTTP to it exactly as they would to AWS, and it stops cleanly with the context manager.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.postgres import free_port

REGION = "us-east-1"


class MotoNotAvailable(RuntimeError):
    """`moto_server` is not installed (it comes with the `moto[server]` test dependency)."""


# moto's server finds each request's service by listing moto's package directory again (os.listdir and an isdir
# per module: about a sixth of its CPU under the suite's S3 and Terraform traffic, in py-spy profiles). The listing
# cannot change while the server runs, so the stand-ins start moto's own `main` with the listing made once.
_MOTO_MAIN = ("import sys, moto.backends as b; modules = tuple(b.list_of_moto_modules()); "
              "b.list_of_moto_modules = lambda: modules; from moto.server import main; sys.exit(main())")


def moto_server_command(binary: str | None = None) -> list[str]:
    """How to start moto's server (then `-H HOST -p PORT`): moto's `main` with its module listing made once when
    this interpreter has moto, else the `moto_server` script as it is."""
    if importlib.util.find_spec("moto") is not None:
        return [sys.executable, "-c", _MOTO_MAIN]
    return [binary or find_moto_server()]


def find_moto_server() -> str:
    """The `moto_server` next to this interpreter first (the venv), then PATH."""
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("moto_server")
    if not found:
        raise MotoNotAvailable("moto_server was not found: install the test extras (`pip install -e '.[test]'`).")
    return found


@dataclass
class LocalS3:
    """Start with `start()`, stop with `stop()`; or use it as a context manager.

    The credentials are random throwaway values: moto accepts any, and nothing real is ever sent.
    """

    port: int = field(default_factory=free_port)
    access_key: str = field(default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    region: str = REGION
    _process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> LocalS3:
        self._log = tempfile.TemporaryFile(prefix="moto-s3-")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._process = subprocess.Popen(
            [*moto_server_command(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"moto_server exited early: {self._log.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto_server did not answer on {self.endpoint_url} within {timeout} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self, service: str = "s3") -> Any:
        """A boto3 client for this endpoint (`s3` or `kms`)."""
        import boto3

        return boto3.client(
            service, endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )

    def create_bucket(self, name: str) -> str:
        """Create the bucket (idempotent); returns its `s3://` URL."""
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if name not in existing:
            s3.create_bucket(Bucket=name)
        return f"s3://{name}"

    def create_kms_key(self) -> str:
        """A KMS key in moto, for SSE-KMS uploads; returns its ARN."""
        return str(self.client("kms").create_key(Description="aurora-sync local data key")["KeyMetadata"]["Arn"])

    def s3fs(self) -> Any:
        """An s3fs filesystem for this endpoint (for DuckDB's `register_filesystem` and for reading files)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": self.region}, use_listings_cache=False, skip_instance_cache=True,
        )

    def dlt_env(self) -> dict[str, str]:
        """dlt's env vars for `[destination.filesystem.credentials]` pointing at this endpoint."""
        return {
            "DESTINATION__FILESYSTEM__CREDENTIALS__AWS_ACCESS_KEY_ID": self.access_key,
            "DESTINATION__FILESYSTEM__CREDENTIALS__AWS_SECRET_ACCESS_KEY": self.secret_key,
            "DESTINATION__FILESYSTEM__CREDENTIALS__ENDPOINT_URL": self.endpoint_url,
            "DESTINATION__FILESYSTEM__CREDENTIALS__REGION_NAME": self.region,
        }

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
