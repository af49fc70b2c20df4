output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "log_group_name" {
  description = "Name of the tasks' log group."
  value       = aws_cloudwatch_log_group.this.name
}

output "log_group_arn" {
  description = "ARN of the tasks' log group."
  value       = aws_cloudwatch_log_group.this.arn
}

output "task_definition_arns" {
  description = "Task definition ARNs (with revision), keyed <pipeline>/<mode>."
  value       = { for k, td in aws_ecs_task_definition.this : k => td.arn }
}

output "task_definition_families" {
  description = "Task definition families, keyed <pipeline>/<mode>."
  value       = { for k, td in aws_ecs_task_definition.this : k => td.family }
}

output "canary_task_definition_arns" {
  description = "Canary task definition ARNs by pipeline (empty without canary_image)."
  value       = { for k, td in aws_ecs_task_definition.canary : k => td.arn }
}

output "cdc_service_name" {
  description = "Name of the continuous CDC service (null when disabled)."
  value       = try(aws_ecs_service.cdc_follow[0].name, null)
}
