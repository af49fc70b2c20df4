variable "name_prefix" {
  description = "Prefix of resource names."
  type        = string
}

variable "account_id" {
  description = "AWS account ID."
  type        = string
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, aws-us-gov)."
  type        = string
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "pipelines" {
  description = "Pipeline names; each gets a task role limited to its prefixes."
  type        = set(string)
}

variable "bucket_arn" {
  description = "ARN of the staging and archive bucket."
  type        = string
}

variable "data_kms_key_arn" {
  description = "ARN of the key that encrypts the bucket."
  type        = string
}

variable "log_group_name" {
  description = "Name of the tasks' CloudWatch log group."
  type        = string
}

variable "ecr_repository_arn" {
  description = "ARN of the image repository."
  type        = string
}

variable "metric_namespace" {
  description = "The only CloudWatch namespace the tasks may put metrics into."
  type        = string
}

variable "snowflake_iam_user_arn" {
  description = "Snowflake's IAM user (STORAGE_AWS_IAM_USER_ARN)."
  type        = string
}

variable "snowflake_external_id" {
  description = "External ID of the Snowflake storage integration (STORAGE_AWS_EXTERNAL_ID)."
  type        = string
}

variable "ecs_cluster_name" {
  description = "Name of the ECS cluster (the CI role may start canary tasks only there)."
  type        = string
}

variable "github_repository" {
  description = "owner/name of the repository allowed to assume the CI role; null = no CI role."
  type        = string
  default     = null
}

variable "github_oidc_provider_arn" {
  description = "ARN of the GitHub Actions OIDC provider in the account."
  type        = string
  default     = null
}
