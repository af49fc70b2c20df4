terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  # Terraform Cloud. The cloud block cannot read Terraform variables, so the organization comes from
  # TF_CLOUD_ORGANIZATION (TF_CLOUD_HOSTNAME for Terraform Enterprise) and TF_WORKSPACE picks one of the
  # workspaces that carry this tag (for example aurora-snowflake-sync-prod). See docs/deployment.md.
  # Offline checks run `terraform init -backend=false`, which ignores this block; the moto apply test
  # replaces it with a local backend through tests/moto/moto_override.tf.
  cloud {
    workspaces {
      tags = ["aurora-snowflake-sync"]
    }
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}
