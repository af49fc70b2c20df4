# The database is not managed here. This module creates the cluster parameter group that logical
# replication needs and checks, on every plan, that the existing cluster uses it.
#
# Why the group is not attached by Terraform: rds.logical_replication is a static parameter, so switching
# the cluster to this group takes effect only after the writer reboots. A reboot of the production
# database must be a planned step of its owner, not a side effect of this workspace's apply (and taking
# the cluster into this state would let a destroy here touch the database). docs/deployment.md has the
# one-time `aws rds modify-db-cluster` + reboot runbook; the check below warns until it is done.
locals {
  parameters = concat(
    [
      {
        # Logical decoding for the CDC mode (pgoutput / wal2json). Static: needs a reboot.
        name         = "rds.logical_replication"
        value        = "1"
        apply_method = "pending-reboot"
      },
    ],
    # max_slot_wal_keep_size bounds the WAL a stalled slot may pin. With a bound, a consumer that stays
    # away too long loses its slot (the runner then needs a snapshot) instead of growing the cluster's
    # storage without limit. Dynamic (sighup): applies without a reboot.
    var.max_slot_wal_keep_size_mb == null ? [] : [
      {
        name         = "max_slot_wal_keep_size"
        value        = tostring(var.max_slot_wal_keep_size_mb)
        apply_method = "immediate"
      },
    ],
  )
}

resource "aws_rds_cluster_parameter_group" "this" {
  name        = "${var.name_prefix}-logical-replication"
  family      = var.family
  description = "Logical replication for ${var.name_prefix} (cluster ${var.cluster_identifier})"

  dynamic "parameter" {
    for_each = local.parameters
    content {
      name         = parameter.value.name
      value        = parameter.value.value
      apply_method = parameter.value.apply_method
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Reads the existing cluster (optional: check_cluster = false skips the API call). A plain data source
# rather than one scoped in the check block: scoped data sources are re-read at every apply, so a plan
# would never come out empty and `terraform plan -detailed-exitcode` could not detect drift. The
# consequence is that a wrong cluster identifier fails the plan, which is what we want.
data "aws_rds_cluster" "existing" {
  count = var.check_cluster ? 1 : 0

  cluster_identifier = var.cluster_identifier
}

# Warns (never blocks) until the cluster runs with this parameter group.
check "cluster_uses_parameter_group" {
  assert {
    condition     = !var.check_cluster || one(data.aws_rds_cluster.existing[*].db_cluster_parameter_group_name) == aws_rds_cluster_parameter_group.this.name
    error_message = "Aurora cluster ${var.cluster_identifier} does not use parameter group ${aws_rds_cluster_parameter_group.this.name} yet: logical replication stays off until it is attached and the writer rebooted (docs/deployment.md)."
  }
}
