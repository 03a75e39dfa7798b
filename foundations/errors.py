"""Errors that mean "the user asked for something we cannot do", with a message saying what to do.

They live in `foundations/` (the bottom layer) so that every area can raise them without importing
`genfm.experiments`; `genfm.experiments.errors` re-exports them. The launcher
(`genfm.experiments.run`) prints a `UserError` as one line and exits with status 2,
instead of a traceback: wrong config keys or choices, a missing data set offline, a workdir that
holds another run, a corrupt checkpoint, a loss that became NaN.
"""


class UserError(Exception):
  """Base class: the message must say what was wrong and what to do about it."""


class ConfigError(UserError, ValueError):
  """An unknown config key or an invalid choice."""


class DataError(UserError):
  """A data set that is unknown, or not available on this machine."""


class CheckpointError(UserError):
  """A checkpoint that cannot be read, or a workdir that holds a different run."""


class NonFiniteLossError(UserError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


def unknown_choice(what: str, got, valid) -> ConfigError:
  """`ConfigError` for `got` not in `valid`, listing the valid choices."""
  return ConfigError(f"unknown {what} {got!r}; valid choices: {', '.join(sorted(map(str, valid)))}")
