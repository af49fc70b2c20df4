# Tasks run in private subnets without NAT: AWS APIs are reached through VPC endpoints, Aurora on its
# port, and Snowflake and Vault over HTTPS (https_egress_cidr_blocks). Nothing is allowed in.
resource "aws_security_group" "tasks" {
  #checkov:skip=CKV2_AWS_5:Attached to the CDC ECS service and to every scheduled task, in the ecs and scheduling modules, through this module's task_security_group_id output; checkov's graph does not follow module outputs.
  name        = "${var.name_prefix}-tasks"
  description = "ECS tasks of ${var.name_prefix}: no ingress; egress to Aurora and HTTPS only"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group_rule" "tasks_to_aurora" {
  type                     = "egress"
  security_group_id        = aws_security_group.tasks.id
  description              = "PostgreSQL to the Aurora cluster"
  protocol                 = "tcp"
  from_port                = var.aurora_port
  to_port                  = var.aurora_port
  source_security_group_id = var.aurora_security_group_id
}

resource "aws_security_group_rule" "tasks_https" {
  for_each = toset(var.https_egress_cidr_blocks)

  type              = "egress"
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to Snowflake and Vault"
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_blocks       = [each.value]
}

resource "aws_security_group_rule" "tasks_extra" {
  for_each = { for pair in setproduct(var.extra_egress_ports, var.https_egress_cidr_blocks) : "${pair[0]}-${pair[1]}" => pair }

  type              = "egress"
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS on port ${each.value[0]} (Vault)"
  protocol          = "tcp"
  from_port         = each.value[0]
  to_port           = each.value[0]
  cidr_blocks       = [each.value[1]]
}

resource "aws_security_group_rule" "tasks_to_endpoints" {
  count = var.create_vpc_endpoints ? 1 : 0

  type                     = "egress"
  security_group_id        = aws_security_group.tasks.id
  description              = "HTTPS to the interface VPC endpoints"
  protocol                 = "tcp"
  from_port                = 443
  to_port                  = 443
  source_security_group_id = aws_security_group.endpoints[0].id
}

resource "aws_security_group_rule" "tasks_to_s3" {
  count = var.create_vpc_endpoints ? 1 : 0

  type              = "egress"
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to S3 through the gateway endpoint"
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_ids   = [aws_vpc_endpoint.s3[0].prefix_list_id]
}

# The rule on the existing Aurora security group that admits the tasks.
resource "aws_security_group_rule" "aurora_from_tasks" {
  type                     = "ingress"
  security_group_id        = var.aurora_security_group_id
  description              = "PostgreSQL from the ${var.name_prefix} ECS tasks"
  protocol                 = "tcp"
  from_port                = var.aurora_port
  to_port                  = var.aurora_port
  source_security_group_id = aws_security_group.tasks.id
}

# ------------------------------------------------------------------------------------------------
# VPC endpoints
# ------------------------------------------------------------------------------------------------
resource "aws_security_group" "endpoints" {
  count = var.create_vpc_endpoints ? 1 : 0

  name        = "${var.name_prefix}-endpoints"
  description = "Interface VPC endpoints of ${var.name_prefix}: HTTPS from the tasks only"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group_rule" "endpoints_from_tasks" {
  count = var.create_vpc_endpoints ? 1 : 0

  type                     = "ingress"
  security_group_id        = aws_security_group.endpoints[0].id
  description              = "HTTPS from the ${var.name_prefix} ECS tasks"
  protocol                 = "tcp"
  from_port                = 443
  to_port                  = 443
  source_security_group_id = aws_security_group.tasks.id
}

# A gateway endpoint: free, and ECR image layers come from S3 too.
resource "aws_vpc_endpoint" "s3" {
  count = var.create_vpc_endpoints ? 1 : 0

  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.route_table_ids

  tags = { Name = "${var.name_prefix}-s3" }
}

resource "aws_vpc_endpoint" "interface" {
  for_each = var.create_vpc_endpoints ? toset(var.interface_endpoint_services) : toset([])

  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${var.region}.${each.value}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true

  tags = { Name = "${var.name_prefix}-${each.value}" }
}
