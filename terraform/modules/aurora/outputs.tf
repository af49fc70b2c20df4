output "parameter_group_name" {
  description = "Name of the cluster parameter group to attach to the existing cluster."
  value       = aws_rds_cluster_parameter_group.this.name
}

output "parameter_group_arn" {
  description = "ARN of the cluster parameter group."
  value       = aws_rds_cluster_parameter_group.this.arn
}
