variable "log_bucket" {
  description = "Bucket the trail writes to (under cloudtrail/): the archive's access-log bucket."
  type        = string
}

variable "archive_bucket_arn" {
  description = "ARN of the archive bucket whose object-level events CloudTrail records."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of resource names."
  type        = string
}

variable "enable_cloudtrail_data_events" {
  description = "Record CloudTrail data events of the archive bucket (off where an organisation trail already does)."
  type        = bool
  default     = false
}
