# TEST ONLY. tests/infra/test_terraform.py copies the root configuration to a temporary directory, adds
# this file and moto_variables.tf, and applies it against a moto server on 127.0.0.1. Being an
# *_override.tf file, it replaces the cloud block with a local backend and points every AWS service
# the configuration uses at moto (STS included, so allowed_account_ids is checked against moto's
# account). Credentials are moto's dummy ones, passed through the environment by the test, which also
# sets a dead HTTPS proxy for any other host.
terraform {
  backend "local" {}
}

provider "aws" {
  s3_use_path_style           = true
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true

  endpoints {
    cloudtrail = var.moto_endpoint
    cloudwatch = var.moto_endpoint
    ec2        = var.moto_endpoint
    ecr        = var.moto_endpoint
    ecs        = var.moto_endpoint
    events     = var.moto_endpoint
    iam        = var.moto_endpoint
    kms        = var.moto_endpoint
    logs       = var.moto_endpoint
    rds        = var.moto_endpoint
    s3         = var.moto_endpoint
    scheduler  = var.moto_endpoint
    sns        = var.moto_endpoint
    sqs        = var.moto_endpoint
    sts        = var.moto_endpoint
  }
}
