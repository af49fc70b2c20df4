"""Process exit codes: ECS, schedulers and alarms tell outcomes apart by these alone."""

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0
    FAILURE = 1  # the run failed; the next run repairs it (nothing committed is lost)
    CONFIG_ERROR = 2  # bad configuration, credentials or input: retrying will not help
    LOCK_HELD = 3  # another run of the same pipeline holds the lock; this one did nothing
    DRIFT_FOUND = 4  # verify found source and destination differ
