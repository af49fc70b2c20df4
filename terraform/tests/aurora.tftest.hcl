# modules/aurora: logical replication parameters and the check on the existing cluster.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name_prefix        = "aurora-snowflake-sync-prod"
  family             = "aurora-postgresql16"
  cluster_identifier = "orders-db"
}

run "parameters" {
  command = apply

  module {
    source = "./modules/aurora"
  }

  assert {
    condition     = contains([for p in aws_rds_cluster_parameter_group.this.parameter : "${p.name}=${p.value}/${p.apply_method}"], "rds.logical_replication=1/pending-reboot")
    error_message = "rds.logical_replication must be 1 (a static parameter: pending-reboot)."
  }

  assert {
    condition     = contains([for p in aws_rds_cluster_parameter_group.this.parameter : "${p.name}=${p.value}"], "max_slot_wal_keep_size=102400")
    error_message = "max_slot_wal_keep_size must bound the WAL a slot can hold."
  }
}

run "unbounded_wal_omitted" {
  command = plan

  module {
    source = "./modules/aurora"
  }

  variables {
    max_slot_wal_keep_size_mb = null
    check_cluster             = false
  }

  assert {
    condition     = [for p in aws_rds_cluster_parameter_group.this.parameter : p.name] == ["rds.logical_replication"] && length(data.aws_rds_cluster.existing) == 0
    error_message = "null must omit max_slot_wal_keep_size; check_cluster = false must not read the cluster."
  }
}

run "cluster_not_attached_warns" {
  command = apply

  module {
    source = "./modules/aurora"
  }

  override_data {
    target = data.aws_rds_cluster.existing
    values = { db_cluster_parameter_group_name = "default.aurora-postgresql16" }
  }

  expect_failures = [check.cluster_uses_parameter_group]
}
