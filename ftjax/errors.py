"""Errors that blame the input, not ftjax: a config key, a data file, a checkpoint, a trainability rule.

Their messages name the key, or the file and line, at fault. The scripts print them as one line
(`error: …`, exit status 2) instead of a traceback; any other exception keeps its traceback, since it
is a bug to report.
"""


class InputError(ValueError):
  """Bad input; the message names the config key, or the file and line."""
