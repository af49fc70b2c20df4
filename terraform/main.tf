# The only data sources of the root module. Both are answered without touching a real service by the
# mock provider in tests/*.tftest.hcl, and aws_caller_identity is answered by moto in the apply test.
data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  name_prefix = "${var.project_name}-${var.environment}"
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition

  bucket_name = coalesce(var.bucket_name, "${local.name_prefix}-${local.account_id}-${var.aws_region}")

  # The runner's metric namespace (Embedded Metric Format in its JSON logs).
  metric_namespace = "AuroraSnowflakeSync"
  modes            = ["incremental", "snapshot", "cdc"]
  container_name   = "aurora-sync"
  # Must match the USER of the Dockerfile (tests/infra/test_dockerfile.py checks that they agree).
  container_user = "10001:10001"

  log_group_name = "/ecs/${local.name_prefix}"

  # Land/merge split of the follower (var.cdc_follow): 0 = the follower merges inline, no schedule.
  merge_interval_minutes = var.cdc_follow.enabled ? var.cdc_follow.merge_interval_minutes : 0
  # Default threshold: three merge cycles plus five minutes of task start-up and a slow merge; at most the
  # day a CloudWatch alarm can watch.
  merge_lag_alarm_seconds = coalesce(var.merge_lag_alarm_seconds, min((3 * local.merge_interval_minutes + 5) * 60, 86400))

  # Continuous reconciliation: a daily `verify --checksum` per pipeline unless var.verify_schedules says
  # otherwise (docs/operations.md#drift-alarm). Where it reads:
  # - source: the Aurora reader endpoint when var.aurora_reader_endpoint is set. The override is
  #   SOURCES__POSTGRES__CREDENTIALS__HOST, the field dlt resolves the source credentials' host from (the
  #   Vault secret brings only the user and password), in this schedule's RunTask input only: runs, CDC and
  #   merges keep the writer. A verify only reads (READ ONLY sessions, no lock), which a reader serves, and a
  #   full checksum read every day is the load the reader is there to take. Without it, the writer.
  # - Snowflake: the pipeline's own user, role and load warehouse (the incremental task definition's
  #   environment): no second warehouse to create, grant and pay a minimum for. The default hour, 04:00 UTC,
  #   is outside the usual batch windows; with a CDC follower the verify's reads interleave with the merge
  #   cycles on the same warehouse (reads never block a MERGE), and a merge waiting behind a long checksum
  #   query only shows as MergeLagSeconds.
  # settle_seconds: drifting ranges are checked again after this wait, and those the sync caught up on (or is
  # still writing) are in flight, not drift: it must exceed the pipeline's lag (merge interval plus a batch).
  verify_default = { expression = "cron(0 4 * * ? *)", timezone = "UTC", enabled = true, args = [], interval_hours = 24, slack_hours = 6, settle_seconds = 900, auto_repair = false }
  verify_schedules = {
    for p in var.pipelines : p => {
      expression     = try(coalesce(var.verify_schedules[p].expression), local.verify_default.expression)
      timezone       = try(coalesce(var.verify_schedules[p].timezone), local.verify_default.timezone)
      enabled        = try(coalesce(var.verify_schedules[p].enabled), local.verify_default.enabled)
      args           = try(coalescelist(var.verify_schedules[p].args), local.verify_default.args)
      interval_hours = try(coalesce(var.verify_schedules[p].interval_hours), local.verify_default.interval_hours)
      slack_hours    = try(coalesce(var.verify_schedules[p].slack_hours), local.verify_default.slack_hours)
      settle_seconds = try(coalesce(var.verify_schedules[p].settle_seconds), local.verify_default.settle_seconds)
      auto_repair    = try(coalesce(var.verify_schedules[p].auto_repair), local.verify_default.auto_repair)
    }
  }
  verify_environment = { for k, v in { SOURCES__POSTGRES__CREDENTIALS__HOST = var.aurora_reader_endpoint } : k => v if v != null }
  verify_runs = {
    for p, v in local.verify_schedules : p => {
      expression  = v.expression
      timezone    = v.timezone
      enabled     = v.enabled
      args        = v.args
      settle      = v.settle_seconds
      repair      = v.auto_repair
      environment = local.verify_environment
    }
  }

  # A Vault address with a port other than 443 needs its own egress rule.
  vault_port = try(tonumber(regex("^https://[^/:]+:([0-9]+)", var.vault_addr)[0]), 443)

  # Every Vault name the tasks use, in one place. The outputs of the same names (outputs.tf) hand them to
  # vault/setup.sh, which reads each from the environment variable named like its output in capitals
  # (vault_role -> VAULT_ROLE), so Vault is set up with exactly what the tasks log in as and read
  # (docs/secrets.md; tests/vault/test_terraform_names.py fails when the two sides disagree).
  vault_names = {
    vault_role           = var.vault_role # AWS auth role (and AppRole role) the tasks log in as
    vault_auth_mount     = "aws"          # where the AWS auth method is mounted
    vault_policy         = "aurora-sync"  # the tasks' policy, vault/policies/aurora-sync.hcl
    vault_kv_mount       = "kv"           # KV v2 mount of the static secrets
    vault_kv_prefix      = "aurora-sync"  # the pipeline's KV secrets: <kv_mount>/data/<kv_prefix>/*
    vault_database_mount = "database"     # database secrets engine
    vault_database_role  = "aurora-sync"  # its dynamic Aurora role: <database_mount>/creds/<database_role>
  }

  # How the tasks find Vault and what they read from it (docs/secrets.md#the-path-scheme). pipeline_environment
  # may override a mapping, or switch one off with "" (a Snowflake key without a passphrase, for example).
  vault_environment = {
    VAULT_ADDR                                                                    = var.vault_addr
    VAULT_AUTH_METHOD                                                             = "aws"
    VAULT_AUTH_MOUNT                                                              = local.vault_names.vault_auth_mount
    VAULT_ROLE                                                                    = local.vault_names.vault_role
    VAULT_KV_MOUNT                                                                = local.vault_names.vault_kv_mount
    "VAULT__SECRETS__SOURCES__POSTGRES__CREDENTIALS"                              = "${local.vault_names.vault_database_mount}/creds/${local.vault_names.vault_database_role}"
    "VAULT__SECRETS__DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY"            = "kv:${local.vault_names.vault_kv_prefix}/snowflake#private_key"
    "VAULT__SECRETS__DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY_PASSPHRASE" = "kv:${local.vault_names.vault_kv_prefix}/snowflake#private_key_passphrase"
  }

  # Non-secret configuration common to every task. Secrets are fetched from Vault by the runner.
  base_environment = merge(
    {
      AWS_REGION                          = var.aws_region
      AWS_DEFAULT_REGION                  = var.aws_region
      DLT_DATA_DIR                        = "/tmp/dlt"
      DESTINATION__FILESYSTEM__BUCKET_URL = "s3://${local.bucket_name}"
      AURORA_SYNC_ENVIRONMENT             = var.environment
      # every object the tasks write is encrypted with the bucket's key (docs/snowflake.md)
      DESTINATION__FILESYSTEM__KWARGS = jsonencode({
        s3_additional_kwargs = { ServerSideEncryption = "aws:kms", SSEKMSKeyId = module.storage.kms_key_arn }
      })
      RUNNER__DEAD_LETTER_URL = "s3://${local.bucket_name}/dead_letter"
      # Without network_timeout the Snowflake connector retries a failing query for ever: a Snowflake incident
      # would hold a merge (or, loading directly, the WAL) until it ends. Bounded, the run fails and the next
      # one retries; the pending package is finished first.
      DESTINATION__SNOWFLAKE__CREDENTIALS__QUERY = jsonencode({ login_timeout = 60, network_timeout = 900 })
    },
    local.vault_environment,
    # production loads Snowflake through the S3 archive stage (pipelines/destinations.py)
    merge([for p in var.pipelines : {
      "${upper(p)}__DESTINATION_TYPE" = "snowflake"
      "${upper(p)}__STAGING_TYPE"     = "pipelines.destinations.archive_filesystem"
    }]...),
    var.pipeline_environment,
  )
}

module "kms" {
  source = "./modules/kms"

  name_prefix = local.name_prefix
  account_id  = local.account_id
  partition   = local.partition
  region      = var.aws_region
}

module "storage" {
  source = "./modules/storage"

  bucket_name                 = local.bucket_name
  name_prefix                 = local.name_prefix
  account_id                  = local.account_id
  partition                   = local.partition
  pipelines                   = var.pipelines
  archive_lifecycle           = var.archive_lifecycle
  dead_letter_expiration_days = var.dead_letter_expiration_days
  # null: the module creates a <bucket>-logs bucket, so server access logs are always on
  access_log_bucket = var.access_log_bucket
}

module "audit" {
  source = "./modules/audit"

  archive_bucket_arn            = module.storage.bucket_arn
  log_bucket                    = module.storage.access_log_bucket
  name_prefix                   = local.name_prefix
  enable_cloudtrail_data_events = var.enable_cloudtrail_data_events
}

module "ecr" {
  source = "./modules/ecr"

  repository_name = local.name_prefix
  kms_key_arn     = module.kms.key_arn
}

module "network" {
  source = "./modules/network"

  name_prefix              = local.name_prefix
  region                   = var.aws_region
  vpc_id                   = var.vpc_id
  subnet_ids               = var.private_subnet_ids
  route_table_ids          = var.private_route_table_ids
  aurora_security_group_id = var.aurora_security_group_id
  aurora_port              = var.aurora_port
  https_egress_cidr_blocks = var.https_egress_cidr_blocks
  extra_egress_ports       = local.vault_port == 443 ? [] : [local.vault_port]
  create_vpc_endpoints     = var.create_vpc_endpoints
}

module "iam" {
  source = "./modules/iam"

  name_prefix              = local.name_prefix
  account_id               = local.account_id
  partition                = local.partition
  region                   = var.aws_region
  pipelines                = var.pipelines
  bucket_arn               = module.storage.bucket_arn
  data_kms_key_arn         = module.storage.kms_key_arn
  log_group_name           = local.log_group_name
  ecr_repository_arn       = module.ecr.repository_arn
  metric_namespace         = local.metric_namespace
  snowflake_iam_user_arn   = var.snowflake_iam_user_arn
  snowflake_external_id    = var.snowflake_external_id
  github_repository        = var.github_repository
  github_oidc_provider_arn = var.github_oidc_provider_arn
  ecs_cluster_name         = local.name_prefix
}

module "ecs" {
  source = "./modules/ecs"

  name_prefix          = local.name_prefix
  region               = var.aws_region
  pipelines            = var.pipelines
  modes                = local.modes
  container_name       = local.container_name
  container_user       = local.container_user
  image                = "${module.ecr.repository_url}:${var.image_tag}"
  canary_image         = var.canary_image_tag == null ? null : "${module.ecr.repository_url}:${var.canary_image_tag}"
  canary_environment   = var.canary_environment
  environment          = local.base_environment
  task_sizes           = var.task_sizes
  cpu_architecture     = var.cpu_architecture
  stop_timeout_seconds = var.stop_timeout_seconds
  task_role_arns       = module.iam.task_role_arns
  execution_role_arn   = module.iam.execution_role_arn
  log_group_name       = local.log_group_name
  log_retention_days   = var.log_retention_days
  kms_key_arn          = module.kms.key_arn
  subnet_ids           = var.private_subnet_ids
  security_group_ids   = [module.network.task_security_group_id]
  cdc_follow           = var.cdc_follow
}

module "scheduling" {
  source = "./modules/scheduling"

  name_prefix          = local.name_prefix
  account_id           = local.account_id
  partition            = local.partition
  region               = var.aws_region
  schedules            = var.schedules
  retry                = var.schedule_retry
  merge                = var.cdc_follow.enabled ? { pipeline = var.cdc_follow.pipeline, interval_minutes = local.merge_interval_minutes } : null
  verify               = local.verify_runs
  cluster_arn          = module.ecs.cluster_arn
  task_definition_arns = module.ecs.task_definition_arns
  container_name       = local.container_name
  pass_role_arns       = concat(values(module.iam.task_role_arns), [module.iam.execution_role_arn])
  subnet_ids           = var.private_subnet_ids
  security_group_ids   = [module.network.task_security_group_id]
  kms_key_arn          = module.kms.key_arn
}

module "monitoring" {
  source = "./modules/monitoring"

  name_prefix          = local.name_prefix
  region               = var.aws_region
  account_id           = local.account_id
  pipelines            = var.pipelines
  metric_namespace     = local.metric_namespace
  kms_key_arn          = module.kms.key_arn
  alert_subscriptions  = var.alert_subscriptions
  staleness_minutes    = var.staleness_minutes
  slot_wal_alarm_bytes = var.slot_wal_alarm_bytes
  lag_alarm_seconds    = var.lag_alarm_seconds
  task_log_group_name  = module.ecs.log_group_name
  log_retention_days   = var.log_retention_days
  cluster_arn          = module.ecs.cluster_arn
  dlq_name             = module.scheduling.dead_letter_queue_name

  # The scheduled verify's drift and verify-stale alarms.
  verify = { for p, v in local.verify_schedules : p => { interval_hours = v.interval_hours, slack_hours = v.slack_hours, enabled = v.enabled } }

  # The follower's landing and merge alarms (null without a follower).
  land_merge = var.cdc_follow.enabled ? {
    pipeline                  = var.cdc_follow.pipeline
    landing_lag_alarm_seconds = var.landing_lag_alarm_seconds
    merge_interval_minutes    = local.merge_interval_minutes
    merge_lag_alarm_seconds   = local.merge_lag_alarm_seconds
  } : null
}

module "aurora" {
  source = "./modules/aurora"

  name_prefix               = local.name_prefix
  family                    = var.aurora_parameter_group_family
  cluster_identifier        = var.aurora_cluster_identifier
  max_slot_wal_keep_size_mb = var.aurora_max_slot_wal_keep_size_mb
  check_cluster             = var.aurora_check_parameter_group
}
