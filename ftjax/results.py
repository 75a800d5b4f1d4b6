"""What a finished run measured, read back from its folder (for tables: scripts/report.py, reproduce.py).

Nothing here trains or scores: every number comes from the run's own files, as `train_and_evaluate`
wrote them (config.json, run.json, metrics.jsonl, summary.txt, command.txt).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

from ftjax import experiment
from ftjax.loop import selection

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
  kind = json.loads((workdir / "run.json").read_text())["task"]["kind"]
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
    "test": {k: test[-1][k] for k in SHOWN if k in test[-1]} if test else {},
    "steps": f"{steps.group(1)}/{steps.group(2)}" if steps else "?",
    "wall_minutes": float(wall.group(1)) if wall else None,
    "cpu_minutes": float(cpu.group(1)) if cpu else None,
    "trainable_params": int(params.group(1).replace(",", "")) if params else None,
    "total_params": int(params.group(2).replace(",", "")) if params else None,
    "command": command,
  }


def commit() -> str:
  """The checkout's commit (short hash), '+dirty' when tracked code differs from it (results/ aside:
  regenerating a table must not mark the table itself dirty)."""
  root = Path(__file__).resolve().parents[1]
  run = lambda *args: subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()
  head = run("rev-parse", "--short", "HEAD") or "?"
  return head + ("+dirty" if run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results") else "")


def machine() -> str:
  """CPU model and core count: the numbers in results/ are only comparable on the same kind of machine."""
  cpu = "?"
  if Path("/proc/cpuinfo").exists():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
  return f"{cpu} ({platform.machine()}, {os.cpu_count()} cores)"
