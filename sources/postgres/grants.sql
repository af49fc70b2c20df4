-- The exact privileges aurora-snowflake-sync needs on the source, and nothing more. Run once, as an
-- administrator (Aurora: a member of rds_superuser; elsewhere a superuser), with psql:
--
--   psql "$ADMIN_DSN" -v sync_role=aurora_sync -v schemas=customers,orders \
--        -v publication=aurora_sync_customers_orders -v connection_limit=10 -f sources/postgres/grants.sql
--
-- Idempotent: re-running it updates the role in place. The password is not set here: Vault's database engine
-- creates short-lived users itself (vault/setup.sh uses the same statements), or set one with \password.
-- `aurora-sync doctor` warns when the connected role has more than this (superuser, rds_superuser, a write
-- privilege on a replicated table) or no CONNECTION LIMIT. docs/security.md explains each line.
\set ON_ERROR_STOP on
SELECT set_config('aurora_sync.role', :'sync_role', false),
       set_config('aurora_sync.schemas', :'schemas', false),
       set_config('aurora_sync.publication', :'publication', false),
       set_config('aurora_sync.connection_limit', :'connection_limit', false);

DO $grants$
DECLARE
    sync_role   text := current_setting('aurora_sync.role');
    schema_list text[] := string_to_array(replace(current_setting('aurora_sync.schemas'), ' ', ''), ',');
    publication text := current_setting('aurora_sync.publication');
    conn_limit  int := current_setting('aurora_sync.connection_limit')::int;
    s           text;
    tables      text;
BEGIN
    -- 1. A login role with a connection cap. One run needs at most 2 * (workers + 1) + 3 sessions
    --    (writer and reader pools, the lock, the replication stream and its control session; docs/security.md).
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = sync_role) THEN
        EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE CONNECTION LIMIT %s',
                       sync_role, conn_limit);
    ELSE
        EXECUTE format('ALTER ROLE %I CONNECTION LIMIT %s', sync_role, conn_limit);
    END IF;
    -- 2. Sessions of this role that sit idle inside a transaction are ended: they would hold back vacuum.
    --    (The sync's own sessions set their own timeouts; this covers anything else logged in as the role.)
    EXECUTE format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', sync_role, '10min');
    EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', sync_role, '6h');
    -- 3. Logical replication: the rds_replication role on Aurora/RDS, the REPLICATION attribute elsewhere. A role of
    --    that name on a server that is not RDS (no rds.logical_replication parameter) confers nothing there.
    IF current_setting('rds.logical_replication', true) IS NOT NULL
            AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') THEN
        EXECUTE format('GRANT rds_replication TO %I', sync_role);
    ELSE
        EXECUTE format('ALTER ROLE %I REPLICATION', sync_role);
    END IF;
    -- 4. Read what is replicated, including tables created later; pg_monitor lets the late-commit guard see
    --    other sessions' open transactions (pg_stat_activity.backend_xmin), read-only.
    FOREACH s IN ARRAY schema_list LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, sync_role);
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s, sync_role);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I', s, sync_role);
    END LOOP;
    EXECUTE format('GRANT pg_monitor TO %I', sync_role);
    -- 5. The publication for CDC, created by the administrator (adding a table needs its ownership) and then
    --    owned by the sync role, so `aurora-sync setup`/`teardown` can alter and drop it. Changing a
    --    publication's owner needs CREATE on the database for a moment; it is revoked again right after.
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = publication) THEN
        SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY n.nspname, c.relname) INTO tables
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY (schema_list) AND c.relkind IN ('r', 'p') AND NOT c.relispartition;
        EXECUTE format('CREATE PUBLICATION %I%s WITH (publish_via_partition_root = true)', publication,
                       CASE WHEN tables IS NULL THEN '' ELSE ' FOR TABLE ' || tables END);
    END IF;
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), sync_role);
    EXECUTE format('ALTER PUBLICATION %I OWNER TO %I', publication, sync_role);
    EXECUTE format('REVOKE CREATE ON DATABASE %I FROM %I', current_database(), sync_role);
END
$grants$;
