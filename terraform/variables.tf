# ---------------------------------------------------------------------------------------------------------
# Account, naming and tagging
# ---------------------------------------------------------------------------------------------------------
variable "aws_region" {
  description = "AWS region of the Aurora cluster and of everything created here (for example eu-west-1)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must look like an AWS region code, for example eu-west-1."
  }
}

variable "allowed_account_ids" {
  description = "If set, the AWS provider refuses to run against any other account (guards a workspace against the wrong credentials)."
  type        = list(string)
  default     = null

  validation {
    condition     = var.allowed_account_ids == null || alltrue([for id in coalesce(var.allowed_account_ids, []) : can(regex("^[0-9]{12}$", id))])
    error_message = "allowed_account_ids must be 12-digit AWS account IDs."
  }
}

variable "project_name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "aurora-snowflake-sync"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,27}$", var.project_name))
    error_message = "project_name must be 3-28 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "environment" {
  description = "Deployment environment; part of every resource name."
  type        = string

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be one of dev, staging, prod."
  }
}

variable "tags" {
  description = "Extra tags on every resource (through the provider's default_tags)."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(var.tags) <= 40
    error_message = "At most 40 extra tags: AWS allows 50 per resource and the configuration adds its own."
  }
}

# ---------------------------------------------------------------------------------------------------------
# Network (existing VPC) and the existing Aurora cluster
# ---------------------------------------------------------------------------------------------------------
variable "vpc_id" {
  description = "ID of the existing VPC that holds the Aurora cluster."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be a VPC ID such as vpc-0123456789abcdef0."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (no public IPs, no NAT needed) where the ECS tasks and interface endpoints run; at least two, in different AZs."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "private_subnet_ids must list at least two subnet IDs (subnet-...)."
  }
}

variable "private_route_table_ids" {
  description = "Route tables of the private subnets; the S3 gateway endpoint is added to them."
  type        = list(string)

  validation {
    condition     = length(var.private_route_table_ids) >= 1 && alltrue([for r in var.private_route_table_ids : can(regex("^rtb-[0-9a-f]{8,17}$", r))])
    error_message = "private_route_table_ids must list at least one route table ID (rtb-...)."
  }
}

variable "create_vpc_endpoints" {
  description = "Create the S3 gateway endpoint and the ECR, Logs, STS and KMS interface endpoints. Set false if the VPC already has them (the private DNS names would clash)."
  type        = bool
  default     = true
}

variable "https_egress_cidr_blocks" {
  description = "Where tasks may open HTTPS connections besides the VPC endpoints: Snowflake and Vault. Narrow this to PrivateLink or proxy CIDRs where you have them."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.https_egress_cidr_blocks) > 0 && alltrue([for c in var.https_egress_cidr_blocks : can(cidrnetmask(c))])
    error_message = "https_egress_cidr_blocks must be a non-empty list of IPv4 CIDR blocks."
  }
}

variable "aurora_cluster_identifier" {
  description = "Identifier of the existing Aurora PostgreSQL cluster (it is not created here)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.aurora_cluster_identifier)) && !can(regex("--|-$", var.aurora_cluster_identifier))
    error_message = "aurora_cluster_identifier must be a valid RDS cluster identifier: lowercase letters, digits, single hyphens, starting with a letter."
  }
}

variable "aurora_security_group_id" {
  description = "Security group of the Aurora cluster; a rule admitting the tasks on aurora_port is added to it."
  type        = string

  validation {
    condition     = can(regex("^sg-[0-9a-f]{8,17}$", var.aurora_security_group_id))
    error_message = "aurora_security_group_id must be a security group ID (sg-...)."
  }
}

variable "aurora_reader_endpoint" {
  description = "The cluster's reader endpoint (<cluster>.cluster-ro-<id>.<region>.rds.amazonaws.com). The scheduled verify --checksum reads the source there: its RunTask override sets SOURCES__POSTGRES__CREDENTIALS__HOST, the host dlt's source credentials resolve, so a daily full read never loads the writer. null = verify reads the host the tasks are configured with (pipeline_environment), the writer."
  type        = string
  default     = null

  validation {
    condition     = var.aurora_reader_endpoint == null || try(can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$", var.aurora_reader_endpoint)), false)
    error_message = "aurora_reader_endpoint must be null or a DNS name (the cluster's reader endpoint), without scheme or port."
  }
}

variable "aurora_port" {
  description = "PostgreSQL port of the Aurora cluster."
  type        = number
  default     = 5432

  validation {
    condition     = var.aurora_port >= 1150 && var.aurora_port <= 65535 && floor(var.aurora_port) == var.aurora_port
    error_message = "aurora_port must be an integer between 1150 and 65535 (the range Aurora accepts)."
  }
}

variable "aurora_parameter_group_family" {
  description = "Parameter group family of the cluster's engine version, for example aurora-postgresql16."
  type        = string
  default     = "aurora-postgresql16"

  validation {
    condition     = can(regex("^aurora-postgresql1[1-7]$", var.aurora_parameter_group_family))
    error_message = "aurora_parameter_group_family must be aurora-postgresql11 to aurora-postgresql17."
  }
}

variable "aurora_max_slot_wal_keep_size_mb" {
  description = "max_slot_wal_keep_size in MB: the most WAL a replication slot may hold back before PostgreSQL invalidates it. -1 = unbounded (PostgreSQL's default), null = leave the parameter out. See docs/infrastructure.md for the trade-off."
  type        = number
  default     = 102400

  validation {
    condition     = var.aurora_max_slot_wal_keep_size_mb == null || try(var.aurora_max_slot_wal_keep_size_mb == -1 || (var.aurora_max_slot_wal_keep_size_mb >= 1024 && var.aurora_max_slot_wal_keep_size_mb <= 2147483647), false)
    error_message = "aurora_max_slot_wal_keep_size_mb must be null, -1 (unbounded) or between 1024 MB and 2147483647 MB."
  }
}

variable "aurora_check_parameter_group" {
  description = "Read the existing cluster on each plan and warn (check block) when it does not use the parameter group created here."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------------------
# Pipelines, image and schedules
# ---------------------------------------------------------------------------------------------------------
variable "pipelines" {
  description = "Pipelines (runner --pipeline names). Each gets its own task role, S3 prefix and one task definition per mode."
  type        = set(string)
  default     = ["customers_orders"]

  validation {
    condition     = length(var.pipelines) > 0 && alltrue([for p in var.pipelines : can(regex("^[a-z][a-z0-9_]{0,19}$", p))])
    error_message = "pipelines must be a non-empty set of names of lowercase letters, digits and underscores (at most 20 characters, starting with a letter)."
  }
}

variable "image_tag" {
  description = "Tag of the image in the ECR repository that every task definition runs (immutable: a git SHA or a release version, never latest)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid Docker tag other than latest (tags are immutable; use a git SHA or version)."
  }
}

variable "canary_image_tag" {
  description = "If set, an extra canary task definition per pipeline runs this tag against the shadow dataset given by canary_environment; the schedules keep running image_tag. Promote by setting image_tag to it and clearing it."
  type        = string
  default     = null

  validation {
    condition     = var.canary_image_tag == null || try(can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.canary_image_tag)) && var.canary_image_tag != "latest", false)
    error_message = "canary_image_tag must be null or a valid Docker tag other than latest."
  }
}

variable "canary_environment" {
  description = "Environment overrides of the canary task definition; they must point it at a shadow dataset, e.g. DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k in keys(var.canary_environment) :
      can(regex("^[A-Z][A-Z0-9_]*$", k)) && (
        !can(regex("PASSWORD|SECRET|TOKEN|PRIVATE_KEY|PASSPHRASE", k)) ||
        # Mappings of settings to Vault paths (docs/secrets.md): the value is a path, not a secret.
        can(regex("^VAULT__SECRETS__[A-Z0-9_]+$", k))
      )
    ])
    error_message = "canary_environment keys must be upper-case environment variable names and must not carry secrets (PASSWORD, SECRET, TOKEN, PRIVATE_KEY, PASSPHRASE; VAULT__SECRETS__* path mappings excepted): secrets come from Vault."
  }
}

variable "pipeline_environment" {
  description = "Non-secret dlt configuration passed to every task as environment variables (dlt's SECTION__KEY convention). Secrets come from Vault at run time, never from here."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k in keys(var.pipeline_environment) :
      can(regex("^[A-Z][A-Z0-9_]*$", k)) && (
        !can(regex("PASSWORD|SECRET|TOKEN|PRIVATE_KEY|PASSPHRASE", k)) ||
        # Mappings of settings to Vault paths (docs/secrets.md): the value is a path, not a secret.
        can(regex("^VAULT__SECRETS__[A-Z0-9_]+$", k))
      )
    ])
    error_message = "pipeline_environment keys must be upper-case environment variable names and must not carry secrets (PASSWORD, SECRET, TOKEN, PRIVATE_KEY, PASSPHRASE; VAULT__SECRETS__* path mappings excepted): secrets come from Vault."
  }
}

variable "task_sizes" {
  description = "Fargate CPU units and memory (MiB) of the task definition of each mode."
  type = map(object({
    cpu    = number
    memory = number
  }))
  default = {
    incremental = { cpu = 1024, memory = 4096 }
    snapshot    = { cpu = 2048, memory = 8192 }
    cdc         = { cpu = 512, memory = 2048 }
  }

  validation {
    condition = (
      length(setsubtract(["incremental", "snapshot", "cdc"], keys(var.task_sizes))) == 0 &&
      length(setsubtract(keys(var.task_sizes), ["incremental", "snapshot", "cdc"])) == 0 &&
      alltrue([for s in values(var.task_sizes) : contains([256, 512, 1024, 2048, 4096, 8192, 16384], s.cpu)]) &&
      alltrue([for s in values(var.task_sizes) : s.memory >= 512 && s.memory <= 122880 && s.memory >= s.cpu])
    )
    error_message = "task_sizes needs exactly incremental, snapshot and cdc, each with a Fargate cpu (256-16384) and memory (MiB, >= cpu)."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the Fargate tasks; it must match the image that CI builds."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "stop_timeout_seconds" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL; follow mode flushes on SIGTERM. 120 is the Fargate maximum."
  type        = number
  default     = 120

  validation {
    condition     = var.stop_timeout_seconds >= 60 && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must be between 60 and 120 (a clean flush needs at least 60 s; Fargate allows at most 120)."
  }
}

variable "cdc_follow" {
  description = <<-EOT
    Continuous CDC for near-real-time: an ECS service (desired count 1) that runs `run --mode cdc --follow`
    for this pipeline. The follower holds the pipeline's run lock for its whole life, so var.schedules must
    have no schedule for the pipeline. merge_interval_minutes splits CDC into two failure domains: the
    follower lands each batch in S3 and acknowledges the WAL, and a schedule of its own (not one of
    var.schedules) runs `merge --pipeline <pipeline>` every merge_interval_minutes, under its own lock
    (<pipeline>:merge), to apply the landed batches to Snowflake. 0 = no merge schedule: the follower merges
    inline itself.
  EOT
  type = object({
    enabled                = bool
    pipeline               = string
    merge_interval_minutes = optional(number, 5)
  })
  default = {
    enabled  = false
    pipeline = "customers_orders"
  }

  validation {
    condition     = !var.cdc_follow.enabled || contains(var.pipelines, var.cdc_follow.pipeline)
    error_message = "cdc_follow.pipeline must be one of var.pipelines."
  }

  validation {
    condition     = !var.cdc_follow.enabled || alltrue([for s in values(var.schedules) : s.pipeline != var.cdc_follow.pipeline])
    error_message = "The follower holds its pipeline's run lock, so scheduled runs of that pipeline would all exit 3 (lock held): remove its schedules or disable cdc_follow. (The merge schedule is not in var.schedules: cdc_follow.merge_interval_minutes creates it, under a lock of its own.)"
  }

  # Up to 12 h: the merge-lag alarm watches at least two intervals, and CloudWatch evaluates at most a day.
  validation {
    condition     = floor(var.cdc_follow.merge_interval_minutes) == var.cdc_follow.merge_interval_minutes && var.cdc_follow.merge_interval_minutes >= 0 && var.cdc_follow.merge_interval_minutes <= 720
    error_message = "cdc_follow.merge_interval_minutes must be a whole number of minutes from 0 (the follower merges inline, no schedule) to 720."
  }

  validation {
    condition     = !var.cdc_follow.enabled || !contains(keys(var.schedules), "${var.cdc_follow.pipeline}-merge")
    error_message = "The schedule name <cdc_follow.pipeline>-merge is taken by the follower's merge schedule: rename that entry of var.schedules."
  }
}

variable "schedules" {
  description = <<-EOT
    EventBridge Scheduler schedules, keyed by schedule name. Changing a schedule is a one-line change here.
    expression: cron(...) or rate(...); mode: incremental | snapshot | cdc; args: extra runner arguments
    (e.g. ["--tables", "public.orders"]); timezone: IANA name; enabled: false pauses the schedule.
    snapshot_helper_tasks: 0-10, default 0 (none). N > 0: N helper tasks share the chunks of this schedule's
    chunked snapshots (terabyte initial loads). The run is the coordinator and gets
    SOURCES__POSTGRES__SNAPSHOT__HELPER_TASKS=N; a second schedule, <name>-helpers, starts N tasks of the same
    task definition at the same times running `snapshot-helper --pipeline <pipeline>`, which exit 0 after
    --idle-seconds (default 300) without a chunk to claim. Each helper opens up to 2 x (workers + 1) + 3 source
    sessions plus one for its chunk claims, beside the coordinator's 2 x (workers + 1) + 3: the database user's
    CONNECTION LIMIT must cover the coordinator and all N helpers (docs/infrastructure.md).
  EOT
  type = map(object({
    pipeline              = string
    expression            = string
    mode                  = string
    args                  = optional(list(string), [])
    timezone              = optional(string, "UTC")
    enabled               = optional(bool, true)
    snapshot_helper_tasks = optional(number, 0)
  }))
  default = {
    customers_orders-incremental = {
      pipeline   = "customers_orders"
      expression = "rate(15 minutes)"
      mode       = "incremental"
    }
  }

  validation {
    condition     = alltrue([for k in keys(var.schedules) : can(regex("^[A-Za-z0-9_.-]{1,64}$", k))])
    error_message = "Schedule names must be 1-64 characters of letters, digits, '.', '_' or '-'."
  }

  validation {
    condition     = alltrue([for s in values(var.schedules) : contains(["incremental", "snapshot", "cdc"], s.mode)])
    error_message = "Each schedule's mode must be incremental, snapshot or cdc."
  }

  validation {
    condition = alltrue([
      for s in values(var.schedules) :
      can(regex("^(cron\\([^)]+\\)|rate\\(([1-9][0-9]*) (minute|minutes|hour|hours|day|days)\\))$", s.expression))
    ])
    error_message = "Each schedule's expression must be cron(...) or rate(N minutes|hours|days)."
  }

  validation {
    condition     = alltrue([for s in values(var.schedules) : contains(var.pipelines, s.pipeline)])
    error_message = "Each schedule's pipeline must be one of var.pipelines."
  }

  validation {
    condition     = alltrue([for s in values(var.schedules) : !contains(s.args, "--follow")])
    error_message = "Schedules must not pass --follow: continuous CDC runs as the ECS service (var.cdc_follow)."
  }

  validation {
    condition     = alltrue([for p in var.pipelines : !contains(keys(var.schedules), "${p}-verify")])
    error_message = "The schedule name <pipeline>-verify is taken by that pipeline's verify --checksum schedule (var.verify_schedules): rename that entry of var.schedules."
  }

  # ECS RunTask starts at most 10 tasks per call, and the helper schedule is one RunTask.
  validation {
    condition = alltrue([
      for s in values(var.schedules) :
      floor(s.snapshot_helper_tasks) == s.snapshot_helper_tasks && s.snapshot_helper_tasks >= 0 && s.snapshot_helper_tasks <= 10
    ])
    error_message = "Each schedule's snapshot_helper_tasks must be a whole number from 0 (no helpers) to 10 (the most tasks one ECS RunTask starts)."
  }

  # Only incremental and snapshot runs read tables in chunks that helpers can share (a CDC copy reconciles its
  # chunks with the stream in one process): helpers of a cdc schedule would only wait and exit.
  validation {
    condition     = alltrue([for s in values(var.schedules) : s.snapshot_helper_tasks == 0 || contains(["incremental", "snapshot"], s.mode)])
    error_message = "snapshot_helper_tasks is for schedules of mode incremental or snapshot (they read large tables in chunks); a cdc schedule's copies run in the follower."
  }

  # The helpers' schedule is named <name>-helpers: it must fit Scheduler's 64 characters and not be taken.
  validation {
    condition = alltrue([
      for name, s in var.schedules :
      s.snapshot_helper_tasks == 0 || (length("${name}-helpers") <= 64 && !contains(keys(var.schedules), "${name}-helpers"))
    ])
    error_message = "A schedule with snapshot_helper_tasks > 0 gets a second schedule named <name>-helpers: its name must be at most 56 characters, and no other entry of var.schedules may be called <name>-helpers."
  }
}

variable "verify_schedules" {
  description = <<-EOT
    Continuous reconciliation: every pipeline gets a schedule, <pipeline>-verify, running
    `verify --pipeline <pipeline> --checksum` (exit 4 and the DriftRows metric on drift). Entries here override,
    per pipeline, any of: expression (default "cron(0 4 * * ? *)", daily at 04:00), timezone ("UTC"), enabled
    (true; false pauses it and drops its verify-stale alarm), settle_seconds (900: drifting ranges are checked again
    after this wait, and rows the sync applied meanwhile are in flight, not drift; above the pipeline's lag),
    auto_repair (false; true adds --repair: the drifting ranges are read again and merged, docs/operations.md), args
    (extra verify arguments, e.g.
    ["--chunk-rows", "500000"]), interval_hours (24: how often the expression fires) and slack_hours (6: how long a
    verify may take and start late). The verify-stale alarm fires after interval_hours + slack_hours (at most 168)
    without a verify that checked every table. Example: { customers_orders = { expression = "cron(30 2 * * ? *)" } }.
  EOT
  type = map(object({
    expression     = optional(string)
    timezone       = optional(string)
    enabled        = optional(bool)
    args           = optional(list(string))
    interval_hours = optional(number)
    slack_hours    = optional(number)
    settle_seconds = optional(number)
    auto_repair    = optional(bool)
  }))
  default = {}

  validation {
    condition     = alltrue([for v in values(var.verify_schedules) : v.settle_seconds == null || try(v.settle_seconds >= 0 && v.settle_seconds <= 7200, false)])
    error_message = "verify_schedules settle_seconds must be between 0 (no second look) and 7200."
  }

  validation {
    condition     = alltrue([for p in keys(var.verify_schedules) : contains(var.pipelines, p)])
    error_message = "verify_schedules is keyed by pipeline: each key must be one of var.pipelines."
  }

  validation {
    condition = alltrue([
      for v in values(var.verify_schedules) :
      v.expression == null || can(regex("^(cron\\([^)]+\\)|rate\\(([1-9][0-9]*) (hour|hours|day|days)\\))$", coalesce(v.expression, "-")))
    ])
    error_message = "Each verify schedule's expression must be cron(...) or rate(N hours|days) (a verify reads every row: not more often than hourly)."
  }

  # The verify-stale alarm watches interval + slack hourly periods; CloudWatch evaluates at most 7 days.
  validation {
    condition = alltrue([
      for v in values(var.verify_schedules) :
      floor(coalesce(v.interval_hours, 24)) == coalesce(v.interval_hours, 24) && floor(coalesce(v.slack_hours, 6)) == coalesce(v.slack_hours, 6) &&
      coalesce(v.interval_hours, 24) >= 1 && coalesce(v.slack_hours, 6) >= 1 && coalesce(v.interval_hours, 24) + coalesce(v.slack_hours, 6) <= 168
    ])
    error_message = "Each verify schedule's interval_hours and slack_hours must be whole numbers of at least 1 whose sum is at most 168 (CloudWatch evaluates an alarm of hourly periods over at most 7 days)."
  }
}

variable "schedule_retry" {
  description = "Retry policy of every schedule: how long an event may wait and how many times Scheduler retries RunTask before it goes to the dead-letter queue."
  type = object({
    maximum_event_age_in_seconds = number
    maximum_retry_attempts       = number
  })
  default = {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 3
  }

  validation {
    condition = (
      var.schedule_retry.maximum_event_age_in_seconds >= 60 && var.schedule_retry.maximum_event_age_in_seconds <= 86400 &&
      var.schedule_retry.maximum_retry_attempts >= 0 && var.schedule_retry.maximum_retry_attempts <= 185
    )
    error_message = "schedule_retry: maximum_event_age_in_seconds must be 60-86400 and maximum_retry_attempts 0-185."
  }
}

# ---------------------------------------------------------------------------------------------------------
# Vault (secrets are read at run time by the task; no token or secret ever reaches Terraform)
# ---------------------------------------------------------------------------------------------------------
variable "vault_addr" {
  description = "HTTPS address of HashiCorp Vault, e.g. https://vault.example.com:8200. The task logs in with Vault's AWS IAM auth using its task role."
  type        = string

  validation {
    condition     = can(regex("^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$", var.vault_addr))
    error_message = "vault_addr must be an https:// URL with a host and optional port."
  }
}

variable "vault_role" {
  description = "Vault AWS-auth role the tasks log in as (VAULT_ROLE). Output vault_role hands it to vault/setup.sh, which creates it bound to the task roles (output vault_task_role_arns); docs/secrets.md."
  type        = string
  default     = "aurora-sync"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{1,128}$", var.vault_role))
    error_message = "vault_role must be 1-128 characters of letters, digits, '.', '_' or '-'."
  }
}

# ---------------------------------------------------------------------------------------------------------
# Snowflake storage integration
# ---------------------------------------------------------------------------------------------------------
variable "snowflake_iam_user_arn" {
  description = "STORAGE_AWS_IAM_USER_ARN from `DESC INTEGRATION` in Snowflake; the storage-integration role trusts it."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:user/[A-Za-z0-9+=,.@_/-]+$", var.snowflake_iam_user_arn))
    error_message = "snowflake_iam_user_arn must be an IAM user ARN (arn:aws:iam::<12 digits>:user/...)."
  }
}

variable "snowflake_external_id" {
  description = "STORAGE_AWS_EXTERNAL_ID from `DESC INTEGRATION` in Snowflake; required in the role's trust condition."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@:/_-]+$", var.snowflake_external_id)) && length(var.snowflake_external_id) >= 2 && length(var.snowflake_external_id) <= 1224
    error_message = "snowflake_external_id must be 2-1224 characters of letters, digits and +=,.@:/_-."
  }
}

# ---------------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------------
variable "bucket_name" {
  description = "Name of the staging and archive bucket; null = <project>-<environment>-<account id>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || try(can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.|^xn--|-s3alias$", var.bucket_name)), false)
    error_message = "bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)."
  }
}

variable "archive_lifecycle" {
  description = "Lifecycle of staged/archived files under <pipeline>/: transition after transition_days to storage_class, expiry after expiration_days, noncurrent versions after noncurrent_expiration_days."
  type = object({
    transition_days            = number
    storage_class              = string
    expiration_days            = number
    noncurrent_expiration_days = number
  })
  default = {
    transition_days            = 30
    storage_class              = "GLACIER_IR"
    expiration_days            = 400
    noncurrent_expiration_days = 30
  }

  validation {
    condition     = contains(["STANDARD_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"], var.archive_lifecycle.storage_class)
    error_message = "archive_lifecycle.storage_class must be STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER or DEEP_ARCHIVE."
  }

  validation {
    condition = (
      var.archive_lifecycle.transition_days >= 30 &&
      var.archive_lifecycle.expiration_days > var.archive_lifecycle.transition_days &&
      var.archive_lifecycle.noncurrent_expiration_days >= 1
    )
    error_message = "archive_lifecycle: transition_days must be >= 30 (S3's minimum for STANDARD_IA), expiration_days greater than transition_days, noncurrent_expiration_days >= 1."
  }
}

variable "dead_letter_expiration_days" {
  description = "Retention of dead-letter files under dead_letter/ (their own lifecycle rule, independent of the archive)."
  type        = number
  default     = 90

  validation {
    condition     = var.dead_letter_expiration_days >= 7 && var.dead_letter_expiration_days <= 3650
    error_message = "dead_letter_expiration_days must be between 7 and 3650."
  }
}

variable "access_log_bucket" {
  description = "Existing bucket that receives S3 server access logs of the staging bucket; null = a <bucket>-logs bucket is created (access logs are always on)."
  type        = string
  default     = null
}

variable "enable_cloudtrail_data_events" {
  description = "Record CloudTrail data events (object reads, writes, deletes) of the archive bucket in a trail of its own. Leave false where an organisation trail already records S3 data events."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------------------
variable "alert_subscriptions" {
  description = "Who the alarms page: SNS subscriptions, e.g. { protocol = \"https\", endpoint = \"https://events.pagerduty.com/integration/<key>/enqueue\" } or an email address."
  type = list(object({
    protocol = string
    endpoint = string
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.alert_subscriptions : contains(["email", "https", "sqs", "lambda"], s.protocol)])
    error_message = "alert_subscriptions protocols must be email, https, sqs or lambda."
  }
}

variable "staleness_minutes" {
  description = "Alarm when a pipeline has had no successful run (metric RunSucceeded) for this many minutes."
  type        = number
  default     = 60

  validation {
    condition     = var.staleness_minutes >= 5 && var.staleness_minutes <= 1440 && floor(var.staleness_minutes) == var.staleness_minutes
    error_message = "staleness_minutes must be a whole number between 5 and 1440."
  }
}

variable "slot_wal_alarm_bytes" {
  description = "Alarm when a pipeline's replication slot retains more WAL than this (metric SlotRetainedWalBytes)."
  type        = number
  default     = 21474836480 # 20 GiB, a fifth of the default max_slot_wal_keep_size

  validation {
    condition     = var.slot_wal_alarm_bytes >= 104857600
    error_message = "slot_wal_alarm_bytes must be at least 100 MiB."
  }
}

variable "lag_alarm_seconds" {
  description = "Alarm when the replication lag (metric LagSeconds) stays above this many seconds."
  type        = number
  default     = 900

  validation {
    condition     = var.lag_alarm_seconds >= 60
    error_message = "lag_alarm_seconds must be at least 60."
  }
}

variable "landing_lag_alarm_seconds" {
  description = "Alarm when the follower lands batches in S3 more than this many seconds after their newest commit (metric LandingLagSeconds) in two 5-minute periods in a row. Only with cdc_follow."
  type        = number
  default     = 60

  validation {
    condition     = var.landing_lag_alarm_seconds >= 10
    error_message = "landing_lag_alarm_seconds must be at least 10 (the follower flushes every few seconds)."
  }
}

variable "merge_lag_alarm_seconds" {
  description = "Alarm when the oldest landed batch still not merged into Snowflake is older than this (metric MergeLagSeconds), or when no merge has reported for that long. null = 3 merge intervals + 5 minutes. Only with cdc_follow and merge_interval_minutes > 0."
  type        = number
  default     = null

  validation {
    condition     = var.merge_lag_alarm_seconds == null || try(var.merge_lag_alarm_seconds >= 120 * var.cdc_follow.merge_interval_minutes && var.merge_lag_alarm_seconds <= 86400, false)
    error_message = "merge_lag_alarm_seconds must be null or at least two merge intervals (a healthy merge lags by about one) and at most 86400 (CloudWatch evaluates an alarm over at most a day)."
  }
}

variable "log_retention_days" {
  description = "Retention of the task and event log groups."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention that CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ..., 365, 400, ..., 3653)."
  }
}

# ---------------------------------------------------------------------------------------------------------
# CI (optional): a role that GitHub Actions assumes through OIDC to push images and start the canary
# ---------------------------------------------------------------------------------------------------------
variable "github_repository" {
  description = "owner/name of the GitHub repository whose main branch may push images and run the canary; null = no CI role."
  type        = string
  default     = null

  validation {
    condition     = var.github_repository == null || try(can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository)), false)
    error_message = "github_repository must be null or owner/name."
  }
}

variable "github_oidc_provider_arn" {
  description = "ARN of the account's existing token.actions.githubusercontent.com OIDC provider (needed with github_repository)."
  type        = string
  default     = null

  validation {
    condition     = var.github_oidc_provider_arn == null || try(can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/token\\.actions\\.githubusercontent\\.com$", var.github_oidc_provider_arn)), false)
    error_message = "github_oidc_provider_arn must be the ARN of a token.actions.githubusercontent.com OIDC provider."
  }

  validation {
    condition     = var.github_repository == null || var.github_oidc_provider_arn != null
    error_message = "github_oidc_provider_arn is required when github_repository is set."
  }
}
