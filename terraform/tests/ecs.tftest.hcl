# modules/ecs: read-only root filesystem, non-root user, logs encrypted with retention, the CDC service.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name_prefix          = "aurora-snowflake-sync-prod"
  region               = "eu-west-1"
  pipelines            = ["customers_orders"]
  modes                = ["incremental", "snapshot", "cdc"]
  container_name       = "aurora-sync"
  container_user       = "10001:10001"
  image                = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/aurora-snowflake-sync-prod:3f2c1ab"
  environment          = { DLT_DATA_DIR = "/tmp/dlt", VAULT_ADDR = "https://vault.example.com", VAULT_AUTH_METHOD = "aws", VAULT_ROLE = "sync" }
  cpu_architecture     = "X86_64"
  stop_timeout_seconds = 120
  task_role_arns       = { customers_orders = "arn:aws:iam::111122223333:role/task" }
  execution_role_arn   = "arn:aws:iam::111122223333:role/execution"
  log_group_name       = "/ecs/aurora-snowflake-sync-prod"
  log_retention_days   = 365
  kms_key_arn          = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000002"
  subnet_ids           = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  security_group_ids   = ["sg-0123456789abcdef0"]
  cdc_follow           = { enabled = true, pipeline = "customers_orders", merge_interval_minutes = 5 }
  task_sizes = {
    incremental = { cpu = 1024, memory = 4096 }
    snapshot    = { cpu = 2048, memory = 8192 }
    cdc         = { cpu = 512, memory = 2048 }
  }
}

run "ecs" {
  command = plan

  module {
    source = "./modules/ecs"
  }

  assert {
    condition     = sort(keys(aws_ecs_task_definition.this)) == tolist(["customers_orders/cdc", "customers_orders/incremental", "customers_orders/snapshot"])
    error_message = "One task definition per mode."
  }

  assert {
    condition = alltrue([
      for td in aws_ecs_task_definition.this :
      jsondecode(td.container_definitions)[0].readonlyRootFilesystem == true &&
      jsondecode(td.container_definitions)[0].user == "10001:10001" &&
      jsondecode(td.container_definitions)[0].privileged == false
    ])
    error_message = "Every container must run non-root on a read-only root filesystem."
  }

  assert {
    condition = alltrue([
      for td in aws_ecs_task_definition.this :
      one(jsondecode(td.container_definitions)[0].mountPoints).containerPath == "/tmp" &&
      contains([for e in jsondecode(td.container_definitions)[0].environment : "${e.name}=${e.value}"], "DLT_DATA_DIR=/tmp/dlt") &&
      one(td.volume).name == "tmp"
    ])
    error_message = "dlt needs a writable /tmp volume and DLT_DATA_DIR=/tmp/dlt."
  }

  assert {
    condition = alltrue([
      for td in aws_ecs_task_definition.this :
      jsondecode(td.container_definitions)[0].stopTimeout == 120 &&
      jsondecode(td.container_definitions)[0].linuxParameters.initProcessEnabled == true
    ])
    error_message = "SIGTERM must reach the runner and leave it 120 s to flush."
  }

  assert {
    condition = alltrue([
      for td in aws_ecs_task_definition.this :
      jsondecode(td.container_definitions)[0].logConfiguration.logDriver == "awslogs" &&
      jsondecode(td.container_definitions)[0].logConfiguration.options["awslogs-group"] == "/ecs/aurora-snowflake-sync-prod"
    ])
    error_message = "Containers must log to the pipeline's log group."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this.kms_key_id == var.kms_key_arn && aws_cloudwatch_log_group.this.retention_in_days == 365
    error_message = "The log group must be KMS-encrypted with a retention."
  }

  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.this["customers_orders/cdc"].container_definitions)[0].command == ["run", "--pipeline", "customers_orders", "--mode", "cdc", "--follow"] &&
      jsondecode(aws_ecs_task_definition.this["customers_orders/incremental"].container_definitions)[0].command == ["run", "--pipeline", "customers_orders", "--mode", "incremental"]
    )
    error_message = "Runner commands do not match the CLI contract."
  }

  assert {
    condition = (
      aws_ecs_service.cdc_follow[0].desired_count == 1 &&
      aws_ecs_service.cdc_follow[0].deployment_maximum_percent == 100 &&
      aws_ecs_service.cdc_follow[0].deployment_minimum_healthy_percent == 0 &&
      one(aws_ecs_service.cdc_follow[0].network_configuration).assign_public_ip == false
    )
    error_message = "Exactly one CDC follower at a time, without a public IP."
  }

  assert {
    condition = (
      contains([for e in jsondecode(aws_ecs_task_definition.this["customers_orders/cdc"].container_definitions)[0].environment : "${e.name}=${e.value}"], "SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS=300") &&
      !contains([for e in jsondecode(aws_ecs_task_definition.this["customers_orders/incremental"].container_definitions)[0].environment : e.name], "SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS")
    )
    error_message = "The follower (and the merge on its task definition) must land and merge every merge_interval_minutes; other tasks load inline."
  }

  assert {
    condition     = one([for s in aws_ecs_cluster.this.setting : s.value if s.name == "containerInsights"]) == "enabled"
    error_message = "Container Insights must be on."
  }

  assert {
    condition     = length(aws_ecs_task_definition.canary) == 0
    error_message = "No canary without canary_image."
  }
}

run "canary" {
  command = plan

  module {
    source = "./modules/ecs"
  }

  variables {
    canary_image       = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/aurora-snowflake-sync-prod:4a5b6c7"
    canary_environment = { DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE = "SYNC_SHADOW" }
  }

  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.canary["customers_orders"].container_definitions)[0].image == var.canary_image &&
      jsondecode(aws_ecs_task_definition.this["customers_orders/incremental"].container_definitions)[0].image == var.image
    )
    error_message = "The canary runs the new image; the scheduled task definitions keep the current one."
  }

  assert {
    condition = (
      contains([for e in jsondecode(aws_ecs_task_definition.canary["customers_orders"].container_definitions)[0].environment : "${e.name}=${e.value}"], "DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE=SYNC_SHADOW") &&
      !contains(jsondecode(aws_ecs_task_definition.canary["customers_orders"].container_definitions)[0].command, "cdc")
    )
    error_message = "The canary must write to the shadow dataset and never consume the replication slot."
  }
}

run "root_user_rejected" {
  command = plan

  module {
    source = "./modules/ecs"
  }

  variables {
    container_user = "0:0"
  }

  expect_failures = [var.container_user]
}
