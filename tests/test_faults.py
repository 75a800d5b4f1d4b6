"""What real runs meet, injected: a corrupt newest checkpoint, a kill between writing a checkpoint and
deleting the older one, SIGTERM, a full disk while saving, a metrics line cut short, a user's error.

Each fault leaves a run that the same command resumes to the parameters, optimiser state and metrics.jsonl
of an uninterrupted run, bit for bit (a tiny random BERT with LoRA and dropout on RTE, 6 steps, checkpoints
at steps 3 and 6); scripts/chaos.py does the same to a MiniLM run killed at random moments.
"""

import concurrent.futures
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import glue
from ftjax import checkpoints as ckpt
from ftjax import loop
from ftjax.errors import EXIT_INPUT, EXIT_STOPPED, EXIT_STORAGE, InputError, Stopped, StorageError

from conftest import REPO, SCRIPT_ENV, checkpoint_steps, metric_lines, script, tiny_config
from test_loop import assert_trees_equal, best_tree, latest_tree, without_timing
from tiny_run import host, tiny_run


@pytest.fixture(scope="module", autouse=True)
def _fast(fast_compiles):
  yield


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, tfds_dir, rte_dir):
  """(config, workdir) of an uninterrupted run: the reference every faulty run must end equal to."""
  config = tiny_config(
    glue.get_config("rte"), tiny_bert, tfds_dir, data_dir=str(rte_dir), method="lora", learning_rate=1e-3
  )
  workdir = tmp_path_factory.mktemp("uninterrupted")
  loop.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir / "checkpoints" / "latest") == [3, 6]
  return config, workdir


def assert_same_run(workdir, reference):
  """Trainable parameters, optimiser state, step, rng, loop state, best checkpoint and metrics.jsonl
  equal (times aside)."""
  (state, loop_state), (state_ref, loop_ref) = latest_tree(workdir), latest_tree(reference)
  assert_trees_equal(state, state_ref)
  for key in ("wall_seconds", "cpu_seconds"):
    loop_state.pop(key), loop_ref.pop(key)
  assert loop_state == loop_ref
  assert_trees_equal(best_tree(workdir), best_tree(reference))
  assert without_timing(metric_lines(workdir)) == without_timing(metric_lines(reference))


def copy_run(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  return workdir


def damage_array_files(checkpoint):
  """XORs every 97th byte of the checkpoint's OCDBT data files (d/ folders, the top one or a process's)."""
  for data in [p for p in (checkpoint / "state").rglob("*") if p.parent.name == "d"]:
    damaged = bytearray(data.read_bytes())
    for i in range(100, len(damaged), 97):
      damaged[i] ^= 0x5A
    data.write_bytes(bytes(damaged))


# --- 1. restore walks back over a checkpoint that does not restore ----------------------------------


def test_a_corrupt_newest_checkpoint_restores_the_previous_one(run, tmp_path, capsys):
  config, reference = run
  workdir = copy_run(reference, tmp_path)
  # Its data files damaged (as in the report that led here: orbax failed with a ZSTD error)
  damage_array_files(workdir / "checkpoints" / "latest" / "6")

  loop.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  latest = workdir / "checkpoints" / "latest"
  assert f"checkpoint of step 6 in {latest / '6'} does not restore (" in out  # (the error orbax raised)
  assert f"resuming {workdir} at step 3" in out
  assert (workdir / "checkpoints" / "unrestorable" / "latest_6").is_dir()  # moved aside, not deleted
  assert checkpoint_steps(latest) == [3, 6]
  assert_same_run(workdir, reference)


def test_no_checkpoint_that_restores_stops_naming_the_folder_and_the_way_out(run, tmp_path, capsys):
  config, reference = run
  workdir = copy_run(reference, tmp_path)
  for step in (3, 6):
    (workdir / "checkpoints" / "latest" / str(step) / "state" / "_METADATA").unlink()
  with pytest.raises(ckpt.CorruptCheckpointError) as error:
    loop.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert "\n" not in message
  assert f"no checkpoint under {workdir / 'checkpoints' / 'latest'} restores (steps [3, 6]" in message
  assert "--config.resume=false" in message
  out = capsys.readouterr().out
  for step in (6, 3):
    assert f"checkpoint of step {step} in {workdir / 'checkpoints' / 'latest' / str(step)} does not restore (" in out
  assert checkpoint_steps(workdir / "checkpoints" / "latest") == [3, 6]  # nothing moved: the rerun says it again

  config.resume = False  # the way out: start afresh (deleting those checkpoints)
  loop.train_and_evaluate(config, workdir)
  assert not (workdir / "checkpoints" / "unrestorable").exists()
  assert_same_run(workdir, reference)


def test_a_checkpoint_that_restores_other_arrays_fails_its_sha256(tmp_path, capsys):
  # Damage that orbax cannot see: step 3's arrays replaced by step 2's (well-formed files, wrong values; one
  # flipped byte of a data file can do the same).
  state = host(tiny_run()[3])
  manager = ckpt.Checkpoints(tmp_path, keep=3)
  for step in (1, 2, 3):
    bumped = jax.tree.map(lambda x: x + step, state.trainable)
    manager.save(state.replace(step=np.asarray(step, np.int32), trainable=bumped), {"step": step})
  latest = tmp_path / "checkpoints" / "latest"
  shutil.rmtree(latest / "3" / "state")
  shutil.copytree(latest / "2" / "state", latest / "3" / "state")

  restored, loop_state = ckpt.Checkpoints(tmp_path, keep=3).restore(state)
  assert int(restored.step) == 2 and loop_state == {"step": 2}
  assert_trees_equal(host(restored.trainable), jax.tree.map(lambda x: x + 2, state.trainable))
  aside = tmp_path / "checkpoints" / "unrestorable" / "latest_3"
  sha256 = json.loads((aside / "integrity" / "metadata").read_text())["sha256"]
  assert capsys.readouterr().out == (
    f"checkpoint of step 3 in {latest / '3'} does not restore (ValueError: the arrays read differ from those "
    f"written (sha256 {sha256[:12]}… when saved))\n"
  )
  assert checkpoint_steps(latest) == [1, 2] and (aside / "state").is_dir()


# --- 2. no moment without a good checkpoint ----------------------------------------------------------


class Killed(BaseException):
  """What a SIGKILL at that line would leave: nothing after it runs."""


def kill_at(monkeypatch, obj, name):
  def killed(*args, **kwargs):
    raise Killed(name)

  monkeypatch.setattr(obj, name, killed)


def test_a_kill_between_writing_and_deleting_best_leaves_a_best_checkpoint(tmp_path, monkeypatch):
  state = host(tiny_run()[3])
  first = state.trainable
  second = jax.tree.map(lambda x: x + 1, first)
  manager = ckpt.Checkpoints(tmp_path)
  manager.save_best(3, first)
  kill_at(monkeypatch, manager.best, "delete")
  with pytest.raises(Killed):
    manager.save_best(6, second)  # written and verified, killed before the old one is deleted
  monkeypatch.undo()

  reopened = ckpt.Checkpoints(tmp_path)  # as the next process sees the folder
  assert checkpoint_steps(tmp_path / "checkpoints" / "best") == [3, 6]
  assert reopened.best_step() == 6
  assert_trees_equal(host(reopened.restore_trainable(first)), second)
  reopened.save_best(6, second)  # the next save_best finishes the deletion
  assert checkpoint_steps(tmp_path / "checkpoints" / "best") == [6]

  # Killed while writing the new best: the old one is still the best, whole.
  kill_at(monkeypatch, reopened.best, "save")
  with pytest.raises(Killed):
    reopened.save_best(9, first)
  monkeypatch.undo()
  again = ckpt.Checkpoints(tmp_path)
  assert again.best_step() == 6
  assert_trees_equal(host(again.restore_trainable(first)), second)


def test_a_kill_between_writing_and_deleting_latest_leaves_both(tmp_path, monkeypatch):
  state = host(tiny_run()[3])
  manager = ckpt.Checkpoints(tmp_path, keep=2)
  for step in (1, 2):
    manager.save(state.replace(step=np.asarray(step, np.int32)), {"step": step})
  kill_at(monkeypatch, manager.latest, "delete")
  with pytest.raises(Killed):
    manager.save(state.replace(step=np.asarray(3, np.int32)), {"step": 3})
  monkeypatch.undo()
  reopened = ckpt.Checkpoints(tmp_path, keep=2)
  assert checkpoint_steps(tmp_path / "checkpoints" / "latest") == [1, 2, 3]
  restored, loop_state = reopened.restore(state)
  assert int(restored.step) == 3 and loop_state == {"step": 3}
  reopened.save(state.replace(step=np.asarray(4, np.int32)), {"step": 4})
  assert checkpoint_steps(tmp_path / "checkpoints" / "latest") == [3, 4]


# --- 3. SIGTERM: a checkpoint at the next step boundary, then a bit-identical resume ---------------


def test_sigterm_then_rerun_is_bit_identical_to_an_uninterrupted_run(run, tmp_path, monkeypatch):
  config, reference = run
  workdir = tmp_path / "run"
  real_prefetch = loop.pipeline.prefetch

  def prefetch(batches, size=2):
    # The signal arrives while step 5's batch is handed over: the run stops after step 5, between log
    # intervals (log_every 2) and checkpoints (every 3).
    for index, batch in enumerate(real_prefetch(batches, size), 1):
      if index == 5:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(loop.pipeline, "prefetch", prefetch)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Stopped, match=r"^SIGTERM at step 5: checkpoint saved in .*latest/5; rerun"):
    loop.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert signal.getsignal(signal.SIGTERM) is before  # the handler was only the run's
  assert checkpoint_steps(workdir / "checkpoints" / "latest") == [3, 5]
  _, loop_state = latest_tree(workdir)
  assert [step for step, _ in loop_state["unlogged"]] == [5]  # step 5's metrics: logged with step 6's
  assert max(l["step"] for l in metric_lines(workdir)) == 4

  loop.train_and_evaluate(config, workdir)
  assert_same_run(workdir, reference)


def test_a_second_signal_exits_at_once():
  program = (
    "import os, signal, time\n"
    "from ftjax import preemption\n"
    "with preemption.stop_signals() as stop:\n"
    "  os.kill(os.getpid(), signal.SIGINT)\n"
    "  print('recorded', stop.received, flush=True)\n"
    "  os.kill(os.getpid(), signal.SIGINT)\n"
    "  time.sleep(30)\n"
    "  print('still running')\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", program],
    cwd=REPO,
    env={**os.environ, **SCRIPT_ENV},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == -signal.SIGINT, result.stderr[-2000:]
  assert result.stdout == "recorded SIGINT\n"
  assert "SIGINT received: stopping after a checkpoint at the next step boundary" in result.stderr


# --- 4. a full disk while saving --------------------------------------------------------------------


def test_disk_full_while_saving_leaves_the_run_resumable(run, tmp_path, monkeypatch):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler  # the Python write of a checkpoint

  config, reference = run
  workdir = tmp_path / "run"
  real_save = json_checkpoint_handler.JsonCheckpointHandler._save_fn

  async def save_fn(self, x, directory):
    if "latest/6." in str(directory):  # step 6's temporary folder, after its arrays were written
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
    return await real_save(self, x, directory)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", save_fn)
  with pytest.raises(StorageError) as error:
    loop.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  latest = workdir / "checkpoints" / "latest"
  message = str(error.value)
  assert message.startswith(
    f"could not write the latest checkpoint of step 6 to {latest / '6'}: No space left on device ({latest}/6."
  )
  assert "\n" not in message
  assert checkpoint_steps(latest) == [3]  # step 3 whole, step 6 not there (its temporary folder goes at the rerun)

  loop.train_and_evaluate(config, workdir)
  assert_same_run(workdir, reference)


# --- 5. a metrics line cut short by a kill -----------------------------------------------------------


def test_a_torn_metrics_line_is_repaired_on_resume(run, tmp_path, capsys):
  config, reference = run
  workdir = copy_run(reference, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "latest" / "6")  # killed between steps 3 and 6 ...
  with open(workdir / "metrics.jsonl", "a") as f:  # ... while writing a line
    f.write('{"step": 5, "split": "train", "lo')
  loop.train_and_evaluate(config, workdir)
  assert f"{workdir / 'metrics.jsonl'}:7: dropped a line cut short" in capsys.readouterr().out
  assert_same_run(workdir, reference)


def test_a_bad_metrics_line_before_the_last_names_the_line(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3}\n')
  with pytest.raises(InputError, match=rf"^{tmp_path / 'metrics.jsonl'}:2: not a JSON line"):
    loop._truncate_metrics(tmp_path, 3)


# --- 7. all of it at random moments: scripts/chaos.py, smaller --------------------------------------------


# `slow` (~2 min on 2 cores: 7 starts of a script). The full run (MiniLM, 20 kills, 5 terms) is in the
# closing note of issue 52.
@pytest.mark.slow
def test_chaos_ends_identical_to_an_uninterrupted_run(tmp_path, tiny_bert, rte_dir):
  result = script(
    "chaos",
    f"--workdir={tmp_path}",
    f"--data_dir={rte_dir}",
    f"--model={tiny_bert}",
    "--kills=4",
    "--terms=2",
    "--max_steps=24",
    "--checkpoint_every=4",
    "--eval_every=8",
    "--max_train_examples=64",
    timeout=900,
  )
  out = result.stdout
  assert out.strip().splitlines()[-1] == "CHAOS kills=4 terms=2 corruptions=1 identical=yes", out
  assert "reported it: checkpoint of step" in out and out.count("exit status 75, stopped: SIGTERM at step") == 2


# --- 6. errors users cause: one line; --debug or FTJAX_DEBUG=1 shows the traceback ---------------------


CLI_CASES = {
  # name: (the exception main raises, as Python source; exit status; the one line on stderr or, for status 1,
  # the last line of the traceback)
  "input": ("InputError('data/train.tsv:5: malformed row')", EXIT_INPUT, "error: data/train.tsv:5: malformed row"),
  "missing_file": (
    "FileNotFoundError(2, 'No such file or directory', 'x.tsv')",
    EXIT_INPUT,
    "error: [Errno 2] No such file or directory: 'x.tsv'",
  ),
  "disk_full": (
    "OSError(28, 'No space left on device', 'runs/a')",
    EXIT_STORAGE,
    "error: [Errno 28] No space left on device: 'runs/a'",
  ),
  "storage": ("StorageError('could not write runs/a')", EXIT_STORAGE, "error: could not write runs/a"),
  "stopped": (
    "Stopped('SIGTERM at step 5: checkpoint saved')",
    EXIT_STOPPED,
    "stopped: SIGTERM at step 5: checkpoint saved",
  ),
  "bug": ("RuntimeError('a bug')", 1, "RuntimeError: a bug"),
  "input --debug": ("InputError('data/train.tsv:5: malformed row')", 1, "InputError: data/train.tsv:5: malformed row"),
  "input FTJAX_DEBUG=1": (
    "InputError('data/train.tsv:5: malformed row')",
    1,
    "InputError: data/train.tsv:5: malformed row",
  ),
}


def run_cli(case):
  """A script whose main raises the case's exception, run as a user runs it."""
  exception, _, _ = CLI_CASES[case]
  program = (
    "from ftjax import cli\n"
    "from ftjax.errors import InputError, StorageError, Stopped\n"
    "def main(argv):\n"
    f"  raise {exception}\n"
    "cli.run(main)\n"
  )
  env = {**os.environ, **SCRIPT_ENV, "FTJAX_DEBUG": "1" if case.endswith("FTJAX_DEBUG=1") else ""}
  args = ["--debug"] if case.endswith("--debug") else []
  return subprocess.run(
    [sys.executable, "-c", program, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )


def test_user_errors_print_one_line_and_debug_shows_the_traceback():
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = dict(zip(CLI_CASES, pool.map(run_cli, CLI_CASES)))
  for case, (_, status, line) in CLI_CASES.items():
    result = results[case]
    assert result.returncode == status, (case, result.stderr[-2000:])
    if status == 1:
      assert "Traceback (most recent call last)" in result.stderr, (case, result.stderr[-2000:])
      assert result.stderr.rstrip().splitlines()[-1].endswith(line), (case, result.stderr[-2000:])
    else:
      assert result.stderr == line + "\n", (case, result.stderr[-2000:])
