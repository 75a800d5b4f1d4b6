"""The paper tables of configs/tables.py as runs and results pages; `scripts/reproduce.py` is their command.

  grid       a table's cells as commands and run folders: whose recipe changed (stale), what results/ recorded
  run        trains the missing cells (one child process each), links runs another table made, re-runs
  tabulate   finished cells → results/<table>.md and .json
  plot       the table's grid → results/<table>.png

Nothing here imports configs/: the tables come in as arguments (`Grid.tables`), so the library does not
depend on the experiments it runs.
"""
