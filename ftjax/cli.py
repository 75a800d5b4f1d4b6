"""What every script does around its `main`: quiet library logging, and the errors users cause as one line.

An `InputError` (a config key, a data file and line, a corrupt checkpoint, a rule), a bad path, a failed
write (`StorageError`, disk full) or a stop at a signal prints `error: <message>` (or `stopped: …`) on
stderr and exits with the status ftjax/errors.py lists; any other exception keeps its traceback.
`--debug` or FTJAX_DEBUG=1 in the environment shows the traceback of every error.
"""

import errno
import os
import sys

from absl import app, flags, logging

from ftjax.errors import EXIT_INPUT, EXIT_STOPPED, EXIT_STORAGE, InputError, Stopped, StorageError

# Bad paths: a missing file or folder, a file where a folder is expected, no permission.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _debug() -> bool:
  return flags.FLAGS.debug or os.environ.get("FTJAX_DEBUG", "") not in ("", "0")


def run(main) -> None:
  if "debug" not in flags.FLAGS:
    flags.DEFINE_bool("debug", False, "show the traceback of every error (also: FTJAX_DEBUG=1)")

  def guarded(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint save and restore at INFO
    try:
      main(argv)
    except Stopped as e:
      print(f"stopped: {e}", file=sys.stderr)
      sys.exit(EXIT_STOPPED)
    except (InputError, StorageError, OSError) as e:
      disk = isinstance(e, StorageError) or (isinstance(e, OSError) and e.errno in DISK_ERRNOS)
      if _debug() or not (disk or isinstance(e, (InputError, *PATH_ERRORS))):
        raise
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_STORAGE if disk else EXIT_INPUT)

  app.run(guarded)
