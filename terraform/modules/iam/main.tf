# Least privilege. Resource "*" appears only for actions that have no resource-level permissions
# (ecr:GetAuthorizationToken, cloudwatch:PutMetricData, sts:GetCallerIdentity), each narrowed by a
# condition where AWS offers one.
locals {
  arn_prefix    = "arn:${var.partition}"
  log_group_arn = "${local.arn_prefix}:logs:${var.region}:${var.account_id}:log-group:${var.log_group_name}"
  cluster_arn   = "${local.arn_prefix}:ecs:${var.region}:${var.account_id}:cluster/${var.ecs_cluster_name}"
  s3_via        = "s3.${var.region}.amazonaws.com"

  # S3 prefixes of one pipeline: its staged/archived files, its dead letters, and its CDC landing area
  # (the follower lands batches there, `merge` lists, reads and then deletes what it applied; see
  # docs/cdc.md#land-then-merge). The landing area is outside <pipeline>/ so that the archive's lifecycle
  # never reaches an unmerged load; the Snowflake role does not get it (it reads the archive only).
  pipeline_prefixes = {
    for p in var.pipelines : p => ["${p}/", "dead_letter/${p}/", "_landing/${p}/"]
  }

  ecs_tasks_trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = var.account_id }
        ArnLike      = { "aws:SourceArn" = "${local.arn_prefix}:ecs:${var.region}:${var.account_id}:*" }
      }
    }]
  })
}

# ------------------------------------------------------------------------------------------------
# Execution role: what ECS itself needs to start a task (pull the image, write logs). Shared by all
# task definitions; it cannot read the data.
# ------------------------------------------------------------------------------------------------
resource "aws_iam_role" "execution" {
  name                 = "${var.name_prefix}-execution"
  description          = "ECS task execution role of ${var.name_prefix}: image pull and logs"
  assume_role_policy   = local.ecs_tasks_trust
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "execution" {
  name = "pull-image-and-write-logs"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "EcrLogin"
        Effect   = "Allow"
        Action   = "ecr:GetAuthorizationToken"
        Resource = "*"
      },
      {
        Sid      = "PullImage"
        Effect   = "Allow"
        Action   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
        Resource = var.ecr_repository_arn
      },
      {
        Sid      = "WriteLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${local.log_group_arn}:*"
      },
    ]
  })
}

# ------------------------------------------------------------------------------------------------
# Task roles: one per pipeline, limited to that pipeline's S3 prefixes and the data key. Vault's AWS
# auth identifies the task by this role (sts:GetCallerIdentity), so no secret is ever injected.
# ------------------------------------------------------------------------------------------------
resource "aws_iam_role" "task" {
  for_each = var.pipelines

  name                 = "${var.name_prefix}-${each.key}-task"
  description          = "Task role of pipeline ${each.key}: its S3 prefixes, the data key, metrics, Vault login"
  assume_role_policy   = local.ecs_tasks_trust
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "task" {
  for_each = var.pipelines

  name = "pipeline-${each.key}"
  role = aws_iam_role.task[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ListOwnPrefixes"
        Effect   = "Allow"
        Action   = "s3:ListBucket"
        Resource = var.bucket_arn
        Condition = {
          StringLike = { "s3:prefix" = flatten([for pfx in local.pipeline_prefixes[each.key] : [pfx, "${pfx}*"]]) }
        }
      },
      {
        Sid      = "LocateBucket"
        Effect   = "Allow"
        Action   = "s3:GetBucketLocation"
        Resource = var.bucket_arn
      },
      {
        Sid    = "ReadWriteOwnPrefixes"
        Effect = "Allow"
        Action = [
          "s3:GetObject",
          "s3:PutObject",
          "s3:DeleteObject",
          "s3:AbortMultipartUpload",
          "s3:ListMultipartUploadParts",
        ]
        Resource = [for pfx in local.pipeline_prefixes[each.key] : "${var.bucket_arn}/${pfx}*"]
      },
      {
        Sid      = "UseDataKeyThroughS3"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = var.data_kms_key_arn
        Condition = {
          StringEquals = { "kms:ViaService" = local.s3_via }
        }
      },
      {
        Sid      = "PutOwnMetrics"
        Effect   = "Allow"
        Action   = "cloudwatch:PutMetricData"
        Resource = "*"
        Condition = {
          StringEquals = { "cloudwatch:namespace" = var.metric_namespace }
        }
      },
      {
        # Vault's AWS IAM auth: the task signs a GetCallerIdentity request that Vault replays to STS.
        Sid      = "VaultAwsAuth"
        Effect   = "Allow"
        Action   = "sts:GetCallerIdentity"
        Resource = "*"
      },
    ]
  })
}

# ------------------------------------------------------------------------------------------------
# Snowflake storage integration: Snowflake's IAM user assumes this role, with the integration's
# external ID, and may only read the pipelines' archive prefixes (<pipeline>/; not dead_letter/, not the
# CDC landing area _landing/, which only the pipeline's task role reads, to merge it).
# ------------------------------------------------------------------------------------------------
resource "aws_iam_role" "snowflake" {
  name                 = "${var.name_prefix}-snowflake"
  description          = "Assumed by the Snowflake storage integration; reads the staged files"
  max_session_duration = 3600
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { AWS = var.snowflake_iam_user_arn }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "sts:ExternalId" = var.snowflake_external_id }
      }
    }]
  })
}

resource "aws_iam_role_policy" "snowflake" {
  name = "read-staged-files"
  role = aws_iam_role.snowflake.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadStagedFiles"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:GetObjectVersion"]
        Resource = [for p in sort(tolist(var.pipelines)) : "${var.bucket_arn}/${p}/*"]
      },
      {
        Sid      = "ListStagedFiles"
        Effect   = "Allow"
        Action   = "s3:ListBucket"
        Resource = var.bucket_arn
        Condition = {
          StringLike = { "s3:prefix" = flatten([for p in sort(tolist(var.pipelines)) : ["${p}/", "${p}/*"]]) }
        }
      },
      {
        Sid      = "LocateBucket"
        Effect   = "Allow"
        Action   = "s3:GetBucketLocation"
        Resource = var.bucket_arn
      },
      {
        Sid      = "DecryptThroughS3"
        Effect   = "Allow"
        Action   = "kms:Decrypt"
        Resource = var.data_kms_key_arn
        Condition = {
          StringEquals = { "kms:ViaService" = local.s3_via }
        }
      },
    ]
  })
}

# ------------------------------------------------------------------------------------------------
# CI (optional): GitHub Actions on the main branch pushes images and starts canary tasks.
# ------------------------------------------------------------------------------------------------
resource "aws_iam_role" "ci" {
  count = var.github_repository == null ? 0 : 1

  name                 = "${var.name_prefix}-ci"
  description          = "GitHub Actions (${var.github_repository}, main) through OIDC: push images, run the canary"
  max_session_duration = 3600
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = var.github_oidc_provider_arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "token.actions.githubusercontent.com:aud" = "sts.amazonaws.com"
          "token.actions.githubusercontent.com:sub" = "repo:${coalesce(var.github_repository, "none/none")}:ref:refs/heads/main"
        }
      }
    }]
  })
}

resource "aws_iam_role_policy" "ci" {
  count = var.github_repository == null ? 0 : 1

  name = "push-image-run-canary"
  role = aws_iam_role.ci[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "EcrLogin"
        Effect   = "Allow"
        Action   = "ecr:GetAuthorizationToken"
        Resource = "*"
      },
      {
        Sid    = "PushImage"
        Effect = "Allow"
        Action = [
          "ecr:BatchCheckLayerAvailability",
          "ecr:BatchGetImage",
          "ecr:CompleteLayerUpload",
          "ecr:DescribeImages",
          "ecr:InitiateLayerUpload",
          "ecr:PutImage",
          "ecr:UploadLayerPart",
        ]
        Resource = var.ecr_repository_arn
      },
      {
        Sid      = "RunCanary"
        Effect   = "Allow"
        Action   = "ecs:RunTask"
        Resource = "${local.arn_prefix}:ecs:${var.region}:${var.account_id}:task-definition/${var.name_prefix}-*-canary:*"
        Condition = {
          ArnEquals = { "ecs:cluster" = local.cluster_arn }
        }
      },
      {
        Sid      = "WatchCanary"
        Effect   = "Allow"
        Action   = "ecs:DescribeTasks"
        Resource = "${local.arn_prefix}:ecs:${var.region}:${var.account_id}:task/${var.ecs_cluster_name}/*"
      },
      {
        Sid      = "PassCanaryRoles"
        Effect   = "Allow"
        Action   = "iam:PassRole"
        Resource = concat([aws_iam_role.execution.arn], [for r in aws_iam_role.task : r.arn])
        Condition = {
          StringEquals = { "iam:PassedToService" = "ecs-tasks.amazonaws.com" }
        }
      },
    ]
  })
}
