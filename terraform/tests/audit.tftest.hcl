# modules/audit: CloudTrail data events of the archive bucket, only when asked.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  archive_bucket_arn = "arn:aws:s3:::aurora-snowflake-sync-prod-111122223333-eu-west-1"
  log_bucket         = "aurora-snowflake-sync-prod-111122223333-eu-west-1-logs"
  name_prefix        = "aurora-snowflake-sync-prod"
}

run "off_by_default" {
  command = apply

  module {
    source = "./modules/audit"
  }

  assert {
    condition     = length(aws_cloudtrail.archive_data_events) == 0 && output.cloudtrail_arn == null
    error_message = "CloudTrail data events are off by default (organisation trails usually record them)."
  }
}

run "data_events_of_the_archive_only" {
  command = apply

  module {
    source = "./modules/audit"
  }

  variables {
    enable_cloudtrail_data_events = true
  }

  assert {
    condition = (
      aws_cloudtrail.archive_data_events[0].enable_log_file_validation &&
      aws_cloudtrail.archive_data_events[0].s3_bucket_name == "aurora-snowflake-sync-prod-111122223333-eu-west-1-logs" &&
      aws_cloudtrail.archive_data_events[0].s3_key_prefix == "cloudtrail" &&
      contains(flatten([
        for f in one(aws_cloudtrail.archive_data_events[0].advanced_event_selector).field_selector :
        f.starts_with if f.field == "resources.ARN"
      ]), "arn:aws:s3:::aurora-snowflake-sync-prod-111122223333-eu-west-1/")
    )
    error_message = "The trail records object events of the archive bucket only, with log file validation."
  }
}
