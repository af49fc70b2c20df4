# The operations key: CloudWatch Logs (task and event log groups), the alerts SNS topic, the ECR repository
# and the schedules' target input. Pipeline data in S3 has its own key (modules/storage).
locals {
  root_arn = "arn:${var.partition}:iam::${var.account_id}:root"
}

resource "aws_kms_key" "this" {
  description             = "${var.name_prefix}: logs, alerts, ECR and schedules"
  enable_key_rotation     = true
  deletion_window_in_days = var.deletion_window_in_days

  # Key policies name the key itself as Resource "*"; that is the only form KMS accepts.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Without this statement the key becomes unmanageable; IAM policies in the account then decide
        # who else may use it (the scheduler role gets kms:Decrypt in modules/scheduling).
        Sid       = "AccountAdministration"
        Effect    = "Allow"
        Principal = { AWS = local.root_arn }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsOfThisAccount"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${var.partition}:logs:${var.region}:${var.account_id}:log-group:*"
          }
        }
      },
      {
        # CloudWatch alarms and EventBridge publish to the encrypted alerts topic.
        Sid       = "AlarmsAndEventsPublishToAlertsTopic"
        Effect    = "Allow"
        Principal = { Service = ["cloudwatch.amazonaws.com", "events.amazonaws.com"] }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
        Condition = {
          StringEquals = { "aws:SourceAccount" = var.account_id }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name_prefix}-ops"
  target_key_id = aws_kms_key.this.key_id
}
