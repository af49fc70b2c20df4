# modules/iam: least privilege, the Snowflake trust and its external ID, per-pipeline isolation.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name_prefix            = "aurora-snowflake-sync-prod"
  account_id             = "111122223333"
  partition              = "aws"
  region                 = "eu-west-1"
  pipelines              = ["customers_orders", "billing"]
  bucket_arn             = "arn:aws:s3:::sync-bucket"
  data_kms_key_arn       = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000001"
  log_group_name         = "/ecs/aurora-snowflake-sync-prod"
  ecr_repository_arn     = "arn:aws:ecr:eu-west-1:111122223333:repository/aurora-snowflake-sync-prod"
  metric_namespace       = "AuroraSnowflakeSync"
  snowflake_iam_user_arn = "arn:aws:iam::999988887777:user/abcd-s-v2st1234"
  snowflake_external_id  = "AB12345_SFCRole=2_abcdefghijklmnopqrstuvwxyz0="
  ecs_cluster_name       = "aurora-snowflake-sync-prod"
}

run "iam" {
  command = apply

  module {
    source = "./modules/iam"
  }

  assert {
    condition = (
      jsondecode(aws_iam_role.snowflake.assume_role_policy).Statement[0].Principal.AWS == var.snowflake_iam_user_arn &&
      jsondecode(aws_iam_role.snowflake.assume_role_policy).Statement[0].Condition.StringEquals["sts:ExternalId"] == var.snowflake_external_id
    )
    error_message = "The Snowflake role must trust only Snowflake's IAM user, with the integration's external ID."
  }

  assert {
    condition = alltrue(flatten([
      for s in jsondecode(aws_iam_role_policy.snowflake.policy).Statement : [
        for r in flatten([s.Resource]) : r == var.bucket_arn || startswith(r, "${var.bucket_arn}/customers_orders/") || startswith(r, "${var.bucket_arn}/billing/") || r == var.data_kms_key_arn
      ]
    ]))
    error_message = "The Snowflake role may read only the pipelines' prefixes (and decrypt with the data key)."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.snowflake.policy).Statement :
      alltrue([for a in flatten([s.Action]) : contains(["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:GetBucketLocation", "kms:Decrypt"], a)])
    ])
    error_message = "The Snowflake role must be read-only."
  }

  # No "*" resource where an ARN is known: only actions without resource-level permissions get "*".
  assert {
    condition = alltrue(flatten([
      for doc in concat(
        [aws_iam_role_policy.execution.policy, aws_iam_role_policy.snowflake.policy],
        [for p in aws_iam_role_policy.task : p.policy],
        ) : [
        for s in jsondecode(doc).Statement :
        !contains(flatten([s.Resource]), "*") || alltrue([for a in flatten([s.Action]) : contains(["ecr:GetAuthorizationToken", "cloudwatch:PutMetricData", "sts:GetCallerIdentity"], a)])
      ]
    ]))
    error_message = "Resource \"*\" is only allowed for ecr:GetAuthorizationToken, cloudwatch:PutMetricData and sts:GetCallerIdentity."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.task["billing"].policy).Statement :
      !strcontains(jsonencode(s), "customers_orders")
    ])
    error_message = "A pipeline's task role must not reach another pipeline's prefix."
  }

  assert {
    condition = (
      contains(flatten([for s in jsondecode(aws_iam_role_policy.task["customers_orders"].policy).Statement : flatten([s.Resource])]), "arn:aws:s3:::sync-bucket/customers_orders/*") &&
      contains(flatten([for s in jsondecode(aws_iam_role_policy.task["customers_orders"].policy).Statement : flatten([s.Resource])]), "arn:aws:s3:::sync-bucket/dead_letter/customers_orders/*")
    )
    error_message = "The task role must reach its own staging and dead-letter prefixes."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_role_policy.task["customers_orders"].policy).Statement :
      s.Action == "sts:GetCallerIdentity"
    ])
    error_message = "The task role needs sts:GetCallerIdentity for Vault's AWS auth."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_role_policy.task["customers_orders"].policy).Statement :
      s.Action == "cloudwatch:PutMetricData" && try(s.Condition.StringEquals["cloudwatch:namespace"], "") == "AuroraSnowflakeSync"
    ])
    error_message = "The task role may put metrics into its own namespace only."
  }

  # CDC land/merge (docs/cdc.md#land-then-merge): the follower lands batches under _landing/<pipeline>/
  # (write, data key) and `merge`, run by the merge schedule with the same task role, lists and reads them
  # there, then deletes what it applied. The landing area is outside <pipeline>/, so that the archive's
  # lifecycle never reaches an unmerged load.
  assert {
    condition = (
      anytrue([
        for s in jsondecode(aws_iam_role_policy.task["customers_orders"].policy).Statement :
        contains(flatten([s.Resource]), "arn:aws:s3:::sync-bucket/_landing/customers_orders/*") &&
        alltrue([for a in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"] : contains(flatten([s.Action]), a)])
      ]) &&
      anytrue([
        for s in jsondecode(aws_iam_role_policy.task["customers_orders"].policy).Statement :
        s.Action == "s3:ListBucket" && contains(try(s.Condition.StringLike["s3:prefix"], []), "_landing/customers_orders/") && contains(try(s.Condition.StringLike["s3:prefix"], []), "_landing/customers_orders/*")
      ]) &&
      anytrue([
        for s in jsondecode(aws_iam_role_policy.task["customers_orders"].policy).Statement :
        s.Resource == var.data_kms_key_arn && contains(flatten([s.Action]), "kms:Decrypt") && contains(flatten([s.Action]), "kms:GenerateDataKey") && try(s.Condition.StringEquals["kms:ViaService"], "") == "s3.eu-west-1.amazonaws.com"
      ])
    )
    error_message = "The task role must let the follower land and the merge list, read and delete _landing/<pipeline>/ objects, with the data key through S3 only."
  }

  assert {
    condition = (
      contains(flatten([for s in jsondecode(aws_iam_role_policy.task["billing"].policy).Statement : flatten([s.Resource])]), "arn:aws:s3:::sync-bucket/_landing/billing/*") &&
      !strcontains(aws_iam_role_policy.task["billing"].policy, "_landing/customers_orders") &&
      !strcontains(aws_iam_role_policy.task["customers_orders"].policy, "_landing/billing") &&
      !strcontains(aws_iam_role_policy.task["customers_orders"].policy, "sync-bucket/_landing/*")
    )
    error_message = "Each task role reaches its own landing area only, never the whole _landing/ prefix or another pipeline's."
  }

  assert {
    condition     = !strcontains(aws_iam_role_policy.snowflake.policy, "_landing")
    error_message = "The Snowflake role reads the archive only: no object or listing of the CDC landing area _landing/."
  }

  assert {
    condition     = length(aws_iam_role.ci) == 0
    error_message = "No CI role without github_repository."
  }
}

run "ci_role" {
  command = apply

  module {
    source = "./modules/iam"
  }

  variables {
    github_repository        = "example-org/aurora-snowflake-sync"
    github_oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/token.actions.githubusercontent.com"
  }

  assert {
    condition     = jsondecode(aws_iam_role.ci[0].assume_role_policy).Statement[0].Condition.StringEquals["token.actions.githubusercontent.com:sub"] == "repo:example-org/aurora-snowflake-sync:ref:refs/heads/main"
    error_message = "Only the main branch of the repository may assume the CI role."
  }
}
