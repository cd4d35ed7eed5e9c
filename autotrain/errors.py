"""Errors that carry the exit code the CLI returns for them (see README, "Exit codes").

The library raises these; only the CLI turns them into a message and an exit status.
Each message is one line that names the file, field or tensor at fault.
"""


class AutotrainError(Exception):
    """Base class: an error a user can act on, with its documented exit code."""

    exit_code = 1


class CheckFailed(AutotrainError):
    """A verification failed (a gradient check mismatch)."""

    exit_code = 1


class ConfigError(AutotrainError):
    """Usage or config error, found before anything is written (exit 2).

    ``problems`` holds one line per problem; ``str(err)`` joins them.
    """

    exit_code = 2

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class WeightsError(AutotrainError):
    """A weights or checkpoint file that cannot be read safely or does not fit (exit 3)."""

    exit_code = 3


class DatasetError(AutotrainError):
    """A dataset that is missing, malformed or inconsistent with the config (exit 4)."""

    exit_code = 4


class NumericalError(AutotrainError):
    """NaN or Inf appeared in training (exit 5)."""

    exit_code = 5


class OutputError(AutotrainError):
    """Output could not be written during a run: disk full, permissions (exit 6)."""

    exit_code = 6
