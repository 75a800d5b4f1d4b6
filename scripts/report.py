"""Tabulate finished runs: `python scripts/report.py --out=results/tasks runs/rte runs/mrpc ...`.

Reads each workdir (config.json, metrics.jsonl, summary.txt, command.txt) and writes `<out>.md` and
`<out>.json`: per run the task, method, the dev metrics of the parameters the run ended with (its best
dev evaluation), the test metrics where the run scored a test split, steps, wall time and the exact
command that produced it. Nothing is trained here: every number comes from a run's own metrics.jsonl.
"""
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli, experiment  # noqa: E402
from ftjax.loop import selection  # noqa: E402

flags.DEFINE_string("out", "results/tasks", "output path without extension (.md and .json are written)")
flags.DEFINE_string("title", "Fine-tuning runs", "heading of the table")
FLAGS = flags.FLAGS

SHOWN = ("accuracy", "f1", "matthews", "pearson", "spearman", "precision", "recall", "exact_match",
         "perplexity", "bleu", "rougeL")


def describe(workdir: Path) -> dict:
  config = experiment.load_config(workdir)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
  kind = json.loads((workdir / "run.json").read_text())["task"]["kind"]
  metric, mode = selection(config, kind)
  dev = [l for l in lines if l["split"] == (config.task.dev_split or "dev") and metric in l]
  best = (max if mode == "max" else min)(dev, key=lambda l: l[metric]) if dev else {}
  test = [l for l in lines if l["split"] == "test"]
  summary = (workdir / "summary.txt").read_text() if (workdir / "summary.txt").exists() else ""
  wall = next((l.split("wall time")[1].strip() for l in summary.splitlines() if "wall time" in l), "?")
  steps = next((l.split()[1] for l in summary.splitlines() if l.startswith("steps ")), "?")
  command = (workdir / "command.txt").read_text().strip() if (workdir / "command.txt").exists() else "?"
  return {"workdir": str(workdir), "task": config.task.source, "method": config.method,
          "adversarial": config.adversarial.method, "selected_on": metric, "best_step": best.get("step"),
          "dev": {k: best[k] for k in SHOWN if k in best}, "test": {k: test[-1][k] for k in SHOWN if k in test[-1]}
          if test else {}, "steps": steps, "wall_time": wall, "command": command}


def main(argv):
  runs = [describe(Path(a).resolve()) for a in argv[1:]]
  if not runs:
    raise FileNotFoundError("name the run folders to tabulate")
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
  fmt = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in d.items()) or "—"
  md = [f"# {FLAGS.title}", "",
        f"Regenerate: `python scripts/report.py --out={FLAGS.out} {' '.join(argv[1:])}` (reads the runs; trains nothing).",
        f"Commit {commit}, {datetime.date.today()}, {cpu} ({platform.machine()}), {len(runs)} runs.", "",
        "| task | method | selected on | dev (best step) | test | steps | wall time |", "|---|---|---|---|---|---:|---:|"]
  for r in runs:
    md.append(f"| {r['task']} | {r['method']}{'' if r['adversarial'] == 'none' else ' + ' + r['adversarial']} | "
              f"{r['selected_on']} | {fmt(r['dev'])} (step {r['best_step']}) | {fmt(r['test'])} | {r['steps']} | "
              f"{r['wall_time']} |")
  md += ["", "Commands:", ""] + [f"- {r['task']}: `{r['command']}`" for r in runs]
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".md").write_text("\n".join(md) + "\n")
  out.with_suffix(".json").write_text(json.dumps(runs, indent=2) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  cli.run(main)
