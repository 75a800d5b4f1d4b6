"""Errors that blame the input or the machine, not ftjax, and the exit status each gives the scripts.

Their messages name the key, the file and line, or the folder at fault. The scripts (ftjax/cli.py) print
them as one line, `error: …`, instead of a traceback; any other exception keeps its traceback, since it
is a bug to report. `--debug` (or FTJAX_DEBUG=1 in the environment) shows the traceback of every error.

Exit status of the scripts:
  0   done
  1   a bug: an unexpected exception, with its traceback
  2   bad input (InputError): a config key, a data file and line, a path, a corrupt checkpoint
  74  the workdir could not be written (StorageError: disk full, no permission, read-only): the older
      checkpoints are intact; free space and rerun to resume (sysexits' EX_IOERR)
  75  stopped by SIGTERM or SIGINT after saving a checkpoint (Stopped): rerun the same command to resume
      (sysexits' EX_TEMPFAIL). A second signal ends the process at once (killed by that signal: 143 or 130
      in a shell); the previous checkpoint is intact.
"""

EXIT_INPUT = 2
EXIT_STORAGE = 74
EXIT_STOPPED = 75


class InputError(ValueError):
  """Bad input; the message names the config key, or the file and line."""


class StorageError(OSError):
  """A file of the run could not be written; the message names the cause and the path."""


class Stopped(Exception):
  """The run stopped at a signal's request after saving a checkpoint; the message names the step."""
