output "bucket_name" {
  description = "Staging and archive bucket (Snowflake stage URL: s3://<bucket>/<pipeline>/)."
  value       = module.storage.bucket_id
}

output "bucket_arn" {
  description = "ARN of the staging and archive bucket."
  value       = module.storage.bucket_arn
}

output "data_kms_key_arn" {
  description = "Customer-managed key of the bucket."
  value       = module.storage.kms_key_arn
}

output "ops_kms_key_arn" {
  description = "Customer-managed key of logs, alerts, ECR and schedules."
  value       = module.kms.key_arn
}

output "ecr_repository_url" {
  description = "ECR repository CI pushes to (append :<image_tag>)."
  value       = module.ecr.repository_url
}

output "ecr_repository_arn" {
  description = "ARN of the ECR repository."
  value       = module.ecr.repository_arn
}

output "snowflake_storage_integration_role_arn" {
  description = "STORAGE_AWS_ROLE_ARN of the Snowflake storage integration."
  value       = module.iam.snowflake_role_arn
}

output "task_role_arns" {
  description = "Task role by pipeline: bind these in Vault's AWS auth role (bound_iam_principal_arn)."
  value       = module.iam.task_role_arns
}

output "execution_role_arn" {
  description = "ECS task execution role."
  value       = module.iam.execution_role_arn
}

output "ci_role_arn" {
  description = "Role GitHub Actions assumes to push images and run the canary (null without github_repository)."
  value       = module.iam.ci_role_arn
}

output "ecs_cluster_arn" {
  description = "ECS cluster of all tasks."
  value       = module.ecs.cluster_arn
}

output "ecs_cluster_name" {
  description = "Name of the ECS cluster."
  value       = module.ecs.cluster_name
}

output "task_definition_arns" {
  description = "Task definitions (with revision) keyed <pipeline>/<mode>."
  value       = module.ecs.task_definition_arns
}

output "canary_task_definition_arns" {
  description = "Canary task definitions by pipeline (empty unless canary_image_tag is set)."
  value       = module.ecs.canary_task_definition_arns
}

output "cdc_service_name" {
  description = "ECS service of continuous CDC (null when disabled)."
  value       = module.ecs.cdc_service_name
}

output "log_group_name" {
  description = "CloudWatch log group of the tasks."
  value       = module.ecs.log_group_name
}

output "task_security_group_id" {
  description = "Security group of the tasks (also needed for `aws ecs run-task`)."
  value       = module.network.task_security_group_id
}

output "private_subnet_ids" {
  description = "Subnets of the tasks (for `aws ecs run-task`)."
  value       = var.private_subnet_ids
}

output "schedule_arns" {
  description = "EventBridge Scheduler schedules by name."
  value       = module.scheduling.schedule_arns
}

output "schedule_task_definitions" {
  description = "Task definition (with revision) that each schedule runs, by schedule name."
  value       = module.scheduling.schedule_task_definitions
}

output "verify_schedule_names" {
  description = "The verify --checksum schedule of each pipeline (<pipeline>-verify), by pipeline."
  value       = module.scheduling.verify_schedule_names
}

output "merge_schedule_name" {
  description = "Schedule that runs `merge --pipeline <cdc_follow.pipeline>` (null without cdc_follow or with merge_interval_minutes = 0)."
  value       = module.scheduling.merge_schedule_name
}

output "snapshot_helper_schedules" {
  description = "Schedules that start `snapshot-helper` tasks beside a run (schedules.*.snapshot_helper_tasks > 0), by name: the run schedule they help and their task count."
  value       = module.scheduling.snapshot_helper_schedules
}

output "schedule_dead_letter_queue_url" {
  description = "Dead-letter queue of the schedules."
  value       = module.scheduling.dead_letter_queue_url
}

output "alerts_topic_arn" {
  description = "SNS topic every alarm notifies."
  value       = module.monitoring.sns_topic_arn
}

output "alarm_arns" {
  description = "CloudWatch alarms by short name."
  value       = module.monitoring.alarm_arns
}

output "dashboard_name" {
  description = "CloudWatch dashboard."
  value       = module.monitoring.dashboard_name
}

output "aurora_parameter_group_name" {
  description = "Cluster parameter group to attach to the existing Aurora cluster (then reboot the writer)."
  value       = module.aurora.parameter_group_name
}

output "access_log_bucket" {
  description = "Bucket receiving the archive bucket's S3 server access logs."
  value       = module.storage.access_log_bucket
}

output "archive_cloudtrail_arn" {
  description = "Trail recording the archive bucket's data events, or null when enable_cloudtrail_data_events is false."
  value       = module.audit.cloudtrail_arn
}

# ---------------------------------------------------------------------------------------------------------
# Vault: the names the tasks use (main.tf, local.vault_names). vault/setup.sh reads each from the environment
# variable named like the output in capitals (vault_role -> VAULT_ROLE), so Vault gets exactly these:
#   eval "$(terraform output -json | jq -r 'to_entries[] | select(.key | startswith("vault_")) | "export \(.key | ascii_upcase)=\(.value.value | @sh)"')"
# ---------------------------------------------------------------------------------------------------------
output "vault_role" {
  description = "Vault role the tasks log in as (their VAULT_ROLE): setup.sh's AWS auth role (and AppRole role)."
  value       = local.vault_names.vault_role
}

output "vault_auth_mount" {
  description = "Mount path of Vault's AWS auth method the tasks log in through (their VAULT_AUTH_MOUNT)."
  value       = local.vault_names.vault_auth_mount
}

output "vault_policy" {
  description = "Name of the Vault policy the login role grants (vault/policies/aurora-sync.hcl); setup.sh also writes <vault_policy>-rotate."
  value       = local.vault_names.vault_policy
}

output "vault_kv_mount" {
  description = "Mount path of the KV v2 engine (the tasks' VAULT_KV_MOUNT)."
  value       = local.vault_names.vault_kv_mount
}

output "vault_kv_prefix" {
  description = "KV path prefix of the pipeline's static secrets: the tasks read <vault_kv_mount>/data/<vault_kv_prefix>/snowflake."
  value       = local.vault_names.vault_kv_prefix
}

output "vault_database_mount" {
  description = "Mount path of the database secrets engine."
  value       = local.vault_names.vault_database_mount
}

output "vault_database_role" {
  description = "Dynamic Aurora role: the tasks read <vault_database_mount>/creds/<vault_database_role>."
  value       = local.vault_names.vault_database_role
}

output "vault_task_role_arns" {
  description = "Task role ARNs, comma-separated: the bound_iam_principal_arn of the AWS auth role setup.sh writes."
  value       = join(",", [for p in sort(keys(module.iam.task_role_arns)) : module.iam.task_role_arns[p]])
}
