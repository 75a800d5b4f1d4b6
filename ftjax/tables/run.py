"""Trains a table's missing cells, each one `scripts/<script>.py` command in a child process, and re-runs.

A cell another table has run (same recipe) is linked, not trained; a stale run is kept as <cell>.stale-<n>
and the cell runs afresh; a cell whose folder's train.lock another driver holds is skipped and named; a
finished run is never trained again. The table is rewritten after every cell (tabulate.write_results).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ftjax import provenance, results
from ftjax.errors import InputError
from ftjax.tables import tabulate
from ftjax.tables.grid import REPO, Grid, command_recipe, read_record, recipe, shown_path
from ftjax.tables.tabulate import REPRODUCE_WITHIN, fmt_number
from ftjax.workdir_lock import workdir_holder

if TYPE_CHECKING:
  from configs.tables import Cell


def finished_twin(grid: Grid, cell: Cell) -> Path | None:
  """A finished, current run of another table's cell with this cell's recipe (the adversarial table's
  `none` rows are the methods table's full and LoRA cells; the torch table's ftjax rows are too)."""
  runs = grid.root.parent
  wanted = recipe(grid.argv(cell, grid.root / cell.name))
  for name, make in grid.tables.items():
    if name == grid.table.name:
      continue
    for other in make().cells:
      workdir = runs / name / other.name
      if (
        recipe(grid.argv(other, workdir)) == wanted
        and results.is_finished(workdir)
        and not workdir.is_symlink()
        and not grid.is_stale(other, workdir)
      ):
        return workdir
  return None


def move_aside(workdir: Path) -> Path:
  """Keeps a stale run, renamed <cell>.stale-<n>, so that the cell runs afresh."""
  n = 1
  while workdir.with_name(f"{workdir.name}.stale-{n}").exists():
    n += 1
  return workdir.rename(workdir.with_name(f"{workdir.name}.stale-{n}"))


def link_twin(grid: Grid, cell: Cell, say=print) -> bool:
  """Links <root>/<cell> to another table's finished run of the same recipe, if there is one (and the
  cell has no folder of its own yet): the same run, not trained twice."""
  workdir = grid.root / cell.name
  twin = None if workdir.exists() or workdir.is_symlink() else finished_twin(grid, cell)
  if twin is None:
    return False
  workdir.parent.mkdir(parents=True, exist_ok=True)
  workdir.symlink_to(os.path.relpath(twin, workdir.parent))
  say(f"{cell.name}: the same command as {shown_path(twin)} (finished): linked to it")
  return True


def run_cell(grid: Grid, cell: Cell, workdir: Path) -> int:
  """Train one cell in a child process (run from the repository, output to <workdir>/train.log)."""
  workdir.mkdir(parents=True, exist_ok=True)
  started = datetime.datetime.now()
  commit = provenance.commit()  # the code the child imports now ("+dirty": uncommitted edits to tracked files)
  with open(workdir / "train.log", "a") as log:
    log.write(f"\n=== {started:%Y-%m-%d %H:%M:%S} python {shlex.join(grid.argv(cell, workdir))}\n")
    log.flush()
    child = subprocess.Popen(
      [sys.executable] + grid.argv(cell, workdir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    try:
      code = child.wait()
    except KeyboardInterrupt:
      child.terminate()  # the run keeps its latest checkpoint and resumes from it next time
      child.wait()
      raise
  if code == 0:
    (workdir / "cell.json").write_text(
      json.dumps(
        {"commit": commit, "machine": provenance.machine(), "finished": f"{datetime.datetime.now():%Y-%m-%d %H:%M}"}
      )
    )
  return code


def log_tail(workdir: Path, lines: int = 5) -> str:
  text = (workdir / "train.log").read_text(errors="replace").splitlines() if (workdir / "train.log").exists() else []
  return "\n".join("    " + l for l in text[-lines:])


def rerun(grid: Grid, selected: re.Pattern, dry_run: bool = False) -> None:
  """--rerun: each selected cell with a finished, current run trains again from scratch into a fresh
  folder (a finished re-run is kept), then the table is rewritten with its Re-runs section."""
  table = grid.table
  chosen = [c for c in table.cells if selected.search(c.name)]
  finished = {r["cell"]: r for r in tabulate.collect(grid)}
  ready = [c for c in chosen if c.name in finished and not finished[c.name]["stale"]]
  if not ready:
    raise InputError(
      f"--rerun: none of the {len(chosen)} cells --cells={selected.pattern!r} selects has a finished, "
      f"current run (in {grid.root} or recorded in {grid.out / table.name}.json) to compare with (run "
      "them first)"
    )
  reruns = grid.rerun_root
  todo = [c for c in ready if not results.is_finished(reruns / c.name) or grid.is_stale(c, reruns / c.name)]
  print(f"table {table.name}: {len(ready)} finished cells selected, {len(todo)} to re-run into {reruns}")
  for cell in todo:
    if dry_run:
      print("python " + shlex.join(grid.argv(cell, reruns / cell.name)))
      continue
    if grid.is_stale(cell, reruns / cell.name):
      print(f"stale re-run of {cell.name} kept as {move_aside(reruns / cell.name).name}")
    if run_cell(grid, cell, reruns / cell.name):
      raise InputError(f"re-run of {cell.name} failed; its log: {reruns / cell.name / 'train.log'}")
  if dry_run:
    return
  for r in tabulate.collect_reruns(grid, tabulate.write_results(grid)):
    if selected.search(r["cell"]):
      beyond = "" if abs(r["difference"]) <= REPRODUCE_WITHIN else f", beyond {REPRODUCE_WITHIN} points"
      print(
        f"{r['cell']} {r['column']}: table {fmt_number(r['recorded'])}, re-run {fmt_number(r['rerun'])} "
        f"({r['difference']:+.2f}{beyond})"
      )


def reproduce(grid: Grid, selected: re.Pattern, rebuild: bool = False, dry_run: bool = False) -> None:
  """Links the selected cells another table has run, moves stale runs aside, trains the missing cells (none
  with `rebuild`; `dry_run` prints their commands) and rewrites the table after each."""
  table, root, out = grid.table, grid.root, grid.out
  own = read_record(out, table.name)["cells"]
  linked = set()  # a run of the same recipe on this machine is linked (a recorded one is only read)
  for cell in table.cells:
    workdir = root / cell.name
    if (
      not selected.search(cell.name)
      or workdir.exists()
      or workdir.is_symlink()
      or (cell.name in own and command_recipe(own[cell.name]["command"]) == recipe(grid.argv(cell, workdir)))
    ):
      continue
    if not dry_run and link_twin(grid, cell):
      linked.add(cell.name)
    elif dry_run and (twin := finished_twin(grid, cell)):
      print(f"{cell.name}: same command as {shown_path(twin)}, would be linked")
      linked.add(cell.name)
  finished = {r["cell"]: r for r in tabulate.collect(grid)}
  stale = [c for c in table.cells if selected.search(c.name) and c.name in finished and finished[c.name]["stale"]]
  for cell in stale:
    if rebuild or dry_run:
      print(f"stale: {cell.name} ran another command than the table's now; without --rebuild/--dry_run it runs again")
    elif (root / cell.name).exists():
      print(f"stale: {cell.name} ran another command than the table's now; kept as {move_aside(root / cell.name).name}")
    else:  # only its record in results/ is stale; the new run replaces it there
      print(
        f"stale: {cell.name} (recorded in {shown_path(out / table.name)}.json) ran another command than the "
        "table's now; it runs again"
      )
  todo = [c for c in table.cells if selected.search(c.name) and (c.name not in finished or c in stale)]
  if dry_run:
    for cell in todo:
      if cell.name not in linked:
        print("python " + shlex.join(grid.argv(cell, root / cell.name)))
    return
  here = sum(results.is_finished(root / name) for name in finished)
  print(
    f"table {table.name}: {len(finished)} of {len(table.cells)} cells finished"
    + (
      f" ({len(finished) - here} of them only recorded in {shown_path(out / table.name)}.json: their run "
      "folders are not on this machine)"
      if here < len(finished)
      else ""
    )
    + f", {0 if rebuild else len(todo)} to run"
  )
  failed, busy = [], []
  if todo and not rebuild:
    import tqdm

    bar = tqdm.tqdm(todo, desc=table.name, unit="cell", dynamic_ncols=True)
    for cell in bar:
      bar.set_postfix_str(cell.name)
      workdir = root / cell.name
      if link_twin(grid, cell, tqdm.tqdm.write):  # another grid finished the same recipe meanwhile
        tabulate.write_results(grid, tqdm.tqdm.write)
        continue
      if (holder := workdir_holder(workdir)) is not None:  # another grid driver is training this very cell
        busy.append(cell.name)
        tqdm.tqdm.write(f"cell {cell.name}: another process (pid {holder}) is training it now; skipped")
        continue
      if results.is_finished(workdir) and not grid.is_stale(cell, workdir):  # another driver finished it meanwhile
        tabulate.write_results(grid, tqdm.tqdm.write)
        continue
      try:
        code = run_cell(grid, cell, workdir)
      except KeyboardInterrupt:
        bar.close()
        tabulate.write_results(grid, tqdm.tqdm.write)
        print(f"interrupted in {cell.name}: rerun the same command to resume (its log: {workdir / 'train.log'})")
        raise SystemExit(130)
      if code:
        failed.append(cell.name)
        tqdm.tqdm.write(
          f"cell {cell.name} failed (exit {code}); the last lines of {workdir / 'train.log'}:\n" + log_tail(workdir)
        )
      tabulate.write_results(grid, tqdm.tqdm.write)  # the table grows as cells finish
    bar.close()
  finished = tabulate.write_results(grid)
  print(
    f"wrote {out / table.name}.md, .json, .png: {len(finished)} of {len(table.cells)} cells finished"
    + (f"; {len(busy)} skipped, in training elsewhere: {', '.join(busy)}" if busy else "")
  )
  if failed:
    raise InputError(
      f"{len(failed)} cells failed: {', '.join(failed)} (each log: <runs>/{table.name}/<cell>/train.log)"
    )
