"""Throwaway local stand-ins for the services production uses (PostgreSQL, S3, Vault).

Used by `make demo`, the tests and the benchmarks; never by the production path.
"""
