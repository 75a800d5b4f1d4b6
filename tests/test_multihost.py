"""Multi-process runs on this machine: `scripts/train.py` as two processes joined by `jax.distributed`
(FTJAX_COORDINATOR on localhost, 4 CPU devices each, fsdp=8 over all 8) against one process with 8
devices; each process reads its own rows of every batch, process 0 alone writes metrics.jsonl; killed
with SIGKILL mid-run and started again, both resume and end bit-identical to an uninterrupted run.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ftjax import checkpoints as ckpt

from conftest import REPO, SCRIPT_ENV, SHARED_DATA, checkpoint_steps, metric_lines, needs_data, tiny_flags

DEVICES = 8


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir: Path, flags: list[str], processes: int) -> list[subprocess.Popen]:
  """scripts/train.py as `processes` processes sharing DEVICES CPU devices (logs: workdir/../<name>.log<i>)."""
  port = free_port()
  runs = []
  for i in range(processes):
    env = {**os.environ, **SCRIPT_ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES // processes}"}
    if processes > 1:
      env.update(FTJAX_COORDINATOR=f"127.0.0.1:{port}", FTJAX_NUM_PROCESSES=str(processes), FTJAX_PROCESS_ID=str(i))
    log = open(workdir.parent / f"{workdir.name}.log{i}", "a")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/glue.py:rte", f"--workdir={workdir}"]
    runs.append(subprocess.Popen(cmd + flags, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return runs


def wait(runs, workdir: Path, timeout: float = 900):
  for run in runs:
    code = run.wait(timeout=timeout)
    if code != 0:
      logs = [(workdir.parent / f"{workdir.name}.log{i}").read_text()[-3000:] for i in range(len(runs))]
      raise AssertionError(f"exit {code}:\n" + "\n----\n".join(logs))


def final_state(workdir: Path, like: dict | None = None) -> dict:
  """The latest checkpoint's arrays on this (one-device) process, whatever mesh wrote them; sharded
  checkpoints need the shapes (`like`: the one-process run's, saved from host copies)."""
  manager = ckpt.Checkpoints(workdir)
  step = manager.latest_step()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = None
  if like is not None:
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
  tree = manager.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  manager.close()
  return jax.tree.map(np.asarray, dict(tree))


def train_lines(workdir: Path) -> list[dict]:
  return [
    {k: v for k, v in line.items() if k != "examples_per_second"}
    for line in metric_lines(workdir)
    if line["split"] in ("train", "dev")
  ]


def compare_runs(tmp_path, flags, steps, kill_after):
  """(one-process run, two-process run, two-process run killed at a checkpoint and resumed)."""
  one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
  wait(launch(one, flags, 1), one)  # alone first: five MiniLM processes at once ran out of memory
  runs = launch(two, flags, 2)
  first = launch(killed, flags, 2)
  latest = killed / "checkpoints" / "latest"
  deadline = time.time() + 900
  while kill_after not in checkpoint_steps(latest) and time.time() < deadline:
    assert all(r.poll() is None for r in first), "the run to kill ended early"
    time.sleep(0.2)
  for run in first:
    run.send_signal(signal.SIGKILL)
    run.wait()
  killed_at = checkpoint_steps(latest)
  wait(launch(killed, flags, 2), killed)
  wait(runs, two)
  return one, two, killed, killed_at


def check(one, two, killed, killed_at, steps, kill_after):
  assert kill_after in killed_at and steps not in killed_at  # killed mid-run
  lines_one, lines_two = train_lines(one), train_lines(two)
  # process 0 alone wrote metrics: one line per logged step, as in the one-process run
  assert [(l["step"], l["split"]) for l in lines_two] == [(l["step"], l["split"]) for l in lines_one]
  for a, b in zip(lines_one, lines_two):
    for key in a:
      if key not in ("step", "split"):
        assert abs(a[key] - b[key]) < 1e-5 * max(1.0, abs(a[key])), (key, a, b)
  state_one = final_state(one)
  state_two, state_killed = final_state(two, state_one), final_state(killed, state_one)
  assert int(state_two["step"]) == steps
  for x, y in zip(jax.tree.leaves(state_one["trainable"]), jax.tree.leaves(state_two["trainable"])):
    assert np.max(np.abs(x - y)) < 1e-5
  # resumed after SIGKILL: bit-identical to the uninterrupted two-process run
  assert train_lines(killed) == lines_two
  for x, y in zip(jax.tree.leaves(state_killed), jax.tree.leaves(state_two)):
    assert np.array_equal(x, y)
  assert (two / "summary.txt").is_file() and (two / "command.txt").is_file()
  logs = (two.parent / f"{two.name}.log0").read_text() + (two.parent / f"{two.name}.log1").read_text()
  assert "Traceback" not in logs


def test_two_processes_equal_one_and_resume_after_sigkill(tmp_path, tiny_bert, tfds_dir, rte_dir):
  """The tiny BERT, 8 steps, killed after the checkpoint of step 4."""
  flags = tiny_flags(
    tiny_bert,
    tfds_dir,
    data_dir=rte_dir,
    parallel="mesh",
    mesh="fsdp=8",
    max_steps=8,
    checkpoint_every=4,
    eval_every=4,
    eval_batch_size=16,
  )
  one, two, killed, killed_at = compare_runs(tmp_path, flags, 8, 4)
  check(one, two, killed, killed_at, 8, 4)


@pytest.mark.slow
def test_minilm_rte_two_processes_equal_one_and_resume_after_sigkill(tmp_path, tfds_dir):
  """MiniLM on RTE, 20 steps with fsdp=8, killed after the checkpoint of step 10."""
  needs_data("rte")
  flags = tiny_flags(
    "minilm",
    tfds_dir,
    data_dir=SHARED_DATA / "rte",
    parallel="mesh",
    mesh="fsdp=8",
    max_steps=20,
    checkpoint_every=10,
    eval_every=10,
    eval_batch_size=16,
    max_train_examples=256,
    max_length=128,
  )
  one, two, killed, killed_at = compare_runs(tmp_path, flags, 20, 10)
  check(one, two, killed, killed_at, 20, 10)
