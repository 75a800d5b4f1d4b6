"""What every script does around its `main`: quiet library logging, and bad input as one line.

An `InputError` (a config key, a data file and line, a checkpoint, a rule) or a missing file prints
`error: <message>` on stderr and exits with status 2; any other exception keeps its traceback.
"""

import sys

from absl import app, logging

from ftjax.errors import InputError


def run(main) -> None:
  def guarded(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint save and restore at INFO
    try:
      main(argv)
    except (InputError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
