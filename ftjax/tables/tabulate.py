"""A table's finished cells → results/<table>.md (below its findings) and results/<table>.json.

A cell is finished where its run folder holds a finished run, or where results/<table>.json recorded one
(results/ is committed, runs/ is not), or where another table recorded a run of its recipe. Each number
in the table is the mean ± sample std over a row's and column's seeds; the page lists every cell's run
with the command that re-runs it, and the re-runs of `reproduce.py --rerun` beside the recorded numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shlex
import statistics
from typing import TYPE_CHECKING

from ftjax import provenance, results
from ftjax.tables.grid import Grid, cell_meta, command_recipe, read_record, recipe, shown_path
from ftjax.tables.plot import plot
from ftjax.workdir_lock import waiting_lock

if TYPE_CHECKING:
  from configs.tables import Table

REPRODUCE_WITHIN = 0.5  # points: a re-run of a cell's command must land this close to its number (the issue)


def recorded_workdir(record: dict) -> str:
  return next(a.split("=", 1)[1] for a in shlex.split(record["command"]) if a.startswith("--workdir="))


def collect(grid: Grid) -> list[dict]:
  """Every finished cell: its run in <root>/<cell>; else its record in results/<table>.json; else the
  record of a run with the same recipe in another table's results (the methods table's full and LoRA
  runs are the adversarial table's `none` rows). `stale`: the run's command is not the cell's now."""
  table, root = grid.table, grid.root
  records = {name: read_record(grid.out, name)["cells"] for name in grid.tables}
  twins = {}  # recipe → the first record of it in another table
  for name, cells in records.items():
    for r in cells.values():
      if name != table.name:
        twins.setdefault(tuple(command_recipe(r["command"])), r)
  found = []
  for cell in table.cells:
    workdir = root / cell.name
    wanted = recipe(grid.argv(cell, workdir))
    if results.is_finished(workdir):
      record = {"cell": cell.name, "row": cell.row, "column": cell.column, **results.describe(workdir)}
      meta = cell_meta(workdir)
      record.update(
        commit=meta.get("commit", "?"),
        machine=meta.get("machine", "?"),
        same_run_as=shown_path(workdir.resolve()) if workdir.is_symlink() else None,
        stale=grid.is_stale(cell, workdir),
      )
    elif cell.name in records[table.name]:
      record = records[table.name][cell.name]
      record = {**record, "stale": command_recipe(record["command"]) != wanted}
    elif (twin := twins.get(tuple(wanted))) is not None:
      record = {
        **twin,
        "cell": cell.name,
        "row": cell.row,
        "column": cell.column,
        "same_run_as": twin["same_run_as"] or recorded_workdir(twin),
        "stale": False,
      }
    else:
      continue
    found.append(record)
  return found


def collect_reruns(grid: Grid, finished: list[dict]) -> list[dict]:
  """Every finished re-run beside the recorded run of its cell, one entry per column the cell feeds; a
  re-run recorded in results/<table>.json whose folder is not here is kept while its cell's run is the
  one it was compared with."""
  by_name = {r["cell"]: r for r in finished}
  previous = read_record(grid.out, grid.table.name)["reruns"]
  found = []
  for cell in grid.table.cells:
    workdir = grid.rerun_root / cell.name
    if cell.name not in by_name:
      continue
    if not results.is_finished(workdir):
      found += [r for r in previous if r["cell"] == cell.name and r["recorded_commit"] == by_name[cell.name]["commit"]]
      continue
    if grid.is_stale(cell, workdir):
      continue  # (a re-run of an older recipe of the cell is no check of the table's number)
    again = results.describe(workdir)
    meta = cell_meta(workdir)
    for column in (c for c in grid.table.columns if c.key == cell.column):
      recorded = by_name[cell.name][column.split].get(column.metric)
      measured = again[column.split].get(column.metric)
      if recorded is None or measured is None:
        continue
      found.append(
        {
          "cell": cell.name,
          "column": column.label,
          "recorded": recorded,
          "rerun": measured,
          "difference": measured - recorded,
          "recorded_commit": by_name[cell.name]["commit"],
          "rerun_commit": meta.get("commit", "?"),
          "rerun_wall_minutes": again["wall_minutes"],
          "rerun_command": again["command"],
        }
      )
  return found


def aggregate(table: Table, finished: list[dict]) -> dict:
  """row → column label → {mean, std, n, values} (std: sample std over seeds; 0 for one seed)."""
  scores = {}
  for row in dict.fromkeys(c.row for c in table.cells):
    scores[row] = {}
    for column in table.columns:
      values = [r[column.split].get(column.metric) for r in finished if r["row"] == row and r["column"] == column.key]
      values = [v for v in values if v is not None]
      expected = sum(1 for c in table.cells if c.row == row and c.column == column.key)
      if not expected:
        continue
      entry = {"values": values, "n": len(values), "expected": expected}
      if values:
        entry.update(mean=statistics.mean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0)
      params = [r for r in finished if r["row"] == row and r["column"] == column.key and r["trainable_params"]]
      if params:
        entry.update(trainable_params=params[0]["trainable_params"], total_params=params[0]["total_params"])
      scores[row][column.label] = entry
  return scores


def fmt_entry(entry: dict | None, with_params: bool) -> str:
  if not entry:
    return ""
  if "mean" not in entry:
    return f"not run (0/{entry['expected']})"
  text = fmt_number(entry["mean"])
  if entry["expected"] > 1:
    text += (
      f" ± {entry['std']:.1f} ({entry['n']}/{entry['expected']})" if entry["n"] > 1 else f" (1/{entry['expected']})"
    )
  if with_params and entry.get("trainable_params"):
    text += f" · {fmt_params(entry['trainable_params'], entry['total_params'])}"
  return text


def fmt_number(value: float) -> str:
  """One decimal as the papers print GLUE scores; two for small-valued metrics (NIST 8.85, CIDEr 2.53)."""
  return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def fmt_params(trainable: int, total: int) -> str:
  count = f"{trainable / 1e6:.2f}M" if trainable >= 1e5 else f"{trainable / 1e3:.1f}k"
  return f"{count} ({100 * trainable / total:.2f}%)"


def compute_line(table: Table, finished: list[dict]) -> str:
  """What the finished cells cost in CPU time (all threads; a cell sharing the cores with another runs
  longer in wall time, not in CPU time; runs before 2026-11-30 did not record it), and what the cells
  still to run will cost at the price of finished runs of the same row and column (the other seeds of a
  method on a task): the number to hold against a grid's budget before spending it."""
  own = [r for r in finished if not r["same_run_as"]]  # a run linked from another table is counted there
  cpu = [r["cpu_minutes"] for r in own if r["cpu_minutes"] is not None]
  wall = sum(r["wall_minutes"] or 0 for r in own)
  text = f" Compute: {wall / 60:.1f} wall-hours over the {len(own)} runs this table trained itself"
  if cpu:
    text += f"; {sum(cpu) / 60:.1f} CPU-hours over the {len(cpu)} that recorded CPU time"
  text += "."
  done = {r["cell"] for r in finished}
  todo = [c for c in table.cells if c.name not in done]
  if not todo:
    return text
  price: dict[tuple[str, str], list[float]] = {}
  for r in finished:  # CPU minutes; wall minutes for the runs that did not record CPU time
    minutes = r["cpu_minutes"] if r["cpu_minutes"] is not None else r["wall_minutes"]
    if minutes:
      price.setdefault((r["row"], r["column"]), []).append(minutes)
  priced = [statistics.mean(price[(c.row, c.column)]) for c in todo if (c.row, c.column) in price]
  text += f" Still to run: {len(todo)} cell{'s' * (len(todo) != 1)}"
  if priced:
    text += (
      f", ~{sum(priced) / 60:.1f} CPU-hours for the {len(priced)} of them priced by finished runs of "
      f"the same row and column (their CPU time, or wall time where it was not recorded)"
    )
  return text + "."


def markdown(grid: Grid, scores: dict, finished: list[dict], reruns: list[dict], plot_name: str | None) -> str:
  """The page's generated body (its title and findings are write_page's): the table, every cell's run and
  command, the re-runs."""
  table = grid.table
  per_cell_params = table.params_per_cell
  header = ["", *(["trainable"] if not per_cell_params else []), *(c.label for c in table.columns)]
  if table.average:
    header.append("average")
  header += [label for label, _ in table.row_references]
  lines = [
    f"Regenerate: `python scripts/reproduce.py --table={table.name}` (trains the cells that have not "
    f"finished, then tabulates; `--rebuild` only tabulates). Tabulated at commit {provenance.commit()} on "
    f"{datetime.date.today()}; {len(finished)} of {len(table.cells)} cells finished; the cells ran "
    f"on {', '.join(sorted({r['machine'] for r in finished})) or '—'}.{compute_line(table, finished)}",
    "",
    provenance.versions_line(finished),
    "",
    table.notes,
    "",
    "| " + " | ".join(header) + " |",
    "|" + "---|" + "---:|" * (len(header) - 1),
  ]
  for row, entries in scores.items():
    cells = [row]
    if not per_cell_params:
      first = next((e for e in entries.values() if e.get("trainable_params")), None)
      cells.append(fmt_params(first["trainable_params"], first["total_params"]) if first else "")
    cells += [fmt_entry(entries.get(c.label), per_cell_params) for c in table.columns]
    if table.average:
      means = [entries[c.label]["mean"] for c in table.columns if "mean" in entries.get(c.label, {})]
      complete = len(means) == len(table.columns) and all(
        entries[c.label]["n"] == entries[c.label]["expected"] for c in table.columns
      )
      cells.append(f"{sum(means) / len(means):.1f}" if complete else "")
    cells += [f"{values[row]:.1f}" if row in values else "" for _, values in table.row_references]
    lines.append("| " + " | ".join(cells) + " |")
  if any(c.reference is not None for c in table.columns):
    ref = [f"*{table.reference_label}*"] + ([""] if not per_cell_params else [])
    ref += [f"*{fmt_number(c.reference)}*" if c.reference is not None else "" for c in table.columns]
    ref += [""] * (int(table.average) + len(table.row_references))
    lines.append("| " + " | ".join(ref) + " |")
  if plot_name:
    lines += ["", f"![{table.name}]({plot_name})"]
  lines += [
    "",
    "## Cells",
    "",
    "Each number above comes from these runs; the command re-runs the cell "
    "(same seed, same kind of machine) into a fresh folder.",
    "",
    "| cell | seed | dev | test | trainable | steps | wall (min) | CPU (min) | commit | command |",
    "|---|---:|---|---|---:|---:|---:|---:|---|---|",
  ]
  by_name = {r["cell"]: r for r in finished}
  fmt = lambda d: ", ".join(f"{k} {fmt_number(v)}" for k, v in d.items()) or "—"
  for cell in table.cells:
    r = by_name.get(cell.name)
    if r is None:
      command = "python " + shlex.join(grid.argv(cell, grid.root / cell.name))
      lines.append(f"| {cell.name} | {cell.seed} | not run | | | | | | | `{command}` |")
      continue
    params = fmt_params(r["trainable_params"], r["total_params"]) if r["trainable_params"] else "?"
    cpu = "—" if r["cpu_minutes"] is None else r["cpu_minutes"]
    flag = " (stale: ran another command than the table's now)" if r["stale"] else ""
    flag += f" (the run of {r['same_run_as']})" if r["same_run_as"] else ""
    lines.append(
      f"| {cell.name}{flag} | {cell.seed} | {fmt(r['dev'])} (step {r['best_step']}) | {fmt(r['test'])} | "
      f"{params} | {r['steps']} | {r['wall_minutes']} | {cpu} | {r['commit']} | `{r['command']}` |"
    )
  if reruns:
    within = sum(abs(r["difference"]) <= REPRODUCE_WITHIN for r in reruns)
    lines += [
      "",
      "## Re-runs",
      "",
      f"`python scripts/reproduce.py --table={table.name} --cells=REGEX --rerun` ran these cells' commands "
      f"again from scratch (into `{shown_path(grid.rerun_root)}/`): {within} of {len(reruns)} numbers "
      f"within {REPRODUCE_WITHIN} points of the table's.",
      "",
      "| cell | column | table | re-run | difference | commits (table → re-run) | re-run wall (min) |",
      "|---|---|---:|---:|---:|---|---:|",
    ]
    lines += [
      f"| {r['cell']} | {r['column']} | {fmt_number(r['recorded'])} | {fmt_number(r['rerun'])} | "
      f"{r['difference']:+.2f} | {r['recorded_commit']} → {r['rerun_commit']} | {r['rerun_wall_minutes']} |"
      for r in reruns
    ]
  return "\n".join(lines) + "\n"


def write_results(grid: Grid, say=print) -> list[dict]:
  """Tabulates the finished cells into results/<table>.md, .json and .png. The table is read (its
  recorded cells) and written back under results/.<table>.lock: a driver that finishes a cell while
  another is writing waits, then reads that write, so neither drops the other's cell."""
  table, out = grid.table, grid.out
  out.mkdir(parents=True, exist_ok=True)
  with waiting_lock(out / f".{table.name}.lock", say):
    finished = collect(grid)
    scores = aggregate(table, finished)
    reruns = collect_reruns(grid, finished)
    png = out / f"{table.name}.png"
    has_plot = plot(table, scores, png)
    body = markdown(grid, scores, finished, reruns, png.name if has_plot else None)
    results.write_page(out / f"{table.name}.md", table.title, body)
    results.write_atomically(
      out / f"{table.name}.json",
      json.dumps(
        {
          "table": table.name,
          "title": table.title,
          "notes": table.notes,
          "commit": provenance.commit(),
          "date": str(datetime.date.today()),
          "columns": [dataclasses.asdict(c) for c in table.columns],
          "grid": scores,
          "cells": finished,
          "reruns": reruns,
        },
        indent=2,
      )
      + "\n",
    )
  return finished
