"""The container image: hadolint, and the properties the ECS task definitions rely on.

There is no Docker engine on this machine, so the image is not built here (CI builds it on main); these
tests check the Dockerfile itself and that it agrees with terraform/ and pyproject.toml.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import REPO, TERRAFORM_DIR

DOCKERFILE = REPO / "Dockerfile"
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "libpq-dev", "python3-dev", "cargo", "rustc")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self) -> dict[str, str]:
        values = {}
        for keyword, rest in self.instructions:
            if keyword == "ARG" and "=" in rest:
                key, value = rest.split("=", 1)
                values[key.strip()] = value.strip().strip('"')
        return values

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Instructions per stage (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert match, line
            stages.append(Stage(base=match.group(1), name=match.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def test_hadolint_clean(hadolint: Path) -> None:
    command = [str(hadolint), "--no-color"]
    config = REPO / ".hadolint.yaml"
    if config.exists():
        command += ["--config", str(config)]
    result = subprocess.run([*command, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_multi_stage_with_pinned_slim_base() -> None:
    stages = parse_dockerfile(DOCKERFILE)
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    for stage in stages:
        if stage.base in {s.name for s in stages if s.name}:
            continue  # FROM an earlier stage
        pinned = re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", stage.base) or re.fullmatch(
            r"python(:[\w.-]+)?@sha256:[0-9a-f]{64}", stage.base
        )
        assert pinned, f"base image {stage.base!r} is not pinned to an exact python 3.11.x slim tag or digest"


def test_runtime_stage_is_unprivileged_and_minimal() -> None:
    runtime = parse_dockerfile(DOCKERFILE)[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage must set USER"
    user = _substitute(users[-1], runtime.args())
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), f"runtime user {user!r} is root or named"
    runs = " ".join(runtime.all("RUN"))
    assert "apt-get install" not in runs and "pip install" not in runs, "the runtime stage must not install anything"
    for tool in BUILD_TOOLS:
        assert not re.search(rf"\b{re.escape(tool)}\b", runs), f"build tool {tool} in the runtime stage"
    copies = runtime.all("COPY")
    assert any(c.startswith("--from=") for c in copies), "the runtime stage must take the build stage's output"


def test_runtime_user_matches_the_task_definitions() -> None:
    runtime = parse_dockerfile(DOCKERFILE)[-1]
    user = _substitute(runtime.all("USER")[-1], runtime.args())
    root_main = (TERRAFORM_DIR / "main.tf").read_text()
    match = re.search(r'container_user\s*=\s*"([^"]+)"', root_main)
    assert match, "terraform/main.tf must set local.container_user"
    assert match.group(1) == user, f"ECS runs {match.group(1)}, the image's USER is {user}"


def test_entrypoint_and_health_by_exit_code() -> None:
    runtime = parse_dockerfile(DOCKERFILE)[-1]
    entrypoints = runtime.all("ENTRYPOINT")
    assert entrypoints and json.loads(entrypoints[-1]) == ["aurora-sync"], "ENTRYPOINT must be exec-form aurora-sync"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("aurora-sync") == "runner.cli:main"
    assert runtime.all("HEALTHCHECK") == ["NONE"], "health is the exit code, not a server"
    assert not runtime.all("EXPOSE"), "the image serves nothing"


def test_installs_with_constraints_and_ships_dlt_config() -> None:
    stages = parse_dockerfile(DOCKERFILE)
    build_runs = " ".join(r for s in stages[:-1] for r in s.all("RUN"))
    assert re.search(r"pip install\b.*-c constraints\.txt\s+\.", build_runs), "use `pip install -c constraints.txt .`"
    build_copies = " ".join(c for s in stages[:-1] for c in s.all("COPY"))
    for package in ("sources/", "pipelines/", "replica/", "runner/", "constraints.txt", "pyproject.toml"):
        assert package in build_copies, f"{package} is not copied into the build stage"
    runtime = stages[-1]
    assert runtime.all("WORKDIR"), "the runtime stage needs a WORKDIR (dlt reads ./.dlt from it)"
    assert any(".dlt/config.toml" in c for c in runtime.all("COPY")), ".dlt/config.toml must be in the image"
    assert not any("secrets.toml" in c for s in stages for c in s.all("COPY"))
    envs = " ".join(runtime.all("ENV"))
    assert "DLT_DATA_DIR=/tmp/dlt" in envs


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from excluding everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "constraints.txt", "sources", "pipelines", "runner", ".dlt/config.toml"} <= allowed
    assert not any(secret in allowed for secret in (".dlt", ".dlt/secrets.toml", "terraform", ".venv", ".git"))
