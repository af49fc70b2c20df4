provider "aws" {
  region = var.aws_region

  # Refuse to touch any account but the intended one (null = no guard, e.g. for local tests).
  allowed_account_ids = var.allowed_account_ids

  default_tags {
    tags = merge(var.tags, {
      Project     = var.project_name
      Environment = var.environment
      ManagedBy   = "terraform"
      Repository  = "aurora-snowflake-sync"
    })
  }
}
