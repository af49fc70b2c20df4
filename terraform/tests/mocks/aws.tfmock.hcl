# Shared by every tests/*.tftest.hcl through `mock_provider "aws" { source = "./tests/mocks" }`.
# The mock provider still runs the real provider's argument validation, so every attribute that another
# resource uses as an ARN must look like one. Tests that need distinct values use override_resource.

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "111122223333"
    arn        = "arn:aws:iam::111122223333:role/terraform"
    user_id    = "AROAEXAMPLE:terraform"
  }
}

mock_data "aws_partition" {
  defaults = {
    partition          = "aws"
    dns_suffix         = "amazonaws.com"
    reverse_dns_prefix = "com.amazonaws"
  }
}

mock_data "aws_rds_cluster" {
  defaults = {
    # The name the root module creates with environment = "prod" (tests/root.tftest.hcl).
    db_cluster_parameter_group_name = "aurora-snowflake-sync-prod-logical-replication"
  }
}

mock_resource "aws_iam_role" {
  defaults = {
    arn = "arn:aws:iam::111122223333:role/mock"
  }
}

mock_resource "aws_kms_key" {
  defaults = {
    arn    = "arn:aws:kms:eu-west-1:111122223333:key/11111111-2222-3333-4444-555555555555"
    key_id = "11111111-2222-3333-4444-555555555555"
  }
}

mock_resource "aws_s3_bucket" {
  defaults = {
    arn = "arn:aws:s3:::mock-bucket"
  }
}

mock_resource "aws_ecr_repository" {
  defaults = {
    arn            = "arn:aws:ecr:eu-west-1:111122223333:repository/mock"
    repository_url = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/mock"
  }
}

mock_resource "aws_ecs_cluster" {
  defaults = {
    arn = "arn:aws:ecs:eu-west-1:111122223333:cluster/mock"
  }
}

mock_resource "aws_ecs_task_definition" {
  defaults = {
    arn                  = "arn:aws:ecs:eu-west-1:111122223333:task-definition/mock:1"
    arn_without_revision = "arn:aws:ecs:eu-west-1:111122223333:task-definition/mock"
    revision             = 1
  }
}

mock_resource "aws_cloudwatch_log_group" {
  defaults = {
    arn = "arn:aws:logs:eu-west-1:111122223333:log-group:/mock"
  }
}

mock_resource "aws_sns_topic" {
  defaults = {
    arn = "arn:aws:sns:eu-west-1:111122223333:mock"
  }
}

mock_resource "aws_sqs_queue" {
  defaults = {
    arn = "arn:aws:sqs:eu-west-1:111122223333:mock"
    id  = "https://sqs.eu-west-1.amazonaws.com/111122223333/mock"
    url = "https://sqs.eu-west-1.amazonaws.com/111122223333/mock"
  }
}

mock_resource "aws_cloudwatch_metric_alarm" {
  defaults = {
    arn = "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:mock"
  }
}

mock_resource "aws_scheduler_schedule" {
  defaults = {
    arn = "arn:aws:scheduler:eu-west-1:111122223333:schedule/mock/mock"
  }
}

mock_resource "aws_rds_cluster_parameter_group" {
  defaults = {
    arn = "arn:aws:rds:eu-west-1:111122223333:cluster-pg:mock"
  }
}

mock_resource "aws_security_group" {
  defaults = {
    id  = "sg-0aaaaaaaaaaaaaaaa"
    arn = "arn:aws:ec2:eu-west-1:111122223333:security-group/sg-0aaaaaaaaaaaaaaaa"
  }
}

mock_resource "aws_vpc_endpoint" {
  defaults = {
    prefix_list_id = "pl-6da54004"
  }
}
