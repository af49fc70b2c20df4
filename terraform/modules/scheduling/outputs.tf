output "schedule_arns" {
  description = "ARNs of the schedules, by name."
  value       = { for k, s in aws_scheduler_schedule.this : k => s.arn }
}

output "merge_schedule_name" {
  description = "Name of the follower's merge schedule (null when there is none)."
  value       = local.merge_enabled ? aws_scheduler_schedule.this["${var.merge.pipeline}-merge"].name : null
}

output "snapshot_helper_schedules" {
  description = "Snapshot helper schedules by name: the run schedule whose chunked snapshots they share, and how many tasks each invocation starts (empty without helpers)."
  value = {
    for name, s in var.schedules : "${name}-helpers" => {
      schedule   = name
      task_count = aws_scheduler_schedule.this["${name}-helpers"].target[0].ecs_parameters[0].task_count
    } if s.snapshot_helper_tasks > 0
  }
}

output "verify_schedule_names" {
  description = "The verify --checksum schedule of each pipeline, by pipeline (empty without var.verify)."
  value       = { for p in keys(var.verify) : p => aws_scheduler_schedule.this["${p}-verify"].name }
}

output "schedule_group_name" {
  description = "Name of the schedule group."
  value       = aws_scheduler_schedule_group.this.name
}

output "dead_letter_queue_arn" {
  description = "ARN of the schedules' dead-letter queue."
  value       = aws_sqs_queue.dead_letter.arn
}

output "dead_letter_queue_name" {
  description = "Name of the schedules' dead-letter queue."
  value       = aws_sqs_queue.dead_letter.name
}

output "dead_letter_queue_url" {
  description = "URL of the schedules' dead-letter queue."
  value       = aws_sqs_queue.dead_letter.id
}

output "scheduler_role_arn" {
  description = "ARN of the role EventBridge Scheduler assumes."
  value       = aws_iam_role.scheduler.arn
}

output "schedule_task_definitions" {
  description = "Task definition ARN each schedule runs, by schedule name."
  value       = { for k, s in aws_scheduler_schedule.this : k => s.target[0].ecs_parameters[0].task_definition_arn }
}
