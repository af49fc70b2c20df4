variable "name_prefix" {
  description = "Prefix of resource names; also the cluster name."
  type        = string
}

variable "region" {
  description = "AWS region (for the awslogs driver)."
  type        = string
}

variable "pipelines" {
  description = "Pipeline names."
  type        = set(string)
}

variable "modes" {
  description = "Runner modes; one task definition per pipeline and mode."
  type        = list(string)
}

variable "container_name" {
  description = "Name of the container in every task definition."
  type        = string
}

variable "container_user" {
  description = "uid:gid the container runs as (non-root, as in the Dockerfile)."
  type        = string

  validation {
    condition     = can(regex("^[1-9][0-9]*:[1-9][0-9]*$", var.container_user))
    error_message = "container_user must be a non-root numeric uid:gid."
  }
}

variable "image" {
  description = "Image (repository URL and immutable tag) of the task definitions."
  type        = string
}

variable "canary_image" {
  description = "Image of the canary task definitions; null = no canary."
  type        = string
  default     = null
}

variable "canary_environment" {
  description = "Environment overrides of the canary (the shadow dataset)."
  type        = map(string)
  default     = {}
}

variable "environment" {
  description = "Non-secret environment of every task."
  type        = map(string)
}

variable "task_sizes" {
  description = "Fargate cpu and memory per mode."
  type = map(object({
    cpu    = number
    memory = number
  }))
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64."
  type        = string
}

variable "stop_timeout_seconds" {
  description = "Seconds between SIGTERM and SIGKILL."
  type        = number
}

variable "task_role_arns" {
  description = "Task role ARN by pipeline."
  type        = map(string)
}

variable "execution_role_arn" {
  description = "Task execution role ARN."
  type        = string
}

variable "log_group_name" {
  description = "Name of the tasks' log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the log group."
  type        = number
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the log group."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the CDC service."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the CDC service."
  type        = list(string)
}

variable "cdc_follow" {
  description = "Whether to run the continuous CDC service, for which pipeline, and how often its landed batches are merged (0 = the follower merges inline)."
  type = object({
    enabled                = bool
    pipeline               = string
    merge_interval_minutes = optional(number, 0)
  })
}
