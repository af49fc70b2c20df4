# The staging and archive bucket. Layout (written by the runner):
#   <pipeline>/<schema>/<table>/<load_id>...parquet   staged files, kept as the archive
#   dead_letter/<pipeline>/<table>/...                rows that could not be loaded
#   _landing/<pipeline>/...                           CDC batches landed by the follower, until `merge`
#                                                     applies and deletes them (docs/cdc.md#land-then-merge)
locals {
  root_arn           = "arn:${var.partition}:iam::${var.account_id}:root"
  dead_letter_prefix = "dead_letter/"
  landing_prefix     = "_landing/"
}

resource "aws_kms_key" "data" {
  description             = "${var.name_prefix}: pipeline data in s3://${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  # Resource "*" in a key policy means this key. The account statement delegates to IAM, where the task
  # roles and the Snowflake role get only what they need, and only through S3 (kms:ViaService).
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministration"
        Effect    = "Allow"
        Principal = { AWS = local.root_arn }
        Action    = "kms:*"
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name_prefix}-data"
  target_key_id = aws_kms_key.data.key_id
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is not wanted: the bucket stages and archives copies of data whose sources of truth are Aurora and Snowflake; a replica would double the cost without a recovery gain.
  #checkov:skip=CKV2_AWS_62:No consumer of object events: Snowflake loads staged files with COPY INTO driven by the runner, not through Snowpipe notifications.
  bucket = var.bucket_name
  # Never let a destroy wipe the archive; emptying it is a deliberate, separate step.
  force_destroy = false
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    # S3 Bucket Keys cut the KMS request rate (and cost) of many small parquet files.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "this" {
  bucket        = aws_s3_bucket.this.id
  target_bucket = local.access_log_bucket
  target_prefix = "s3/${var.bucket_name}/"

  depends_on = [aws_s3_bucket_policy.logs]
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyOldTls"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
        Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
      },
      {
        # Objects may only be written with this bucket's key (or with no header, i.e. the default: the key).
        Sid       = "DenyOtherEncryption"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = "${aws_s3_bucket.this.arn}/*"
        Condition = {
          StringNotEqualsIfExists = { "s3:x-amz-server-side-encryption" = "aws:kms" }
        }
      },
      {
        Sid       = "DenyOtherKmsKey"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = "${aws_s3_bucket.this.arn}/*"
        Condition = {
          StringNotEqualsIfExists = { "s3:x-amz-server-side-encryption-aws-kms-key-id" = aws_kms_key.data.arn }
        }
      },
    ]
  })

  # The public access block must exist first, or a policy with Principal "*" may be refused.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # One archive rule per pipeline prefix, so that dead_letter/ and _landing/ keep their own, independent
  # rules. No pipeline name starts with "_" (validated), so no <pipeline>/ filter matches _landing/.
  dynamic "rule" {
    for_each = sort(tolist(var.pipelines))
    content {
      id     = "archive-${rule.value}"
      status = "Enabled"

      filter {
        prefix = "${rule.value}/"
      }

      transition {
        days          = var.archive_lifecycle.transition_days
        storage_class = var.archive_lifecycle.storage_class
      }

      expiration {
        days = var.archive_lifecycle.expiration_days
      }

      noncurrent_version_expiration {
        noncurrent_days = var.archive_lifecycle.noncurrent_expiration_days
      }

      abort_incomplete_multipart_upload {
        days_after_initiation = 7
      }
    }
  }

  rule {
    id     = "dead-letter"
    status = "Enabled"

    filter {
      prefix = local.dead_letter_prefix
    }

    expiration {
      days = var.dead_letter_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 7
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # The CDC landing area has its own rule, outside every archive prefix, because a landed load must stay
  # in place until `merge` has applied it: a transition (to a storage class with retrieval fees or a restore
  # step) or an expiry there would make the merge fail on a gap (LandingGap) or lose changes whose WAL the
  # slot has already released. So current objects never transition or expire; `merge` deletes what it
  # consumed. Only the leftovers of those deletes go: noncurrent versions (kept as long as the archive's, a
  # window to restore a load deleted by mistake), the delete markers left once those are gone, and
  # incomplete multipart uploads.
  rule {
    id     = "landing"
    status = "Enabled"

    filter {
      prefix = local.landing_prefix
    }

    expiration {
      expired_object_delete_marker = true
    }

    noncurrent_version_expiration {
      noncurrent_days = var.archive_lifecycle.noncurrent_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}
