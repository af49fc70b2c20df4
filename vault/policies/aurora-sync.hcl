# aurora-sync: what the sync task may do in Vault, and nothing else.
# Attached to the AWS auth role (ECS task role) and the AppRole role by vault/setup.sh, with
# token_no_default_policy=true, so these paths are the token's whole world.
# Names assume the layout in docs/secrets.md: KV v2 at kv/, database engine at database/, role aurora-sync.

# Static secrets (Snowflake key pair and passphrase, a static Aurora password if any): read the
# current or a given version. No list, no metadata, no write: rotation is done by operators.
path "kv/data/aurora-sync/*" {
  capabilities = ["read"]
}

# Dynamic, short-lived Aurora credentials: each read creates a database user with a lease.
path "database/creds/aurora-sync" {
  capabilities = ["read"]
}

# Renew and revoke the leases of those credentials only. The runner passes the lease id in the
# URL (sys/leases/renew/<lease_id>), so the path limits the token to leases under database/creds/aurora-sync;
# the body-only form (sys/leases/renew with lease_id in JSON) is deliberately not granted.
path "sys/leases/renew/database/creds/aurora-sync/*" {
  capabilities = ["update"]
}

path "sys/leases/revoke/database/creds/aurora-sync/*" {
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
