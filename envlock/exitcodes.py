"""What an envlock command's exit status means: the one table of exit codes (served as `envlock.errors.ExitCode`).

Its own module so that a job start's `verify --fast`, which raises nothing, does not load enum for it: the
exceptions of envlock.errors carry the same codes as plain ints.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What an envlock command's exit status means."""

    OK = 0
    MISMATCH = 1  # verify or diff found an error-severity mismatch
    BAD_INPUT = 2  # usage, a missing or invalid lock or facts file, hostile content
    UNAVAILABLE = 3  # the environment cannot be examined or used (NVML broken, daemon down, no store)
    BUILD = 4  # an image build step failed
    INTERRUPTED = 130  # Ctrl-C
