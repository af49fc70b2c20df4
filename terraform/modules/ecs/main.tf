locals {
  # One task definition per pipeline and mode, keyed "<pipeline>/<mode>".
  tasks = {
    for pair in setproduct(sort(tolist(var.pipelines)), var.modes) :
    "${pair[0]}/${pair[1]}" => { pipeline = pair[0], mode = pair[1] }
  }

  # The cdc task definition follows (runs until SIGTERM, then flushes): the ECS service runs it as is.
  # Scheduled runs always override the command (modules/scheduling), so a scheduled cdc run drains
  # and exits, and the follower's merge schedule runs `merge` on it.
  commands = {
    for k, t in local.tasks :
    k => concat(["run", "--pipeline", t.pipeline, "--mode", t.mode], t.mode == "cdc" ? ["--follow"] : [])
  }

  canary_pipelines = var.canary_image == null ? toset([]) : var.pipelines

  # The follower's task definition lands (S3) instead of loading Snowflake when a merge schedule applies its
  # batches; the scheduled `merge` runs on the same task definition and reads the same interval. Other
  # pipelines' CDC tasks keep loading inline.
  task_environment = {
    for k, t in local.tasks : k => merge(var.environment,
      var.cdc_follow.enabled && var.cdc_follow.merge_interval_minutes > 0 && k == "${var.cdc_follow.pipeline}/cdc"
      ? { SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS = tostring(var.cdc_follow.merge_interval_minutes * 60) }
      : {}
    )
  }
}

resource "aws_ecs_cluster" "this" {
  name = var.name_prefix

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "this" {
  name              = var.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_ecs_task_definition" "this" {
  for_each = local.tasks

  family                   = "${var.name_prefix}-${each.value.pipeline}-${each.value.mode}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_sizes[each.value.mode].cpu)
  memory                   = tostring(var.task_sizes[each.value.mode].memory)
  task_role_arn            = var.task_role_arns[each.value.pipeline]
  execution_role_arn       = var.execution_role_arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # The root filesystem is read-only; dlt's working dir (DLT_DATA_DIR=/tmp/dlt) lives on this
  # task-scoped ephemeral volume.
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name      = var.container_name
      image     = var.image
      essential = true
      command   = local.commands[each.key]
      # Non-root, as in the Dockerfile.
      user                   = var.container_user
      readonlyRootFilesystem = true
      privileged             = false
      # ECS waits this long between SIGTERM and SIGKILL; follow mode flushes in between.
      stopTimeout = var.stop_timeout_seconds
      environment = [
        for name in sort(keys(local.task_environment[each.key])) : { name = name, value = local.task_environment[each.key][name] }
      ]
      mountPoints = [
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]
      linuxParameters = {
        # An init process as PID 1 forwards SIGTERM to the runner and reaps children.
        initProcessEnabled = true
        capabilities       = { drop = ["ALL"] }
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.this.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "${each.value.pipeline}-${each.value.mode}"
        }
      }
    },
  ])
}

# Canary: the new image against a shadow dataset, started by hand or by CI before the schedules move.
resource "aws_ecs_task_definition" "canary" {
  for_each = local.canary_pipelines

  family                   = "${var.name_prefix}-${each.key}-canary"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_sizes["incremental"].cpu)
  memory                   = tostring(var.task_sizes["incremental"].memory)
  task_role_arn            = var.task_role_arns[each.key]
  execution_role_arn       = var.execution_role_arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name      = var.container_name
      image     = var.canary_image
      essential = true
      # Never cdc: a canary must not consume the production replication slot.
      command                = ["run", "--pipeline", each.key, "--mode", "incremental"]
      user                   = var.container_user
      readonlyRootFilesystem = true
      privileged             = false
      stopTimeout            = var.stop_timeout_seconds
      environment = [
        for name, value in merge(var.environment, var.canary_environment, { AURORA_SYNC_CANARY = "true" }) :
        { name = name, value = value }
      ]
      mountPoints = [
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]
      linuxParameters = {
        initProcessEnabled = true
        capabilities       = { drop = ["ALL"] }
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.this.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "${each.key}-canary"
        }
      }
    },
  ])
}

# Continuous CDC for near-real-time: exactly one follower per replication slot, so a deployment stops
# the old task (SIGTERM, flush) before it starts the new one.
resource "aws_ecs_service" "cdc_follow" {
  count = var.cdc_follow.enabled ? 1 : 0

  name                               = "${var.cdc_follow.pipeline}-cdc-follow"
  cluster                            = aws_ecs_cluster.this.arn
  task_definition                    = aws_ecs_task_definition.this["${var.cdc_follow.pipeline}/cdc"].arn
  desired_count                      = 1
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  propagate_tags                     = "TASK_DEFINITION"
  wait_for_steady_state              = false

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }

  lifecycle {
    # AZ rebalancing has nothing to balance with a single task. ECS's default for it has changed over
    # time and some APIs (moto among them) do not report it, which would show as a perpetual diff.
    ignore_changes = [availability_zone_rebalancing]
  }
}
