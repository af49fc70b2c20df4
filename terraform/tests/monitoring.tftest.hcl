# modules/monitoring: every alarm pages through SNS; staleness from RunSucceeded, missing = breaching;
# the CDC follower's landing lag (missing = not breaching) and merge lag (missing = breaching).

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

  assert {
    condition     = length(aws_cloudwatch_metric_alarm.land_merge) == 0
    error_message = "No landing or merge alarm without a CDC follower (land_merge = null)."
  }
}

# A follower with a merge every 5 minutes: a landing-lag and a merge-lag alarm, and their dashboard widgets.
run "land_merge" {
  command = apply

  module {
    source = "./modules/monitoring"
  }

  variables {
    land_merge = {
      pipeline                  = "customers_orders"
      landing_lag_alarm_seconds = 60
      merge_interval_minutes    = 5
      merge_lag_alarm_seconds   = 1200
    }
  }

  override_resource {
    target = aws_sns_topic.alerts
    values = { arn = "arn:aws:sns:eu-west-1:111122223333:aurora-snowflake-sync-prod-alerts" }
  }
  override_resource {
    target = aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"]
    values = { arn = "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:aurora-snowflake-sync-prod-customers_orders-landing-lag" }
  }
  override_resource {
    target = aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"]
    values = { arn = "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:aurora-snowflake-sync-prod-customers_orders-merge-lag" }
  }

  assert {
    condition = (
      sort(keys(aws_cloudwatch_metric_alarm.land_merge)) == tolist(["customers_orders-landing-lag", "customers_orders-merge-lag"]) &&
      alltrue([for a in aws_cloudwatch_metric_alarm.land_merge : a.alarm_actions == toset(["arn:aws:sns:eu-west-1:111122223333:aurora-snowflake-sync-prod-alerts"]) && a.ok_actions == a.alarm_actions && a.actions_enabled]) &&
      contains(keys(output.alarm_arns), "customers_orders-landing-lag") && contains(keys(output.alarm_arns), "customers_orders-merge-lag")
    )
    error_message = "The landing-lag and merge-lag alarms must exist and notify (and clear through) the alerts topic."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].alarm_name == "aurora-snowflake-sync-prod-customers_orders-landing-lag" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].namespace == "AuroraSnowflakeSync" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].metric_name == "LandingLagSeconds" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].dimensions == tomap({ Pipeline = "customers_orders" }) &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].statistic == "Maximum" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].comparison_operator == "GreaterThanThreshold" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].threshold == 60 &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].period == 300 &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].evaluation_periods == 2 &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].datapoints_to_alarm == 2
    )
    error_message = "Landing lag: Maximum(LandingLagSeconds) > landing_lag_alarm_seconds in two 5-minute periods in a row."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].treat_missing_data == "notBreaching"
    error_message = "LandingLagSeconds comes per landed batch only: an idle source (no data) must not page."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].alarm_name == "aurora-snowflake-sync-prod-customers_orders-merge-lag" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].namespace == "AuroraSnowflakeSync" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].metric_name == "MergeLagSeconds" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].dimensions == tomap({ Pipeline = "customers_orders" }) &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].statistic == "Maximum" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].comparison_operator == "GreaterThanThreshold" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].threshold == 1200
    )
    error_message = "Merge lag: Maximum(MergeLagSeconds) > merge_lag_alarm_seconds."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].treat_missing_data == "breaching" &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].period == 300 &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].evaluation_periods == 4 &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].datapoints_to_alarm == 4
    )
    error_message = "Merge lag: one period per merge cycle, all the cycles that fit in the threshold (1200 s / 300 s = 4) breaching, and missing data breaching: a merge that stopped emits nothing."
  }

  assert {
    condition = alltrue([
      for m in ["LandingLagSeconds", "MergeLagSeconds", "BatchesMerged", "MergeDurationSeconds"] :
      anytrue([
        for w in jsondecode(aws_cloudwatch_dashboard.this.dashboard_body).widgets :
        strcontains(try(w.properties.metrics[0][0].expression, ""), "{AuroraSnowflakeSync,Pipeline} MetricName=\"${m}\"") if w.type == "metric"
      ])
    ])
    error_message = "The dashboard must show landing lag, merge lag, batches merged and merge duration per pipeline."
  }

  assert {
    condition = alltrue([
      for a in ["aurora-snowflake-sync-prod-customers_orders-landing-lag", "aurora-snowflake-sync-prod-customers_orders-merge-lag"] :
      contains(one([for w in jsondecode(aws_cloudwatch_dashboard.this.dashboard_body).widgets : w if w.type == "alarm"]).properties.alarms, "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:${a}")
    ])
    error_message = "The dashboard's alarm widget must show the landing-lag and merge-lag alarms."
  }
}

# merge_interval_minutes = 0: the follower merges inline, nothing runs `merge`, so no merge-lag alarm (it
# would breach forever on missing data). Landing lag stays. A threshold that is not a multiple of the
# interval evaluates the whole cycles that fit in it.
run "land_merge_inline" {
  command = plan

  module {
    source = "./modules/monitoring"
  }

  variables {
    land_merge = {
      pipeline                  = "customers_orders"
      landing_lag_alarm_seconds = 90
      merge_interval_minutes    = 0
      merge_lag_alarm_seconds   = 300
    }
  }

  assert {
    condition     = sort(keys(aws_cloudwatch_metric_alarm.land_merge)) == tolist(["customers_orders-landing-lag"]) && aws_cloudwatch_metric_alarm.land_merge["customers_orders-landing-lag"].threshold == 90
    error_message = "Inline merging (interval 0) keeps the landing-lag alarm and has no merge-lag alarm."
  }
}

run "merge_lag_periods" {
  command = plan

  module {
    source = "./modules/monitoring"
  }

  variables {
    land_merge = {
      pipeline                  = "customers_orders"
      landing_lag_alarm_seconds = 60
      merge_interval_minutes    = 10
      merge_lag_alarm_seconds   = 2100
    }
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].period == 600 &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].evaluation_periods == 3 &&
      aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].evaluation_periods * aws_cloudwatch_metric_alarm.land_merge["customers_orders-merge-lag"].period <= 2100
    )
    error_message = "35 min over 10-minute cycles: three whole periods, never more than the threshold."
  }
}

# The scheduled verify: a drift alarm per pipeline (any DriftRows, kept until a verify reports none), and a
# verify-stale alarm (no VerifySucceeded for interval + slack hours, missing data breaching) while enabled.
run "verify" {
  command = apply

  module {
    source = "./modules/monitoring"
  }

  variables {
    pipelines = ["customers_orders", "orders_cdc"]
    verify = {
      customers_orders = { interval_hours = 24, slack_hours = 6, enabled = true }
      orders_cdc       = { interval_hours = 24, slack_hours = 6, enabled = false }
    }
  }

  override_resource {
    target = aws_sns_topic.alerts
    values = { arn = "arn:aws:sns:eu-west-1:111122223333:aurora-snowflake-sync-prod-alerts" }
  }
  override_resource {
    target = aws_cloudwatch_metric_alarm.verify["customers_orders-drift"]
    values = { arn = "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:aurora-snowflake-sync-prod-customers_orders-drift" }
  }
  override_resource {
    target = aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"]
    values = { arn = "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:aurora-snowflake-sync-prod-customers_orders-verify-stale" }
  }

  assert {
    condition = (
      sort(keys(aws_cloudwatch_metric_alarm.verify)) == tolist(["customers_orders-drift", "customers_orders-verify-stale", "orders_cdc-drift"]) &&
      alltrue([for a in aws_cloudwatch_metric_alarm.verify : a.alarm_actions == toset(["arn:aws:sns:eu-west-1:111122223333:aurora-snowflake-sync-prod-alerts"]) && a.ok_actions == a.alarm_actions && a.actions_enabled]) &&
      contains(keys(output.alarm_arns), "customers_orders-drift") && contains(keys(output.alarm_arns), "customers_orders-verify-stale")
    )
    error_message = "Every verified pipeline gets a drift alarm, an enabled schedule also a verify-stale alarm, all through the alerts topic."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].alarm_name == "aurora-snowflake-sync-prod-customers_orders-drift" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].namespace == "AuroraSnowflakeSync" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].metric_name == "DriftRows" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].dimensions == tomap({ Pipeline = "customers_orders" }) &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].statistic == "Maximum" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].comparison_operator == "GreaterThanThreshold" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].threshold == 0 &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].evaluation_periods == 1 &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-drift"].treat_missing_data == "ignore"
    )
    error_message = "Drift: Maximum(DriftRows) > 0 per pipeline, and missing data keeps the state (it clears only when a verify reports no drift)."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].alarm_name == "aurora-snowflake-sync-prod-customers_orders-verify-stale" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].metric_name == "VerifySucceeded" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].dimensions == tomap({ Pipeline = "customers_orders" }) &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].statistic == "Sum" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].comparison_operator == "LessThanThreshold" &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].threshold == 1 &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].treat_missing_data == "breaching"
    )
    error_message = "Verify did not run: Sum(VerifySucceeded) < 1, and missing data is breaching (a verify that never started emits nothing)."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].period == 3600 &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].evaluation_periods == 30 &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].datapoints_to_alarm == 30 &&
      aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].period * aws_cloudwatch_metric_alarm.verify["customers_orders-verify-stale"].evaluation_periods <= 604800
    )
    error_message = "Verify did not run: every one of interval + slack (24 + 6) hourly periods without a success, within CloudWatch's 7 days."
  }

  assert {
    condition = alltrue([
      for m in ["DriftRows", "DriftRanges"] :
      anytrue([
        for w in jsondecode(aws_cloudwatch_dashboard.this.dashboard_body).widgets :
        strcontains(try(w.properties.metrics[0][0].expression, ""), "{AuroraSnowflakeSync,Pipeline,Table} MetricName=\"${m}\"") if w.type == "metric"
      ])
      ]) && anytrue([
      for w in jsondecode(aws_cloudwatch_dashboard.this.dashboard_body).widgets :
      strcontains(try(w.properties.metrics[0][0].expression, ""), "{AuroraSnowflakeSync,Pipeline} MetricName=\"VerifySucceeded\"") if w.type == "metric"
    ])
    error_message = "The dashboard must show drifting rows and ranges per table, and verify successes per pipeline."
  }

  assert {
    condition = alltrue([
      for a in ["aurora-snowflake-sync-prod-customers_orders-drift", "aurora-snowflake-sync-prod-customers_orders-verify-stale"] :
      contains(one([for w in jsondecode(aws_cloudwatch_dashboard.this.dashboard_body).widgets : w if w.type == "alarm"]).properties.alarms, "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:${a}")
    ])
    error_message = "The dashboard's alarm widget must show the drift and verify-stale alarms."
  }
}
