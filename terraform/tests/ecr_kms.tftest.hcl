# modules/ecr and modules/kms.

mock_provider "aws" {
  source = "./tests/mocks"
}

run "ecr" {
  command = plan

  module {
    source = "./modules/ecr"
  }

  variables {
    repository_name = "aurora-snowflake-sync-prod"
    kms_key_arn     = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000002"
  }

  assert {
    condition = (
      aws_ecr_repository.this.image_tag_mutability == "IMMUTABLE" &&
      one(aws_ecr_repository.this.image_scanning_configuration).scan_on_push &&
      one(aws_ecr_repository.this.encryption_configuration).encryption_type == "KMS" &&
      one(aws_ecr_repository.this.encryption_configuration).kms_key == var.kms_key_arn
    )
    error_message = "The repository must have immutable tags, scan on push and KMS encryption."
  }
}

run "ecr_keep_images_validation" {
  command = plan

  module {
    source = "./modules/ecr"
  }

  variables {
    repository_name = "aurora-snowflake-sync-prod"
    kms_key_arn     = "arn:aws:kms:eu-west-1:111122223333:key/aaaaaaaa-0000-0000-0000-000000000002"
    keep_images     = 2
  }

  expect_failures = [var.keep_images]
}

run "kms" {
  command = plan

  module {
    source = "./modules/kms"
  }

  variables {
    name_prefix = "aurora-snowflake-sync-prod"
    account_id  = "111122223333"
    partition   = "aws"
    region      = "eu-west-1"
  }

  assert {
    condition = (
      aws_kms_key.this.enable_key_rotation &&
      contains([for s in jsondecode(aws_kms_key.this.policy).Statement : s.Sid], "CloudWatchLogsOfThisAccount") &&
      contains(flatten([for s in jsondecode(aws_kms_key.this.policy).Statement : flatten([try(s.Principal.Service, [])])]), "cloudwatch.amazonaws.com")
    )
    error_message = "The operations key must rotate and admit CloudWatch Logs and CloudWatch alarms (encrypted SNS)."
  }
}

run "kms_deletion_window_validation" {
  command = plan

  module {
    source = "./modules/kms"
  }

  variables {
    name_prefix             = "aurora-snowflake-sync-prod"
    account_id              = "111122223333"
    partition               = "aws"
    region                  = "eu-west-1"
    deletion_window_in_days = 3
  }

  expect_failures = [var.deletion_window_in_days]
}
