"""Errors that are the user's to fix: main.py prints their message without a traceback."""


class UserError(ValueError):
  """A bad config value, a missing dataset or file: the message says what and how to fix it."""


class RunStopped(RuntimeError):
  """The run stopped on purpose (a non-finite step, a failed save): one line says why and what is on disk."""
