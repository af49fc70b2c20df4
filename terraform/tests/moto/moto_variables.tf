# TEST ONLY (see moto_override.tf): the address of the moto server that the test started.
variable "moto_endpoint" {
  description = "URL of the local moto server, e.g. http://127.0.0.1:5123."
  type        = string

  validation {
    condition     = can(regex("^http://127\\.0\\.0\\.1:[0-9]{1,5}$", var.moto_endpoint))
    error_message = "moto_endpoint must be http://127.0.0.1:<port>: the apply test never talks to anything else."
  }
}
