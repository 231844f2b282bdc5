"""Error classes: the exception class decides whether the user or we are at fault.

A `JobError` (and its subclasses) is something the user can fix: the entrypoint writes its
message as the first line of `/opt/ml/output/failure` and exits with code 2. Any other
exception is our bug: exit code 1, the traceback goes to stderr only.

Messages follow one shape: the thing, the bad value, what is allowed, the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

USER_ERROR_EXIT_CODE = 2
INTERNAL_ERROR_EXIT_CODE = 1
STOPPED_EXIT_CODE = 143  # 128 + SIGTERM: stopped (stop, timeout, spot), a resumable state kept


class JobError(Exception):
    """A problem with the job's input that the user can fix (exit code 2)."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        self.message = message
        self.details = list(details)
        super().__init__(message)

    def __str__(self) -> str:
        return "\n".join([self.message, *self.details])


class ConfigError(JobError):
    """Hyperparameters or the `/opt/ml/input/config` files are invalid.

    Holds every problem found, so a user fixes a job in one round trip; the first problem is
    the headline.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        problems = list(problems) or ["invalid configuration"]
        headline = problems[0]
        if len(problems) > 1:
            headline += f" (and {len(problems) - 1} more problem(s) below)"
        super().__init__(headline, problems[1:])
        self.problems = problems


class ChannelError(JobError):
    """A data channel is missing, empty or not readable in the requested mode."""


class DataError(JobError):
    """The data in a channel is malformed (shape, dtype, value range, corruption)."""


class CheckpointError(JobError):
    """A checkpoint or legacy weight file cannot be used with this configuration."""


class ClusterError(JobError):
    """Another host: it does not resolve, does not join in time, failed, or disagrees with this one."""


class OutputError(JobError):
    """An output folder (model, output, checkpoints) cannot be written: disk full, read-only, permissions."""

    @classmethod
    def writing(cls, what: str, exc: OSError, fallback: object, outcome: str) -> OutputError:
        """`writing <what> failed at '<file>' (<cause>): <outcome>; <fix>`, from the OSError that stopped it."""
        where = exc.filename if exc.filename is not None else fallback
        return cls(f"writing {what} failed at '{where}' ({exc.strerror or type(exc).__name__}): {outcome}; "
                   "free space or fix the folder's permissions, then run the job again")
