output "task_security_group_id" {
  description = "Security group of the ECS tasks."
  value       = aws_security_group.tasks.id
}

output "endpoint_security_group_id" {
  description = "Security group of the interface endpoints (null without endpoints)."
  value       = try(aws_security_group.endpoints[0].id, null)
}

output "vpc_endpoint_ids" {
  description = "IDs of the VPC endpoints, by service."
  value       = merge({ for k, v in aws_vpc_endpoint.interface : k => v.id }, var.create_vpc_endpoints ? { s3 = aws_vpc_endpoint.s3[0].id } : {})
}
