"""Opt-in end-to-end tests against a real Snowflake account and S3 bucket (`make test-live`, docs/testing.md)."""
