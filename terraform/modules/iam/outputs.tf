output "execution_role_arn" {
  description = "ARN of the ECS task execution role."
  value       = aws_iam_role.execution.arn
}

output "task_role_arns" {
  description = "ARNs of the task roles, by pipeline (bind these in Vault's AWS auth role)."
  value       = { for p, r in aws_iam_role.task : p => r.arn }
}

output "snowflake_role_arn" {
  description = "ARN of the role of the Snowflake storage integration (STORAGE_AWS_ROLE_ARN)."
  value       = aws_iam_role.snowflake.arn
}

output "ci_role_arn" {
  description = "ARN of the GitHub Actions role (null when github_repository is null)."
  value       = try(aws_iam_role.ci[0].arn, null)
}
