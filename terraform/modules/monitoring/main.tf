locals {
  pipelines = sort(tolist(var.pipelines))
  alarm_to  = [aws_sns_topic.alerts.arn]

  # Per-pipeline alarms on the runner's Embedded Metric Format metrics (dimension Pipeline).
  pipeline_alarms = merge([
    for p in local.pipelines : {
      "${p}-stale" = {
        pipeline    = p
        description = "No successful run of ${p} for ${var.staleness_minutes} minutes (Sum(RunSucceeded) < 1; no data counts as stale)."
        metric      = "RunSucceeded"
        statistic   = "Sum"
        period      = var.staleness_minutes * 60
        evaluations = 1
        comparison  = "LessThanThreshold"
        threshold   = 1
        missing     = "breaching"
      }
      "${p}-run-failures" = {
        pipeline    = p
        description = "A run of ${p} failed (RunFailures >= 1)."
        metric      = "RunFailures"
        statistic   = "Sum"
        period      = 300
        evaluations = 1
        comparison  = "GreaterThanOrEqualToThreshold"
        threshold   = 1
        missing     = "notBreaching"
      }
      "${p}-slot-wal" = {
        pipeline    = p
        description = "The replication slot of ${p} retains more than ${var.slot_wal_alarm_bytes} bytes of WAL: the consumer is stuck or too slow, and Aurora storage grows."
        metric      = "SlotRetainedWalBytes"
        statistic   = "Maximum"
        period      = 300
        evaluations = 2
        comparison  = "GreaterThanThreshold"
        threshold   = var.slot_wal_alarm_bytes
        missing     = "notBreaching"
      }
      "${p}-lag" = {
        pipeline    = p
        description = "Replication lag of ${p} above ${var.lag_alarm_seconds} s for 15 minutes."
        metric      = "LagSeconds"
        statistic   = "Maximum"
        period      = 300
        evaluations = 3
        comparison  = "GreaterThanThreshold"
        threshold   = var.lag_alarm_seconds
        missing     = "notBreaching"
      }
      "${p}-dead-letters" = {
        pipeline    = p
        description = "${p} wrote rows to dead_letter/ (DeadLetters >= 1)."
        metric      = "DeadLetters"
        statistic   = "Sum"
        period      = 300
        evaluations = 1
        comparison  = "GreaterThanOrEqualToThreshold"
        threshold   = 1
        missing     = "notBreaching"
      }
    }
  ]...)

  failed_task_rule_name = "${var.name_prefix}-task-failed"

  # The follower's two failure domains (var.land_merge): landing (source -> S3, holds the WAL) and
  # merging (S3 -> Snowflake, on a schedule; the WAL is already acknowledged).
  follower = var.land_merge == null ? [] : [var.land_merge]
  land_merge_alarms = merge(
    {
      # Emitted per landed batch only, so an idle source sends nothing: missing data is not breaching. A
      # follower that lands nothing at all is caught by the stale (RunSucceeded) and slot-wal alarms.
      for f in local.follower : "${f.pipeline}-landing-lag" => {
        pipeline    = f.pipeline
        description = "Batches of ${f.pipeline} land in S3 more than ${f.landing_lag_alarm_seconds} s after their newest commit (Maximum of LandingLagSeconds in two 5-minute periods in a row). Source or S3 side; the slot retains WAL meanwhile."
        metric      = "LandingLagSeconds"
        period      = 300
        evaluations = 2
        threshold   = f.landing_lag_alarm_seconds
        missing     = "notBreaching"
      }
    },
    {
      # Every merge cycle reports, even with nothing to merge, so silence means the merge stopped (it
      # fails, or a hung one holds the merge lock and the next ones exit 3): missing data is breaching.
      # One period per merge cycle, and every period of the threshold must breach, so a late or slow
      # cycle does not page while a merge that stopped does, after about the threshold.
      for f in local.follower : "${f.pipeline}-merge-lag" => {
        pipeline    = f.pipeline
        description = "The oldest batch of ${f.pipeline} landed in S3 but not merged into Snowflake is older than ${f.merge_lag_alarm_seconds} s, or no merge has reported for that long (MergeLagSeconds, missing data breaching). Warehouse side; the WAL is not retained and landing goes on."
        metric      = "MergeLagSeconds"
        period      = f.merge_interval_minutes * 60
        evaluations = max(2, floor(f.merge_lag_alarm_seconds / (f.merge_interval_minutes * 60)))
        threshold   = f.merge_lag_alarm_seconds
        missing     = "breaching"
      } if f.merge_interval_minutes > 0
    },
  )
}

# Continuous reconciliation (var.verify): the scheduled `verify --checksum` of each pipeline.
locals {
  verify_alarms = merge(
    {
      # Any drift. Missing data keeps the state: once raised, the alarm clears only when a later verify
      # reports DriftRows = 0 (the drift is repaired), not when the hour of the datapoint has passed.
      for p, v in var.verify : "${p}-drift" => {
        pipeline    = p
        description = "verify --checksum found rows of ${p} that differ between Aurora and Snowflake (Maximum(DriftRows) > 0). Stays in alarm until a verify reports no drift. Runbook: docs/operations.md#drift-alarm."
        metric      = "DriftRows"
        statistic   = "Maximum"
        evaluations = 1
        comparison  = "GreaterThanThreshold"
        threshold   = 0
        missing     = "ignore"
      }
    },
    {
      # The heartbeat: a verify that did not start, failed, or could not verify every table emits no
      # VerifySucceeded = 1. Hourly periods, all of interval + slack hours missing or 0 (hours of 1 h or
      # more may be evaluated over up to 7 days).
      for p, v in var.verify : "${p}-verify-stale" => {
        pipeline    = p
        description = "No verify --checksum of ${p} verified every table in the last ${v.interval_hours + v.slack_hours} hours (Sum(VerifySucceeded) < 1; no data is breaching): drift would go unnoticed."
        metric      = "VerifySucceeded"
        statistic   = "Sum"
        evaluations = v.interval_hours + v.slack_hours
        comparison  = "LessThanThreshold"
        threshold   = 1
        missing     = "breaching"
      } if v.enabled
    },
  )
}

# ------------------------------------------------------------------------------------------------
# Alerts topic
# ------------------------------------------------------------------------------------------------
resource "aws_sns_topic" "alerts" {
  name              = "${var.name_prefix}-alerts"
  kms_master_key_id = var.kms_key_arn
}

resource "aws_sns_topic_policy" "alerts" {
  arn = aws_sns_topic.alerts.arn
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "CloudWatchAlarmsOfThisAccount"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = "sns:Publish"
        Resource  = aws_sns_topic.alerts.arn
        Condition = {
          StringEquals = { "aws:SourceAccount" = var.account_id }
        }
      },
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "sns:Publish"
        Resource  = aws_sns_topic.alerts.arn
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
}

resource "aws_sns_topic_subscription" "alerts" {
  for_each = { for i, s in var.alert_subscriptions : "${s.protocol}-${i}" => s }

  topic_arn = aws_sns_topic.alerts.arn
  protocol  = each.value.protocol
  endpoint  = each.value.endpoint
}

# ------------------------------------------------------------------------------------------------
# Alarms from the pipeline's own metrics
# ------------------------------------------------------------------------------------------------
resource "aws_cloudwatch_metric_alarm" "pipeline" {
  for_each = local.pipeline_alarms

  alarm_name          = "${var.name_prefix}-${each.key}"
  alarm_description   = each.value.description
  namespace           = var.metric_namespace
  metric_name         = each.value.metric
  dimensions          = { Pipeline = each.value.pipeline }
  statistic           = each.value.statistic
  period              = each.value.period
  evaluation_periods  = each.value.evaluations
  comparison_operator = each.value.comparison
  threshold           = each.value.threshold
  treat_missing_data  = each.value.missing
  actions_enabled     = true
  alarm_actions       = local.alarm_to
  ok_actions          = local.alarm_to
}

# The CDC follower's landing and merge lag: N periods out of N above the threshold.
resource "aws_cloudwatch_metric_alarm" "land_merge" {
  for_each = local.land_merge_alarms

  alarm_name          = "${var.name_prefix}-${each.key}"
  alarm_description   = each.value.description
  namespace           = var.metric_namespace
  metric_name         = each.value.metric
  dimensions          = { Pipeline = each.value.pipeline }
  statistic           = "Maximum"
  period              = each.value.period
  evaluation_periods  = each.value.evaluations
  datapoints_to_alarm = each.value.evaluations
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  treat_missing_data  = each.value.missing
  actions_enabled     = true
  alarm_actions       = local.alarm_to
  ok_actions          = local.alarm_to
}

# The scheduled verify: drift found, and verify not run (hourly periods).
resource "aws_cloudwatch_metric_alarm" "verify" {
  for_each = local.verify_alarms

  alarm_name          = "${var.name_prefix}-${each.key}"
  alarm_description   = each.value.description
  namespace           = var.metric_namespace
  metric_name         = each.value.metric
  dimensions          = { Pipeline = each.value.pipeline }
  statistic           = each.value.statistic
  period              = 3600
  evaluation_periods  = each.value.evaluations
  datapoints_to_alarm = each.value.evaluations
  comparison_operator = each.value.comparison
  threshold           = each.value.threshold
  treat_missing_data  = each.value.missing
  actions_enabled     = true
  alarm_actions       = local.alarm_to
  ok_actions          = local.alarm_to
}

# ------------------------------------------------------------------------------------------------
# Error log lines: the runner logs JSON with "level": "ERROR".
# ------------------------------------------------------------------------------------------------
resource "aws_cloudwatch_log_metric_filter" "errors" {
  name           = "${var.name_prefix}-error-lines"
  log_group_name = var.task_log_group_name
  pattern        = "{ $.level = \"ERROR\" }"

  metric_transformation {
    name          = "ErrorLogLines"
    namespace     = var.metric_namespace
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_metric_alarm" "error_logs" {
  alarm_name          = "${var.name_prefix}-error-logs"
  alarm_description   = "At least ${var.error_log_threshold} ERROR log lines in 5 minutes (metric filter on ${var.task_log_group_name})."
  namespace           = var.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.errors.metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = var.error_log_threshold
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = local.alarm_to
  ok_actions          = local.alarm_to
}

# ------------------------------------------------------------------------------------------------
# Scheduler dead-letter queue depth: invocations Scheduler could not deliver after its retries.
# ------------------------------------------------------------------------------------------------
resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  alarm_name          = "${var.name_prefix}-schedules-dlq"
  alarm_description   = "Scheduled runs that EventBridge Scheduler could not start are waiting in ${var.dlq_name}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.dlq_name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = local.alarm_to
  ok_actions          = local.alarm_to
}

# ------------------------------------------------------------------------------------------------
# Failed task runs, including those that die before they can emit a metric (configuration errors,
# out of memory, image pull failures, SIGKILL after the stop timeout). Exit code 3 (lock held by
# another run) is an expected skip, and 143 a clean stop after SIGTERM (deployments of the follower).
# ------------------------------------------------------------------------------------------------
resource "aws_cloudwatch_event_rule" "task_failed" {
  name        = local.failed_task_rule_name
  description = "ECS tasks of ${var.name_prefix} that stopped with an exit code other than 0, 3 or 143, or failed to start"
  event_pattern = jsonencode({
    source        = ["aws.ecs"]
    "detail-type" = ["ECS Task State Change"]
    detail = {
      clusterArn = [var.cluster_arn]
      lastStatus = ["STOPPED"]
      "$or" = [
        { containers = { exitCode = [{ "anything-but" = [0, 3, 143] }] } },
        { stopCode = ["TaskFailedToStart"] },
      ]
    }
  })
}

# The matched events themselves (exit code, stop reason, task ARN) are kept for the on-call engineer.
resource "aws_cloudwatch_log_group" "task_failures" {
  name              = "/aws/events/${var.name_prefix}-task-failures"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_cloudwatch_log_resource_policy" "task_failures" {
  policy_name = "${var.name_prefix}-task-failures"
  policy_document = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EventBridgeWritesTaskFailures"
      Effect    = "Allow"
      Principal = { Service = ["events.amazonaws.com", "delivery.logs.amazonaws.com"] }
      Action    = ["logs:CreateLogStream", "logs:PutLogEvents"]
      Resource  = "${aws_cloudwatch_log_group.task_failures.arn}:*"
    }]
  })
}

resource "aws_cloudwatch_event_target" "task_failures_log" {
  rule      = aws_cloudwatch_event_rule.task_failed.name
  target_id = "task-failures-log"
  arn       = aws_cloudwatch_log_group.task_failures.arn
}

resource "aws_cloudwatch_metric_alarm" "task_failed" {
  alarm_name          = "${var.name_prefix}-task-failed"
  alarm_description   = "An ECS task of ${var.name_prefix} failed; details in ${aws_cloudwatch_log_group.task_failures.name}."
  namespace           = "AWS/Events"
  metric_name         = "MatchedEvents"
  dimensions          = { RuleName = aws_cloudwatch_event_rule.task_failed.name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = local.alarm_to
  ok_actions          = local.alarm_to
}

# ------------------------------------------------------------------------------------------------
# Dashboard: rows, duration, lag, slot WAL, CDC landing and merging, and errors, per table where the
# runner reports a table.
# SEARCH expressions pick up new tables without a Terraform change.
# ------------------------------------------------------------------------------------------------
locals {
  ns = var.metric_namespace
  dashboard_widgets = [
    { title = "Rows extracted per table", metric = "RowsExtracted", dims = "Pipeline,Table", stat = "Sum" },
    { title = "Rows loaded per table", metric = "RowsLoaded", dims = "Pipeline,Table", stat = "Sum" },
    { title = "Run duration (s) per table", metric = "RunDurationSeconds", dims = "Pipeline,Table", stat = "Maximum" },
    { title = "Run duration (s) per pipeline", metric = "RunDurationSeconds", dims = "Pipeline", stat = "Maximum" },
    { title = "Lag (s) per table", metric = "LagSeconds", dims = "Pipeline,Table", stat = "Maximum" },
    { title = "Replication slot retained WAL (bytes)", metric = "SlotRetainedWalBytes", dims = "Pipeline", stat = "Maximum" },
    { title = "Dead letters per table", metric = "DeadLetters", dims = "Pipeline,Table", stat = "Sum" },
    { title = "Run failures per pipeline", metric = "RunFailures", dims = "Pipeline", stat = "Sum" },
    # CDC split into landing (follower -> S3) and merging (S3 -> Snowflake, `merge` on a schedule)
    { title = "CDC landing lag (s): commit to durable in S3", metric = "LandingLagSeconds", dims = "Pipeline", stat = "Maximum" },
    { title = "CDC merge lag (s): oldest landed batch not merged", metric = "MergeLagSeconds", dims = "Pipeline", stat = "Maximum" },
    { title = "CDC batches merged per pipeline", metric = "BatchesMerged", dims = "Pipeline", stat = "Sum" },
    { title = "CDC merge duration (s) per pipeline", metric = "MergeDurationSeconds", dims = "Pipeline", stat = "Maximum" },
    # continuous reconciliation: the scheduled `verify --checksum`
    { title = "Verify: drifting rows per table", metric = "DriftRows", dims = "Pipeline,Table", stat = "Maximum" },
    { title = "Verify: drifting key ranges per table", metric = "DriftRanges", dims = "Pipeline,Table", stat = "Maximum" },
    { title = "Verify: runs that verified every table", metric = "VerifySucceeded", dims = "Pipeline", stat = "Sum" },
  ]
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = var.name_prefix
  dashboard_body = jsonencode({
    widgets = concat(
      [
        for i, w in local.dashboard_widgets : {
          type   = "metric"
          x      = (i % 2) * 12
          y      = floor(i / 2) * 6
          width  = 12
          height = 6
          properties = {
            title  = w.title
            region = var.region
            view   = "timeSeries"
            period = 300
            stat   = w.stat
            metrics = [[{
              expression = "SEARCH('{${local.ns},${w.dims}} MetricName=\"${w.metric}\"', '${w.stat}', 300)"
              id         = "e${i}"
              label      = ""
            }]]
          }
        }
      ],
      [
        {
          type   = "metric"
          x      = 0
          y      = ceil(length(local.dashboard_widgets) / 2) * 6
          width  = 12
          height = 6
          properties = {
            title   = "ERROR log lines"
            region  = var.region
            view    = "timeSeries"
            period  = 300
            stat    = "Sum"
            metrics = [[local.ns, "ErrorLogLines"]]
          }
        },
        {
          type   = "alarm"
          x      = 12
          y      = ceil(length(local.dashboard_widgets) / 2) * 6
          width  = 12
          height = 6
          properties = {
            title = "Alarms"
            alarms = concat(
              [for a in aws_cloudwatch_metric_alarm.pipeline : a.arn],
              [for a in aws_cloudwatch_metric_alarm.land_merge : a.arn],
              [for a in aws_cloudwatch_metric_alarm.verify : a.arn],
              [
                aws_cloudwatch_metric_alarm.error_logs.arn,
                aws_cloudwatch_metric_alarm.dlq_depth.arn,
                aws_cloudwatch_metric_alarm.task_failed.arn,
              ],
            )
          }
        },
      ],
    )
  })
}
