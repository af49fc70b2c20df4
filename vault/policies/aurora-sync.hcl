# aurora-sync: what the sync task may do in Vault, and nothing else.
# vault/setup.sh writes it as policy ${VAULT_POLICY} and attaches it to the AWS auth role (ECS task role) and the
# AppRole role, with token_no_default_policy=true, so these paths are the token's whole world. setup.sh first
# replaces the placeholders with the names Terraform gives the tasks (outputs vault_policy, vault_kv_mount, ...:
# the placeholder is the output's name in capitals; docs/secrets.md#vault-names). With the defaults the paths are
# kv/data/aurora-sync/* and database/creds/aurora-sync.

# Static secrets (Snowflake key pair and passphrase, a static Aurora password if any): read the
# current or a given version. No list, no metadata, no write: rotation is done by operators.
path "${VAULT_KV_MOUNT}/data/${VAULT_KV_PREFIX}/*" {
  capabilities = ["read"]
}

# Dynamic, short-lived Aurora credentials: each read creates a database user with a lease.
path "${VAULT_DATABASE_MOUNT}/creds/${VAULT_DATABASE_ROLE}" {
  capabilities = ["read"]
}

# Renew and revoke the leases of those credentials only. The runner passes the lease id in the
# URL (sys/leases/renew/<lease_id>), so the path limits the token to leases of that role;
# the body-only form (sys/leases/renew with lease_id in JSON) is deliberately not granted.
path "sys/leases/renew/${VAULT_DATABASE_MOUNT}/creds/${VAULT_DATABASE_ROLE}/*" {
  capabilities = ["update"]
}

path "sys/leases/revoke/${VAULT_DATABASE_MOUNT}/creds/${VAULT_DATABASE_ROLE}/*" {
  capabilities = ["update"]
}

# Our own token: check it (tells an expired token from a missing policy), keep it alive in long
# runs, and revoke it at exit.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/revoke-self" {
  capabilities = ["update"]
}
