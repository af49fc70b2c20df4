"""What we do with the replica besides filling it.

- `verify`: reconcile it with the source (counts, checksums, the drifting keys);
- `restore`: rebuild tables from the S3 archive alone, as of a point in time;
- `snowflake_bootstrap`: the idempotent SQL that prepares a Snowflake account to receive it.

Domain logic on top of `sources/` and `pipelines/`; `runner/commands/` only parses arguments and prints.
"""
