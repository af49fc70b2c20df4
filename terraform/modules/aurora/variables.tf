variable "name_prefix" {
  description = "Prefix of resource names."
  type        = string
}

variable "family" {
  description = "Parameter group family, e.g. aurora-postgresql16."
  type        = string
}

variable "cluster_identifier" {
  description = "Identifier of the existing Aurora PostgreSQL cluster."
  type        = string
}

variable "max_slot_wal_keep_size_mb" {
  description = "max_slot_wal_keep_size in MB (-1 unbounded, null = omit)."
  type        = number
  default     = 102400
}

variable "check_cluster" {
  description = "Read the cluster and warn when it does not use the parameter group."
  type        = bool
  default     = true
}
