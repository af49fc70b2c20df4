variable "name_prefix" {
  description = "Prefix of resource names; also the schedule group name."
  type        = string
}

variable "account_id" {
  description = "AWS account ID."
  type        = string
}

variable "partition" {
  description = "AWS partition."
  type        = string
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "schedules" {
  description = "Schedules by name: pipeline, expression, mode, args, timezone, enabled, snapshot_helper_tasks (0-10; N > 0 adds a <name>-helpers schedule starting N `snapshot-helper` tasks at the same times)."
  type = map(object({
    pipeline              = string
    expression            = string
    mode                  = string
    args                  = optional(list(string), [])
    timezone              = optional(string, "UTC")
    enabled               = optional(bool, true)
    snapshot_helper_tasks = optional(number, 0)
  }))

  validation {
    condition     = alltrue([for s in values(var.schedules) : floor(s.snapshot_helper_tasks) == s.snapshot_helper_tasks && s.snapshot_helper_tasks >= 0 && s.snapshot_helper_tasks <= 10])
    error_message = "snapshot_helper_tasks must be a whole number from 0 to 10 (ECS RunTask starts at most 10 tasks)."
  }
}

variable "merge" {
  description = "The follower's scheduled merge (`merge --pipeline <pipeline>` every interval_minutes); null or interval_minutes = 0: no merge schedule, the follower merges inline."
  type = object({
    pipeline         = string
    interval_minutes = number
  })
  default = null
}

variable "verify" {
  description = "Scheduled `verify --checksum --pipeline <key>` runs, keyed by pipeline: a <pipeline>-verify schedule each on the pipeline's incremental task definition. environment: extra container environment of the run (the source host override); args: extra verify arguments; settle: --settle-seconds (0: none); repair: --repair."
  type = map(object({
    expression  = string
    timezone    = optional(string, "UTC")
    enabled     = optional(bool, true)
    args        = optional(list(string), [])
    settle      = optional(number, 0)
    repair      = optional(bool, false)
    environment = optional(map(string), {})
  }))
  default = {}
}

variable "retry" {
  description = "Retry policy of every schedule."
  type = object({
    maximum_event_age_in_seconds = number
    maximum_retry_attempts       = number
  })
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster the tasks run in."
  type        = string
}

variable "task_definition_arns" {
  description = "Task definition ARNs keyed <pipeline>/<mode>."
  type        = map(string)
}

variable "container_name" {
  description = "Name of the container whose command the schedules override."
  type        = string
}

variable "pass_role_arns" {
  description = "Task and execution roles the scheduler may pass to ECS."
  type        = list(string)
}

variable "subnet_ids" {
  description = "Private subnets of the scheduled tasks."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the scheduled tasks."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "Customer-managed key that encrypts the schedules' target input."
  type        = string
}
