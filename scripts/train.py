"""Fine-tune: `python scripts/train.py --config=configs/glue.py:rte --workdir=runs/rte [--config.x=...]`.

Rerunning the same command on the same workdir resumes from its latest checkpoint. A problem with the
config or the data (a malformed row, an unknown label, a missing file, ...) stops the run with one line,
`error: <message>` naming the key or the file and line, and exit status 2.
"""

import shlex
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli  # noqa: E402
from ftjax.loop import train_and_evaluate  # noqa: E402

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py[:arg])", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics.jsonl, summary")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  workdir = Path(flags.FLAGS.workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  # The exact command, for tables that cite it (scripts/report.py); a resumed run keeps the first.
  if not (workdir / "command.txt").exists():
    (workdir / "command.txt").write_text(" ".join(["python"] + [shlex.quote(a) for a in sys.argv]) + "\n")
  train_and_evaluate(flags.FLAGS.config, workdir)


if __name__ == "__main__":
  cli.run(main)
