#!/usr/bin/env bash
# Configure Vault (or OpenBao) for aurora-snowflake-sync: engines, policies, the Aurora dynamic role,
# AppRole and AWS IAM auth roles. Idempotent: re-running updates roles and config in place.
# Run by an operator with an admin token (VAULT_ADDR, VAULT_TOKEN); see docs/secrets.md#setting-up-vault.
#
# Required:
#   VAULT_ADDR, VAULT_TOKEN            an operator token allowed to mount engines and write policies
#   PG_HOST PG_DATABASE PG_ADMIN_USER  the Aurora writer endpoint and the role Vault manages users with
#   PG_ADMIN_PASSWORD                  (first run, or PG_RECONFIGURE=1) read from this env var and sent to
#                                      Vault on stdin, never in argv; rotated by Vault unless ROTATE_ROOT=0
#   VAULT_TASK_ROLE_ARNS               the ECS task role ARNs, comma-separated (Terraform output
#                                      vault_task_role_arns; TASK_ROLE_ARN is still read), unless ENABLE_AWS_AUTH=0
# The Vault names the ECS tasks use. Terraform outputs each under the same name in lower case (vault_role, ...):
# export them from `terraform output` (docs/secrets.md#vault-names) so that Vault holds exactly what the tasks log
# in as and read. The defaults are Terraform's defaults.
#   VAULT_ROLE [aurora-sync]           AWS auth role and AppRole role the tasks log in as (their VAULT_ROLE)
#   VAULT_AUTH_MOUNT [aws]             mount of the AWS auth method (their VAULT_AUTH_MOUNT)
#   VAULT_POLICY [aurora-sync]         the tasks' policy (policies/aurora-sync.hcl); <VAULT_POLICY>-rotate is the
#                                      key rotation policy (policies/aurora-sync-rotate.hcl)
#   VAULT_KV_MOUNT [kv]                KV v2 mount (their VAULT_KV_MOUNT)
#   VAULT_KV_PREFIX [aurora-sync]      the pipeline's KV secrets: <VAULT_KV_MOUNT>/data/<VAULT_KV_PREFIX>/*
#   VAULT_DATABASE_MOUNT [database]    database secrets engine
#   VAULT_DATABASE_ROLE [aurora-sync]  dynamic Aurora role: <VAULT_DATABASE_MOUNT>/creds/<VAULT_DATABASE_ROLE>
# Optional (defaults in brackets):
#   PG_PORT [5432]  PG_SSLMODE [require]  PG_SCHEMAS ["customers orders"]
#   PG_CREATION_STATEMENTS / PG_REVOCATION_STATEMENTS   override the generated SQL (';'-separated)
#   PG_PASSWORD_AUTHENTICATION [scram-sha-256]  PG_RECONFIGURE [0]  DB_CONNECTION [aurora] (Vault's name for it)
#   DB_DEFAULT_TTL [1h]  DB_MAX_TTL [24h]  TOKEN_TTL [1h]  TOKEN_MAX_TTL [24h]
#   ENABLE_APPROLE [1]  ENABLE_AWS_AUTH [1]  ROTATE_ROOT [1]
#   PG_CONNECTION_LIMIT [10]           CONNECTION LIMIT of each dynamic user (docs/security.md: the budget)
#   AUDIT_DEVICE [1]  AUDIT_FILE_PATH [/vault/logs/aurora-sync-audit.log]
#                                      an audit device is enabled first, so every later change is recorded;
#                                      an existing one is kept. OpenBao accepts audit devices only from its
#                                      server configuration: there setup.sh stops and prints the stanza to add
#   AWS_STS_REGION [us-east-1]  AWS_STS_ENDPOINT [global]  AWS_IAM_SERVER_ID (X-Vault-AWS-IAM-Server-ID)
#   VAULT_BIN [vault, else bao]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VAULT_BIN="${VAULT_BIN:-$(command -v vault || command -v bao || true)}"
[[ -n "${VAULT_BIN}" ]] || { echo "error: neither vault nor bao is on PATH (set VAULT_BIN)" >&2; exit 1; }
: "${VAULT_ADDR:?set VAULT_ADDR}" "${VAULT_TOKEN:?set VAULT_TOKEN (operator token)}"
: "${PG_HOST:?}" "${PG_DATABASE:?}" "${PG_ADMIN_USER:?}"
export VAULT_ADDR VAULT_TOKEN

PG_PORT="${PG_PORT:-5432}"
PG_SSLMODE="${PG_SSLMODE:-require}"
PG_SCHEMAS="${PG_SCHEMAS:-customers orders}"
DB_DEFAULT_TTL="${DB_DEFAULT_TTL:-1h}"
DB_MAX_TTL="${DB_MAX_TTL:-24h}"
TOKEN_TTL="${TOKEN_TTL:-1h}"
TOKEN_MAX_TTL="${TOKEN_MAX_TTL:-24h}"
ENABLE_APPROLE="${ENABLE_APPROLE:-1}"
ENABLE_AWS_AUTH="${ENABLE_AWS_AUTH:-1}"
ROTATE_ROOT="${ROTATE_ROOT:-1}"
AWS_STS_REGION="${AWS_STS_REGION:-us-east-1}"
PG_CONNECTION_LIMIT="${PG_CONNECTION_LIMIT:-10}"
AUDIT_DEVICE="${AUDIT_DEVICE:-1}"
AUDIT_FILE_PATH="${AUDIT_FILE_PATH:-/vault/logs/aurora-sync-audit.log}"
# The names the tasks use (Terraform's outputs vault_*, see above); the policies are rendered with them below.
VAULT_ROLE="${VAULT_ROLE:-aurora-sync}"
VAULT_AUTH_MOUNT="${VAULT_AUTH_MOUNT:-aws}"
VAULT_POLICY="${VAULT_POLICY:-aurora-sync}"
VAULT_KV_MOUNT="${VAULT_KV_MOUNT:-kv}"
VAULT_KV_PREFIX="${VAULT_KV_PREFIX:-aurora-sync}"
VAULT_DATABASE_MOUNT="${VAULT_DATABASE_MOUNT:-database}"
VAULT_DATABASE_ROLE="${VAULT_DATABASE_ROLE:-aurora-sync}"
VAULT_TASK_ROLE_ARNS="${VAULT_TASK_ROLE_ARNS:-${TASK_ROLE_ARN:-}}"
DB_CONNECTION="${DB_CONNECTION:-aurora}"
POLICY_NAMES=(VAULT_POLICY VAULT_KV_MOUNT VAULT_KV_PREFIX VAULT_DATABASE_MOUNT VAULT_DATABASE_ROLE)
for name in VAULT_ROLE VAULT_POLICY VAULT_DATABASE_ROLE DB_CONNECTION; do
  [[ "${!name}" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "error: ${name}='${!name}': use letters, digits, '.', '_', '-'" >&2; exit 1; }
done
for name in VAULT_AUTH_MOUNT VAULT_KV_MOUNT VAULT_KV_PREFIX VAULT_DATABASE_MOUNT; do
  [[ "${!name}" =~ ^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$ ]] ||
    { echo "error: ${name}='${!name}': use letters, digits, '.', '_', '-' and inner '/'" >&2; exit 1; }
done
if [[ "${ENABLE_AWS_AUTH}" == "1" && -z "${VAULT_TASK_ROLE_ARNS}" ]]; then
  echo "error: set VAULT_TASK_ROLE_ARNS to the ECS task role ARNs (terraform output -raw vault_task_role_arns)" >&2
  exit 1
fi

v() { "${VAULT_BIN}" "$@"; }
# $1: secrets|auth. No `| grep -q`: with pipefail, grep exiting early fails the pipeline (SIGPIPE)
mounted() { local list; list="$(v "$1" list -format=json)"; [[ "${list}" == *"\"$2/\""* ]]; }

schemas_sql="$(for s in ${PG_SCHEMAS//,/ }; do printf '"%s", ' "$s"; done)"
schemas_sql="${schemas_sql%, }"
# Aurora PostgreSQL (rds_replication exists on every supported Aurora PostgreSQL version): logical
# replication for CDC plus SELECT on the replicated schemas, nothing else. On Aurora PostgreSQL 16+
# the admin role needs `GRANT rds_replication TO <admin> WITH ADMIN OPTION` to hand it out.
# (plain `if`s, not ${VAR:-default}: the first `}` of `{{name}}` would end the expansion)
if [[ -z "${PG_CREATION_STATEMENTS:-}" ]]; then
  PG_CREATION_STATEMENTS="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' CONNECTION LIMIT ${PG_CONNECTION_LIMIT};
ALTER ROLE \"{{name}}\" SET idle_in_transaction_session_timeout = '10min';
GRANT rds_replication TO \"{{name}}\";
GRANT USAGE ON SCHEMA ${schemas_sql} TO \"{{name}}\";
GRANT SELECT ON ALL TABLES IN SCHEMA ${schemas_sql} TO \"{{name}}\";"
fi
if [[ -z "${PG_REVOCATION_STATEMENTS:-}" ]]; then
  PG_REVOCATION_STATEMENTS="REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA ${schemas_sql} FROM \"{{name}}\";
REVOKE USAGE ON SCHEMA ${schemas_sql} FROM \"{{name}}\";
DROP ROLE IF EXISTS \"{{name}}\";"
fi

if [[ "${AUDIT_DEVICE}" == "1" ]]; then
  echo "== audit device"
  devices="$(v audit list -format=json)"
  if [[ -n "${devices//[[:space:]\{\}]/}" ]]; then
    # keep what the operators run (a file, socket or syslog device, or OpenBao's declared ones)
    echo "   already enabled: $(printf '%s' "${devices}" | grep -o '"[^"]*/": *{' | tr -d '":{ ' | tr '\n' ' ')"
  elif ! out="$(v audit enable -path=aurora-sync file file_path="${AUDIT_FILE_PATH}" 2>&1)"; then
    if [[ "${out}" == *"declarative"* ]]; then
      printf '%s\n' "error: this server (OpenBao) accepts audit devices only from its configuration file. Add" "" \
        "  audit \"file\" \"aurora-sync\" { options { file_path = \"${AUDIT_FILE_PATH}\" } }" "" \
        "to the server configuration, restart it and run setup.sh again (nothing was changed)." >&2
    else
      printf 'error: could not enable the audit device at %s: %s\n' "${AUDIT_FILE_PATH}" "${out}" >&2
    fi
    exit 1
  else
    echo "   file device aurora-sync/ writing ${AUDIT_FILE_PATH}"
  fi
fi

echo "== secrets engines"
mounted secrets "${VAULT_KV_MOUNT}" || v secrets enable -path="${VAULT_KV_MOUNT}" -version=2 kv
mounted secrets "${VAULT_DATABASE_MOUNT}" || v secrets enable -path="${VAULT_DATABASE_MOUNT}" database

configure_connection() {
  : "${PG_ADMIN_PASSWORD:?set PG_ADMIN_PASSWORD (sent on stdin)}"
  # scram-sha-256: Vault hashes the password itself, so no plaintext password reaches PostgreSQL's
  # statement log or pgaudit when it creates a user
  printf '%s' "${PG_ADMIN_PASSWORD}" | v write "${VAULT_DATABASE_MOUNT}/config/${DB_CONNECTION}" \
    plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@${PG_HOST}:${PG_PORT}/${PG_DATABASE}?sslmode=${PG_SSLMODE}" \
    username="${PG_ADMIN_USER}" password=- \
    password_authentication="${PG_PASSWORD_AUTHENTICATION:-scram-sha-256}" \
    allowed_roles="${VAULT_DATABASE_ROLE}" verify_connection=true >/dev/null
  if [[ "${ROTATE_ROOT}" == "1" ]]; then
    # from now on only Vault knows the admin password
    v write -force "${VAULT_DATABASE_MOUNT}/rotate-root/${DB_CONNECTION}" >/dev/null
  fi
}

echo "== database connection ${VAULT_DATABASE_MOUNT}/config/${DB_CONNECTION}"
if v read "${VAULT_DATABASE_MOUNT}/config/${DB_CONNECTION}" >/dev/null 2>&1 && [[ "${PG_RECONFIGURE:-0}" != "1" ]]; then
  # after rotate-root only Vault knows the admin password: rewriting needs a new one (PG_RECONFIGURE=1)
  echo "   exists, kept (PG_RECONFIGURE=1 rewrites it with PG_ADMIN_PASSWORD)"
  allowed="$(v read -format=json -field=allowed_roles "${VAULT_DATABASE_MOUNT}/config/${DB_CONNECTION}")"
  if [[ "${allowed}" != *"\"${VAULT_DATABASE_ROLE}\""* ]]; then
    # a renamed role: an update keeps the other settings (and the password only Vault knows)
    allowed="${allowed//[][\"[:space:]]/}"
    v write "${VAULT_DATABASE_MOUNT}/config/${DB_CONNECTION}" allowed_roles="${allowed:+${allowed},}${VAULT_DATABASE_ROLE}" >/dev/null
    echo "   allowed_roles now include ${VAULT_DATABASE_ROLE}"
  fi
else
  configure_connection
fi

echo "== dynamic role ${VAULT_DATABASE_MOUNT}/roles/${VAULT_DATABASE_ROLE} (ttl ${DB_DEFAULT_TTL}, max ${DB_MAX_TTL})"
v write "${VAULT_DATABASE_MOUNT}/roles/${VAULT_DATABASE_ROLE}" \
  db_name="${DB_CONNECTION}" \
  creation_statements="${PG_CREATION_STATEMENTS}" \
  revocation_statements="${PG_REVOCATION_STATEMENTS}" \
  default_ttl="${DB_DEFAULT_TTL}" max_ttl="${DB_MAX_TTL}" >/dev/null

# The policy files name mounts and roles as ${VAULT_...} placeholders: the names above replace them.
render_policy() {
  local text name
  text="$(<"$1")"
  for name in "${POLICY_NAMES[@]}"; do
    text="${text//"\${${name}}"/"${!name}"}"
  done
  if [[ "${text}" == *'${'* ]]; then
    echo "error: $1 has a placeholder other than ${POLICY_NAMES[*]}" >&2
    return 1
  fi
  printf '%s\n' "${text}"
}

echo "== policies ${VAULT_POLICY} (the tasks'), ${VAULT_POLICY}-rotate (key rotation)"
render_policy "${HERE}/policies/aurora-sync.hcl" | v policy write "${VAULT_POLICY}" - >/dev/null
render_policy "${HERE}/policies/aurora-sync-rotate.hcl" | v policy write "${VAULT_POLICY}-rotate" - >/dev/null

token_settings=(token_policies="${VAULT_POLICY}" token_no_default_policy=true token_type=service
                token_ttl="${TOKEN_TTL}" token_max_ttl="${TOKEN_MAX_TTL}")

if [[ "${ENABLE_APPROLE}" == "1" ]]; then
  echo "== approle auth role auth/approle/role/${VAULT_ROLE}"
  mounted auth approle || v auth enable approle
  # secret_id_num_uses=0: follow mode logs in again when its token reaches token_max_ttl
  v write "auth/approle/role/${VAULT_ROLE}" "${token_settings[@]}" \
    secret_id_ttl="${SECRET_ID_TTL:-24h}" secret_id_num_uses=0 >/dev/null
fi

if [[ "${ENABLE_AWS_AUTH}" == "1" ]]; then
  echo "== aws auth role auth/${VAULT_AUTH_MOUNT}/role/${VAULT_ROLE} bound to ${VAULT_TASK_ROLE_ARNS}"
  mounted auth "${VAULT_AUTH_MOUNT}" || v auth enable -path="${VAULT_AUTH_MOUNT}" aws
  client_config=(sts_region="${AWS_STS_REGION}")
  if [[ -n "${AWS_STS_ENDPOINT:-}" ]]; then client_config+=(sts_endpoint="${AWS_STS_ENDPOINT}"); fi
  if [[ -n "${AWS_IAM_SERVER_ID:-}" ]]; then client_config+=(iam_server_id_header_value="${AWS_IAM_SERVER_ID}"); fi
  v write "auth/${VAULT_AUTH_MOUNT}/config/client" "${client_config[@]}" >/dev/null
  # a comma-separated list binds every pipeline's task role
  v write "auth/${VAULT_AUTH_MOUNT}/role/${VAULT_ROLE}" auth_type=iam bound_iam_principal_arn="${VAULT_TASK_ROLE_ARNS}" \
    resolve_aws_unique_ids=true "${token_settings[@]}" >/dev/null
fi

echo "done: role ${VAULT_ROLE} (policy ${VAULT_POLICY}) reads ${VAULT_KV_MOUNT}/data/${VAULT_KV_PREFIX}/* and ${VAULT_DATABASE_MOUNT}/creds/${VAULT_DATABASE_ROLE}"
