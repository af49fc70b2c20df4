variable "name_prefix" {
  description = "Prefix of resource names."
  type        = string
}

variable "region" {
  description = "AWS region (dashboard widgets)."
  type        = string
}

variable "account_id" {
  description = "AWS account ID."
  type        = string
}

variable "pipelines" {
  description = "Pipeline names; each gets its own alarms."
  type        = set(string)
}

variable "metric_namespace" {
  description = "Namespace of the runner's Embedded Metric Format metrics."
  type        = string
}

variable "kms_key_arn" {
  description = "Key that encrypts the alerts topic and the task-failure log group."
  type        = string
}

variable "alert_subscriptions" {
  description = "SNS subscriptions (protocol, endpoint) of the alerts topic."
  type = list(object({
    protocol = string
    endpoint = string
  }))
  default = []
}

variable "staleness_minutes" {
  description = "Minutes without a successful run before the staleness alarm fires."
  type        = number
}

variable "slot_wal_alarm_bytes" {
  description = "Retained-WAL threshold of the replication-slot alarm."
  type        = number
}

variable "lag_alarm_seconds" {
  description = "Lag threshold in seconds."
  type        = number
}

variable "land_merge" {
  description = "The CDC follower's pipeline and the thresholds of its landing and merge alarms; null when no follower runs. merge_interval_minutes = 0: the follower merges inline, so no merge-lag alarm."
  type = object({
    pipeline                  = string
    landing_lag_alarm_seconds = number
    merge_interval_minutes    = number
    merge_lag_alarm_seconds   = number
  })
  default = null
}

variable "verify" {
  description = "Pipelines whose `verify --checksum` runs on a schedule: how often it fires (interval_hours), how long a run may take on top (slack_hours), and whether the schedule is enabled. Each gets a drift alarm; an enabled one also a verify-stale alarm (no VerifySucceeded for interval + slack hours)."
  type = map(object({
    interval_hours = number
    slack_hours    = number
    enabled        = bool
  }))
  default = {}
}

variable "error_log_threshold" {
  description = "ERROR log lines in 5 minutes that raise the error-log alarm."
  type        = number
  default     = 1
}

variable "task_log_group_name" {
  description = "Log group of the tasks (source of the error-line metric filter)."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the task-failure event log group."
  type        = number
}

variable "cluster_arn" {
  description = "ECS cluster whose stopped tasks are watched."
  type        = string
}

variable "dlq_name" {
  description = "Name of the schedules' dead-letter queue."
  type        = string
}
