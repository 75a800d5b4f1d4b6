"""Reproduce a paper table: `python scripts/reproduce.py --table=NAME [--cells=REGEX] [--rebuild]`.

Runs every cell of the table (configs/tables.py: methods, adversarial, ner, freeze, torch, precision,
pooling, e2e, decoder_tasks) that has not finished, one `scripts/train.py` (or `scripts/torch_reference.py`) command
each (so the command printed beside a number is exactly the one that produced it), into
`<runs>/NAME/<cell>/`, and after every cell rewrites `results/NAME.md` below its hand-written findings
(the table, the command, commit, wall time and machine of every cell), `results/NAME.json` and
`results/NAME.png`. Finished cells are kept: an interrupted grid resumes where it stopped, and a cell
interrupted mid-run resumes from its latest checkpoint. `--rebuild` only re-tabulates finished runs. results/ is committed and runs/ is not:
a cell recorded in results/NAME.json counts as finished where its run folder is absent (a fresh clone).
Several invocations may share a table (one per core, say): a cell that another process is training
(its folder's train.lock is held) is skipped and named at the end, never trained twice at once; two that
finish cells together write the table one after the other (results/.NAME.lock), each keeping the other's.

  python scripts/reproduce.py --table=freeze                 # train what is missing, then tabulate
  python scripts/reproduce.py --table=methods --cells='^rte-' # only the RTE cells
  python scripts/reproduce.py --table=methods --rebuild      # tables and plot from finished runs only
  python scripts/reproduce.py --table=ner --dry_run          # print the commands of the missing cells
  python scripts/reproduce.py --table=methods --cells='^sst2-bitfit-s0$' --rerun
      # re-run a finished cell's command into <runs>/methods.rerun/ and show how far it lands from the table

`--rerun` is the check that a printed command reproduces its number: each selected finished cell runs
again from scratch into `<runs>/NAME.rerun/<cell>/`, and the table gains a *Re-runs* section (recorded
number, re-run number, difference, both commits) that `--rebuild` keeps.

The work is done in ftjax/tables/: grid (cells as commands), run (training, linking, re-runs), tabulate
(results/NAME.md and .json) and plot (results/NAME.png).
"""

import re
import shlex
import sys
from pathlib import Path

from absl import flags

sys.path.insert(
  0, str(Path(__file__).resolve().parents[1])
)  # run from a clone without installing; configs/ lives beside ftjax/
from configs.tables import TABLES  # noqa: E402
from ftjax import cli  # noqa: E402
from ftjax.errors import InputError  # noqa: E402
from ftjax.tables import run  # noqa: E402
from ftjax.tables.grid import Grid  # noqa: E402

flags.DEFINE_enum("table", None, sorted(TABLES), "which table of configs/tables.py")
flags.DEFINE_string("runs", "runs/tables", "runs land in <runs>/<table>/<cell>/")
flags.DEFINE_string("results", "results", "folder of <table>.md, .json, .png")
flags.DEFINE_string("cells", "", "regex over cell names: run only the cells it matches (the table shows all)")
flags.DEFINE_bool(
  "rebuild", False, "train nothing: link cells that another table has run, then tabulate and plot the finished cells"
)
flags.DEFINE_bool("dry_run", False, "print the commands of the cells that would run, run nothing")
flags.DEFINE_bool(
  "rerun",
  False,
  "re-run the selected finished cells from scratch into <runs>/<table>.rerun/"
  "<cell>/ and tabulate how far each lands from its recorded number",
)
flags.DEFINE_string(
  "extra",
  "",
  "flags appended to every cell's command, e.g. '--config.max_steps=2' "
  "(smoke tests; they are part of each cell's recorded command)",
)
flags.mark_flags_as_required(["table"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  table = TABLES[FLAGS.table]()
  grid = Grid(
    table=table,
    root=(Path.cwd() / FLAGS.runs / table.name).resolve(),
    out=(Path.cwd() / FLAGS.results).resolve(),
    tables=TABLES,
    extra=tuple(shlex.split(FLAGS.extra)),
  )
  try:
    selected = re.compile(FLAGS.cells)
  except re.error as e:
    raise InputError(f"--cells={FLAGS.cells!r} is not a regex: {e}") from None
  if FLAGS.cells and not any(selected.search(c.name) for c in table.cells):
    raise InputError(
      f"--cells={FLAGS.cells!r} matches none of the {len(table.cells)} cells of table "
      f"{table.name!r} (e.g. {table.cells[0].name})"
    )
  if FLAGS.rerun:
    return run.rerun(grid, selected, dry_run=FLAGS.dry_run)
  run.reproduce(grid, selected, rebuild=FLAGS.rebuild, dry_run=FLAGS.dry_run)


if __name__ == "__main__":
  cli.run(main)
