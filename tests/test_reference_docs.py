"""The generated references (configuration keys, CLI) and the error catalogue stay in step with the code, and the
checks do fail when they should: a key, option or error class added to the code without its documentation, or a
documented one that the code dropped."""

from __future__ import annotations

import gc
import re
from typing import Any

import dlt
import pytest
from dlt.common.configuration import with_config

from runner import catalogue, reference
from runner.cli import build_parser
from sources.postgres import transport
from sources.postgres.errors import SourceError

REGENERATE = f"docs are stale: run `{reference.REGENERATE}` and commit docs/configuration.md and docs/cli.md"


def test_configuration_md_documents_every_key_the_code_reads() -> None:
    assert reference.config_doc_problems() == [], REGENERATE
    keys = reference.documented_keys(reference.CONFIG_DOC.read_text())
    for key in ("sources.postgres.allow_insecure_transport", "sources.postgres.ssl_root_cert",
                "sources.postgres.snapshot.workers", "sources.postgres.replication.max_batch_rows",
                "runner.max_attempts", "vault.auth_method", "snowflake_bootstrap.warehouse_size",
                "extract.next_item_mode", "customers_orders.destination_type"):
        assert key in keys


def test_configuration_check_fails_for_a_new_key_and_for_a_removed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    original = transport.transport_settings

    @with_config(sections=transport.SECTIONS)
    def with_a_new_key(allow_insecure_transport: bool = False, ssl_root_cert: str | None = None,
                       tls_min_version: str = "TLSv1.2") -> Any:
        """Resolve the TLS policy.

        Args:
            allow_insecure_transport: as before.
            ssl_root_cert: as before.
            tls_min_version: a key someone just added.
        """
        return original(allow_insecure_transport, ssl_root_cert)

    monkeypatch.setattr(transport, "transport_settings", with_a_new_key)
    assert reference.config_doc_problems() == ["undocumented key sources.postgres.tls_min_version"]

    @with_config(sections=transport.SECTIONS)
    def undocumented(allow_insecure_transport: bool = False, ssl_root_cert: str | None = None,
                     mystery: int = 1) -> Any:
        """No Args section for `mystery`."""

    monkeypatch.setattr(transport, "transport_settings", undocumented)
    with pytest.raises(reference.UndocumentedKey, match=r"sources\.postgres\.mystery"):
        reference.config_keys()

    monkeypatch.setattr(transport, "transport_settings", original)
    stale = reference.CONFIG_DOC.read_text() + "| `sources.postgres.gone_key` | `int` | `1` | removed | `X` | `x` |\n"
    assert reference.config_doc_problems(stale) == ["documented key sources.postgres.gone_key no longer exists"]
    changed = reference.CONFIG_DOC.read_text().replace("| `60.0` |", "| `61.0` |", 1)
    assert reference.config_doc_problems(changed) == ["a type, default or meaning changed"]
    assert dlt  # the real dlt resolution is what the generator reads


def test_cli_md_is_generated_from_the_parser_and_fails_when_it_drifts() -> None:
    assert reference.cli_doc_problems() == [], REGENERATE
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    subparsers.add_parser("replay-everything", help="a command someone just added")
    assert reference.cli_doc_problems(parser=parser) == ["undocumented command replay-everything"]
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    subparsers.choices["restore"].add_argument("--parallel", type=int, help="a new option")
    assert reference.cli_doc_problems(parser=parser) == ["an option, default or help text changed"]
    stale = reference.CLI_DOC.read_text() + "\n## `vacuum`\n\nremoved long ago\n"
    assert reference.cli_doc_problems(stale) == ["documented command vacuum no longer exists"]
    assert "| `--all` |" in reference.CLI_DOC.read_text()


def test_troubleshooting_has_an_entry_for_every_error_class_and_runner_message() -> None:
    assert catalogue.missing() == [], "add entries to docs/troubleshooting.md (`python -m runner.catalogue`)"
    names = {c.__name__ for c in catalogue.error_classes()}
    assert {"InsecureTransport", "TLSVerificationFailed", "SlotInvalidated", "VaultTokenExpired",
            "RestoreError"} <= names
    assert "--follow needs --mode cdc" in catalogue.runner_messages()


def test_troubleshooting_check_fails_for_a_new_error_class_and_a_dropped_entry() -> None:
    newcomer = type("ChecksumMismatch", (SourceError,), {"__module__": "sources.postgres.errors"})
    try:
        assert catalogue.missing() == ["class ChecksumMismatch"]
    finally:
        del newcomer
        gc.collect()
    assert catalogue.missing() == []
    text = catalogue.DOC.read_text()
    assert catalogue.missing(text.replace("### `SlotInvalidated`", "### SlotInvalidated")) == ["class SlotInvalidated"]
    dropped = text.replace("**`Unknown pipeline …`**", "**`(removed)`**")
    assert catalogue.missing(dropped) == ["message 'Unknown pipeline'"]


def test_cli_md_documents_the_options_of_nested_subcommands() -> None:
    text = reference.CLI_DOC.read_text()
    assert {"dlq", "dlq list", "dlq replay"} <= reference.documented_commands(text)
    dlq_list = text[text.index("### `dlq list`"):text.index("### `dlq replay`")]
    assert "| `--table SCHEMA.TABLE` |" in dlq_list and "| `--json` |" in dlq_list
    parser = build_parser()
    dlq = next(a for a in parser._actions if a.dest == "command").choices["dlq"]
    next(a for a in dlq._actions if a.dest == "dlq_action").choices["replay"].add_argument("--limit", type=int)
    assert reference.cli_doc_problems(parser=parser) == ["an option, default or help text changed"]


def test_exit_codes_are_generated_into_cli_md_from_runner_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import exit_codes

    section = reference._section(reference.CLI_DOC.read_text(), reference.EXIT_CODES_TITLE)
    for code in exit_codes.ExitCode:
        assert f"\n| {code.value} | `{code.name}` |" in section
    assert "\n| 143 | SIGTERM |" in section and "snapshot-helper" in section
    # the parser's own one-line summary names every code too
    assert all(f"{code.value} " in (build_parser().epilog or "") for code in exit_codes.ExitCode)

    monkeypatch.setattr(exit_codes.ExitCode, "__doc__", "What aurora-sync exits with.\n\nSIGTERM now means X.")
    assert reference.cli_doc_problems() == ["the exit codes changed (runner/exit_codes.py)"]
    monkeypatch.undo()
    stale = reference.CLI_DOC.read_text().replace("| 3 | `LOCK_HELD` |", "| 5 | `LOCK_HELD` |")
    assert reference.cli_doc_problems(stale) == ["the exit codes changed (runner/exit_codes.py)"]


def test_no_other_document_repeats_the_exit_code_table() -> None:
    """They link to docs/cli.md#exit-codes instead (README.md may keep its one-line summary, with the link)."""
    table = re.compile(r"^\|\s*(0\s*\|\s*`?success|143\s*\|)", re.I | re.M)  # a row of the table
    summary = re.compile(r"\b0 success, 1 failure")  # the one-line form
    documents = [reference.REPO / "README.md", *sorted((reference.REPO / "docs").glob("*.md"))]
    repeating = [p.name for p in documents if p != reference.CLI_DOC and (
        table.search(p.read_text()) or (p.name != "README.md" and summary.search(p.read_text())))]
    assert repeating == [], f"exit-code tables outside docs/cli.md: {repeating}; link to docs/cli.md#exit-codes"
    readme = (reference.REPO / "README.md").read_text()
    assert "docs/cli.md#exit-codes" in readme
