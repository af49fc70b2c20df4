# aurora-sync-rotate: for the operator (or CI job) that rotates the Snowflake key pair.
# Writes new versions of the pipeline's KV secrets and reads their version history; it cannot read
# database credentials or any other team's secrets. Not attached to the sync task.

path "kv/data/aurora-sync/*" {
  capabilities = ["create", "update", "read"]
}

path "kv/metadata/aurora-sync/*" {
  capabilities = ["read", "list"]
}
