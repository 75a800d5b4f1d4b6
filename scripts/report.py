"""Tabulate finished runs: `python scripts/report.py --out=results/tasks runs/rte runs/mrpc ...`.

Reads each workdir (config.json, metrics.jsonl, summary.txt, command.txt) and writes `<out>.md` (below its
hand-written findings) and `<out>.json`: per run the task, method, the dev metrics of the parameters the
run ended with (its best dev evaluation), the test metrics where the run scored a test split, steps, wall
time and the exact command that produced it. Nothing is trained here: every number comes from a run's own metrics.jsonl.
"""

import datetime
import json
import shlex
import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli  # noqa: E402
from ftjax.provenance import commit, machine  # noqa: E402
from ftjax.results import describe, write_page  # noqa: E402

flags.DEFINE_string("out", "results/tasks", "output path without extension (.md and .json are written)")
flags.DEFINE_string("title", "Fine-tuning runs", "heading of the table")
flags.DEFINE_string("note", "", "a paragraph under the heading (what the runs are, how they were scored)")
FLAGS = flags.FLAGS


def regenerate_flags() -> list[str]:
  return (
    [f"--out={FLAGS.out}"]
    + ([f"--title={FLAGS.title}"] if FLAGS["title"].present else [])
    + ([f"--note={FLAGS.note}"] if FLAGS.note else [])
  )


def main(argv):
  runs = [describe(Path(a).resolve()) for a in argv[1:]]
  if not runs:
    raise FileNotFoundError("name the run folders to tabulate")
  fmt = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in d.items()) or "—"
  md = [
    f"Regenerate: `python scripts/report.py {shlex.join(regenerate_flags() + argv[1:])}` (reads the runs; trains "
    "nothing).",
    f"Commit {commit()}, {datetime.date.today()}, {machine()}, {len(runs)} runs.",
    "",
    *([FLAGS.note, ""] if FLAGS.note else []),
    "| run | task | method | selected on | dev (best step) | test | steps | wall time |",
    "|---|---|---|---|---|---|---:|---:|",
  ]
  for r in runs:
    md.append(
      f"| {Path(r['workdir']).name} | {r['task']} | {r['method']}{'' if r['adversarial'] == 'none' else ' + ' + r['adversarial']} | "
      f"{r['selected_on']} | {fmt(r['dev'])} (step {r['best_step']}) | {fmt(r['test'])} | {r['steps']} | "
      f"{r['wall_minutes']} min |"
    )
  md += ["", "Commands:", ""] + [f"- {Path(r['workdir']).name}: `{r['command']}`" for r in runs]
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  write_page(out.with_suffix(".md"), FLAGS.title, "\n".join(md) + "\n")
  out.with_suffix(".json").write_text(json.dumps(runs, indent=2) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  cli.run(main)
