"""Reference documents generated from the code: `docs/configuration.md` (every configuration key) and `docs/cli.md`
(every command and option). Regenerate both with

    .venv/bin/python -m runner.reference

`tests/test_reference_docs.py` fails when either file differs from what this module generates, so a key or option
added, renamed or removed in the code cannot go undocumented, and a documented one cannot outlive the code.

Where the keys come from: the signatures and `Args:` docstrings of the functions dlt resolves configuration for
(`@dlt.source` / `@with_config`), dlt configspec classes and their attribute docstrings, the Vault and Snowflake
bootstrap settings (whose lookups are read from their code), and the dlt settings `.dlt/config.toml` sets, with the
comment on each line as its meaning. A key without a meaning anywhere is an error, not an empty cell.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import re
import signal
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
CONFIG_DOC = REPO / "docs" / "configuration.md"
CLI_DOC = REPO / "docs" / "cli.md"
CONFIG_TOML = REPO / ".dlt" / "config.toml"
REGENERATE = ".venv/bin/python -m runner.reference"
EXIT_CODES_TITLE = "Exit codes"

# arguments the runner passes on every call (from --mode, --tables, dlq replay): not configuration
RUNTIME_ARGUMENTS = {"mode", "only_tables", "only_keys", "reread_tables", "chunks", "chunk_disposition", "progress"}
# meanings for keys whose code has no docstring for them (prefer adding one to the code)
MEANINGS: dict[str, str] = {
    "sources.postgres.credentials": "Writer DSN (`postgresql://user:password@host:5432/db`); a secret: env var, "
                                    "`.dlt/secrets.toml` or Vault.",
    "sources.postgres.schemas": "PostgreSQL schemas to replicate.",
    "sources.postgres.include": "Table patterns (`schema.table` or `table`, shell-style) to replicate; default all.",
    "sources.postgres.exclude": "Table patterns to leave out.",
    "sources.postgres.cursor_column": "Incremental cursor column, when a table has it.",
    "sources.postgres.cursor_timezone": "Zone the application writes naive `timestamp` cursors in.",
    "sources.postgres.statement_timeout_ms": "Statement timeout of every source session; one snapshot of a table "
                                             "is one statement.",
    "sources.postgres.block_size_bytes": "Arrow CSV block size: rows per batch are about this over the row width.",
    "sources.postgres.replication.slot_name": "Replication slot; default `aurora_sync_<pipeline>`.",
    "sources.postgres.replication.publication_name": "Publication; default `aurora_sync_<pipeline>`.",
    "sources.postgres.replication.max_batch_bytes": "See `max_batch_rows`.",
    "sources.postgres.replication.max_batch_seconds": "See `max_batch_rows`; also the follow-mode flush interval "
                                                      "(default 2 s when landing, 5 s when loading directly).",
    "sources.postgres.replication.status_interval_seconds": "How often the stream confirms its position to the "
                                                            "server (standby status updates).",
    "sources.postgres.replication.retained_wal_fail_bytes": "See `retained_wal_warn_bytes`.",
    "sources.postgres.replication.new_table_check_seconds": "How often follow mode looks for new tables.",
    "sources.postgres.replication.statement_timeout_ms": "Statement timeout of the CDC sessions.",
    "sources.postgres.replication.block_size_bytes": "Arrow CSV block size of the initial copy.",
    "sources.postgres.replication.dead_letter_url": "Where CDC rows that cannot be converted go.",
    "runner.backoff_initial_seconds": "First retry delay; exponential with jitter.",
    "runner.backoff_max_seconds": "Cap of the retry delay.",
    "runner.notify_sns_topic_arn": "SNS topic notified when a run fails.",
    "runner.notify_webhook_url": "Webhook notified when a run fails (a secret: prefer secrets.toml or Vault).",
    "runner.metrics_namespace": "CloudWatch namespace of the run metrics (EMF log lines).",
    "vault.addr": "Vault address; Vault is used when it is set and `vault.secrets` maps at least one key.",
    "vault.auth_method": "`aws` (ECS task role), `approle` or `token`; default `token` when a token is set, "
                         "else `aws`.",
    "vault.role": "Vault role to log in as (AWS auth).",
    "vault.namespace": "Vault Enterprise namespace.",
    "vault.ca_cert": "CA bundle to verify Vault's TLS certificate.",
    "vault.tls_verify": "Verify Vault's TLS certificate (never false in production).",
    "vault.auth_mount": "Mount path of the auth method; default its name.",
    "vault.kv_mount": "Mount path of the KV v2 engine (for `kv:` shorthand references).",
    "vault.timeout": "Seconds per Vault request.",
    "vault.kv_cache_seconds": "How long a KV secret is reused before it is read again.",
    "vault.prefetch": "Read every mapped secret at start, so a missing path fails before any work.",
    "vault.token": "Vault token (`token` auth); a secret.",
    "vault.role_id": "AppRole role_id.",
    "vault.secret_id": "AppRole secret_id; a secret.",
    "vault.wrapped_secret_id": "A response-wrapping token for the AppRole secret_id; a secret.",
    "vault.aws_region": "Region of the STS endpoint the AWS login is signed for.",
    "vault.aws_sts_endpoint": "STS endpoint the AWS login is signed for; default the global one.",
    "vault.aws_header_value": "`X-Vault-AWS-IAM-Server-ID` header value, when the Vault role requires one.",
    "vault.secrets": "Map of dlt config key to Vault path (`path` or `path#key`; `kv:` shorthand); docs/secrets.md.",
    "runtime.log_level": "dlt's log level (the runner's own lines follow --debug).",
    "runtime.dlthub_telemetry": "dlt's anonymous telemetry; off.",
    "customers_orders.destination_type": "Destination: `duckdb`, `snowflake`, `filesystem` or "
                                         "`pipelines.destinations.archive_filesystem` (a bucket-only replica).",
    "customers_orders.staging_type": "Staging for Snowflake: `pipelines.destinations.archive_filesystem` writes "
                                     "the S3 archive that `restore` reads.",
    "customers_orders.dataset_name": "Destination dataset (Snowflake schema) and the archive's first path element.",
    "pipelines.customers_orders.mode": "What `run --pipeline customers_orders` does without `--mode`: `incremental`, "
                                       "`snapshot` or `cdc` (each `[pipelines.<name>]` is a pipeline; "
                                       "`pipelines/registry.py`).",
    "snowflake_bootstrap.database": "Snowflake database (when `destination.snowflake.credentials.database` is "
                                    "not set).",
    "snowflake_bootstrap.warehouse": "Loader warehouse (fallback for the credentials' warehouse).",
    "snowflake_bootstrap.role": "Loader role (fallback for the credentials' role).",
    "snowflake_bootstrap.user": "Loader user (fallback for the credentials' username).",
    "snowflake_bootstrap.integration": "Storage integration name.",
    "snowflake_bootstrap.file_format": "Parquet file format object; default `<database>.<schema>.PARQUET_FORMAT`.",
    "snowflake_bootstrap.storage_aws_role_arn": "IAM role the storage integration assumes (Terraform output "
                                                "`snowflake_storage_integration_role_arn`).",
    "snowflake_bootstrap.public_key": "The loader's RSA public key (not a secret).",
    "snowflake_bootstrap.warehouse_size": "Size of the loader warehouse.",
    "snowflake_bootstrap.auto_suspend_seconds": "Idle seconds before the warehouse suspends.",
    "snowflake_bootstrap.blocked_prefixes": "Bucket prefixes never readable through the stage.",
}


@dataclass(frozen=True)
class ConfigKey:
    key: str  # dotted, e.g. sources.postgres.lookback_seconds
    type: str
    default: str
    meaning: str
    env: str
    origin: str  # file that defines it


class UndocumentedKey(ValueError):
    """A configuration key has no meaning in its code's docstrings nor in MEANINGS."""


# --- reading the code ----------------------------------------------------------------------------------
def _origin(obj: Any) -> str:
    return str(Path(inspect.getsourcefile(obj) or "?").resolve().relative_to(REPO))


def docstring_args(doc: str | None) -> dict[str, str]:
    """`Args:` entries of a Google-style docstring; `a / b: text` documents both."""
    found: dict[str, str] = {}
    if not doc or "Args:" not in doc:
        return found
    body = textwrap.dedent(doc.split("Args:", 1)[1])
    current: list[str] = []
    for line in body.splitlines():
        entry = re.match(r"^\s{0,4}(\w+(?:\s*/\s*\w+)*):\s+(.*)$", line)
        if entry and not line.startswith(" " * 6):
            current = [n.strip() for n in entry.group(1).split("/")]
            for name in current:
                found[name] = entry.group(2).strip()
        elif line.strip() and current:
            for name in current:
                found[name] += " " + line.strip()
        elif not line.strip() and found:
            current = []
    return found


def _type_text(annotation: Any) -> str:
    if getattr(annotation, "__origin__", None) is Literal:
        return " | ".join(repr(v) for v in annotation.__args__)
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = re.sub(r"[\w.]*\.(DSN|ConnectionStringCredentials)\b", "DSN", text)
    return text.replace("typing.", "").replace("ConnectionStringCredentials", "DSN")


def _default_text(value: Any, annotation: Any = None) -> str:
    import dlt

    optional = "None" in str(annotation)
    if value is dlt.secrets.value:
        return "none (optional secret)" if optional else "required, secret"
    if value is dlt.config.value:
        return "required"
    if value is inspect.Parameter.empty or value is MISSING:
        return "required"
    return f"`{value!r}`" if value is not None else "none"


def _env(key: str) -> str:
    return "__".join(key.upper().split("."))


def function_keys(fn: Callable[..., Any], section: str, skip: set[str] = frozenset()) -> Iterator[ConfigKey]:  # type: ignore[assignment]
    target = getattr(fn, "_f", None) or inspect.unwrap(fn)
    meanings = docstring_args(target.__doc__)
    for name, parameter in inspect.signature(target).parameters.items():
        if name in skip:
            continue
        key = f"{section}.{name}"
        meaning = meanings.get(name) or MEANINGS.get(key, "")
        default = _default_text(parameter.default, parameter.annotation)
        yield ConfigKey(key, _type_text(parameter.annotation), default, meaning, _env(key), _origin(target))


def attribute_docstrings(cls: type) -> dict[str, str]:
    """`field: T = x` (or `NAME = x`, an enum member) followed by a string literal: that literal documents it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    found = {}
    for node, following in itertools.pairwise(body):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets if isinstance(
            node, ast.Assign) else []
        if (len(targets) == 1 and isinstance(targets[0], ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            found[targets[0].id] = " ".join(following.value.value.split())
    return found


def configspec_keys(cls: type, section: str, skip: frozenset[str] | set[str] = frozenset()) -> Iterator[ConfigKey]:
    docs = attribute_docstrings(cls)
    instance = cls()
    for name, hint in cls.get_resolvable_fields().items():  # type: ignore[attr-defined]
        if name in skip:
            continue
        key = f"{section}.{name}"
        yield ConfigKey(key, _type_text(hint), _default_text(getattr(instance, name)),
                        docs.get(name) or MEANINGS.get(key, ""), _env(key), _origin(cls))


def _lookup_calls(fn: Callable[..., Any], method: str) -> list[tuple[str, ...]]:
    """String arguments of the `<x>.<method>(...)` / `<method>(...)` calls in `fn`'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            args = tuple(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
            if name == method and args:
                calls.append(args)
    return calls


def vault_keys() -> Iterator[ConfigKey]:
    from runner.vault.settings import VaultSettings

    env_of = {args[0]: args[1] for method in ("text", "number", "flag") for args in
              _lookup_calls(VaultSettings.from_config, method) if len(args) > 1}
    env_of["tls_verify"] = "VAULT_SKIP_VERIFY (inverted), VAULT_TLS_VERIFY"
    env_of["secrets"] = "VAULT_SECRETS (JSON) or VAULT__SECRETS__<KEY>"
    for f in fields(VaultSettings):
        key = f"vault.{f.name}"
        default = f.default if f.default is not MISSING else ({} if f.default_factory is not MISSING else MISSING)
        yield ConfigKey(key, _type_text(f.type), _default_text(default), MEANINGS.get(key, ""),
                        f"{env_of.get(f.name, '-')}, or {_env(key)}", _origin(VaultSettings))


def bootstrap_keys() -> Iterator[ConfigKey]:
    from replica.snowflake_bootstrap import settings_from_config

    for (key, *_) in _lookup_calls(settings_from_config, "get"):
        if key.startswith("snowflake_bootstrap."):
            yield ConfigKey(key, "str" if not key.endswith(("_seconds", "_prefixes")) else (
                "int" if key.endswith("_seconds") else "list[str]"), "see `.dlt/config.toml`",
                MEANINGS.get(key, ""), _env(key), _origin(settings_from_config))


def pipeline_keys() -> Iterator[ConfigKey]:
    """The keys of dlt's pipeline configuration that the pipelines read, per pipeline name."""
    from runner.commands.run import PIPELINES

    for pipeline in sorted(PIPELINES):
        for name in ("destination_type", "staging_type", "dataset_name"):
            key = f"{pipeline}.{name}"
            yield ConfigKey(key, "str", "none" if name == "staging_type" else "see `.dlt/config.toml`",
                            MEANINGS.get(key, ""), _env(key), "dlt PipelineConfiguration")


def toml_keys(covered: set[str]) -> Iterator[ConfigKey]:
    """dlt's own settings that `.dlt/config.toml` sets (keys the code above does not define)."""
    text = CONFIG_TOML.read_text()
    data = tomllib.loads(text)
    comments: dict[str, str] = {}
    section, pending = "", []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            section, pending = stripped.strip("[]").replace('"', ""), []
        elif stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
        elif "=" in stripped:
            name, _, rest = stripped.partition("=")
            inline = rest.split("  # ", 1)[1].strip() if "  # " in rest else ""
            comments[f"{section}.{name.strip()}"] = inline or " ".join(pending)
            pending = []
        elif not stripped:
            pending = []

    def walk(node: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for name, value in node.items():
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(value, dict) and not key.startswith("sources.postgres.tables"):
                yield from walk(value, key)
            else:
                yield key, value

    for key, value in walk(data, ""):
        if key in covered or key.startswith(("sources.postgres.tables", "snowflake_bootstrap.")):
            continue
        meaning = comments.get(key) or MEANINGS.get(key, "")
        yield ConfigKey(key, type(value).__name__, f"`{value!r}` (set in .dlt/config.toml)", meaning, _env(key),
                        ".dlt/config.toml")


def config_keys() -> list[ConfigKey]:
    from pipelines.merge import MergeConfiguration
    from runner.settings import RunnerSettings
    from sources.postgres import postgres_replica
    from sources.postgres.chunking import snapshot_settings
    from sources.postgres.limits import snapshot_workers
    from sources.postgres.settings import _source_settings
    from sources.postgres.transport import transport_settings
    from sources.replication import ReplicationSettings

    keys: dict[str, ConfigKey] = {}
    groups = [
        function_keys(postgres_replica, "sources.postgres", RUNTIME_ARGUMENTS),
        function_keys(_source_settings, "sources.postgres"),  # verify and doctor: a subset of the above
        function_keys(transport_settings, "sources.postgres"),
        function_keys(snapshot_workers, "sources.postgres.snapshot"),
        function_keys(snapshot_settings, "sources.postgres.snapshot"),
        configspec_keys(ReplicationSettings, "sources.postgres.replication",
                        {"credentials", "schemas", "include", "exclude", "tables"}),
        configspec_keys(RunnerSettings, "runner"),
        configspec_keys(MergeConfiguration, "merge"),
        vault_keys(),
        bootstrap_keys(),
        pipeline_keys(),
    ]
    for group in groups:
        for item in group:
            keys.setdefault(item.key, item)
    for item in toml_keys(set(keys)):
        keys.setdefault(item.key, item)
    missing = sorted(k for k, v in keys.items() if not v.meaning)
    if missing:
        raise UndocumentedKey(f"No meaning for {', '.join(missing)}: add it to the function's `Args:` docstring, the "
                              f"field's docstring or the comment in .dlt/config.toml (or runner.reference.MEANINGS).")
    return sorted(keys.values(), key=lambda k: k.key)


def _prose(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_configuration(keys: list[ConfigKey] | None = None) -> str:
    keys = config_keys() if keys is None else keys
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{REGENERATE}` from the code; do not edit by hand. -->",
        "",
        "Every key the sync reads, with its default, type and meaning. All of them resolve through dlt: "
        "`.dlt/config.toml`, `.dlt/secrets.toml`, environment variables (the `ENV` column; dlt also accepts the "
        "pipeline-prefixed form `CUSTOMERS_ORDERS__SOURCES__POSTGRES__...`) and, for mapped keys, Vault "
        "([`secrets.md`](secrets.md)). `sources.postgres.replication.*` falls back to `sources.postgres.*` for the "
        "shared keys (credentials, schemas, include, exclude, tables). Per-table overrides live under "
        '`[sources.postgres.tables."schema.table"]` (`primary_key`, `cursor_column`).',
        "",
    ]
    section = None
    for key in sorted(keys, key=lambda k: (k.key.rsplit(".", 1)[0], k.key)):
        top = key.key.rsplit(".", 1)[0]
        if top != section:
            section = top
            out += ["", f"## `{section}`", "", "| key | type | default | meaning | env | defined in |",
                    "|---|---|---|---|---|---|"]
        out.append(f"| `{key.key}` | `{_cell(key.type)}` | {_cell(key.default)} | {_cell(key.meaning)} | "
                   f"`{_cell(key.env)}` | `{key.origin}` |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


def documented_keys(markdown: str) -> set[str]:
    return set(re.findall(r"^\| `([\w.]+)` \|", markdown, re.M))


def config_doc_problems(markdown: str | None = None, keys: list[ConfigKey] | None = None) -> list[str]:
    """Keys the code has that the document lacks, keys it documents that the code no longer has, other drift."""
    markdown = CONFIG_DOC.read_text() if markdown is None else markdown
    generated = render_configuration(keys)
    in_code, in_doc = documented_keys(generated), documented_keys(markdown)
    problems = [f"undocumented key {k}" for k in sorted(in_code - in_doc)]
    problems += [f"documented key {k} no longer exists" for k in sorted(in_doc - in_code)]
    if not problems and generated != markdown:
        problems.append("a type, default or meaning changed")
    return problems


def cli_doc_problems(markdown: str | None = None, parser: argparse.ArgumentParser | None = None) -> list[str]:
    markdown = CLI_DOC.read_text() if markdown is None else markdown
    generated = render_cli(parser)
    in_code, in_doc = documented_commands(generated), documented_commands(markdown)
    problems = [f"undocumented command {c}" for c in sorted(in_code - in_doc)]
    problems += [f"documented command {c} no longer exists" for c in sorted(in_doc - in_code)]
    if not problems and _section(generated, EXIT_CODES_TITLE) != _section(markdown, EXIT_CODES_TITLE):
        problems.append("the exit codes changed (runner/exit_codes.py)")
    elif not problems and generated != markdown:
        problems.append("an option, default or help text changed")
    return problems


def _section(markdown: str, title: str) -> str:
    """From the `## <title>` line to the next `## ` heading."""
    start = markdown.find(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return "" if start < 0 else markdown[start:end if end > 0 else None]


def render_exit_codes() -> str:
    """The exit-code table, from `runner.exit_codes`: the one place the documents list the codes."""
    from runner.exit_codes import ExitCode

    meanings = attribute_docstrings(ExitCode)
    rows = ["| code | name | meaning | what to do |", "|---|---|---|---|"]
    for code in ExitCode:
        meaning, _, action = meanings[code.name].partition(" Do: ")
        rows.append(f"| {code.value} | `{code.name}` | {_cell(_links(meaning))} | {_cell(_links(action))} |")
    sigterm = 128 + signal.SIGTERM  # what the runner (runner/vault) and the container runtime report
    rows.append(f"| {sigterm} | SIGTERM | stopped by SIGTERM (128 + {int(signal.SIGTERM)}) before it finished; "
                "nothing committed is lost | nothing: the next run resumes |")
    sigterm_text = (inspect.getdoc(ExitCode) or "").partition("\n\n")[2]
    return "\n".join([f"## {EXIT_CODES_TITLE}", "", f"<!-- From `runner/exit_codes.py`, by `{REGENERATE}`. -->", "",
                      "ECS, the schedules and the alarms tell outcomes apart by these codes alone. Other documents "
                      "link here rather than repeat them.", "", *rows, "",
                      _links(" ".join(sigterm_text.split())), ""])


def _links(text: str) -> str:
    """`docs/x.md#y` in a docstring becomes a link relative to docs/."""
    return _prose(re.sub(r"\bdocs/([\w.-]+\.md(?:#[\w-]+)?)", r"[\1](\1)", text))


def render_cli(parser: argparse.ArgumentParser | None = None) -> str:
    from runner.cli import build_parser

    parser = parser or build_parser()
    _fixed_width(parser)
    # the parser's epilog sums up the exit codes: the generated section replaces it
    anchor = EXIT_CODES_TITLE.lower().replace(" ", "-")
    out = ["# `aurora-sync` command reference", "", f"<!-- Generated by `{REGENERATE}` from the argparse parser; "
           "do not edit by hand. -->", "", _prose(parser.description or ""), "", "```text",
           parser.format_usage().strip(), "```", "", f"Exit codes: [below](#{anchor}).", "", _options(parser), "",
           render_exit_codes()]
    out += _commands(parser, "##")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)) + "\n"


def _commands(parser: argparse.ArgumentParser, level: str, prefix: str = "") -> list[str]:
    """A section per subcommand (`dlq list` and `dlq replay` one level down), with its usage and options."""
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if subparsers is None:
        return []
    helps = {a.dest: a.help for a in subparsers._choices_actions}
    out: list[str] = []
    for name, sub in subparsers.choices.items():
        out += ["", f"{level} `{prefix}{name}`", "", _prose(sub.description or helps.get(name) or ""), "", "```text",
                sub.format_usage().strip(), "```", "", _options(sub)]
        out += _commands(sub, level + "#", f"{prefix}{name} ")
    return out


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    """Usage lines wrap at 100 columns whatever the terminal, so the document does not depend on it."""
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)  # type: ignore[assignment]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fixed_width(sub)


def _options(parser: argparse.ArgumentParser) -> str:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for action in parser._actions:  # argparse has no public API for its options
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(action.option_strings) or action.dest
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            names += " {" + ",".join(map(str, action.choices)) + "}"
        elif action.metavar or (action.nargs != 0 and action.option_strings):
            names += f" {action.metavar or action.dest.upper()}"
        default = "required" if action.required else (
            "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`")
        rows.append(f"| `{_cell(names)}` | {default} | {_cell(action.help or '')} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def documented_commands(markdown: str) -> set[str]:
    return set(re.findall(r"^##+ `([\w-]+(?: [\w-]+)*)`", markdown, re.M))


def main(argv: list[str] | None = None) -> int:
    CONFIG_DOC.write_text(render_configuration())
    CLI_DOC.write_text(render_cli())
    print(f"wrote {CONFIG_DOC.relative_to(REPO)} and {CLI_DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
