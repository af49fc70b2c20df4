# modules/storage: encryption with its own key, versioning, no public access, TLS only, lifecycle.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  bucket_name = "aurora-snowflake-sync-prod-111122223333-eu-west-1"
  name_prefix = "aurora-snowflake-sync-prod"
  account_id  = "111122223333"
  partition   = "aws"
  pipelines   = ["customers_orders", "billing"]
  archive_lifecycle = {
    transition_days            = 30
    storage_class              = "GLACIER_IR"
    expiration_days            = 400
    noncurrent_expiration_days = 30
  }
  dead_letter_expiration_days = 90
}

run "storage" {
  command = apply

  module {
    source = "./modules/storage"
  }

  override_resource {
    target = aws_kms_key.data
    values = { arn = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000001" }
  }

  override_resource {
    target = aws_s3_bucket.this
    values = {
      id  = "aurora-snowflake-sync-prod-111122223333-eu-west-1"
      arn = "arn:aws:s3:::aurora-snowflake-sync-prod-111122223333-eu-west-1"
    }
  }

  assert {
    condition = alltrue([
      for r in aws_s3_bucket_server_side_encryption_configuration.this.rule :
      one(r.apply_server_side_encryption_by_default).sse_algorithm == "aws:kms" &&
      one(r.apply_server_side_encryption_by_default).kms_master_key_id == aws_kms_key.data.arn &&
      r.bucket_key_enabled
    ])
    error_message = "The bucket must be encrypted with its customer-managed KMS key (SSE-KMS, bucket key on)."
  }

  assert {
    condition     = aws_kms_key.data.enable_key_rotation && jsondecode(aws_kms_key.data.policy).Statement[0].Principal.AWS == "arn:aws:iam::111122223333:root"
    error_message = "The data key must rotate and have a key policy rooted in the account."
  }

  assert {
    condition = (
      aws_s3_bucket_public_access_block.this.block_public_acls &&
      aws_s3_bucket_public_access_block.this.block_public_policy &&
      aws_s3_bucket_public_access_block.this.ignore_public_acls &&
      aws_s3_bucket_public_access_block.this.restrict_public_buckets
    )
    error_message = "All four public access block settings must be on."
  }

  assert {
    condition     = one(aws_s3_bucket_versioning.this.versioning_configuration).status == "Enabled"
    error_message = "Versioning must be enabled."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_s3_bucket_policy.this.policy).Statement :
      s.Effect == "Deny" && s.Action == "s3:*" && try(s.Condition.Bool["aws:SecureTransport"], "") == "false"
    ])
    error_message = "The bucket policy must deny requests without TLS."
  }

  assert {
    condition     = !aws_s3_bucket.this.force_destroy
    error_message = "A destroy must never empty the archive."
  }

  assert {
    condition     = sort([for r in aws_s3_bucket_lifecycle_configuration.this.rule : r.id]) == tolist(["archive-billing", "archive-customers_orders", "dead-letter", "landing"])
    error_message = "One archive rule per pipeline plus the dead-letter rule and the landing-area rule."
  }

  assert {
    condition = alltrue([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule : (
        r.id == "dead-letter"
        ? one(r.filter).prefix == "dead_letter/" && one(r.expiration).days == 90 && length(r.transition) == 0
        : r.id == "landing" ? true
        : one(r.filter).prefix == "${trimprefix(r.id, "archive-")}/" &&
        one(r.transition).days == 30 && one(r.transition).storage_class == "GLACIER_IR" &&
        one(r.expiration).days == 400 && one(r.noncurrent_version_expiration).noncurrent_days == 30
      )
    ])
    error_message = "Archive rules must transition, expire and expire noncurrent versions; dead letters keep their own retention."
  }

  # CDC land/merge (docs/cdc.md#land-then-merge): an unmerged load under _landing/<pipeline>/ must never
  # transition or expire; `merge` deletes what it applied, the rule only cleans up after those deletes.
  assert {
    condition = alltrue([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule : (
        one(r.filter).prefix == "_landing/" &&
        r.status == "Enabled" &&
        length(r.transition) == 0 &&
        length(r.noncurrent_version_transition) == 0 &&
        alltrue([for e in r.expiration : e.expired_object_delete_marker && coalesce(e.days, 0) == 0 && e.date == null]) &&
        one(r.noncurrent_version_expiration).noncurrent_days == 30 &&
        one(r.abort_incomplete_multipart_upload).days_after_initiation == 7
      ) if r.id == "landing"
    ])
    error_message = "The _landing/ rule must never transition or expire current objects: only noncurrent versions, expired delete markers and incomplete uploads go."
  }

  assert {
    condition = alltrue([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule :
      !startswith("_landing/", one(r.filter).prefix) && !startswith(one(r.filter).prefix, "_landing/") if r.id != "landing"
    ])
    error_message = "No other lifecycle rule (archive transition/expiry, dead letters) may reach the landing area."
  }

  assert {
    condition     = output.landing_prefix == "_landing/"
    error_message = "The landing area is _landing/<pipeline>/, beside the archive prefixes."
  }

  assert {
    condition = (
      aws_s3_bucket_logging.this.target_bucket == "aurora-snowflake-sync-prod-111122223333-eu-west-1-logs" &&
      output.access_log_bucket == aws_s3_bucket.logs[0].bucket
    )
    error_message = "Without access_log_bucket, access logs go to a <bucket>-logs bucket created by the module."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_s3_bucket_policy.logs[0].policy).Statement :
      s.Effect == "Deny" || try(s.Condition.StringEquals["aws:SourceAccount"], "") == "111122223333"
    ])
    error_message = "Only this account's log deliveries (S3 access logs, CloudTrail) may write to the log bucket."
  }

  assert {
    condition = (
      one(aws_s3_bucket_lifecycle_configuration.logs[0].rule).expiration[0].days == 400 &&
      one(aws_s3_bucket_server_side_encryption_configuration.logs[0].rule).apply_server_side_encryption_by_default[0].sse_algorithm == "AES256"
    )
    error_message = "Logs expire after log_retention_days and are encrypted with SSE-S3 (the only kind log delivery supports)."
  }
}

run "existing_access_log_bucket_is_used_as_is" {
  command = apply

  module {
    source = "./modules/storage"
  }

  variables {
    access_log_bucket = "org-s3-access-logs"
  }

  assert {
    condition     = aws_s3_bucket_logging.this.target_bucket == "org-s3-access-logs" && length(aws_s3_bucket.logs) == 0
    error_message = "A given access-log bucket is used, and no log bucket is created."
  }
}

run "pipeline_name_overlapping_the_landing_area" {
  command = plan

  module {
    source = "./modules/storage"
  }

  variables {
    pipelines = ["customers_orders", "_landing"]
  }

  expect_failures = [var.pipelines]
}
