output "sns_topic_arn" {
  description = "ARN of the alerts topic."
  value       = aws_sns_topic.alerts.arn
}

output "alarm_arns" {
  description = "ARNs of all alarms, by short name."
  value = merge(
    { for k, a in aws_cloudwatch_metric_alarm.pipeline : k => a.arn },
    { for k, a in aws_cloudwatch_metric_alarm.land_merge : k => a.arn },
    { for k, a in aws_cloudwatch_metric_alarm.verify : k => a.arn },
    {
      error-logs    = aws_cloudwatch_metric_alarm.error_logs.arn
      schedules-dlq = aws_cloudwatch_metric_alarm.dlq_depth.arn
      task-failed   = aws_cloudwatch_metric_alarm.task_failed.arn
    },
  )
}

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard."
  value       = aws_cloudwatch_dashboard.this.dashboard_name
}

output "task_failures_log_group_name" {
  description = "Log group that keeps the failed-task events."
  value       = aws_cloudwatch_log_group.task_failures.name
}
