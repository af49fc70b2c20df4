"""The error catalogue behind `docs/troubleshooting.md`: every error class the code can raise, and every distinct
`RunnerError` message, so that a test can require an entry (cause and fix) for each.

    .venv/bin/python -m runner.catalogue      # lists what the catalogue must cover, and what it misses

Classes are found by importing every module of the four packages and walking the subclasses of the project's error
bases; `RunnerError` messages by reading each `RunnerError(...)` call in the code (the literal text before the
first placeholder identifies the message).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "troubleshooting.md"
PACKAGES = ("sources", "pipelines", "replica", "runner")
# errors that `runner.errors.classify` words itself (dlt's configuration errors)
CLASSIFIED = ("Missing configuration:", "Invalid configuration value for", "Invalid configuration:")


def _import_all() -> None:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if info.name != "runner.catalogue":
                importlib.import_module(info.name)


def bases() -> list[type[BaseException]]:
    from pipelines.fence import LockLost
    from pipelines.isolation import NotATableFailure, TableLoadFailed, TablesFailed
    from replica.restore import RestoreError
    from replica.snowflake_bootstrap import BootstrapConfigError
    from runner.errors import RunnerError
    from runner.vault.errors import VaultError
    from sources.postgres.errors import SourceError

    return [SourceError, VaultError, RunnerError, RestoreError, BootstrapConfigError, TablesFailed, NotATableFailure,
            TableLoadFailed, LockLost]


def error_classes() -> list[type[BaseException]]:
    """Every project error class (the bases and all their subclasses), in a stable order."""
    _import_all()
    found: dict[str, type[BaseException]] = {}

    def walk(cls: type[BaseException]) -> None:
        if cls.__module__.split(".")[0] in PACKAGES:
            found.setdefault(cls.__name__, cls)
        for sub in cls.__subclasses__():
            walk(sub)

    for base in bases():
        walk(base)
    return sorted(found.values(), key=lambda c: c.__name__)


def runner_messages() -> list[str]:
    """The literal beginning of every `RunnerError(...)` message in the code (up to its first placeholder)."""
    messages = set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RunnerError" and node.args):
                    text = _leading_text(node.args[0])
                    if text:
                        messages.add(text)
    return sorted(messages)


def _leading_text(node: ast.expr) -> str:
    parts: Iterator[ast.expr] = iter(node.values) if isinstance(node, ast.JoinedStr) else iter([node])
    text = ""
    for part in parts:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            text += part.value
        else:
            break
    return " ".join(text.split())[:60].strip()


def entries(markdown: str) -> tuple[set[str], str]:
    """Class names with a `### \\`Name\\`` heading, and the whole text (for message lookups)."""
    return set(re.findall(r"^### `(\w+)`", markdown, re.M)), " ".join(markdown.split())


def missing(markdown: str | None = None) -> list[str]:
    """What the catalogue does not cover yet: class names and RunnerError/classify messages."""
    classes, text = entries(DOC.read_text() if markdown is None else markdown)
    gaps = [f"class {c.__name__}" for c in error_classes() if c.__name__ not in classes]
    gaps += [f"message {m!r}" for m in [*runner_messages(), *CLASSIFIED] if m not in text]
    return gaps


def main() -> int:
    print("classes:", ", ".join(c.__name__ for c in error_classes()))
    print("RunnerError messages:", *runner_messages(), sep="\n  ")
    gaps = missing()
    print("missing from docs/troubleshooting.md:", *gaps, sep="\n  ") if gaps else print("catalogue complete")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
