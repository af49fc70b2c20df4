# The archive's S3 server access logs are always on: into access_log_bucket when given, else into the
# <bucket_name>-logs bucket created here (which also takes the optional CloudTrail data events, modules/audit).
locals {
  create_log_bucket = var.access_log_bucket == null
  # the name (known at plan time, unlike the id)
  access_log_bucket = local.create_log_bucket ? aws_s3_bucket.logs[0].bucket : var.access_log_bucket
}

resource "aws_s3_bucket" "logs" {
  count = local.create_log_bucket ? 1 : 0
  #checkov:skip=CKV_AWS_144:Cross-region replication of audit logs is left to the organisation's log archive account; this bucket is the first landing place.
  #checkov:skip=CKV2_AWS_62:No consumer of object events on log files: they are read by auditors and Athena, not by event-driven code.
  #checkov:skip=CKV_AWS_145:S3 server access log delivery supports only SSE-S3 on its target bucket, so this bucket cannot default to SSE-KMS.
  #checkov:skip=CKV_AWS_18:This is the access-log bucket itself; logging it into itself would loop.
  bucket        = "${var.bucket_name}-logs"
  force_destroy = false
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  count  = local.create_log_bucket ? 1 : 0
  bucket = aws_s3_bucket.logs[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  count                   = local.create_log_bucket ? 1 : 0
  bucket                  = aws_s3_bucket.logs[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "logs" {
  count  = local.create_log_bucket ? 1 : 0
  bucket = aws_s3_bucket.logs[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  count  = local.create_log_bucket ? 1 : 0
  bucket = aws_s3_bucket.logs[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  count  = local.create_log_bucket ? 1 : 0
  bucket = aws_s3_bucket.logs[0].id
  rule {
    id     = "expire-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# Only the two log delivery services may write, each under its own prefix and only for this account.
# (The Allow statements come first: moto's bucket-logging check reads statements in order and fails on a
# string Principal, which the apply test would otherwise hit; AWS does not care about the order.)
resource "aws_s3_bucket_policy" "logs" {
  count  = local.create_log_bucket ? 1 : 0
  bucket = aws_s3_bucket.logs[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "S3ServerAccessLogs"
        Effect    = "Allow"
        Principal = { Service = "logging.s3.amazonaws.com" }
        Action    = "s3:PutObject"
        # exactly the prefix the archive bucket logs under (aws_s3_bucket_logging.this)
        Resource  = "${aws_s3_bucket.logs[0].arn}/s3/${var.bucket_name}/*"
        Condition = { StringEquals = { "aws:SourceAccount" = var.account_id } }
      },
      {
        Sid       = "CloudTrailAclCheck"
        Effect    = "Allow"
        Principal = { Service = "cloudtrail.amazonaws.com" }
        Action    = "s3:GetBucketAcl"
        Resource  = aws_s3_bucket.logs[0].arn
        Condition = { StringEquals = { "aws:SourceAccount" = var.account_id } }
      },
      {
        Sid       = "CloudTrailWrite"
        Effect    = "Allow"
        Principal = { Service = "cloudtrail.amazonaws.com" }
        Action    = "s3:PutObject"
        Resource  = "${aws_s3_bucket.logs[0].arn}/cloudtrail/AWSLogs/${var.account_id}/*"
        Condition = { StringEquals = { "aws:SourceAccount" = var.account_id } }
      },
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.logs[0].arn, "${aws_s3_bucket.logs[0].arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
  depends_on = [aws_s3_bucket_public_access_block.logs]
}

