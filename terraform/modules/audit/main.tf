# Optional CloudTrail data events for the archive bucket (for accounts without an organisation trail that
# already records S3 data events). The trail writes under cloudtrail/ in the log bucket (modules/storage creates
# one whose policy admits CloudTrail; a bucket of your own given as access_log_bucket must allow it too).
#
# Data events (GetObject, PutObject, DeleteObject...) of the archive bucket only: who read or changed which
# archived file. Management events stay with the account's or organisation's own trail.
resource "aws_cloudtrail" "archive_data_events" {
  count = var.enable_cloudtrail_data_events ? 1 : 0
  #checkov:skip=CKV_AWS_35:Trail files land in the log bucket with SSE-S3; a KMS key for them would need its own key policy for CloudTrail and is the organisation trail's job.
  #checkov:skip=CKV_AWS_252:No SNS notification per delivered log file: nothing consumes it; alarms come from CloudWatch.
  #checkov:skip=CKV2_AWS_10:Not streamed to CloudWatch Logs: these data events are for audits (Athena over S3), and CloudWatch ingestion of every object access would cost more than the pipeline.
  name           = "${var.name_prefix}-archive-data-events"
  s3_bucket_name = var.log_bucket
  s3_key_prefix  = "cloudtrail"
  # AWS requires it of a multi-Region trail; with data-event selectors only, no management event is recorded
  include_global_service_events = true
  is_multi_region_trail         = true
  enable_log_file_validation    = true

  advanced_event_selector {
    name = "Archive bucket object events"
    field_selector {
      field  = "eventCategory"
      equals = ["Data"]
    }
    field_selector {
      field  = "resources.type"
      equals = ["AWS::S3::Object"]
    }
    field_selector {
      field       = "resources.ARN"
      starts_with = ["${var.archive_bucket_arn}/"]
    }
  }

}
