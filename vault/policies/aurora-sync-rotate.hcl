# aurora-sync-rotate: for the operator (or CI job) that rotates the Snowflake key pair (docs/secrets.md#rotation).
# vault/setup.sh writes it as policy ${VAULT_POLICY}-rotate, placeholders replaced as in aurora-sync.hcl. Writes new
# versions of the pipeline's KV secrets and reads their version history; it cannot read database credentials or
# any other team's secrets. Not attached to the sync task.

path "${VAULT_KV_MOUNT}/data/${VAULT_KV_PREFIX}/*" {
  capabilities = ["create", "update", "read"]
}

path "${VAULT_KV_MOUNT}/metadata/${VAULT_KV_PREFIX}/*" {
  capabilities = ["read", "list"]
}
