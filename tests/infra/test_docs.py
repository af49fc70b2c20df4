"""The infrastructure docs keep the parts the issue asks for (diagram, data path, release and rollback)."""

from __future__ import annotations

import re

from .conftest import REPO

DOCS = REPO / "docs"


def test_infrastructure_diagram_shows_the_data_path() -> None:
    text = (DOCS / "infrastructure.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", text, re.S)
    assert blocks, "docs/infrastructure.md needs a Mermaid diagram"
    diagram = blocks[0]
    for node in ("Aurora", "ECS", "S3", "Snowflake", "Vault", "EventBridge Scheduler", "SNS", "ECR"):
        assert node in diagram, f"the diagram does not show {node}"
    edges = [line.strip() for line in diagram.splitlines() if "-->" in line]
    path = (r"^aurora -->.*(sched_task|follow)$", r"^ecs -->.*\| s3$", r"^s3 -->.*snowflake\b", r"^ecs -->.*vault$")
    for edge in path:
        assert any(re.search(edge, e) for e in edges), f"no edge {edge}: Aurora -> ECS -> S3 -> Snowflake, Vault"


def test_deployment_doc_covers_the_release_process() -> None:
    text = (DOCS / "deployment.md").read_text()
    for topic in ("TFC_AWS_PROVIDER_AUTH", "TFC_AWS_RUN_ROLE_ARN", "immutable", "canary", "shadow", "Rollback",
                  "After an apply", "speculative plan", "Docker engine"):
        assert topic in text, f"docs/deployment.md does not cover {topic!r}"
