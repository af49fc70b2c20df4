# modules/scheduling: each schedule runs the task definition of its mode, with retries and a DLQ.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name_prefix = "aurora-snowflake-sync-prod"
  account_id  = "111122223333"
  partition   = "aws"
  region      = "eu-west-1"
  schedules = {
    customers_orders-incremental = { pipeline = "customers_orders", expression = "rate(15 minutes)", mode = "incremental" }
    customers_orders-snapshot    = { pipeline = "customers_orders", expression = "cron(0 3 ? * SUN *)", mode = "snapshot", args = ["--tables", "customers.accounts"], timezone = "Europe/Paris" }
    customers_orders-paused      = { pipeline = "customers_orders", expression = "rate(1 hour)", mode = "cdc", enabled = false }
  }
  retry       = { maximum_event_age_in_seconds = 3600, maximum_retry_attempts = 3 }
  cluster_arn = "arn:aws:ecs:eu-west-1:111122223333:cluster/aurora-snowflake-sync-prod"
  task_definition_arns = {
    "customers_orders/incremental" = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-incremental:7"
    "customers_orders/snapshot"    = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:4"
    "customers_orders/cdc"         = "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-cdc:9"
  }
  container_name     = "aurora-sync"
  pass_role_arns     = ["arn:aws:iam::111122223333:role/task", "arn:aws:iam::111122223333:role/execution"]
  subnet_ids         = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  security_group_ids = ["sg-0123456789abcdef0"]
  kms_key_arn        = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000002"
}

run "scheduling" {
  command = apply

  module {
    source = "./modules/scheduling"
  }

  override_resource {
    target = aws_sqs_queue.dead_letter
    values = { arn = "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" }
  }

  assert {
    condition = alltrue([
      for name, s in aws_scheduler_schedule.this :
      one(one(s.target).ecs_parameters).task_definition_arn == var.task_definition_arns["${var.schedules[name].pipeline}/${var.schedules[name].mode}"]
    ])
    error_message = "Every schedule must run the task definition of its own pipeline and mode."
  }

  assert {
    condition     = one(one(aws_scheduler_schedule.this["customers_orders-snapshot"].target).ecs_parameters).task_definition_arn == "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:4"
    error_message = "The snapshot schedule must run the snapshot task definition."
  }

  assert {
    condition     = jsondecode(one(aws_scheduler_schedule.this["customers_orders-snapshot"].target).input).containerOverrides[0].command == ["run", "--pipeline", "customers_orders", "--mode", "snapshot", "--tables", "customers.accounts"]
    error_message = "The schedule's args must reach the runner's command line."
  }

  assert {
    condition = alltrue([
      for s in aws_scheduler_schedule.this :
      one(s.flexible_time_window).mode == "OFF" &&
      one(one(s.target).retry_policy).maximum_retry_attempts == 3 &&
      one(one(s.target).dead_letter_config).arn == "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" &&
      one(s.target).arn == var.cluster_arn &&
      one(one(one(s.target).ecs_parameters).network_configuration).assign_public_ip == false
    ])
    error_message = "Schedules need the flexible window off, the retry policy, the DLQ and private networking."
  }

  assert {
    condition = (
      aws_scheduler_schedule.this["customers_orders-paused"].state == "DISABLED" &&
      aws_scheduler_schedule.this["customers_orders-incremental"].state == "ENABLED" &&
      aws_scheduler_schedule.this["customers_orders-snapshot"].schedule_expression_timezone == "Europe/Paris"
    )
    error_message = "enabled and timezone must be honoured."
  }

  assert {
    condition = (
      jsondecode(aws_iam_role_policy.scheduler.policy).Statement[0].Action == "ecs:RunTask" &&
      contains(jsondecode(aws_iam_role_policy.scheduler.policy).Statement[0].Resource, "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:*") &&
      jsondecode(aws_iam_role_policy.scheduler.policy).Statement[0].Condition.ArnEquals["ecs:cluster"] == var.cluster_arn
    )
    error_message = "The scheduler may run only these task definition families, only in this cluster."
  }

  assert {
    condition     = aws_sqs_queue.dead_letter.sqs_managed_sse_enabled
    error_message = "The dead-letter queue must be encrypted."
  }

  # snapshot_helper_tasks defaults to 0: no helper schedule, no HELPER_TASKS, one task per run.
  assert {
    condition = (
      length(aws_scheduler_schedule.this) == 3 && output.snapshot_helper_schedules == {} &&
      length([for name in keys(aws_scheduler_schedule.this) : name if endswith(name, "-helpers")]) == 0
    )
    error_message = "Without snapshot_helper_tasks no helper schedule may exist."
  }

  assert {
    condition = alltrue([
      for s in aws_scheduler_schedule.this :
      !contains(keys(jsondecode(one(s.target).input).containerOverrides[0]), "environment") &&
      one(one(s.target).ecs_parameters).task_count == 1
    ])
    error_message = "Without helpers a run's override is its command only (no SOURCES__POSTGRES__SNAPSHOT__HELPER_TASKS) and it starts one task."
  }
}

# The follower's merge: `merge --pipeline P` on the follower's task definition, beside the `run` schedules.
run "merge_schedule" {
  command = apply

  module {
    source = "./modules/scheduling"
  }

  variables {
    merge = { pipeline = "customers_orders", interval_minutes = 5 }
  }

  override_resource {
    target = aws_sqs_queue.dead_letter
    values = { arn = "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" }
  }

  assert {
    condition     = output.merge_schedule_name == "customers_orders-merge" && length(aws_scheduler_schedule.this) == 4
    error_message = "merge with interval_minutes > 0 must add one schedule, <pipeline>-merge, to the run schedules."
  }

  assert {
    condition     = jsondecode(one(aws_scheduler_schedule.this["customers_orders-merge"].target).input).containerOverrides[0].command == ["merge", "--pipeline", "customers_orders"]
    error_message = "The merge schedule must run `merge --pipeline <pipeline>` (the merge lock, not the run lock the follower holds)."
  }

  assert {
    condition = (
      aws_scheduler_schedule.this["customers_orders-merge"].schedule_expression == "rate(5 minutes)" &&
      aws_scheduler_schedule.this["customers_orders-merge"].state == "ENABLED" &&
      one(aws_scheduler_schedule.this["customers_orders-merge"].flexible_time_window).mode == "OFF"
    )
    error_message = "The merge must run every interval_minutes, on time."
  }

  assert {
    condition     = one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).ecs_parameters).task_definition_arn == var.task_definition_arns["customers_orders/cdc"]
    error_message = "The merge must run on the follower's (cdc) task definition: same image, task role and environment."
  }

  assert {
    condition = (
      one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).retry_policy).maximum_event_age_in_seconds == 300 &&
      one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).retry_policy).maximum_retry_attempts == 3 &&
      one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).dead_letter_config).arn == "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" &&
      one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).ecs_parameters).launch_type == "FARGATE" &&
      one(one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).ecs_parameters).network_configuration).assign_public_ip == false &&
      one(one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).ecs_parameters).network_configuration).subnets == toset(var.subnet_ids)
    )
    error_message = "The merge schedule needs the retry policy (events older than one interval dropped), the DLQ and private networking."
  }

  assert {
    condition     = contains(jsondecode(aws_iam_role_policy.scheduler.policy).Statement[0].Resource, "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-cdc:*")
    error_message = "The scheduler role must be allowed to run the cdc task definition family the merge uses."
  }

  assert {
    condition     = jsondecode(one(aws_scheduler_schedule.this["customers_orders-incremental"].target).input).containerOverrides[0].command == ["run", "--pipeline", "customers_orders", "--mode", "incremental"]
    error_message = "The run schedules must keep their commands."
  }
}

run "merge_every_minute" {
  command = plan

  module {
    source = "./modules/scheduling"
  }

  variables {
    merge = { pipeline = "customers_orders", interval_minutes = 1 }
  }

  assert {
    condition = (
      aws_scheduler_schedule.this["customers_orders-merge"].schedule_expression == "rate(1 minute)" &&
      one(one(aws_scheduler_schedule.this["customers_orders-merge"].target).retry_policy).maximum_event_age_in_seconds == 60
    )
    error_message = "EventBridge Scheduler wants rate(1 minute), singular; the event age is at least its 60 s minimum."
  }
}

run "merge_inline" {
  command = plan

  module {
    source = "./modules/scheduling"
  }

  variables {
    merge = { pipeline = "customers_orders", interval_minutes = 0 }
  }

  assert {
    condition     = output.merge_schedule_name == null && !contains(keys(aws_scheduler_schedule.this), "customers_orders-merge") && length(aws_scheduler_schedule.this) == 3
    error_message = "interval_minutes = 0 means the follower merges inline: no merge schedule."
  }
}

# Snapshot helpers: snapshot_helper_tasks = 3 on the snapshot schedule makes its run the coordinator
# (HELPER_TASKS=3 in its override) and adds <name>-helpers, 3 `snapshot-helper` tasks of the same task
# definition at the same times. The other schedules are left as they were.
run "snapshot_helpers" {
  command = apply

  module {
    source = "./modules/scheduling"
  }

  variables {
    schedules = {
      customers_orders-incremental = { pipeline = "customers_orders", expression = "rate(15 minutes)", mode = "incremental" }
      customers_orders-snapshot    = { pipeline = "customers_orders", expression = "cron(0 3 ? * SUN *)", mode = "snapshot", args = ["--tables", "customers.accounts"], timezone = "Europe/Paris", snapshot_helper_tasks = 3 }
      customers_orders-paused      = { pipeline = "customers_orders", expression = "rate(1 hour)", mode = "cdc", enabled = false, snapshot_helper_tasks = 2 }
    }
  }

  override_resource {
    target = aws_sqs_queue.dead_letter
    values = { arn = "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" }
  }

  assert {
    condition = (
      length(aws_scheduler_schedule.this) == 5 &&
      output.snapshot_helper_schedules == {
        customers_orders-snapshot-helpers = { schedule = "customers_orders-snapshot", task_count = 3 }
        customers_orders-paused-helpers   = { schedule = "customers_orders-paused", task_count = 2 }
      }
    )
    error_message = "Each schedule with snapshot_helper_tasks > 0 (and only those) must get one <name>-helpers schedule."
  }

  assert {
    condition = (
      one(one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).ecs_parameters).task_count == 3 &&
      jsondecode(one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).input).containerOverrides == [
        { name = "aurora-sync", command = ["snapshot-helper", "--pipeline", "customers_orders"] }
      ]
    )
    error_message = "The helper schedule must start snapshot_helper_tasks tasks running `snapshot-helper --pipeline <pipeline>` (no --mode, no args, no HELPER_TASKS)."
  }

  assert {
    condition = (
      one(one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).ecs_parameters).task_definition_arn == var.task_definition_arns["customers_orders/snapshot"] &&
      aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].schedule_expression == "cron(0 3 ? * SUN *)" &&
      aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].schedule_expression_timezone == "Europe/Paris" &&
      aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].state == "ENABLED" &&
      aws_scheduler_schedule.this["customers_orders-paused-helpers"].state == "DISABLED" &&
      one(one(aws_scheduler_schedule.this["customers_orders-paused-helpers"].target).ecs_parameters).task_definition_arn == var.task_definition_arns["customers_orders/cdc"]
    )
    error_message = "Helpers must run the task definition of their run (same image, role, environment), at the same times, paused with it."
  }

  assert {
    condition = (
      one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).arn == var.cluster_arn &&
      one(one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).dead_letter_config).arn == "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" &&
      one(one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).retry_policy).maximum_retry_attempts == 3 &&
      one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].flexible_time_window).mode == "OFF" &&
      one(one(one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).ecs_parameters).network_configuration).assign_public_ip == false &&
      one(one(aws_scheduler_schedule.this["customers_orders-snapshot-helpers"].target).ecs_parameters).launch_type == "FARGATE"
    )
    error_message = "The helper schedule needs the cluster, retry policy, DLQ, window off and private networking of every schedule."
  }

  assert {
    condition = (
      jsondecode(one(aws_scheduler_schedule.this["customers_orders-snapshot"].target).input).containerOverrides == [{
        name        = "aurora-sync"
        command     = ["run", "--pipeline", "customers_orders", "--mode", "snapshot", "--tables", "customers.accounts"]
        environment = [{ name = "SOURCES__POSTGRES__SNAPSHOT__HELPER_TASKS", value = "3" }]
      }] &&
      one(one(aws_scheduler_schedule.this["customers_orders-snapshot"].target).ecs_parameters).task_count == 1
    )
    error_message = "The coordinator (the run) must keep its command and one task, and carry SOURCES__POSTGRES__SNAPSHOT__HELPER_TASKS = \"3\"."
  }

  assert {
    condition = (
      jsondecode(one(aws_scheduler_schedule.this["customers_orders-incremental"].target).input).containerOverrides == [
        { name = "aurora-sync", command = ["run", "--pipeline", "customers_orders", "--mode", "incremental"] }
      ] &&
      !contains(keys(aws_scheduler_schedule.this), "customers_orders-incremental-helpers")
    )
    error_message = "A schedule without helpers must keep its input unchanged (no HELPER_TASKS) and get no helper schedule."
  }

  assert {
    condition     = contains(jsondecode(aws_iam_role_policy.scheduler.policy).Statement[0].Resource, "arn:aws:ecs:eu-west-1:111122223333:task-definition/aurora-snowflake-sync-prod-customers_orders-snapshot:*")
    error_message = "The scheduler role's RunTask permission (task definition families) must already cover the helpers."
  }
}

run "snapshot_helpers_out_of_range" {
  command = plan

  module {
    source = "./modules/scheduling"
  }

  variables {
    schedules = {
      customers_orders-snapshot = { pipeline = "customers_orders", expression = "rate(1 day)", mode = "snapshot", snapshot_helper_tasks = 11 }
    }
  }

  expect_failures = [var.schedules]
}

# Continuous reconciliation: one <pipeline>-verify schedule per entry of var.verify, running `verify --checksum`
# on the pipeline's incremental task definition, with the source host override in its input only.
run "verify_schedules" {
  command = apply

  module {
    source = "./modules/scheduling"
  }

  variables {
    verify = {
      customers_orders = {
        expression  = "cron(0 4 * * ? *)"
        settle      = 900
        repair      = true
        environment = { SOURCES__POSTGRES__CREDENTIALS__HOST = "orders-db.cluster-ro-abc123.eu-west-1.rds.amazonaws.com" }
      }
    }
  }

  override_resource {
    target = aws_sqs_queue.dead_letter
    values = { arn = "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" }
  }

  assert {
    condition     = length(aws_scheduler_schedule.this) == 4 && output.verify_schedule_names == { customers_orders = "customers_orders-verify" }
    error_message = "Each entry of var.verify must add one <pipeline>-verify schedule beside the run schedules."
  }

  assert {
    condition = (
      jsondecode(one(aws_scheduler_schedule.this["customers_orders-verify"].target).input).containerOverrides == [{
        name        = "aurora-sync"
        command     = ["verify", "--pipeline", "customers_orders", "--checksum", "--settle-seconds", "900", "--repair"]
        environment = [{ name = "SOURCES__POSTGRES__CREDENTIALS__HOST", value = "orders-db.cluster-ro-abc123.eu-west-1.rds.amazonaws.com" }]
      }] &&
      one(one(aws_scheduler_schedule.this["customers_orders-verify"].target).ecs_parameters).task_definition_arn == var.task_definition_arns["customers_orders/incremental"] &&
      one(one(aws_scheduler_schedule.this["customers_orders-verify"].target).ecs_parameters).task_count == 1
    )
    error_message = "The verify schedule must run `verify --pipeline <p> --checksum --settle-seconds <s>` on the incremental task definition, with the host override in its input."
  }

  assert {
    condition = (
      aws_scheduler_schedule.this["customers_orders-verify"].schedule_expression == "cron(0 4 * * ? *)" &&
      aws_scheduler_schedule.this["customers_orders-verify"].schedule_expression_timezone == "UTC" &&
      aws_scheduler_schedule.this["customers_orders-verify"].state == "ENABLED" &&
      one(aws_scheduler_schedule.this["customers_orders-verify"].flexible_time_window).mode == "OFF" &&
      one(one(aws_scheduler_schedule.this["customers_orders-verify"].target).dead_letter_config).arn == "arn:aws:sqs:eu-west-1:111122223333:aurora-snowflake-sync-prod-schedules-dlq" &&
      one(one(one(aws_scheduler_schedule.this["customers_orders-verify"].target).ecs_parameters).network_configuration).assign_public_ip == false
    )
    error_message = "The verify schedule needs its expression, the window off, the DLQ and private networking of every schedule."
  }

  assert {
    condition = alltrue([
      for name in ["customers_orders-incremental", "customers_orders-snapshot", "customers_orders-paused"] :
      !contains(keys(jsondecode(one(aws_scheduler_schedule.this[name].target).input).containerOverrides[0]), "environment")
    ])
    error_message = "The reader host override belongs to the verify schedule only: runs keep the writer."
  }
}
