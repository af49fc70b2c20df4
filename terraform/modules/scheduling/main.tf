locals {
  arn_prefix = "arn:${var.partition}"
  # Task definition families may be run at any revision, in this cluster only.
  task_definition_family_arns = sort(distinct([
    for arn in values(var.task_definition_arns) : replace(arn, "/:[0-9]+$/", ":*")
  ]))

  # Every schedule as the RunTask it starts: the user's `run` schedules, their snapshot helpers, and the
  # follower's merge. environment: extra container environment of the override (none: the key is left out).
  runs = merge(
    {
      for name, s in var.schedules : name => {
        description     = "${s.pipeline}: run --mode ${s.mode}"
        expression      = s.expression
        timezone        = s.timezone
        enabled         = s.enabled
        task_definition = "${s.pipeline}/${s.mode}"
        command         = concat(["run", "--pipeline", s.pipeline, "--mode", s.mode], s.args)
        # With helpers the run is the coordinator of its chunked snapshots: it alone plans, replaces and
        # finishes a snapshot, and knows how many helpers share the chunks. In the override, not the task
        # definition, so that only this schedule's runs (not another schedule's, nor a manual RunTask of
        # the same task definition) count on helpers.
        environment   = s.snapshot_helper_tasks > 0 ? { SOURCES__POSTGRES__SNAPSHOT__HELPER_TASKS = tostring(s.snapshot_helper_tasks) } : {}
        task_count    = 1
        max_event_age = var.retry.maximum_event_age_in_seconds
      }
    },
    # Snapshot helpers: N tasks of the run's task definition (same image, task role and environment),
    # started at the same times, that claim chunks of the coordinator's plan and exit 0 once they have
    # found no work for --idle-seconds. A run that has no chunked snapshot in progress costs their start-up
    # and idle wait only.
    {
      for name, s in var.schedules : "${name}-helpers" => {
        description     = "${s.pipeline}: ${s.snapshot_helper_tasks} snapshot helpers beside ${name}"
        expression      = s.expression
        timezone        = s.timezone
        enabled         = s.enabled
        task_definition = "${s.pipeline}/${s.mode}"
        command         = ["snapshot-helper", "--pipeline", s.pipeline]
        environment     = {}
        task_count      = s.snapshot_helper_tasks
        max_event_age   = var.retry.maximum_event_age_in_seconds
      } if s.snapshot_helper_tasks > 0
    },
    # The merge takes its own lock (<pipeline>:merge), not the pipeline's, so it runs beside the follower,
    # on the follower's task definition (same image, task role and environment). A merge that starts
    # while the previous one still runs exits 3 (lock held), which is no failure.
    {
      for m in(local.merge_enabled ? [var.merge] : []) : "${m.pipeline}-merge" => {
        description     = "${m.pipeline}: merge landed CDC batches every ${m.interval_minutes} min"
        expression      = "rate(${m.interval_minutes} ${m.interval_minutes == 1 ? "minute" : "minutes"})"
        timezone        = "UTC"
        enabled         = true
        task_definition = "${m.pipeline}/cdc"
        command         = ["merge", "--pipeline", m.pipeline]
        environment     = {}
        task_count      = 1
        # An invocation older than one interval is superseded by the next one, which merges everything.
        max_event_age = min(var.retry.maximum_event_age_in_seconds, max(60, m.interval_minutes * 60))
      }
    },
    # Continuous reconciliation: `verify --checksum` per pipeline, read-only and lock-free, so it runs beside
    # the pipeline's runs, its follower and its merges. It runs the pipeline's incremental task definition
    # (same image, task role, Vault secrets and environment, so the same Snowflake user and load warehouse);
    # environment carries the source host override (the Aurora reader endpoint) when one is set.
    {
      for p, v in var.verify : "${p}-verify" => {
        description     = "${p}: verify --checksum (drift alarm, verify-stale alarm)"
        expression      = v.expression
        timezone        = v.timezone
        enabled         = v.enabled
        task_definition = "${p}/incremental"
        command         = concat(["verify", "--pipeline", p, "--checksum"], v.settle > 0 ? ["--settle-seconds", tostring(v.settle)] : [], v.repair ? ["--repair"] : [], v.args)
        environment     = v.environment
        task_count      = 1
        max_event_age   = var.retry.maximum_event_age_in_seconds
      }
    },
  )
  merge_enabled = var.merge != null && try(var.merge.interval_minutes > 0, false)
  merges        = local.merge_enabled ? [var.merge] : []
}

resource "aws_scheduler_schedule_group" "this" {
  name = var.name_prefix
}

# Invocations that Scheduler gave up on (after the retry policy) land here; monitoring alarms on depth.
resource "aws_sqs_queue" "dead_letter" {
  name                      = "${var.name_prefix}-schedules-dlq"
  message_retention_seconds = 1209600 # 14 days, the SQS maximum
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "sqs:*"
      Resource  = aws_sqs_queue.dead_letter.arn
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

resource "aws_iam_role" "scheduler" {
  name                 = "${var.name_prefix}-scheduler"
  description          = "EventBridge Scheduler: run the pipeline tasks in ${var.name_prefix}"
  max_session_duration = 3600
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "scheduler.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = var.account_id }
        ArnLike = {
          "aws:SourceArn" = "${local.arn_prefix}:scheduler:${var.region}:${var.account_id}:schedule/${var.name_prefix}/*"
        }
      }
    }]
  })
}

resource "aws_iam_role_policy" "scheduler" {
  name = "run-pipeline-tasks"
  role = aws_iam_role.scheduler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "RunTasks"
        Effect   = "Allow"
        Action   = "ecs:RunTask"
        Resource = local.task_definition_family_arns
        Condition = {
          ArnEquals = { "ecs:cluster" = var.cluster_arn }
        }
      },
      {
        Sid      = "TagTasks"
        Effect   = "Allow"
        Action   = "ecs:TagResource"
        Resource = "${local.arn_prefix}:ecs:${var.region}:${var.account_id}:task/*"
        Condition = {
          StringEquals = { "ecs:CreateAction" = "RunTask" }
        }
      },
      {
        Sid      = "PassTaskRoles"
        Effect   = "Allow"
        Action   = "iam:PassRole"
        Resource = var.pass_role_arns
        Condition = {
          StringEquals = { "iam:PassedToService" = "ecs-tasks.amazonaws.com" }
        }
      },
      {
        Sid      = "DeadLetters"
        Effect   = "Allow"
        Action   = "sqs:SendMessage"
        Resource = aws_sqs_queue.dead_letter.arn
      },
      {
        Sid      = "DecryptTargetInput"
        Effect   = "Allow"
        Action   = "kms:Decrypt"
        Resource = var.kms_key_arn
      },
    ]
  })
}

resource "aws_scheduler_schedule" "this" {
  for_each = local.runs

  name        = each.key
  group_name  = aws_scheduler_schedule_group.this.name
  description = each.value.description

  schedule_expression          = each.value.expression
  schedule_expression_timezone = each.value.timezone
  state                        = each.value.enabled ? "ENABLED" : "DISABLED"
  kms_key_arn                  = var.kms_key_arn

  # Runs start on time: an incremental run or a merge late by a flexible window would only add lag.
  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = var.cluster_arn
    role_arn = aws_iam_role.scheduler.arn

    # RunTask overrides: the full runner command for this schedule, and its extra environment if any.
    input = jsonencode({
      containerOverrides = [merge(
        {
          name    = var.container_name
          command = each.value.command
        },
        {
          for k, v in { environment = [for n in sort(keys(each.value.environment)) : { name = n, value = each.value.environment[n] }] } :
          k => v if length(each.value.environment) > 0
        },
      )]
    })

    ecs_parameters {
      task_definition_arn     = var.task_definition_arns[each.value.task_definition]
      task_count              = each.value.task_count
      launch_type             = "FARGATE"
      platform_version        = "LATEST"
      enable_ecs_managed_tags = true
      propagate_tags          = "TASK_DEFINITION"

      network_configuration {
        subnets          = var.subnet_ids
        security_groups  = var.security_group_ids
        assign_public_ip = false
      }
    }

    retry_policy {
      maximum_event_age_in_seconds = each.value.max_event_age
      maximum_retry_attempts       = var.retry.maximum_retry_attempts
    }

    dead_letter_config {
      arn = aws_sqs_queue.dead_letter.arn
    }
  }
}
