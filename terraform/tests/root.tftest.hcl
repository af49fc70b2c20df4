# The whole root configuration under the mock provider: module wiring, outputs and every variable
# validation. Module internals are asserted in the per-module files next to this one.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  aws_region                = "eu-west-1"
  environment               = "prod"
  vpc_id                    = "vpc-0123456789abcdef0"
  private_subnet_ids        = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  private_route_table_ids   = ["rtb-0123456789abcdef0"]
  aurora_cluster_identifier = "orders-db"
  aurora_security_group_id  = "sg-0123456789abcdef0"
  image_tag                 = "3f2c1ab"
  pipeline_environment = {
    DESTINATION__SNOWFLAKE__CREDENTIALS__HOST                          = "xy12345.eu-west-1"
    "VAULT__SECRETS__DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY" = "kv:aurora-sync/snowflake#private_key"
  }
  vault_addr             = "https://vault.example.com:8200"
  snowflake_iam_user_arn = "arn:aws:iam::999988887777:user/abcd-s-v2st1234"
  snowflake_external_id  = "AB12345_SFCRole=2_abcdefghijklmnopqrstuvwxyz0="
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
      args       = ["--tables", "customers.accounts"]
    }
  }
}

run "defaults_apply" {
  command = apply

  # Distinct ARNs per task definition, so that "the schedule runs the right one" can fail.
  override_resource {
    target = module.ecs.aws_ecs_task_definition.this["customers_orders/incremental"]
    values = { arn = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-incremental:7" }
  }
  override_resource {
    target = module.ecs.aws_ecs_task_definition.this["customers_orders/snapshot"]
    values = { arn = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:4" }
  }
  override_resource {
    target = module.ecs.aws_ecs_task_definition.this["customers_orders/cdc"]
    values = { arn = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-cdc:9" }
  }

  assert {
    condition     = jsondecode(local.base_environment["DESTINATION__SNOWFLAKE__CREDENTIALS__QUERY"]).network_timeout > 0
    error_message = "Every task bounds the Snowflake connector's retries (network_timeout): unbounded, one failing query holds a run for ever."
  }

  # vault/setup.sh creates what the outputs vault_* name (docs/secrets.md): they must be what the tasks use.
  assert {
    condition = (
      output.vault_role == "aurora-sync" && local.base_environment["VAULT_ROLE"] == output.vault_role &&
      local.base_environment["VAULT_AUTH_METHOD"] == "aws" && local.base_environment["VAULT_AUTH_MOUNT"] == output.vault_auth_mount &&
      local.base_environment["VAULT_KV_MOUNT"] == output.vault_kv_mount &&
      local.base_environment["VAULT__SECRETS__SOURCES__POSTGRES__CREDENTIALS"] == "${output.vault_database_mount}/creds/${output.vault_database_role}" &&
      local.base_environment["VAULT__SECRETS__DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY_PASSPHRASE"] == "kv:${output.vault_kv_prefix}/snowflake#private_key_passphrase"
    )
    error_message = "The tasks' Vault role, mounts and secret paths must be the vault_* outputs that vault/setup.sh creates them from."
  }

  assert {
    condition     = output.vault_task_role_arns == join(",", [for p in sort(keys(output.task_role_arns)) : output.task_role_arns[p]])
    error_message = "vault_task_role_arns must list every pipeline's task role (setup.sh binds the AWS auth role to them)."
  }

  assert {
    condition     = output.schedule_task_definitions["customers_orders-incremental"] == output.task_definition_arns["customers_orders/incremental"]
    error_message = "The incremental schedule must run the incremental task definition."
  }

  assert {
    condition     = output.schedule_task_definitions["customers_orders-weekly-snapshot"] == "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:4"
    error_message = "The snapshot schedule must run the snapshot task definition."
  }

  assert {
    condition     = length(output.task_definition_arns) == 3 && length(distinct(values(output.task_definition_arns))) == 3
    error_message = "One task definition per mode (incremental, snapshot, cdc) is expected."
  }

  assert {
    condition     = output.cdc_service_name == null
    error_message = "No continuous CDC service unless cdc_follow.enabled."
  }

  assert {
    condition     = length(output.alarm_arns) == 10 && alltrue([for k in ["customers_orders-stale", "customers_orders-slot-wal", "customers_orders-lag", "customers_orders-run-failures", "customers_orders-dead-letters", "customers_orders-drift", "customers_orders-verify-stale", "error-logs", "schedules-dlq", "task-failed"] : contains(keys(output.alarm_arns), k)])
    error_message = "Expected staleness, slot WAL, lag, run failure, dead letter, drift, verify-stale, error log, DLQ and failed task alarms."
  }

  assert {
    condition     = output.canary_task_definition_arns == {} && output.ci_role_arn == null
    error_message = "No canary and no CI role unless asked for."
  }

  assert {
    condition     = keys(output.task_role_arns) == ["customers_orders"]
    error_message = "One task role per pipeline."
  }

  assert {
    condition     = output.aurora_parameter_group_name == "aurora-snowflake-sync-prod-logical-replication"
    error_message = "Unexpected parameter group name."
  }

  assert {
    condition     = output.snapshot_helper_schedules == {} && length(output.schedule_arns) == 3
    error_message = "snapshot_helper_tasks defaults to 0: no helper schedule unless asked for (the two runs and the verify)."
  }

  # Continuous reconciliation by default: every pipeline's verify --checksum, daily, on the incremental task
  # definition; without aurora_reader_endpoint it reads the host the tasks are configured with.
  assert {
    condition = (
      output.verify_schedule_names == { customers_orders = "customers_orders-verify" } &&
      module.scheduling.schedule_task_definitions["customers_orders-verify"] == output.task_definition_arns["customers_orders/incremental"] &&
      local.verify_runs["customers_orders"].expression == "cron(0 4 * * ? *)" &&
      local.verify_runs["customers_orders"].enabled && local.verify_runs["customers_orders"].environment == {} &&
      local.verify_runs["customers_orders"].settle == 900
    )
    error_message = "Every pipeline gets a daily verify --checksum schedule (cron(0 4 * * ? *)) on its incremental task definition, settling drifting ranges for 900 s."
  }

  assert {
    condition     = contains(keys(output.alarm_arns), "customers_orders-verify-stale") && local.verify_schedules["customers_orders"].interval_hours + local.verify_schedules["customers_orders"].slack_hours == 30
    error_message = "The default verify-stale alarm waits a day plus 6 hours of slack."
  }
}

# Snapshot helpers on the weekly snapshot: a <name>-helpers schedule of 3 tasks on the snapshot task
# definition (the command and HELPER_TASKS are asserted in tests/scheduling.tftest.hcl).
run "snapshot_helpers" {
  command   = apply
  state_key = "snapshot_helpers" # a state of its own, so that the override below takes effect

  variables {
    schedules = {
      customers_orders-incremental = {
        pipeline   = "customers_orders"
        expression = "rate(15 minutes)"
        mode       = "incremental"
      }
      customers_orders-weekly-snapshot = {
        pipeline              = "customers_orders"
        expression            = "cron(0 3 ? * SUN *)"
        mode                  = "snapshot"
        snapshot_helper_tasks = 3
      }
    }
  }

  override_resource {
    target = module.ecs.aws_ecs_task_definition.this["customers_orders/snapshot"]
    values = { arn = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:4" }
  }

  assert {
    condition = (
      output.snapshot_helper_schedules == { customers_orders-weekly-snapshot-helpers = { schedule = "customers_orders-weekly-snapshot", task_count = 3 } } &&
      length(output.schedule_arns) == 4
    )
    error_message = "snapshot_helper_tasks = 3 must add one <name>-helpers schedule starting 3 tasks."
  }

  assert {
    condition = (
      output.schedule_task_definitions["customers_orders-weekly-snapshot-helpers"] == "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:4" &&
      output.schedule_task_definitions["customers_orders-weekly-snapshot"] == output.schedule_task_definitions["customers_orders-weekly-snapshot-helpers"]
    )
    error_message = "The helpers must run their coordinator's task definition (same image, role, secrets and environment)."
  }

  assert {
    condition     = length(output.task_definition_arns) == 3
    error_message = "Helpers need no task definition of their own."
  }
}

run "canary_and_ci" {
  command = apply

  variables {
    canary_image_tag         = "4a5b6c7"
    canary_environment       = { DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE = "SYNC_SHADOW" }
    github_repository        = "example-org/aurora-snowflake-sync"
    github_oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/token.actions.githubusercontent.com"
    pipelines                = ["customers_orders", "orders_cdc"]
    cdc_follow               = { enabled = true, pipeline = "orders_cdc" }
  }

  assert {
    condition     = sort(keys(output.canary_task_definition_arns)) == tolist(["customers_orders", "orders_cdc"])
    error_message = "canary_image_tag must add one canary task definition per pipeline."
  }

  assert {
    condition     = length(output.task_definition_arns) == 6 && length(output.task_role_arns) == 2
    error_message = "Each pipeline gets its own task role and one task definition per mode."
  }

  assert {
    condition     = output.ci_role_arn != null
    error_message = "github_repository must create the CI role."
  }

  assert {
    condition     = output.cdc_service_name == "orders_cdc-cdc-follow"
    error_message = "cdc_follow.enabled must create the follower service of its pipeline."
  }
}

# A follower split into land and merge (merge_interval_minutes defaults to 5): the merge schedule runs
# beside it although the follower's pipeline may have no `run` schedule (the merge has its own lock).
run "cdc_follow_land_merge" {
  command   = apply
  state_key = "cdc_follow_land_merge" # a state of its own, so that the override below takes effect

  variables {
    pipelines  = ["customers_orders", "orders_cdc"]
    cdc_follow = { enabled = true, pipeline = "orders_cdc" }
  }

  override_resource {
    target = module.ecs.aws_ecs_task_definition.this["orders_cdc/cdc"]
    values = { arn = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-orders_cdc-cdc:3" }
  }

  assert {
    condition     = output.merge_schedule_name == "orders_cdc-merge" && contains(keys(output.schedule_arns), "orders_cdc-merge") && length(output.schedule_arns) == 5
    error_message = "cdc_follow with the default merge interval must add the <pipeline>-merge schedule to the run schedules."
  }

  assert {
    condition     = output.schedule_task_definitions["orders_cdc-merge"] == "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-orders_cdc-cdc:3"
    error_message = "The merge schedule must run the follower's cdc task definition (the revision this apply registers)."
  }


  assert {
    condition     = length(output.alarm_arns) == 19 && contains(keys(output.alarm_arns), "orders_cdc-landing-lag") && contains(keys(output.alarm_arns), "orders_cdc-merge-lag") && !contains(keys(output.alarm_arns), "customers_orders-merge-lag")
    error_message = "The follower's pipeline (only) gets a landing-lag and a merge-lag alarm."
  }

  assert {
    condition     = local.merge_interval_minutes == 5 && local.merge_lag_alarm_seconds == 1200
    error_message = "Defaults: a merge every 5 minutes, merge-lag threshold 3 intervals + 5 minutes (1200 s)."
  }
}

# merge_interval_minutes = 0: the follower merges inline as before; no schedule, no merge-lag alarm.
run "cdc_follow_merge_inline" {
  command = plan

  variables {
    schedules                 = {}
    cdc_follow                = { enabled = true, pipeline = "customers_orders", merge_interval_minutes = 0 }
    landing_lag_alarm_seconds = 120
  }

  assert {
    condition     = output.merge_schedule_name == null && keys(output.schedule_arns) == ["customers_orders-verify"]
    error_message = "merge_interval_minutes = 0 must not create a merge schedule (the verify schedule stays)."
  }

  assert {
    condition     = contains(keys(output.alarm_arns), "customers_orders-landing-lag") && !contains(keys(output.alarm_arns), "customers_orders-merge-lag")
    error_message = "Inline merging keeps the landing-lag alarm and has no merge-lag alarm."
  }
}

run "cdc_follow_merge_thresholds" {
  command = plan

  variables {
    pipelines               = ["customers_orders", "orders_cdc"]
    cdc_follow              = { enabled = true, pipeline = "orders_cdc", merge_interval_minutes = 2 }
    merge_lag_alarm_seconds = 900
  }

  assert {
    condition     = output.merge_schedule_name == "orders_cdc-merge" && local.merge_interval_minutes == 2 && local.merge_lag_alarm_seconds == 900
    error_message = "merge_interval_minutes and merge_lag_alarm_seconds must reach the schedule and the alarm."
  }
}

run "no_follower_no_merge" {
  command = plan

  variables {
    cdc_follow = { enabled = false, pipeline = "customers_orders", merge_interval_minutes = 5 }
  }

  assert {
    condition     = output.merge_schedule_name == null && length(output.alarm_arns) == 10 && local.merge_interval_minutes == 0
    error_message = "Without a follower there is nothing to merge: no merge schedule, no landing or merge alarm."
  }
}

# verify_schedules overrides one pipeline; the other keeps the default. The reader endpoint reaches the verify
# schedules' input (and only theirs); a paused verify keeps its drift alarm and loses its verify-stale alarm.
run "verify_schedules_override" {
  command = plan

  variables {
    pipelines              = ["customers_orders", "orders_cdc"]
    aurora_reader_endpoint = "orders-db.cluster-ro-abc123.eu-west-1.rds.amazonaws.com"
    verify_schedules = {
      orders_cdc = { expression = "cron(30 1 ? * MON-FRI *)", timezone = "Europe/Paris", args = ["--chunk-rows", "500000"], interval_hours = 72, slack_hours = 12, settle_seconds = 0, auto_repair = true }
    }
  }

  assert {
    condition = (
      sort(keys(output.verify_schedule_names)) == tolist(["customers_orders", "orders_cdc"]) &&
      local.verify_runs["customers_orders"].expression == "cron(0 4 * * ? *)" && local.verify_runs["customers_orders"].timezone == "UTC" &&
      local.verify_runs["orders_cdc"].expression == "cron(30 1 ? * MON-FRI *)" && local.verify_runs["orders_cdc"].timezone == "Europe/Paris" &&
      local.verify_runs["orders_cdc"].args == tolist(["--chunk-rows", "500000"]) && local.verify_runs["orders_cdc"].enabled &&
      local.verify_runs["orders_cdc"].settle == 0 && local.verify_runs["customers_orders"].settle == 900 &&
      local.verify_runs["orders_cdc"].repair && !local.verify_runs["customers_orders"].repair
    )
    error_message = "An entry of verify_schedules overrides its pipeline's schedule; the other pipelines keep the daily default."
  }

  assert {
    condition = (
      module.scheduling.verify_schedule_names["orders_cdc"] == "orders_cdc-verify" &&
      alltrue([for p in ["customers_orders", "orders_cdc"] : local.verify_runs[p].environment == { SOURCES__POSTGRES__CREDENTIALS__HOST = "orders-db.cluster-ro-abc123.eu-west-1.rds.amazonaws.com" }]) &&
      !contains(keys(local.base_environment), "SOURCES__POSTGRES__CREDENTIALS__HOST")
    )
    error_message = "aurora_reader_endpoint must become the verify runs' source host override, not every task's."
  }

  assert {
    condition = (
      contains(keys(output.alarm_arns), "orders_cdc-verify-stale") &&
      local.verify_schedules["orders_cdc"].interval_hours + local.verify_schedules["orders_cdc"].slack_hours == 84 &&
      local.verify_schedules["customers_orders"].interval_hours + local.verify_schedules["customers_orders"].slack_hours == 30
    )
    error_message = "interval_hours and slack_hours must reach the verify-stale alarm, per pipeline."
  }
}

run "verify_schedule_paused" {
  command = plan

  variables {
    verify_schedules = { customers_orders = { enabled = false } }
  }

  assert {
    condition     = !local.verify_runs["customers_orders"].enabled && contains(keys(output.alarm_arns), "customers_orders-drift") && !contains(keys(output.alarm_arns), "customers_orders-verify-stale")
    error_message = "A paused verify schedule keeps its drift alarm and has no verify-stale alarm (it would breach for ever)."
  }
}

# --------------------------------------------------------------------------------------------------
# Every validation rule is expected to fail at least once: rules of different variables share a plan where
# they read no other variable; the rest get one run each.
# --------------------------------------------------------------------------------------------------
run "invalid_single_rule_variables" {
  # One plan for every variable that has one validation rule which reads no other variable: each value
  # below breaks its own variable's rule, and expect_failures fails the run if any of them is accepted
  # (one plan each cost ~1.75 CPU-s; issue 17).
  command = plan
  variables {
    aws_region                       = "Europe"
    allowed_account_ids              = ["1234"]
    project_name                     = "Aurora_Sync"
    environment                      = "production"
    tags                             = { for i in range(41) : "k${i}" => "v" }
    vpc_id                           = "vpc-xyz"
    private_subnet_ids               = ["subnet-0123456789abcdef0"]
    private_route_table_ids          = []
    https_egress_cidr_blocks         = ["snowflake.example.com"]
    aurora_cluster_identifier        = "orders--db-"
    aurora_security_group_id         = "aurora-sg"
    aurora_port                      = 80
    aurora_parameter_group_family    = "postgres16"
    aurora_max_slot_wal_keep_size_mb = 10
    image_tag                        = "latest"
    canary_image_tag                 = "latest"
    canary_environment               = { "DESTINATION__SNOWFLAKE__CREDENTIALS__PASSWORD" = "not-allowed" }
    pipeline_environment             = { "SOURCES__POSTGRES__CREDENTIALS__PASSWORD" = "not-allowed" }
    task_sizes = {
      incremental = { cpu = 1000, memory = 4096 }
      snapshot    = { cpu = 2048, memory = 8192 }
      cdc         = { cpu = 512, memory = 2048 }
    }
    cpu_architecture            = "arm64"
    stop_timeout_seconds        = 30
    schedule_retry              = { maximum_event_age_in_seconds = 30, maximum_retry_attempts = 3 }
    vault_addr                  = "http://vault.example.com:8200"
    vault_role                  = "role with spaces"
    snowflake_iam_user_arn      = "arn:aws:iam::999988887777:role/not-a-user"
    snowflake_external_id       = "x"
    bucket_name                 = "Invalid_Bucket"
    dead_letter_expiration_days = 1
    alert_subscriptions         = [{ protocol = "sms", endpoint = "+15555550100" }]
    staleness_minutes           = 2
    slot_wal_alarm_bytes        = 1024
    lag_alarm_seconds           = 10
    landing_lag_alarm_seconds   = 5
    log_retention_days          = 100
    aurora_reader_endpoint      = "postgresql://orders-db.cluster-ro-abc123.eu-west-1.rds.amazonaws.com:5432"
  }
  expect_failures = [
    var.aws_region,
    var.allowed_account_ids,
    var.project_name,
    var.environment,
    var.tags,
    var.vpc_id,
    var.private_subnet_ids,
    var.private_route_table_ids,
    var.https_egress_cidr_blocks,
    var.aurora_cluster_identifier,
    var.aurora_security_group_id,
    var.aurora_port,
    var.aurora_parameter_group_family,
    var.aurora_max_slot_wal_keep_size_mb,
    var.image_tag,
    var.canary_image_tag,
    var.canary_environment,
    var.pipeline_environment,
    var.task_sizes,
    var.cpu_architecture,
    var.stop_timeout_seconds,
    var.schedule_retry,
    var.vault_addr,
    var.vault_role,
    var.snowflake_iam_user_arn,
    var.snowflake_external_id,
    var.bucket_name,
    var.dead_letter_expiration_days,
    var.alert_subscriptions,
    var.staleness_minutes,
    var.slot_wal_alarm_bytes,
    var.lag_alarm_seconds,
    var.landing_lag_alarm_seconds,
    var.log_retention_days,
    var.aurora_reader_endpoint,
  ]
}

run "invalid_pipelines" {
  command = plan
  variables {
    pipelines  = ["Customers-Orders"]
    cdc_follow = { enabled = true, pipeline = "Customers-Orders" }
    schedules = {
      hourly = { pipeline = "Customers-Orders", expression = "rate(1 hour)", mode = "incremental" }
    }
  }
  expect_failures = [var.pipelines]
}

run "invalid_cdc_follow_pipeline" {
  command = plan
  variables {
    cdc_follow = { enabled = true, pipeline = "unknown_pipeline" }
  }
  expect_failures = [var.cdc_follow]
}

run "invalid_cdc_follow_with_schedules" {
  command = plan
  variables {
    cdc_follow = { enabled = true, pipeline = "customers_orders" }
  }
  expect_failures = [var.cdc_follow]
}

run "invalid_cdc_follow_merge_interval_negative" {
  command = plan
  variables {
    pipelines  = ["customers_orders", "orders_cdc"]
    cdc_follow = { enabled = true, pipeline = "orders_cdc", merge_interval_minutes = -1 }
  }
  expect_failures = [var.cdc_follow]
}

run "invalid_cdc_follow_merge_interval_fraction" {
  command = plan
  variables {
    pipelines  = ["customers_orders", "orders_cdc"]
    cdc_follow = { enabled = true, pipeline = "orders_cdc", merge_interval_minutes = 2.5 }
  }
  expect_failures = [var.cdc_follow]
}

run "invalid_cdc_follow_merge_schedule_name_taken" {
  command = plan
  variables {
    pipelines  = ["customers_orders", "orders_cdc"]
    cdc_follow = { enabled = true, pipeline = "orders_cdc" }
    schedules = {
      orders_cdc-merge = { pipeline = "customers_orders", expression = "rate(1 hour)", mode = "incremental" }
    }
  }
  expect_failures = [var.cdc_follow]
}

run "invalid_schedule_name" {
  command = plan
  variables {
    schedules = {
      "bad name!" = { pipeline = "customers_orders", expression = "rate(1 hour)", mode = "incremental" }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_mode" {
  command = plan
  variables {
    schedules = {
      nightly = { pipeline = "customers_orders", expression = "rate(1 day)", mode = "full" }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_expression" {
  command = plan
  variables {
    schedules = {
      nightly = { pipeline = "customers_orders", expression = "every 5 minutes", mode = "incremental" }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_pipeline" {
  command = plan
  variables {
    schedules = {
      nightly = { pipeline = "unknown_pipeline", expression = "rate(1 day)", mode = "incremental" }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_follow" {
  command = plan
  variables {
    schedules = {
      cdc = { pipeline = "customers_orders", expression = "rate(1 hour)", mode = "cdc", args = ["--follow"] }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_snapshot_helper_tasks" {
  command = plan
  variables {
    schedules = {
      nightly = { pipeline = "customers_orders", expression = "rate(1 day)", mode = "snapshot", snapshot_helper_tasks = 11 }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_snapshot_helper_cdc" {
  command = plan
  variables {
    schedules = {
      drain = { pipeline = "customers_orders", expression = "rate(1 hour)", mode = "cdc", snapshot_helper_tasks = 2 }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_snapshot_helper_name_taken" {
  command = plan
  variables {
    schedules = {
      nightly         = { pipeline = "customers_orders", expression = "rate(1 day)", mode = "snapshot", snapshot_helper_tasks = 2 }
      nightly-helpers = { pipeline = "customers_orders", expression = "rate(1 day)", mode = "incremental" }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_schedule_snapshot_helper_name_too_long" {
  command = plan
  variables {
    schedules = {
      "${join("", [for i in range(57) : "s"])}" = { pipeline = "customers_orders", expression = "rate(1 day)", mode = "snapshot", snapshot_helper_tasks = 1 }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_archive_storage_class" {
  command = plan
  variables {
    archive_lifecycle = { transition_days = 30, storage_class = "REDUCED_REDUNDANCY", expiration_days = 400, noncurrent_expiration_days = 30 }
  }
  expect_failures = [var.archive_lifecycle]
}

run "invalid_archive_days" {
  command = plan
  variables {
    archive_lifecycle = { transition_days = 60, storage_class = "GLACIER_IR", expiration_days = 30, noncurrent_expiration_days = 30 }
  }
  expect_failures = [var.archive_lifecycle]
}

# Below two merge intervals (600 s at the default 5 minutes) a healthy merge would page.
run "invalid_merge_lag_alarm_seconds" {
  command = plan
  variables {
    merge_lag_alarm_seconds = 300
  }
  expect_failures = [var.merge_lag_alarm_seconds]
}

run "invalid_github_repository" {
  command = plan
  variables {
    github_repository        = "not a repo"
    github_oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/token.actions.githubusercontent.com"
  }
  expect_failures = [var.github_repository]
}

run "invalid_github_oidc_provider_arn" {
  command = plan
  variables {
    github_oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/accounts.google.com"
  }
  expect_failures = [var.github_oidc_provider_arn]
}

run "missing_github_oidc_provider_arn" {
  command = plan
  variables {
    github_repository = "example-org/aurora-snowflake-sync"
  }
  expect_failures = [var.github_oidc_provider_arn]
}

run "invalid_schedule_name_taken_by_verify" {
  command = plan
  variables {
    schedules = {
      customers_orders-verify = { pipeline = "customers_orders", expression = "rate(1 day)", mode = "incremental" }
    }
  }
  expect_failures = [var.schedules]
}

run "invalid_verify_schedules_pipeline" {
  command = plan
  variables {
    verify_schedules = { unknown_pipeline = { expression = "cron(0 4 * * ? *)" } }
  }
  expect_failures = [var.verify_schedules]
}

run "invalid_verify_schedules_expression" {
  command = plan
  variables {
    verify_schedules = { customers_orders = { expression = "rate(5 minutes)" } }
  }
  expect_failures = [var.verify_schedules]
}

run "invalid_verify_schedules_settle" {
  command = plan
  variables {
    verify_schedules = { customers_orders = { settle_seconds = -5 } }
  }
  expect_failures = [var.verify_schedules]
}

run "invalid_verify_schedules_hours" {
  command = plan
  variables {
    verify_schedules = { customers_orders = { expression = "rate(7 days)", interval_hours = 168, slack_hours = 6 } }
  }
  expect_failures = [var.verify_schedules]
}
