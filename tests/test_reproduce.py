"""scripts/reproduce.py: a grid of real train.py runs tabulated with their commands, resumable, rebuildable.

Two cells of the `freeze` table run on a tiny BERT and 64 SST-2 rows (`--extra` shrinks every cell, and
is part of each recorded command); what is checked is the mechanics: finished cells are kept, the table
and plot come from the runs' own metrics, and a cell's printed command reproduces its number.
"""

import json
import os
import shlex
import shutil
import time

import pytest

from ftjax import workdir_lock

from conftest import check, glue_folder, metric_lines, script

CELLS = "^(top0-embeddings-frozen|layernorm-only)$"


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_bert, tfds_dir):
  root = tmp_path_factory.mktemp("reproduce")
  data = glue_folder(root / "data", "sst2", rows=64)
  extra = " ".join(
    [
      f"--config.model={tiny_bert}",
      f"--config.data_dir={data}",
      f"--config.tfds_dir={tfds_dir}",
      "--config.parallel=none",
      "--config.batch_size=8",
      "--config.max_steps=4",
      "--config.eval_every=2",
      "--config.checkpoint_every=2",
      "--config.log_every=2",
      "--config.max_eval_examples=32",
      "--config.max_length=64",
    ]
  )
  args = [
    "--table=freeze",
    f"--cells={CELLS}",
    f"--runs={root / 'runs'}",
    f"--results={root / 'results'}",
    f"--extra={extra}",
  ]
  first = script("reproduce", *args, timeout=600)
  return {"root": root, "args": args, "first": first, "runs": root / "runs" / "freeze", "results": root / "results"}


def test_grid_runs_the_selected_cells_and_writes_table_json_and_plot(grid):
  out = grid["results"]
  assert "0 of 15 cells finished, 2 to run" in grid["first"].stdout
  md = (out / "freeze.md").read_text()
  assert "2 of 15 cells finished" in md and "![freeze](freeze.png)" in md
  assert "over the 2 runs this table trained itself" in md and "CPU-hours over the 2 that recorded CPU time" in md
  # no other seed of these two cells' row and column has run, so nothing still to run can be priced
  assert "Still to run: 13 cells." in md
  assert (out / "freeze.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  record = json.loads((out / "freeze.json").read_text())
  cells = {c["cell"]: c for c in record["cells"]}
  assert set(cells) == {"top0-embeddings-frozen", "layernorm-only"}
  for name, cell in cells.items():  # the table's number is the run's best dev evaluation
    dev = [l["accuracy"] for l in metric_lines(grid["runs"] / name) if l["split"] == "dev"]
    assert cell["dev"]["accuracy"] == pytest.approx(max(dev))
    assert record["grid"][cell["row"]]["SST-2 acc, embeddings frozen"]["values"] == [cell["dev"]["accuracy"]]
  # the probe trains the classifier only; LayerNorm-only adds every LayerNorm's scale and bias
  assert cells["top0-embeddings-frozen"]["trainable_params"] == 32 * 2 + 2
  assert cells["layernorm-only"]["trainable_params"] == 66 + 5 * 2 * 32
  # cells not run are listed with the command that would run them
  assert "| top3-embeddings-trained | 0 | not run |" in md and "not run (0/1)" in md


def test_finished_cells_are_kept_and_rebuild_trains_nothing(grid):
  marker = grid["runs"] / "layernorm-only" / "cell.json"
  before = marker.stat().st_mtime_ns
  again = script("reproduce", *grid["args"])
  assert "2 of 15 cells finished, 0 to run" in again.stdout
  (grid["results"] / "freeze.md").unlink()
  rebuilt = script(
    "reproduce", *grid["args"][:1], f"--runs={grid['root'] / 'runs'}", f"--results={grid['results']}", "--rebuild"
  )
  assert "2 of 15 cells finished" in rebuilt.stdout and (grid["results"] / "freeze.md").exists()
  assert marker.stat().st_mtime_ns == before


def test_a_cells_printed_command_reproduces_its_number(grid):
  """--rerun trains the cell's printed command again into a fresh folder and tabulates the difference."""
  record = json.loads((grid["results"] / "freeze.json").read_text())
  cell = next(c for c in record["cells"] if c["cell"] == "layernorm-only")
  argv = shlex.split(cell["command"])
  assert argv[:2] == ["python", "scripts/train.py"]
  assert '--config.trainable=("train:^backbone/.*LayerNorm/", "freeze:^backbone/")' in argv
  args = [a if not a.startswith("--cells=") else "--cells=^layernorm-only$" for a in grid["args"]]
  out = check(script("reproduce", *args, "--rerun", timeout=600))
  rerun = grid["runs"].with_name("freeze.rerun") / "layernorm-only"
  again = shlex.split((rerun / "command.txt").read_text())
  assert [a for a in again if not a.startswith("--workdir=")] == [a for a in argv if not a.startswith("--workdir=")]
  dev = max(l["accuracy"] for l in metric_lines(rerun) if l["split"] == "dev")
  assert dev == pytest.approx(cell["dev"]["accuracy"], abs=0.5)
  assert f"layernorm-only SST-2 acc, embeddings frozen: table {cell['dev']['accuracy']:.1f}, re-run {dev:.1f}" in out
  md = (grid["results"] / "freeze.md").read_text()
  assert "## Re-runs" in md and "1 of 1 numbers within 0.5 points" in md
  assert json.loads((grid["results"] / "freeze.json").read_text())["reruns"][0]["rerun"] == dev
  again = check(script("reproduce", *args, "--rerun"))  # a finished re-run is kept, not trained again
  assert "1 finished cells selected, 0 to re-run" in again
  unfinished = script(
    "reproduce", *[a if not a.startswith("--cells=") else "--cells=^top3-" for a in args], "--rerun", check=False
  )
  assert unfinished.returncode == 2 and "has a finished, current run" in unfinished.stderr


def test_a_fresh_clone_keeps_every_recorded_cell(grid, tmp_path):
  """results/ is committed and runs/ is not: on a fresh clone the table's JSON is the record of every
  finished cell. Tabulating there trains nothing and keeps every number, cost and re-run; a recipe that
  changed since makes the record stale, and the cell runs again."""
  results = tmp_path / "results"
  shutil.copytree(grid["results"], results)
  before = json.loads((results / "freeze.json").read_text())
  args = [a for a in grid["args"] if not a.startswith(("--runs=", "--results="))]
  args += [f"--runs={tmp_path / 'runs'}", f"--results={results}"]
  again = check(script("reproduce", *args))
  assert "2 of 15 cells finished (2 of them only recorded in" in again and ", 0 to run" in again
  assert not list((tmp_path / "runs").rglob("summary.txt"))  # nothing trained
  after = json.loads((results / "freeze.json").read_text())
  assert after["cells"] == before["cells"] and after["grid"] == before["grid"] and after["reruns"] == before["reruns"]
  assert len(after["reruns"]) == 1 and "## Re-runs" in (results / "freeze.md").read_text()
  changed = [a if not a.startswith("--extra=") else a + " --config.seed=7" for a in args]
  dry = check(script("reproduce", *changed, "--dry_run"))
  assert "stale: layernorm-only" in dry and dry.count("python scripts/train.py") == 2


def test_a_cell_another_process_is_training_is_skipped_not_trained_twice(grid):
  """Two drivers sharing a table must not both train one cell into one folder: the second finds the
  cell's train.lock held (here by this test, as a training process holds it), skips it and says so."""
  workdir = grid["runs"] / "top3-embeddings-trained"
  workdir.mkdir(parents=True)
  try:
    with workdir_lock.exclusive_workdir(workdir):
      args = [a if not a.startswith("--cells=") else "--cells=^top3-embeddings-trained$" for a in grid["args"]]
      out = check(script("reproduce", *args))
    assert f"cell top3-embeddings-trained: another process (pid {os.getpid()}) is training it now; skipped" in out
    assert "1 skipped, in training elsewhere: top3-embeddings-trained" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["train.lock"]  # nothing ran there
  finally:
    shutil.rmtree(workdir)


def test_two_drivers_write_a_table_one_after_the_other(grid, tmp_path):
  """A driver must not write the table while another is between reading and writing it (the later write
  would drop the cell the earlier one added): it waits for results/.<table>.lock, naming the holder, and
  writes only once the lock is released."""
  table_json = grid["results"] / "freeze.json"
  log = tmp_path / "rebuild.log"
  with workdir_lock.waiting_lock(grid["results"] / ".freeze.lock"):
    rebuild = script("reproduce", *grid["args"], "--rebuild", log=log)
    deadline = time.monotonic() + 240
    while "waiting for it" not in log.read_text() and rebuild.poll() is None and time.monotonic() < deadline:
      time.sleep(0.2)
    assert f"is held by another process (pid {os.getpid()}); waiting for it" in log.read_text(), log.read_text()
    assert rebuild.poll() is None  # still waiting: nothing written while the lock is held
    released = time.time()
  assert rebuild.wait(timeout=240) == 0, log.read_text()
  assert table_json.stat().st_mtime >= released and "2 of 15 cells finished" in log.read_text()


def test_a_regex_that_matches_no_cell_is_one_line_error(grid):
  result = script(
    "reproduce",
    "--table=ner",
    "--cells=^nope$",
    f"--runs={grid['root'] / 'runs'}",
    f"--results={grid['results']}",
    check=False,
  )
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --cells='^nope$'")


def test_a_cell_whose_command_changed_is_stale_and_runs_again(grid):
  """Changing a recipe (here: --extra) makes finished cells stale: --dry_run lists them, a real run keeps
  the old run as <cell>.stale-1 and runs the cell afresh (here with a bad flag: it fails, loudly)."""
  args = [a if not a.startswith("--extra=") else a + " --config.method=nonsense" for a in grid["args"]]
  dry = script("reproduce", *args, "--dry_run")
  assert "stale: layernorm-only" in dry.stdout and "stale: top0-embeddings-frozen" in dry.stdout
  assert dry.stdout.count("python scripts/train.py") == 2
  assert (grid["runs"] / "layernorm-only" / "summary.txt").exists()  # a dry run moves nothing
  failed = script(
    "reproduce", *[a if not a.startswith("--cells=") else "--cells=^layernorm-only$" for a in args], check=False
  )
  assert "kept as layernorm-only.stale-1" in failed.stdout
  assert (grid["runs"] / "layernorm-only.stale-1" / "summary.txt").exists()
  assert failed.returncode == 2 and "1 cells failed: layernorm-only" in failed.stderr
  assert "unknown method 'nonsense'" in (grid["runs"] / "layernorm-only" / "train.log").read_text()


# `slow` (~65 s on 2 cores; it trains its own grid): with it the default suite ran past its 10-minute
# budget. The real tables exercise the link on every run (adversarial `none` rows, torch's ftjax rows).
@pytest.mark.slow
def test_a_cell_another_table_already_ran_is_linked_not_retrained(tmp_path, tiny_bert, tfds_dir):
  """The adversarial table's `full + none` cells and the torch table's ftjax cells are the methods table's
  runs: same recipe, so reproduce.py links the finished run instead of training it again."""
  data = glue_folder(tmp_path / "data", "rte", rows=32)
  extra = " ".join(
    [
      f"--config.model={tiny_bert}",
      f"--config.data_dir={data}",
      f"--config.tfds_dir={tfds_dir}",
      "--config.parallel=none",
      "--config.batch_size=8",
      "--config.max_steps=2",
      "--config.eval_every=2",
      "--config.checkpoint_every=2",
      "--config.max_length=64",
    ]
  )
  common = [f"--runs={tmp_path / 'runs'}", f"--results={tmp_path / 'results'}", f"--extra={extra}"]
  check(script("reproduce", "--table=methods", "--cells=^rte-full-s0$", *common, timeout=600))
  trained = tmp_path / "runs" / "methods" / "rte-full-s0"
  dry = check(script("reproduce", "--table=torch", "--cells=^(ftjax|pytorch)-rte-full-s0$", *common, "--dry_run"))
  assert "ftjax-rte-full-s0: same command as" in dry and "scripts/torch_reference.py" in dry  # torch's own run
  check(script("reproduce", "--table=torch", "--cells=^(ftjax|pytorch)-rte-full-s0$", *common, "--rebuild"))
  torch_runs = tmp_path / "runs" / "torch"  # --rebuild trains nothing but links what another table ran
  assert (torch_runs / "ftjax-rte-full-s0").resolve() == trained.resolve()
  assert not (torch_runs / "pytorch-rte-full-s0").exists()
  out = check(script("reproduce", "--table=adversarial", "--cells=^rte-full-(none|fgm-0-1)-s0$", *common, "--dry_run"))
  assert "rte-full-none-s0: same command as" in out
  assert "adversarial.method=fgm" in out  # a different recipe trains
  linked = check(script("reproduce", "--table=adversarial", "--cells=^rte-full-none-s0$", *common))
  assert "linked to it" in linked and "1 of 110 cells finished, 0 to run" in linked
  link = tmp_path / "runs" / "adversarial" / "rte-full-none-s0"
  assert (
    link.is_symlink()
    and link.resolve() == trained.resolve()
    and not (trained / "train.log").read_text().count("adversarial/")
  )  # nothing trained into the link
  record = json.loads((tmp_path / "results" / "adversarial.json").read_text())
  cell = next(c for c in record["cells"] if c["cell"] == "rte-full-none-s0")
  methods = json.loads((tmp_path / "results" / "methods.json").read_text())["cells"][0]
  assert cell["dev"] == methods["dev"] and cell["same_run_as"].endswith("methods/rte-full-s0")
  assert "(the run of " in (tmp_path / "results" / "adversarial.md").read_text()
  # on a fresh clone (no run folders) the twin is read from the methods table's record instead
  shutil.rmtree(tmp_path / "runs")
  (tmp_path / "results" / "adversarial.json").unlink()
  check(script("reproduce", "--table=adversarial", "--cells=^rte-full-none-s0$", *common, "--rebuild"))
  record = json.loads((tmp_path / "results" / "adversarial.json").read_text())
  cell = next(c for c in record["cells"] if c["cell"] == "rte-full-none-s0")
  assert cell["dev"] == methods["dev"] and cell["same_run_as"].endswith("methods/rte-full-s0")


def tiny_table():
  """A table of 12 cells (full and LoRA × RTE and CoLA × 3 seeds) that nothing trains: tests give it records."""
  from configs.tables import Cell, Column, Table

  cells = tuple(
    Cell(f"{row}-{task}-s{seed}", row, task, seed, "configs/glue.py:rte")
    for row in ("full", "lora")
    for task in ("rte", "cola")
    for seed in (0, 1, 2)
  )
  return Table(
    "t", "t", "", (Column("RTE", "rte", "dev", "accuracy"), Column("CoLA", "cola", "dev", "matthews")), cells
  )


def test_cells_still_to_run_are_priced_by_finished_runs_of_their_row_and_column():
  """The compute line prices a missing cell at the mean cost of the finished runs of its row and column
  (CPU minutes, wall minutes where a run did not record CPU time) and counts the rest as unpriced."""
  from ftjax.tables.tabulate import compute_line

  table = tiny_table()

  def run(name, row, column, cpu, wall):
    return {"cell": name, "row": row, "column": column, "cpu_minutes": cpu, "wall_minutes": wall, "same_run_as": None}

  finished = [
    run("full-rte-s0", "full", "rte", 20.0, 30.0),
    run("full-rte-s1", "full", "rte", None, 40.0),
    run("lora-cola-s0", "lora", "cola", 60.0, 61.0),
  ]
  line = compute_line(table, finished)
  assert "2.2 wall-hours over the 3 runs" in line and "1.3 CPU-hours over the 2 that recorded" in line
  # full-rte-s2 at mean(20, 40) = 30 min, lora-cola-s1 and -s2 at 60 min each: 150 min; full-cola, lora-rte unpriced
  assert "Still to run: 9 cells, ~2.5 CPU-hours for the 3 of them priced" in line
  all_but_one = [run(c.name, c.row, c.column, 10.0, 10.0) for c in table.cells[1:]]
  assert "Still to run: 1 cell, ~0.2 CPU-hours for the 1 of them priced" in compute_line(table, all_but_one)


def test_tabulating_keeps_the_pages_findings_and_rewrites_the_rest(tmp_path):
  """results/<table>.md is written below its findings: a table tabulated again from its recorded cells
  keeps title and findings byte for byte, and its generated part says what the cells measured now."""
  from ftjax.results import GENERATED_BELOW
  from ftjax.tables.grid import Grid
  from ftjax.tables.tabulate import write_results

  table = tiny_table()
  grid = Grid(table, tmp_path / "runs" / "t", tmp_path / "results", tables={"t": lambda: table})

  def record(cell, accuracy):
    command = "python " + " ".join(grid.argv(cell, grid.root / cell.name))
    return {
      "cell": cell.name,
      "row": cell.row,
      "column": cell.column,
      "dev": {"accuracy": accuracy},
      "test": {},
      "best_step": 10,
      "steps": "10/10",
      "wall_minutes": 1.0,
      "cpu_minutes": 2.0,
      "trainable_params": 1000,
      "total_params": 4000,
      "commit": "abc1234",
      "machine": "a test",
      "same_run_as": None,
      "command": command,
    }

  rte = [c for c in table.cells if c.row == "full" and c.column == "rte"]
  grid.out.mkdir()
  (grid.out / "t.json").write_text(json.dumps({"cells": [record(c, 60.0 + c.seed) for c in rte]}))
  page = grid.out / "t.md"
  write_results(grid)
  text = page.read_text()
  assert text.startswith(f"# t\n\n{GENERATED_BELOW}\n\nRegenerate: `python scripts/reproduce.py --table=t`")
  assert "| full | 1.0k (25.00%) | 61.0 ± 1.0 (3/3) | not run (0/3) |" in text and text.count("# t") == 1
  head = text[: text.index(GENERATED_BELOW)].replace("# t\n", "# Tiny table\n\n## Findings\n\nRTE: 61 ± 1.\n")
  page.write_text(head + GENERATED_BELOW + "\n\nstale generated text\n")
  recorded = json.loads((grid.out / "t.json").read_text())
  recorded["cells"][0]["dev"]["accuracy"] = 63.0  # the same run, recorded with another number
  (grid.out / "t.json").write_text(json.dumps(recorded))
  assert {r["cell"] for r in write_results(grid)} == {c.name for c in rte}
  again = page.read_text()
  assert again.startswith(head + GENERATED_BELOW + "\n\nRegenerate:") and "stale generated text" not in again
  assert "| full | 1.0k (25.00%) | 62.0 ± 1.0 (3/3) |" in again


def test_a_cell_starts_from_an_earlier_cell_of_its_table(tmp_path):
  """`Cell.init_from` names a cell listed before it (so it has run first), and its command starts from
  that cell's folder under the same root: DailyDialog's sampled LoRA row decodes the greedy row's adapters."""
  from configs.tables import TABLES
  from ftjax.tables.grid import Grid

  for name, make in TABLES.items():
    cells = [c.name for c in make().cells]
    for i, cell in enumerate(make().cells):
      assert not cell.init_from or cell.init_from in cells[:i], (name, cell.name)
  table = TABLES["decoder_tasks"]()
  grid = Grid(table, tmp_path / "runs" / "decoder_tasks", tmp_path / "results", TABLES)
  (cell,) = [c for c in table.cells if c.name == "dailydialog-lora-nucleus"]
  argv = grid.argv(cell, grid.root / cell.name)
  assert f"--config.init_from={tmp_path}/runs/decoder_tasks/dailydialog-lora" in argv
  assert {"--config.num_epochs=0", "--config.generation.method=sample", "--config.generation.top_p=0.9"} <= set(argv)
