output "bucket_id" {
  description = "Name of the staging and archive bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the staging and archive bucket."
  value       = aws_s3_bucket.this.arn
}

output "kms_key_arn" {
  description = "ARN of the customer-managed key that encrypts the bucket."
  value       = aws_kms_key.data.arn
}

output "dead_letter_prefix" {
  description = "Key prefix of dead-letter files."
  value       = local.dead_letter_prefix
}

output "landing_prefix" {
  description = "Key prefix of the CDC landing area (_landing/<pipeline>/...), outside the archive's lifecycle."
  value       = local.landing_prefix
}

output "access_log_bucket" {
  description = "Bucket that receives the archive's S3 server access logs (given, or created here)."
  value       = local.access_log_bucket
  # CloudTrail checks the bucket policy when the trail is created
  depends_on = [aws_s3_bucket_policy.logs]
}
