"""The training loop's promises (ftjax/loop.py), on a tiny random BERT and small cuts of the real data:

- a run killed with SIGKILL and rerun with the same command ends bit-identical to an uninterrupted one
  (dropout on: its keys are folded from (seed, step), the data order from (seed, epoch));
- early stopping stops after `patience` evaluations without improvement and ends with the best
  checkpoint's parameters;
- a NaN stops the run naming the step, and the last checkpoint stays good;
- the run folder: metrics.jsonl lines, config.json, run.json, TensorBoard events, summary, and a resume
  truncates the metric lines written after its checkpoint.
"""

import json
import os
import re
import shutil
import signal
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import glue
from ftjax import checkpoints as ckpt
from ftjax import evaluation, experiment, loop, workdir_lock
from ftjax.data import pipeline

from conftest import checkpoint_steps, metric_lines, script, tiny_config, tiny_flags


@pytest.fixture(scope="module", autouse=True)
def _fast(fast_compiles):
  yield


def latest_tree(workdir):
  """(trainable, opt_state, step, rng) and loop state of the latest checkpoint, as numpy."""
  manager = ckpt.Checkpoints(workdir)
  step = manager.latest_step()
  restored = manager.latest.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore())
  )
  manager.close()
  return jax.tree.map(np.asarray, dict(restored["state"])), dict(restored["loop"])


def best_tree(workdir):
  manager = ckpt.Checkpoints(workdir)
  tree = manager.best.restore(manager.best_step(), args=ocp.args.StandardRestore())
  manager.close()
  return jax.tree.map(np.asarray, tree)


def assert_trees_equal(a, b):
  paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
  paths_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in paths_a] == [p for p, _ in paths_b]
  for (path, x), (_, y) in zip(paths_a, paths_b):
    assert np.array_equal(x, y), f"{jax.tree_util.keystr(path)} differs"


def without_timing(lines):
  return [{k: v for k, v in l.items() if k != "examples_per_second"} for l in lines]


# --- the run folder ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rte_run(tmp_path_factory, tiny_bert, tfds_dir, rte_dir):
  config = tiny_config(
    glue.get_config("rte"), tiny_bert, tfds_dir, data_dir=str(rte_dir), method="lora", learning_rate=1e-3
  )
  workdir = tmp_path_factory.mktemp("rte_run")
  final = loop.train_and_evaluate(config, workdir)
  return config, workdir, final


def test_run_folder_records_metrics_config_and_events(rte_run):
  config, workdir, final = rte_run
  lines = metric_lines(workdir)
  train = [l for l in lines if l["split"] == "train"]
  dev = [l for l in lines if l["split"] == "dev"]
  # train metrics at every log_every (2) and before each evaluation / checkpoint (3); dev every 3 steps
  assert [l["step"] for l in train] == [2, 3, 4, 6]
  assert [l["step"] for l in dev] == [3, 6]
  for l in train:
    assert {"loss", "grad_norm", "learning_rate", "examples_per_second"} <= set(l)
    assert np.isfinite(l["loss"]) and l["learning_rate"] == pytest.approx(1e-3 * (1 - (l["step"] - 1) / 6))
  for l in dev:
    assert set(l) == {"step", "split", "loss", "accuracy", "f1", "matthews"}
  assert set(final) == {"dev"} and set(final["dev"]) == {"loss", "accuracy", "f1", "matthews"}

  saved = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  assert saved.task.source == "glue/rte" and saved.method == "lora" and saved.max_steps == 6
  assert saved.data_dir == config.data_dir
  run = json.loads((workdir / "run.json").read_text())
  assert run["task"] == {"kind": "classification", "num_labels": 2, "label_names": ["entailment", "not_entailment"]}
  assert run["backbone"]["sha256"] and run["rules"]
  assert run["cpu_threefry"] == "unrolled"  # "auto", LoRA input dropout included (ftjax/xla_cpu.py)
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  summary = (workdir / "summary.txt").read_text()
  assert "steps 6/6" in summary and "best dev accuracy" in summary
  assert checkpoint_steps(workdir / "checkpoints" / "latest") == [3, 6]
  assert len(checkpoint_steps(workdir / "checkpoints" / "best")) == 1


def test_resume_truncates_metric_lines_after_the_checkpoint(rte_run, tmp_path):
  config, original, _ = rte_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  shutil.rmtree(workdir / "checkpoints" / "latest" / "6")  # as if killed between steps 3 and 6
  with open(workdir / "metrics.jsonl", "a") as f:  # a line the killed run wrote after its checkpoint
    f.write(json.dumps({"step": 5, "split": "train", "loss": 123.0}) + "\n")
  # The killed process had spent an hour (two CPU-hours) reaching step 3: the resumed run counts them.
  loop_file = workdir / "checkpoints" / "latest" / "3" / "loop" / "metadata"
  loop_file.write_text(json.dumps({**json.loads(loop_file.read_text()), "wall_seconds": 3600.0, "cpu_seconds": 7200.0}))
  loop.train_and_evaluate(config, workdir)
  assert without_timing(metric_lines(workdir)) == without_timing(metric_lines(original))
  (state, loop_resumed), (state_original, loop_original) = latest_tree(workdir), latest_tree(original)
  assert_trees_equal(state, state_original)
  assert 3600 < loop_resumed.pop("wall_seconds") < 3600 + 600
  assert 7200 < loop_resumed.pop("cpu_seconds") < 7200 + 1200
  assert loop_resumed == {k: v for k, v in loop_original.items() if k not in ("wall_seconds", "cpu_seconds")}
  assert re.search(r"wall time 6\d\.\d min  CPU time 1[23]\d\.\d min", (workdir / "summary.txt").read_text())


def test_a_workdir_in_use_refuses_a_second_run_and_loses_nothing(rte_run, tmp_path):
  """Two processes in one folder would interleave checkpoints and metrics.jsonl: while one trains there
  (its flock on train.lock, held here as a training process holds it), another stops at once with an
  error naming the holder's pid, and the folder is unchanged."""
  config, original, _ = rte_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  assert workdir_lock.workdir_holder(workdir) is None
  with workdir_lock.exclusive_workdir(workdir):
    assert workdir_lock.workdir_holder(workdir) == str(os.getpid())
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    with pytest.raises(
      loop.InputError,
      match=rf"{re.escape(str(workdir))} is in use: another process "
      rf"\(pid {os.getpid()}\) is training in it",
    ):
      loop.train_and_evaluate(config, workdir)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
  assert workdir_lock.workdir_holder(workdir) is None  # released with the holder


# --- resume after SIGKILL -----------------------------------------------------------------------------


# `slow` (~55–80 s on 2 cores): with it the default suite ran past its 10-minute budget. The default suite
# still resumes from a checkpoint (test_resume_truncates_metric_lines_after_the_checkpoint above).
@pytest.mark.slow
def test_sigkill_and_rerun_is_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_bert, tfds_dir, rte_dir):
  # full fine-tuning with dropout on, 3 epochs of 8 steps: the kill lands mid-run, past an epoch boundary
  overrides = dict(
    data_dir=str(rte_dir),
    method="full",
    learning_rate=1e-3,
    max_steps=24,
    eval_every=4,
    checkpoint_every=2,
    dropout=True,
  )
  command = [
    "--config=configs/glue.py:rte",
    f"--workdir={tmp_path / 'killed'}",
    *tiny_flags(tiny_bert, tfds_dir, **overrides),
  ]
  process = script("train", *command, log=tmp_path / "killed.log")
  latest = tmp_path / "killed" / "checkpoints" / "latest"
  deadline = time.time() + 240
  while max(checkpoint_steps(latest), default=0) < 10:
    assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]  # ended before the kill
    assert time.time() < deadline, "no checkpoint at step >= 10 after 4 minutes"
    time.sleep(0.02)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  killed_at = max(checkpoint_steps(latest))
  assert 10 <= killed_at < 24 and not (tmp_path / "killed" / "summary.txt").exists()

  # The same command again, in the background while the uninterrupted reference run trains here.
  rerun = script("train", *command, log=tmp_path / "rerun.log")
  config = tiny_config(glue.get_config("rte"), tiny_bert, tfds_dir, **overrides)
  assert config.dropout and config.head_dropout > 0
  loop.train_and_evaluate(config, tmp_path / "uninterrupted")
  rerun.wait(timeout=300)
  output = (tmp_path / "rerun.log").read_text()
  assert rerun.returncode == 0, output[-5000:]
  assert f"resuming {tmp_path / 'killed'} at step" in output
  assert json.loads((tmp_path / "killed" / "config.json").read_text()) == json.loads(
    (tmp_path / "uninterrupted" / "config.json").read_text()
  )
  a, b = tmp_path / "uninterrupted", tmp_path / "killed"
  state_a, loop_a = latest_tree(a)
  state_b, loop_b = latest_tree(b)
  assert int(state_a["step"]) == int(state_b["step"]) == 24
  assert_trees_equal(state_a, state_b)  # trainable, optimiser state, step, rng: bit for bit
  for key in ("wall_seconds", "cpu_seconds"):  # times differ; the rest must match exactly
    assert loop_b.pop(key) > 0 and loop_a.pop(key) > 0
  assert loop_a == loop_b
  assert_trees_equal(best_tree(a), best_tree(b))
  assert without_timing(metric_lines(a)) == without_timing(metric_lines(b))


# --- early stopping ---------------------------------------------------------------------------------


def test_early_stopping_stops_after_patience_and_restores_the_best(tmp_path, tiny_bert, tfds_dir, rte_dir, monkeypatch):
  # The dev accuracy is scripted so that it provably stops improving: best at the 2nd evaluation
  # (step 4), then 2 evaluations without improvement (a tie is not an improvement) → stop at step 8.
  scripted = iter([50.0, 60.0, 55.0, 60.0])
  seen = []  # (split, trainable) of every evaluation, as host copies
  real = evaluation.evaluate_split

  def evaluate_split(par, eval_step, trainable, frozen, data, batch_size):
    values, report = real(par, eval_step, trainable, frozen, data, batch_size)
    seen.append((data.split, jax.tree.map(np.array, jax.device_get(trainable))))
    return ({**values, "accuracy": next(scripted)} if data.split == "dev" else values), report

  monkeypatch.setattr(evaluation, "evaluate_split", evaluate_split)
  config = tiny_config(
    glue.get_config("rte"),
    tiny_bert,
    tfds_dir,
    data_dir=str(rte_dir),
    method="lora",
    learning_rate=1e-2,
    schedule="constant",
    max_steps=40,
    eval_every=2,
    checkpoint_every=2,
    max_eval_examples=16,
    eval_splits=("dev", "train"),
    **{"early_stopping.patience": 2},
  )
  workdir = tmp_path / "run"
  final = loop.train_and_evaluate(config, workdir)

  lines = metric_lines(workdir)
  assert [(l["step"], l["accuracy"]) for l in lines if l["split"] == "dev"] == [(2, 50), (4, 60), (6, 55), (8, 60)]
  assert max(l["step"] for l in lines if l["split"] == "train") == 8
  summary = (workdir / "summary.txt").read_text()
  assert "steps 8/40" in summary and "(stopped early)" in summary and "at step 4" in summary
  assert checkpoint_steps(workdir / "checkpoints" / "best") == [4]
  assert max(checkpoint_steps(workdir / "checkpoints" / "latest")) == 8
  assert final["dev"]["accuracy"] == 60.0  # the best evaluation's metrics, not re-scored

  # The final evaluation (split "train") ran with the best checkpoint's parameters, not the last ones.
  assert [split for split, _ in seen] == ["dev"] * 4 + ["train"]
  final_trainable = seen[-1][1]
  _, _, best, _ = experiment.restore(workdir)
  assert_trees_equal(final_trainable, jax.tree.map(np.asarray, best))
  assert_trees_equal(final_trainable, seen[1][1])  # what was scored at step 4
  last = latest_tree(workdir)[0]["trainable"]
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(final_trainable), jax.tree.leaves(last)))


# --- non-finite losses ------------------------------------------------------------------------------


def test_nan_label_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, tiny_bert, tfds_dir, stsb_dir):
  # STS-B with one training score "nan", placed in the batch of step 5 (batch 8: the order of epoch 0
  # is a function of the seed alone).
  rows = (stsb_dir / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
  order = pipeline.epoch_order(len(rows) - 1, seed=0, epoch=0)
  row = order[4 * 8] + 1  # + the header line
  fields = rows[row].rstrip("\n").split("\t")
  rows[row] = "\t".join(fields[:-1] + ["nan"]) + "\n"
  data = tmp_path / "stsb"
  data.mkdir()
  (data / "train.tsv").write_text("".join(rows), encoding="utf-8")
  shutil.copy(stsb_dir / "dev.tsv", data / "dev.tsv")

  # log_every 50: the NaN is found at the checkpoint of step 6, which must then not be written
  config = tiny_config(
    glue.get_config("stsb"),
    tiny_bert,
    tfds_dir,
    data_dir=str(data),
    method="lora",
    learning_rate=1e-3,
    max_steps=8,
    eval_every=0,
    checkpoint_every=2,
    log_every=50,
  )
  workdir = tmp_path / "run"
  with pytest.raises(loop.NonFiniteError, match=r"at step 5\b"):
    loop.train_and_evaluate(config, workdir)

  assert checkpoint_steps(workdir / "checkpoints" / "latest") == [2, 4]
  state, _ = latest_tree(workdir)
  assert int(state["step"]) == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["trainable"]))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["opt_state"]) if x.dtype.kind == "f")
