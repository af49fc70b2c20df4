# modules/monitoring: every alarm pages through SNS; staleness from RunSucceeded, missing = breaching.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name_prefix          = "aurora-snowflake-sync-prod"
  region               = "eu-west-1"
  account_id           = "111122223333"
  pipelines            = ["customers_orders"]
  metric_namespace     = "AuroraSnowflakeSync"
  kms_key_arn          = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000002"
  alert_subscriptions  = [{ protocol = "https", endpoint = "https://events.example.com/integration/enqueue" }]
  staleness_minutes    = 45
  slot_wal_alarm_bytes = 21474836480
  lag_alarm_seconds    = 900
  task_log_group_name  = "/ecs/aurora-snowflake-sync-prod"
  log_retention_days   = 365
  cluster_arn          = "arn:aws:ecs:eu-west-1:111122223333:cluster/aurora-snowflake-sync-prod"
  dlq_name             = "aurora-snowflake-sync-prod-schedules-dlq"
}

run "monitoring" {
  command = apply

  module {
    source = "./modules/monitoring"
  }

  override_resource {
    target = aws_sns_topic.alerts
    values = { arn = "arn:aws:sns:eu-west-1:111122223333:aurora-snowflake-sync-prod-alerts" }
  }

  assert {
    condition = alltrue([
      for a in concat(values(aws_cloudwatch_metric_alarm.pipeline), [aws_cloudwatch_metric_alarm.error_logs, aws_cloudwatch_metric_alarm.dlq_depth, aws_cloudwatch_metric_alarm.task_failed]) :
      a.alarm_actions == toset(["arn:aws:sns:eu-west-1:111122223333:aurora-snowflake-sync-prod-alerts"]) && a.actions_enabled
    ])
    error_message = "Every alarm must notify the alerts topic."
  }

  assert {
    condition     = aws_sns_topic.alerts.kms_master_key_id == var.kms_key_arn && one(values(aws_sns_topic_subscription.alerts)).protocol == "https"
    error_message = "The alerts topic must be KMS-encrypted and subscribed."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-stale"].metric_name == "RunSucceeded" &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-stale"].statistic == "Sum" &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-stale"].comparison_operator == "LessThanThreshold" &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-stale"].threshold == 1 &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-stale"].period == 45 * 60 &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-stale"].treat_missing_data == "breaching" &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-stale"].dimensions == tomap({ Pipeline = "customers_orders" })
    )
    error_message = "Staleness: Sum(RunSucceeded) < 1 over staleness_minutes, missing data breaching."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-slot-wal"].metric_name == "SlotRetainedWalBytes" &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-slot-wal"].threshold == 21474836480 &&
      aws_cloudwatch_metric_alarm.pipeline["customers_orders-slot-wal"].namespace == "AuroraSnowflakeSync"
    )
    error_message = "Slot WAL alarm must watch SlotRetainedWalBytes."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.dlq_depth.namespace == "AWS/SQS" &&
      aws_cloudwatch_metric_alarm.dlq_depth.dimensions == tomap({ QueueName = "aurora-snowflake-sync-prod-schedules-dlq" })
    )
    error_message = "DLQ depth alarm must watch the schedules' dead-letter queue."
  }

  assert {
    condition = (
      aws_cloudwatch_log_metric_filter.errors.pattern == "{ $.level = \"ERROR\" }" &&
      aws_cloudwatch_log_metric_filter.errors.log_group_name == var.task_log_group_name &&
      aws_cloudwatch_metric_alarm.error_logs.metric_name == one(aws_cloudwatch_log_metric_filter.errors.metric_transformation).name
    )
    error_message = "ERROR log lines must feed the error-log alarm."
  }

  assert {
    condition = (
      jsondecode(aws_cloudwatch_event_rule.task_failed.event_pattern).detail.clusterArn == [var.cluster_arn] &&
      jsondecode(aws_cloudwatch_event_rule.task_failed.event_pattern).detail["$or"][0].containers.exitCode[0]["anything-but"] == [0, 3, 143] &&
      aws_cloudwatch_metric_alarm.task_failed.dimensions == tomap({ RuleName = aws_cloudwatch_event_rule.task_failed.name })
    )
    error_message = "Failed tasks (exit code not 0, 3 or 143) of this cluster must raise the task-failed alarm."
  }

  assert {
    condition = alltrue([
      for m in ["RowsExtracted", "RowsLoaded", "RunDurationSeconds", "LagSeconds", "SlotRetainedWalBytes", "DeadLetters", "ErrorLogLines"] :
      strcontains(aws_cloudwatch_dashboard.this.dashboard_body, m)
    ]) && strcontains(aws_cloudwatch_dashboard.this.dashboard_body, "AuroraSnowflakeSync,Pipeline,Table")
    error_message = "The dashboard must show rows, duration, lag, slot WAL and errors per table."
  }
}
