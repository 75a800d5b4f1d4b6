"""A table's cells as commands and run folders, and what results/<table>.json recorded of them.

A cell's command is `python scripts/<script>.py --config=... --workdir=<runs>/<table>/<cell> <flags>`; its
recipe is that command without --workdir: two cells with one recipe train the same run, and a run whose
recorded recipe is not its cell's now is stale (its number no longer belongs in the table).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ftjax.errors import InputError

if TYPE_CHECKING:  # configs/ is beside the package, not in it: the tables come in as arguments
  from configs.tables import Cell, Table

REPO = Path(__file__).resolve().parents[2]  # the scripts run from here; commands name paths relative to it


def shown_path(path: Path) -> str:
  """A path as a command should show it: relative to the repository when inside it."""
  try:
    return str(path.relative_to(REPO))
  except ValueError:
    return str(path)


@dataclasses.dataclass(frozen=True)
class Grid:
  """One table's grid: its cells train into <root>/<cell>/ (root = <runs>/<table>), its results go to
  <out>/<table>.md, .json and .png, and `extra` flags end every cell's command (and are part of it)."""

  table: Table
  root: Path
  out: Path
  tables: Mapping[str, Callable[[], Table]]  # every table by name (another's runs may be this one's cells)
  extra: tuple[str, ...] = ()

  def argv(self, cell: Cell, workdir: Path) -> list[str]:
    return (
      [f"scripts/{cell.script}.py", f"--config={cell.config}", f"--workdir={shown_path(workdir)}"]
      + cell.flags()
      + ([f"--config.init_from={shown_path(self.root / cell.init_from)}"] if cell.init_from else [])
      + list(self.extra)
    )

  def is_stale(self, cell: Cell, workdir: Path) -> bool:
    """A run whose recorded command is not the cell's command now (its recipe in configs/tables.py, or
    --extra, changed since it ran): its number no longer belongs in the table."""
    recorded = workdir / "command.txt"
    return recorded.is_file() and command_recipe(recorded.read_text()) != recipe(self.argv(cell, workdir))

  @property
  def rerun_root(self) -> Path:
    """Re-runs of <runs>/<table>/<cell> land in <runs>/<table>.rerun/<cell>: fresh folders, same command."""
    return self.root.with_name(self.root.name + ".rerun")


def recipe(argv: list[str]) -> list[str]:
  """A command without its --workdir: two cells with the same recipe train the same run."""
  return [a for a in argv if not a.startswith("--workdir=")]


def command_recipe(command: str) -> list[str]:
  """The recipe of a recorded `python scripts/<script>.py ...` command (command.txt, a table's JSON)."""
  return recipe(shlex.split(command.strip())[1:])


def cell_meta(workdir: Path) -> dict:
  """What run.run_cell recorded beside a finished run (commit, machine); {} for a run it did not start."""
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
