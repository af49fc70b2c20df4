variable "name_prefix" {
  description = "Prefix of resource names."
  type        = string
}

variable "region" {
  description = "AWS region (for the endpoint service names)."
  type        = string
}

variable "vpc_id" {
  description = "Existing VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks and interface endpoints."
  type        = list(string)
}

variable "route_table_ids" {
  description = "Route tables that get the S3 gateway endpoint."
  type        = list(string)
}

variable "aurora_security_group_id" {
  description = "Security group of the existing Aurora cluster."
  type        = string
}

variable "aurora_port" {
  description = "PostgreSQL port of the Aurora cluster."
  type        = number
}

variable "https_egress_cidr_blocks" {
  description = "CIDR blocks the tasks may reach on 443 (Snowflake, Vault)."
  type        = list(string)
}

variable "extra_egress_ports" {
  description = "Other TLS ports to allow to https_egress_cidr_blocks (Vault on 8200, for example)."
  type        = list(number)
  default     = []
}

variable "create_vpc_endpoints" {
  description = "Create the VPC endpoints and their security group."
  type        = bool
  default     = true
}

variable "interface_endpoint_services" {
  description = "Interface endpoints to create (the S3 gateway endpoint is always created with them)."
  type        = list(string)
  default     = ["ecr.api", "ecr.dkr", "logs", "sts", "kms"]
}
