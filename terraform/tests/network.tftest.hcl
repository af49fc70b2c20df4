# modules/network: no ingress to the tasks, egress to Aurora and HTTPS only, the endpoints.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name_prefix              = "aurora-snowflake-sync-prod"
  region                   = "eu-west-1"
  vpc_id                   = "vpc-0123456789abcdef0"
  subnet_ids               = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  route_table_ids          = ["rtb-0123456789abcdef0"]
  aurora_security_group_id = "sg-0bbbbbbbbbbbbbbbb"
  aurora_port              = 5432
  https_egress_cidr_blocks = ["0.0.0.0/0"]
  extra_egress_ports       = [8200]
}

run "network" {
  command = apply

  module {
    source = "./modules/network"
  }

  override_resource {
    target = aws_security_group.tasks
    values = { id = "sg-0aaaaaaaaaaaaaaaa" }
  }

  assert {
    condition = alltrue([
      for r in [aws_security_group_rule.tasks_to_aurora, aws_security_group_rule.tasks_https["0.0.0.0/0"], aws_security_group_rule.tasks_extra["8200-0.0.0.0/0"], aws_security_group_rule.tasks_to_endpoints[0], aws_security_group_rule.tasks_to_s3[0]] :
      r.type == "egress" && r.protocol == "tcp" && r.from_port == r.to_port && contains([443, 5432, 8200], r.from_port)
    ])
    error_message = "Tasks may only reach Aurora's port and HTTPS (Vault's TLS port included)."
  }

  assert {
    condition     = length(aws_security_group.tasks.ingress) == 0
    error_message = "Nothing may connect to the tasks."
  }

  assert {
    condition = (
      aws_security_group_rule.aurora_from_tasks.type == "ingress" &&
      aws_security_group_rule.aurora_from_tasks.security_group_id == "sg-0bbbbbbbbbbbbbbbb" &&
      aws_security_group_rule.aurora_from_tasks.source_security_group_id == "sg-0aaaaaaaaaaaaaaaa" &&
      aws_security_group_rule.aurora_from_tasks.from_port == 5432
    )
    error_message = "The Aurora security group must admit the tasks on the PostgreSQL port."
  }

  assert {
    condition = (
      sort(keys(aws_vpc_endpoint.interface)) == tolist(["ecr.api", "ecr.dkr", "kms", "logs", "sts"]) &&
      alltrue([for e in aws_vpc_endpoint.interface : e.private_dns_enabled && e.vpc_endpoint_type == "Interface"]) &&
      aws_vpc_endpoint.s3[0].vpc_endpoint_type == "Gateway" &&
      aws_vpc_endpoint.s3[0].service_name == "com.amazonaws.eu-west-1.s3"
    )
    error_message = "S3 (gateway), ECR, Logs, STS and KMS endpoints are needed for tasks without NAT."
  }
}

run "no_endpoints" {
  command = plan

  module {
    source = "./modules/network"
  }

  variables {
    create_vpc_endpoints = false
  }

  assert {
    condition     = length(aws_vpc_endpoint.interface) == 0 && length(aws_vpc_endpoint.s3) == 0 && length(aws_security_group.endpoints) == 0
    error_message = "create_vpc_endpoints = false must create no endpoint."
  }
}
