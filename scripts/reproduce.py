"""Reproduce a paper table: `python scripts/reproduce.py --table=NAME [--cells=REGEX] [--rebuild]`.

Runs every cell of the table (configs/tables.py: methods, adversarial, ner, freeze, torch, precision,
pooling, e2e) that has not finished, one `scripts/train.py` (or `scripts/torch_reference.py`) command
each (so the command printed beside a number is exactly the one that produced it), into
`<runs>/NAME/<cell>/`, and after every cell rewrites `results/NAME.md` (the table, the command, commit,
wall time and machine of every cell), `results/NAME.json` and `results/NAME.png`. Finished cells are
kept: an interrupted grid resumes where it stopped, and a cell interrupted mid-run resumes from its
latest checkpoint. `--rebuild` only re-tabulates finished runs. results/ is committed and runs/ is not:
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
"""

import dataclasses
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from absl import flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a clone without installing; configs/ lives beside ftjax/
from configs.tables import TABLES, Table  # noqa: E402
from ftjax import cli, results  # noqa: E402
from ftjax.errors import InputError  # noqa: E402
from ftjax.workdir_lock import waiting_lock, workdir_holder  # noqa: E402

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


def shown_path(path: Path) -> str:
  """A path as a command should show it: relative to the repository when inside it."""
  try:
    return str(path.relative_to(REPO))
  except ValueError:
    return str(path)


def cell_argv(cell, workdir: Path) -> list[str]:
  return (
    [f"scripts/{cell.script}.py", f"--config={cell.config}", f"--workdir={shown_path(workdir)}"]
    + cell.flags()
    + shlex.split(FLAGS.extra)
  )


def recipe(argv: list[str]) -> list[str]:
  """A command without its --workdir: two cells with the same recipe train the same run."""
  return [a for a in argv if not a.startswith("--workdir=")]


def command_recipe(command: str) -> list[str]:
  """The recipe of a recorded `python scripts/<script>.py ...` command (command.txt, a table's JSON)."""
  return recipe(shlex.split(command.strip())[1:])


def is_stale(cell, workdir: Path) -> bool:
  """A run whose recorded command is not the cell's command now (its recipe in configs/tables.py, or
  --extra, changed since it ran): its number no longer belongs in the table."""
  recorded = workdir / "command.txt"
  return recorded.is_file() and command_recipe(recorded.read_text()) != recipe(cell_argv(cell, workdir))


def finished_twin(cell, table: Table, runs: Path) -> Path | None:
  """A finished, current run of another table's cell with this cell's recipe (the adversarial table's
  `none` rows are the methods table's full and LoRA cells; the torch table's ftjax rows are too)."""
  wanted = recipe(cell_argv(cell, runs / table.name / cell.name))
  for name, make in TABLES.items():
    if name == table.name:
      continue
    for other in make().cells:
      workdir = runs / name / other.name
      if (
        recipe(cell_argv(other, workdir)) == wanted
        and results.is_finished(workdir)
        and not workdir.is_symlink()
        and not is_stale(other, workdir)
      ):
        return workdir
  return None


def move_aside(workdir: Path) -> Path:
  """Keeps a stale run, renamed <cell>.stale-<n>, so that the cell runs afresh."""
  n = 1
  while workdir.with_name(f"{workdir.name}.stale-{n}").exists():
    n += 1
  return workdir.rename(workdir.with_name(f"{workdir.name}.stale-{n}"))


def link_twin(cell, table: Table, root: Path, say=print) -> bool:
  """Links <root>/<cell> to another table's finished run of the same recipe, if there is one (and the
  cell has no folder of its own yet): the same run, not trained twice."""
  workdir = root / cell.name
  twin = None if workdir.exists() or workdir.is_symlink() else finished_twin(cell, table, root.parent)
  if twin is None:
    return False
  workdir.parent.mkdir(parents=True, exist_ok=True)
  workdir.symlink_to(os.path.relpath(twin, workdir.parent))
  say(f"{cell.name}: the same command as {shown_path(twin)} (finished): linked to it")
  return True


def run_cell(cell, workdir: Path) -> int:
  """Train one cell in a child process (run from the repository, output to <workdir>/train.log)."""
  workdir.mkdir(parents=True, exist_ok=True)
  started = datetime.datetime.now()
  commit = results.commit()  # the code the child imports now ("+dirty": uncommitted edits to tracked files)
  with open(workdir / "train.log", "a") as log:
    log.write(f"\n=== {started:%Y-%m-%d %H:%M:%S} python {shlex.join(cell_argv(cell, workdir))}\n")
    log.flush()
    child = subprocess.Popen(
      [sys.executable] + cell_argv(cell, workdir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
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
        {"commit": commit, "machine": results.machine(), "finished": f"{datetime.datetime.now():%Y-%m-%d %H:%M}"}
      )
    )
  return code


def log_tail(workdir: Path, lines: int = 5) -> str:
  text = (workdir / "train.log").read_text(errors="replace").splitlines() if (workdir / "train.log").exists() else []
  return "\n".join("    " + l for l in text[-lines:])


# --- tabulation ------------------------------------------------------------------------------------------
def cell_meta(workdir: Path) -> dict:
  """What run_cell recorded beside a finished run (commit, machine); {} for a run it did not start."""
  return json.loads((workdir / "cell.json").read_text()) if (workdir / "cell.json").exists() else {}


def read_record(out: Path, name: str) -> dict:
  """What results/<name>.json holds: {"cells": {cell name: record}, "reruns": [...]}. The results are
  committed and the run folders are not, so a fresh clone (or another machine) has every finished cell's
  number, command and cost but none of its runs: a cell recorded here counts as finished, and writing the
  table again keeps it instead of erasing it."""
  path = out / f"{name}.json"
  if not path.is_file():
    return {"cells": {}, "reruns": []}
  try:
    data = json.loads(path.read_text())
    return {"cells": {c["cell"]: c for c in data["cells"]}, "reruns": list(data.get("reruns", []))}
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise InputError(
      f"{path}: not a table reproduce.py wrote ({type(e).__name__}: {e}); restore it with "
      f"`git checkout -- {shown_path(path)}`, or move it aside to tabulate only the runs in "
      "<runs>"
    ) from None


def recorded_workdir(record: dict) -> str:
  return next(a.split("=", 1)[1] for a in shlex.split(record["command"]) if a.startswith("--workdir="))


def collect(table: Table, root: Path, out: Path) -> list[dict]:
  """Every finished cell: its run in <root>/<cell>; else its record in results/<table>.json; else the
  record of a run with the same recipe in another table's results (the methods table's full and LoRA
  runs are the adversarial table's `none` rows). `stale`: the run's command is not the cell's now."""
  records = {name: read_record(out, name)["cells"] for name in TABLES}
  twins = {}  # recipe → the first record of it in another table
  for name, cells in records.items():
    for r in cells.values():
      if name != table.name:
        twins.setdefault(tuple(command_recipe(r["command"])), r)
  found = []
  for cell in table.cells:
    workdir = root / cell.name
    wanted = recipe(cell_argv(cell, workdir))
    if results.is_finished(workdir):
      record = {"cell": cell.name, "row": cell.row, "column": cell.column, **results.describe(workdir)}
      meta = cell_meta(workdir)
      record.update(
        commit=meta.get("commit", "?"),
        machine=meta.get("machine", "?"),
        same_run_as=shown_path(workdir.resolve()) if workdir.is_symlink() else None,
        stale=is_stale(cell, workdir),
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


REPRODUCE_WITHIN = 0.5  # points: a re-run of a cell's command must land this close to its number (the issue)


def rerun_root(root: Path) -> Path:
  """Re-runs of <runs>/<table>/<cell> land in <runs>/<table>.rerun/<cell>: fresh folders, same command."""
  return root.with_name(root.name + ".rerun")


def collect_reruns(table: Table, finished: list[dict], root: Path, out: Path) -> list[dict]:
  """Every finished re-run beside the recorded run of its cell, one entry per column the cell feeds; a
  re-run recorded in results/<table>.json whose folder is not here is kept while its cell's run is the
  one it was compared with."""
  by_name = {r["cell"]: r for r in finished}
  previous = read_record(out, table.name)["reruns"]
  found = []
  for cell in table.cells:
    workdir = rerun_root(root) / cell.name
    if cell.name not in by_name:
      continue
    if not results.is_finished(workdir):
      found += [r for r in previous if r["cell"] == cell.name and r["recorded_commit"] == by_name[cell.name]["commit"]]
      continue
    if is_stale(cell, workdir):
      continue  # (a re-run of an older recipe of the cell is no check of the table's number)
    again = results.describe(workdir)
    meta = cell_meta(workdir)
    for column in (c for c in table.columns if c.key == cell.column):
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
  grid = {}
  for row in dict.fromkeys(c.row for c in table.cells):
    grid[row] = {}
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
      grid[row][column.label] = entry
  return grid


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


def markdown(
  table: Table, grid: dict, finished: list[dict], reruns: list[dict], root: Path, plot_name: str | None
) -> str:
  per_cell_params = table.params_per_cell
  header = ["", *(["trainable"] if not per_cell_params else []), *(c.label for c in table.columns)]
  if table.average:
    header.append("average")
  header += [label for label, _ in table.row_references]
  lines = [
    f"# {table.title}",
    "",
    f"Regenerate: `python scripts/reproduce.py --table={table.name}` (trains the cells that have not "
    f"finished, then tabulates; `--rebuild` only tabulates). Tabulated at commit {results.commit()} on "
    f"{datetime.date.today()}; {len(finished)} of {len(table.cells)} cells finished; the cells ran "
    f"on {', '.join(sorted({r['machine'] for r in finished})) or '—'}.{compute_line(table, finished)}",
    "",
    table.notes,
    "",
    "| " + " | ".join(header) + " |",
    "|" + "---|" + "---:|" * (len(header) - 1),
  ]
  for row, entries in grid.items():
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
      command = "python " + shlex.join(cell_argv(cell, root / cell.name))
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
      f"again from scratch (into `{shown_path(rerun_root(root))}/`): {within} of {len(reruns)} numbers "
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


def plot(table: Table, grid: dict, path: Path) -> bool:
  """bars: one group per column, a bar per row (± std); params: the metric against trainable parameters."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in grid if any("mean" in e for e in grid[r].values())]
  if not rows:
    return False
  if table.plot == "params":
    fig, ax = plt.subplots(figsize=(8, 5))
    for column in table.columns:
      points = sorted(
        (e["trainable_params"], e["mean"], row)
        for row in rows
        if "mean" in (e := grid[row].get(column.label, {})) and e.get("trainable_params")
      )
      if not points:
        continue
      ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=column.label)
      for x, y, row in points:
        ax.annotate(row.replace(" of 6 layers", ""), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(table.columns[0].metric)
  else:
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(table.columns)), 6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
      xs, ys, errs = [], [], []
      for j, column in enumerate(table.columns):
        entry = grid[row].get(column.label, {})
        if "mean" in entry:
          xs.append(j - 0.4 + (i + 0.5) * width)
          ys.append(entry["mean"])
          errs.append(entry["std"])
      ax.bar(xs, ys, width, yerr=errs, capsize=2, label=row)
    refs = [(j, c.reference) for j, c in enumerate(table.columns) if c.reference is not None]
    if refs:
      ax.scatter(
        [j for j, _ in refs],
        [v for _, v in refs],
        marker="_",
        s=900,
        color="black",
        label=table.reference_label,
        zorder=3,
      )
    ax.set_xticks(range(len(table.columns)), [c.label for c in table.columns])
    splits = sorted({c.split for c in table.columns})
    ax.set_ylabel(f"{' / '.join(splits)} score (mean ± std over seeds)")
  ax.set_title(table.title, fontsize=9)
  ax.grid(alpha=0.3)
  if table.plot == "params":
    ax.legend(fontsize=7)
  else:  # below the axes: inside, a legend of many rows hides the bars of the last column
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(4, len(rows) + 1))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_atomically(path: Path, text: str) -> None:
  """Another grid (another table, in another process) reads this table's JSON for runs it shares: it
  must never see half a file, and an interrupted write must not leave one."""
  part = path.with_name(path.name + ".part")
  part.write_text(text)
  os.replace(part, path)


def write_results(table: Table, root: Path, out: Path, say=print) -> list[dict]:
  """Tabulates the finished cells into results/<table>.md, .json and .png. The table is read (its
  recorded cells) and written back under results/.<table>.lock: a driver that finishes a cell while
  another is writing waits, then reads that write, so neither drops the other's cell."""
  out.mkdir(parents=True, exist_ok=True)
  with waiting_lock(out / f".{table.name}.lock", say):
    finished = collect(table, root, out)
    grid = aggregate(table, finished)
    reruns = collect_reruns(table, finished, root, out)
    png = out / f"{table.name}.png"
    has_plot = plot(table, grid, png)
    write_atomically(
      out / f"{table.name}.md", markdown(table, grid, finished, reruns, root, png.name if has_plot else None)
    )
    write_atomically(
      out / f"{table.name}.json",
      json.dumps(
        {
          "table": table.name,
          "title": table.title,
          "notes": table.notes,
          "commit": results.commit(),
          "date": str(datetime.date.today()),
          "columns": [dataclasses.asdict(c) for c in table.columns],
          "grid": grid,
          "cells": finished,
          "reruns": reruns,
        },
        indent=2,
      )
      + "\n",
    )
  return finished


def rerun(table: Table, selected: re.Pattern, root: Path, out: Path) -> None:
  """--rerun: each selected cell with a finished, current run trains again from scratch into a fresh
  folder (a finished re-run is kept), then the table is rewritten with its Re-runs section."""
  chosen = [c for c in table.cells if selected.search(c.name)]
  finished = {r["cell"]: r for r in collect(table, root, out)}
  ready = [c for c in chosen if c.name in finished and not finished[c.name]["stale"]]
  if not ready:
    raise InputError(
      f"--rerun: none of the {len(chosen)} cells --cells={FLAGS.cells!r} selects has a finished, "
      f"current run (in {root} or recorded in {out / table.name}.json) to compare with (run "
      "them first)"
    )
  reruns = rerun_root(root)
  todo = [c for c in ready if not results.is_finished(reruns / c.name) or is_stale(c, reruns / c.name)]
  print(f"table {table.name}: {len(ready)} finished cells selected, {len(todo)} to re-run into {reruns}")
  for cell in todo:
    if FLAGS.dry_run:
      print("python " + shlex.join(cell_argv(cell, reruns / cell.name)))
      continue
    if is_stale(cell, reruns / cell.name):
      print(f"stale re-run of {cell.name} kept as {move_aside(reruns / cell.name).name}")
    if run_cell(cell, reruns / cell.name):
      raise InputError(f"re-run of {cell.name} failed; its log: {reruns / cell.name / 'train.log'}")
  if FLAGS.dry_run:
    return
  for r in collect_reruns(table, write_results(table, root, out), root, out):
    if selected.search(r["cell"]):
      beyond = "" if abs(r["difference"]) <= REPRODUCE_WITHIN else f", beyond {REPRODUCE_WITHIN} points"
      print(
        f"{r['cell']} {r['column']}: table {fmt_number(r['recorded'])}, re-run {fmt_number(r['rerun'])} "
        f"({r['difference']:+.2f}{beyond})"
      )


def main(argv):
  del argv
  table = TABLES[FLAGS.table]()
  root = (Path.cwd() / FLAGS.runs / table.name).resolve()
  out = (Path.cwd() / FLAGS.results).resolve()
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
    return rerun(table, selected, root, out)
  own = read_record(out, table.name)["cells"]
  linked = set()  # a run of the same recipe on this machine is linked (a recorded one is only read)
  for cell in table.cells:
    workdir = root / cell.name
    if (
      not selected.search(cell.name)
      or workdir.exists()
      or workdir.is_symlink()
      or (cell.name in own and command_recipe(own[cell.name]["command"]) == recipe(cell_argv(cell, workdir)))
    ):
      continue
    if not FLAGS.dry_run and link_twin(cell, table, root):
      linked.add(cell.name)
    elif FLAGS.dry_run and (twin := finished_twin(cell, table, root.parent)):
      print(f"{cell.name}: same command as {shown_path(twin)}, would be linked")
      linked.add(cell.name)
  finished = {r["cell"]: r for r in collect(table, root, out)}
  stale = [c for c in table.cells if selected.search(c.name) and c.name in finished and finished[c.name]["stale"]]
  for cell in stale:
    if FLAGS.rebuild or FLAGS.dry_run:
      print(f"stale: {cell.name} ran another command than the table's now; without --rebuild/--dry_run it runs again")
    elif (root / cell.name).exists():
      print(f"stale: {cell.name} ran another command than the table's now; kept as {move_aside(root / cell.name).name}")
    else:  # only its record in results/ is stale; the new run replaces it there
      print(
        f"stale: {cell.name} (recorded in {shown_path(out / table.name)}.json) ran another command than the "
        "table's now; it runs again"
      )
  todo = [c for c in table.cells if selected.search(c.name) and (c.name not in finished or c in stale)]
  if FLAGS.dry_run:
    for cell in todo:
      if cell.name not in linked:
        print("python " + shlex.join(cell_argv(cell, root / cell.name)))
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
    + f", {0 if FLAGS.rebuild else len(todo)} to run"
  )
  failed, busy = [], []
  if todo and not FLAGS.rebuild:
    import tqdm

    bar = tqdm.tqdm(todo, desc=table.name, unit="cell", dynamic_ncols=True)
    for cell in bar:
      bar.set_postfix_str(cell.name)
      workdir = root / cell.name
      if link_twin(cell, table, root, tqdm.tqdm.write):  # another grid finished the same recipe meanwhile
        write_results(table, root, out, tqdm.tqdm.write)
        continue
      if (holder := workdir_holder(workdir)) is not None:  # another grid driver is training this very cell
        busy.append(cell.name)
        tqdm.tqdm.write(f"cell {cell.name}: another process (pid {holder}) is training it now; skipped")
        continue
      if results.is_finished(workdir) and not is_stale(cell, workdir):  # another driver finished it meanwhile
        write_results(table, root, out, tqdm.tqdm.write)
        continue
      try:
        code = run_cell(cell, workdir)
      except KeyboardInterrupt:
        bar.close()
        write_results(table, root, out, tqdm.tqdm.write)
        print(f"interrupted in {cell.name}: rerun the same command to resume (its log: {workdir / 'train.log'})")
        raise SystemExit(130)
      if code:
        failed.append(cell.name)
        tqdm.tqdm.write(
          f"cell {cell.name} failed (exit {code}); the last lines of {workdir / 'train.log'}:\n" + log_tail(workdir)
        )
      write_results(table, root, out, tqdm.tqdm.write)  # the table grows as cells finish
    bar.close()
  finished = write_results(table, root, out)
  print(
    f"wrote {out / table.name}.md, .json, .png: {len(finished)} of {len(table.cells)} cells finished"
    + (f"; {len(busy)} skipped, in training elsewhere: {', '.join(busy)}" if busy else "")
  )
  if failed:
    raise InputError(
      f"{len(failed)} cells failed: {', '.join(failed)} (each log: <runs>/{table.name}/<cell>/train.log)"
    )


if __name__ == "__main__":
  cli.run(main)
