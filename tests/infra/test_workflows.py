"""The GitHub Actions workflows: the jobs the delivery process relies on, and no static cloud credentials.

The workflows cannot run here (no GitHub runner, no network); these checks read them as data.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from .conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict), name
    # PyYAML reads the key `on` as True (YAML 1.1).
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) + " " + str(step.get("uses", "")) for step in job.get("steps", []))


def test_pull_request_checks() -> None:
    ci = load("ci.yml")
    assert "pull_request" in ci["on"]
    jobs = ci["jobs"]
    everything = "\n".join(steps_text(job) for job in jobs.values())
    for needle in (
        "make lint",
        "make test",
        "hadolint Dockerfile",
        "terraform fmt -check -recursive",
        "terraform validate",
        "terraform test",
        "checkov -d terraform --framework terraform --skip-download",
        "bash .ci/install-tools.sh",
        "tfc-workflows-github/actions/create-run",
    ):
        assert needle in everything, f"ci.yml does not run {needle!r}"
    plan_job = jobs["tfc-speculative-plan"]
    assert "pull_request" in plan_job["if"]
    upload = next(s for s in plan_job["steps"] if "upload-configuration" in str(s.get("uses", "")))
    assert upload["with"]["speculative"] is True
    run = next(s for s in plan_job["steps"] if "create-run" in str(s.get("uses", "")))
    assert run["with"]["plan_only"] is True


def test_main_builds_pushes_and_applies_with_the_new_tag() -> None:
    deploy = load("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"]
    jobs = deploy["jobs"]
    build = steps_text(jobs["build-push"])
    assert "docker/build-push-action" in build and "amazon-ecr-login" in build
    assert "GITHUB_SHA" in build, "the image tag is the commit SHA (immutable)"
    assert jobs["canary"]["needs"] == "build-push"
    assert set(jobs["promote"]["needs"]) == {"build-push", "canary"}
    assert "canary.result == 'success'" in jobs["promote"]["if"], "promotion waits for a green canary"
    canary = steps_text(jobs["canary"])
    assert "canary_image_tag" in canary and "aws ecs run-task" in canary and "apply-run" in canary
    promote = steps_text(jobs["promote"])
    assert "set_var image_tag" in promote and "apply-run" in promote
    assert "image_tag" in deploy["on"]["workflow_dispatch"]["inputs"], "rollback re-points the tag by hand"


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_no_static_credentials(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    assert not re.search(r"aws-access-key-id|aws-secret-access-key|AWS_SECRET_ACCESS_KEY", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    workflow = load(name)
    assert workflow.get("permissions") == {"contents": "read"}, "least privilege by default"
    for job_name, job in workflow["jobs"].items():
        if "configure-aws-credentials" in steps_text(job):
            assert job["permissions"].get("id-token") == "write", f"{job_name} must use OIDC"
            assert "role-to-assume" in str(job["steps"])


def test_actions_are_pinned() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        for uses in re.findall(r"uses:\s*(\S+)", path.read_text()):
            assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", uses), f"{path.name}: {uses} is not pinned"
