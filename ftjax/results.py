"""What a finished run measured, read back from its folder, and the results/*.md pages that show it.

Nothing here trains or scores: every number comes from the run's own files, as `train_and_evaluate`
wrote them (config.json, run.json, metrics.jsonl, summary.txt, command.txt). Every generator of a
results/<name>.md page (scripts/reproduce.py, report.py, bench.py, profile_step.py) writes it with
`write_page`, which keeps the page's hand-written findings above GENERATED_BELOW.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ftjax import experiment
from ftjax.evaluation import selection

SHOWN = (
  "accuracy",
  "f1",
  "matthews",
  "pearson",
  "spearman",
  "precision",
  "recall",
  "exact_match",
  "perplexity",
  "bleu",
  "nist",
  "meteor",
  "rougeL",
  "cider",
  "rouge1",
  "rouge2",
  "bleu1",
  "bleu2",
  "distinct1",
  "distinct2",
)


def is_finished(workdir: Path) -> bool:
  """train_and_evaluate writes summary.txt last, after the final evaluation."""
  return (Path(workdir) / "summary.txt").is_file()


def describe(workdir: Path) -> dict:
  """The dev metrics of the parameters the run ended with (its best dev evaluation), its last test
  metrics, trainable parameter count, steps, wall and CPU time and the command that produced it."""
  workdir = Path(workdir)
  config = experiment.load_config(workdir)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
  record = json.loads((workdir / "run.json").read_text())
  kind = record["task"]["kind"]
  environment = record.get("environment", {})  # runs before 2026-12-05 did not record it
  metric, mode = selection(config, kind)
  dev = [l for l in lines if l["split"] == (config.task.dev_split or "dev") and metric in l]
  best = (max if mode == "max" else min)(dev, key=lambda l: l[metric]) if dev else {}
  test = [l for l in lines if l["split"] == "test"]
  summary = (workdir / "summary.txt").read_text() if (workdir / "summary.txt").exists() else ""
  wall = re.search(r"wall time ([\d.]+) min", summary)
  cpu = re.search(r"CPU time ([\d.]+) min", summary)  # runs before 2026-11-30 did not record it
  steps = re.search(r"^steps (\d+)/(\d+)", summary, re.M)
  params = re.search(r"trainable parameters: ([\d,]+) of ([\d,]+)", summary)
  command = (workdir / "command.txt").read_text().strip() if (workdir / "command.txt").exists() else "?"
  return {
    "workdir": str(workdir),
    "task": config.task.source,
    "method": config.method,
    "adversarial": config.adversarial.method,
    "seed": config.seed,
    "selected_on": metric,
    "best_step": best.get("step"),
    "dev": {k: best[k] for k in SHOWN if k in best},
    "test": {k: v for line in test for k, v in line.items() if k in SHOWN},  # generation has its own line
    "steps": f"{steps.group(1)}/{steps.group(2)}" if steps else "?",
    "wall_minutes": float(wall.group(1)) if wall else None,
    "cpu_minutes": float(cpu.group(1)) if cpu else None,
    "trainable_params": int(params.group(1).replace(",", "")) if params else None,
    "total_params": int(params.group(2).replace(",", "")) if params else None,
    "command": command,
    "versions": environment.get("versions"),
  }


GENERATED_BELOW = "<!-- generated below: edit the findings above this line; the command below rewrites the rest -->"


def write_atomically(path: Path, text: str) -> None:
  """A reader (another grid driver reading a table's JSON, say) never sees half a file, and an
  interrupted write does not leave one."""
  part = path.with_name(path.name + ".part")
  part.write_text(text, encoding="utf-8")
  os.replace(part, path)


def write_page(path: Path, title: str, body: str) -> None:
  """Writes a results page: `# title`, its findings (hand-written), the GENERATED_BELOW line, a blank line
  and `body`. Everything of the existing page up to and including its GENERATED_BELOW line is kept byte
  for byte (title and findings are edited by hand); a page without that line, or no page, gets the title
  and the line, no findings yet. The body is what a generator makes, without a title."""
  path = Path(path)
  old = path.read_bytes().decode() if path.is_file() else ""
  lines = old.splitlines(keepends=True)
  at = next((i for i, line in enumerate(lines) if line.rstrip("\r\n") == GENERATED_BELOW), None)
  if at is None:
    head = f"# {title}\n\n{GENERATED_BELOW}\n"
  else:
    head = "".join(lines[: at + 1]) + ("" if lines[at].endswith("\n") else "\n")
  write_atomically(path, head + "\n" + body)
