variable "bucket_name" {
  description = "Name of the staging and archive bucket."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of resource names."
  type        = string
}

variable "account_id" {
  description = "AWS account ID that owns the bucket and its key."
  type        = string
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, aws-us-gov)."
  type        = string
}

variable "pipelines" {
  description = "Pipeline names; each has its own <pipeline>/ prefix and archive lifecycle rule."
  type        = set(string)

  # "_landing/" (the CDC landing area) and its lifecycle rule must never fall under an archive prefix.
  validation {
    condition     = alltrue([for p in var.pipelines : !startswith(p, "_") && !strcontains(p, "/")])
    error_message = "A pipeline name must not start with \"_\" or contain \"/\": its archive prefix <pipeline>/ (transition, expiry) would overlap the CDC landing area _landing/."
  }
}

variable "archive_lifecycle" {
  description = "Transition, expiry and noncurrent-version expiry of the archive under <pipeline>/ (noncurrent_expiration_days also applies to _landing/, whose current objects never expire)."
  type = object({
    transition_days            = number
    storage_class              = string
    expiration_days            = number
    noncurrent_expiration_days = number
  })
}

variable "dead_letter_expiration_days" {
  description = "Retention of dead_letter/ objects."
  type        = number
}

variable "access_log_bucket" {
  description = "Existing bucket for S3 server access logs; null = a <bucket_name>-logs bucket is created."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "Days the created log bucket keeps access logs and trail files."
  type        = number
  default     = 400
}
