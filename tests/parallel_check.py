"""Runs the tiny BERT's train and eval steps in every parallel mode on 8 simulated CPU devices and prints
a JSON report that test_parallel.py checks. A separate process: the device count is fixed at jax import.

  python tests/parallel_check.py
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ftjax from this checkout, installed or not
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402

from ftjax import parallel, step  # noqa: E402

import tiny_run as tiny  # noqa: E402

STEPS, BATCH = 3, 16


def train(mode, dropout, state0, model, task, tx, grad_accum_steps=1):
  par = parallel.make_parallel(mode)
  train_step = par.compile_train_step(
    lambda axis_name: step.make_train_step(
      model,
      task,
      tx,
      adversarial_config=tiny.adversarial_config(),
      dropout=dropout,
      axis_name=axis_name,
      grad_accum_steps=grad_accum_steps,
    )
  )
  state = par.put_state(state0)
  losses = []
  for i in range(STEPS):
    state, metrics = train_step(state, par.put_batch(tiny.random_batch(i, batch_size=BATCH)))
    losses.append(float(metrics["loss_sum"]) / float(metrics["count"]))
  return par.get_state(state), losses


def evaluate(mode, state0, model, task):
  par = parallel.make_parallel(mode)
  eval_step = par.compile_eval_step(step.make_eval_step(model, task))
  state = par.put_state(state0)
  outputs, sums = eval_step(state.trainable, state.frozen, par.put_batch(tiny.random_batch(7, batch_size=BATCH)))
  return par.to_host(outputs), float(sums["loss_sum"]), float(sums["count"])


def max_diff(a, b):
  return float(max((np.max(np.abs(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0))


def main():
  tiny.fast_compiles()
  # BitFit: a frozen part (the step must leave it alone on every device) and a trainable one.
  model, task, tx, state0 = tiny.tiny_run(method="bitfit")
  state0 = tiny.host(state0)  # numpy: every mode puts its own copy (the steps donate theirs)
  report = {
    "devices": jax.device_count(),
    "threefry_partitionable": bool(jax.config.values["jax_threefry_partitionable"]),
  }

  single, single_losses = train("none", True, state0, model, task, tx)
  mesh, mesh_losses = train("mesh", True, state0, model, task, tx)
  single_off, _ = train("none", False, state0, model, task, tx)
  pmap_off, pmap_losses = train("pmap", False, state0, model, task, tx)
  # Accumulation on the mesh: 2 micro-batches of 8 rows, each spread over the 8 devices.
  mesh_accum, _ = train("mesh", False, state0, model, task, tx, grad_accum_steps=2)
  report.update(
    mesh_vs_single=max_diff(mesh.trainable, single.trainable),
    mesh_losses=mesh_losses,
    single_losses=single_losses,
    pmap_vs_single=max_diff(pmap_off.trainable, single_off.trainable),
    mesh_accum_vs_single=max_diff(mesh_accum.trainable, single_off.trainable),
    dropout_effect=max_diff(single.trainable, single_off.trainable),
    moved=max_diff(single.trainable, state0.trainable),
    steps={"mesh": int(mesh.step), "pmap": int(pmap_off.step)},
    frozen_unchanged=max_diff(mesh.frozen, state0.frozen) == 0 and max_diff(pmap_off.frozen, state0.frozen) == 0,
  )

  evals = {mode: evaluate(mode, state0, model, task) for mode in ("none", "mesh", "pmap")}
  report["eval_shapes"] = {mode: list(out.shape) for mode, (out, _, _) in evals.items()}
  report["eval_vs_single"] = {
    mode: max(max_diff(out, evals["none"][0]), abs(loss - evals["none"][1])) for mode, (out, loss, _) in evals.items()
  }
  report["eval_counts"] = {mode: count for mode, (_, _, count) in evals.items()}

  par = parallel.make_parallel("mesh")
  sharded = par.put_batch(tiny.random_batch(0, batch_size=BATCH))
  report["mesh_batch"] = {
    "keys": sorted(sharded),
    "spec": str(sharded["input_ids"].sharding.spec),
    "rows_per_device": sorted({s.data.shape[0] for s in sharded["input_ids"].addressable_shards}),
  }
  for mode in ("mesh", "pmap"):
    try:
      parallel.make_parallel(mode).put_batch(tiny.random_batch(0, batch_size=12))
      report[f"{mode}_indivisible_error"] = None
    except ValueError as e:
      report[f"{mode}_indivisible_error"] = str(e)
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()
