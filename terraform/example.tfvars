# Example values for a production workspace (the IDs are made up). In Terraform Cloud, set these as
# workspace variables rather than committing a tfvars file (docs/deployment.md); CI sets image_tag on
# every release. Nothing here is a secret: the tasks read their secrets from Vault at run time.
# The moto apply test (tests/infra/test_terraform.py) applies this file, overriding only the IDs of the
# network it creates in moto, so it must stay valid.

aws_region          = "eu-west-1"
allowed_account_ids = ["123456789012"]
environment         = "prod"
tags                = { CostCenter = "data-platform", Owner = "data-platform@example.com" }

# The existing network and database.
vpc_id                    = "vpc-0a1b2c3d4e5f60718"
private_subnet_ids        = ["subnet-0a1b2c3d4e5f60718", "subnet-0a1b2c3d4e5f60719", "subnet-0a1b2c3d4e5f6071a"]
private_route_table_ids   = ["rtb-0a1b2c3d4e5f60718"]
aurora_cluster_identifier = "orders-db"
aurora_security_group_id  = "sg-0a1b2c3d4e5f60718"
aurora_port               = 5432

aurora_parameter_group_family    = "aurora-postgresql16"
aurora_max_slot_wal_keep_size_mb = 102400 # 100 GiB; see docs/infrastructure.md

# The release: an immutable tag (git SHA) that CI pushed to the ECR repository.
image_tag = "0f3a9c1"

pipelines = ["customers_orders"]

# Non-secret dlt configuration (dlt's SECTION__KEY convention, as in .dlt/config.toml). The Snowflake names are
# those `aurora-sync snowflake-bootstrap` creates from .dlt/config.toml (docs/deployment.md step 8): other names
# here need the same names in the bootstrap's configuration, or the tasks look for objects that do not exist.
pipeline_environment = {
  CUSTOMERS_ORDERS__DESTINATION_TYPE             = "snowflake"
  DESTINATION__SNOWFLAKE__CREDENTIALS__HOST      = "xy12345.eu-west-1"
  DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE  = "AURORA_SYNC"
  DESTINATION__SNOWFLAKE__CREDENTIALS__WAREHOUSE = "AURORA_SYNC_LOAD_WH"
  DESTINATION__SNOWFLAKE__CREDENTIALS__ROLE      = "AURORA_SYNC_LOADER"
  DESTINATION__SNOWFLAKE__CREDENTIALS__USERNAME  = "AURORA_SYNC_LOADER"
  DESTINATION__SNOWFLAKE__STAGE_NAME             = "AURORA_SYNC.RAW.ARCHIVE_STAGE"
}

# Changing a schedule is a one-line change here.
schedules = {
  customers_orders-incremental = {
    pipeline   = "customers_orders"
    expression = "rate(15 minutes)"
    mode       = "incremental"
  }
  customers_orders-weekly-snapshot = {
    pipeline   = "customers_orders"
    expression = "cron(0 3 ? * SUN *)"
    mode       = "snapshot"
    timezone   = "Europe/Paris"
    # Terabyte tables: N more tasks (0-10) share the chunks of this run's snapshot; raise the database
    # user's CONNECTION LIMIT first (docs/infrastructure.md, "Snapshot helper tasks").
    # snapshot_helper_tasks = 3
  }
}

# Near-real-time instead of the schedules above: one follower per replication slot. The follower holds
# the pipeline's lock, so enabling it for customers_orders means removing customers_orders' schedules.
# The follower lands each batch in S3 and acknowledges the WAL; `merge --pipeline customers_orders` runs
# every merge_interval_minutes (its own schedule and lock, not one of the schedules above) to apply the
# landed batches to Snowflake. 0 = no merge schedule: the follower merges inline.
cdc_follow = {
  enabled                = false
  pipeline               = "customers_orders"
  merge_interval_minutes = 5
}

# Vault: AWS IAM auth with the task role; no token anywhere.
vault_addr = "https://vault.example.com:8200"
vault_role = "aurora-snowflake-sync"

# From `DESC INTEGRATION aurora_sync_s3` in Snowflake.
snowflake_iam_user_arn = "arn:aws:iam::210987654321:user/abc1-s-p2st1234"
snowflake_external_id  = "AB12345_SFCRole=2_eXaMpLeExTeRnAlId0000="

# Alerts and thresholds.
alert_subscriptions  = [{ protocol = "email", endpoint = "data-oncall@example.com" }]
staleness_minutes    = 60
slot_wal_alarm_bytes = 21474836480 # 20 GiB
lag_alarm_seconds    = 900

# CDC follower only: landing (commit -> durable in S3) and merging (landed -> merged into Snowflake).
landing_lag_alarm_seconds = 60
merge_lag_alarm_seconds   = 1200 # 3 merge intervals + 5 minutes, the default when unset

# CI: GitHub Actions on main pushes images and runs the canary through this OIDC provider.
github_repository        = "example-org/aurora-snowflake-sync"
github_oidc_provider_arn = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
