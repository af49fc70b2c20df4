variable "repository_name" {
  description = "Name of the ECR repository."
  type        = string
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key that encrypts the images."
  type        = string
}

variable "keep_images" {
  description = "How many images to keep; older ones expire. Keep enough to roll back."
  type        = number
  default     = 50

  validation {
    condition     = var.keep_images >= 10
    error_message = "keep_images must be at least 10 so that a rollback target still exists."
  }
}
