output "cloudtrail_arn" {
  description = "ARN of the archive's data-event trail, or null when disabled."
  value       = var.enable_cloudtrail_data_events ? aws_cloudtrail.archive_data_events[0].arn : null
}
