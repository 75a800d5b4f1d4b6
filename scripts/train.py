"""Fine-tune: `python scripts/train.py --config=configs/glue.py:rte --workdir=runs/rte [--config.x=...]`.

Rerunning the same command on the same workdir resumes from its newest checkpoint that restores (a
corrupt one is named in one line and the next older one used; `--config.resume=false` starts afresh).
SIGTERM or SIGINT (preemption, Ctrl-C) saves a checkpoint at the next step boundary and exits; a second
signal exits at once. A problem with the config or the data (a malformed row, an unknown label, a missing
file, ...) stops the run with one line, `error: <message>` naming the key or the file and line; `--debug`
or FTJAX_DEBUG=1 shows the traceback instead.

Exit status (ftjax/errors.py):
  0   done
  1   a bug: an unexpected exception, with its traceback
  2   bad input: a config key, a data file and line, a path, no checkpoint that restores
  74  the workdir could not be written (disk full, no permission): the older checkpoints are intact;
      free space and rerun to resume
  75  stopped by SIGTERM or SIGINT after saving a checkpoint: rerun the same command to resume
      (killed by a second signal: 143 or 130 in a shell)
"""

import shlex
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
import jax  # noqa: E402

from ftjax import cli, parallel  # noqa: E402
from ftjax.loop import train_and_evaluate  # noqa: E402

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py[:arg])", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics.jsonl, summary")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # Several processes (multi-host: docs/scale.md): join them before anything asks jax for devices.
  parallel.initialize_distributed(flags.FLAGS.config.get("distributed", False))
  workdir = Path(flags.FLAGS.workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  # The exact command, for tables that cite it (scripts/report.py); a resumed run keeps the first.
  if jax.process_index() == 0 and not (workdir / "command.txt").exists():
    (workdir / "command.txt").write_text(" ".join(["python"] + [shlex.quote(a) for a in sys.argv]) + "\n")
  train_and_evaluate(flags.FLAGS.config, workdir)


if __name__ == "__main__":
  cli.run(main)
