"""Data parallelism: mesh and pmap runs on 8 simulated CPU devices give the single-device run.

The 8-device checks run in a subprocess (tests/parallel_check.py): the device count is fixed when jax is
imported, and this process has already imported it with one device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftjax import parallel

from tiny_run import random_batch

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def report():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run(
    [sys.executable, str(HERE / "parallel_check.py")], env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-4000:]
  line = next(l for l in done.stdout.splitlines() if l.startswith("REPORT "))
  return json.loads(line[len("REPORT ") :])


def test_mesh_with_dropout_matches_single_device(report):
  assert report["devices"] == 8 and report["threefry_partitionable"]
  assert report["dropout_effect"] > 1e-3 and report["moved"] > 1e-3  # dropout is on; parameters moved
  assert report["mesh_vs_single"] < 1e-5
  np.testing.assert_allclose(report["mesh_losses"], report["single_losses"], rtol=1e-5)
  assert report["steps"]["mesh"] == 3 and report["frozen_unchanged"]


def test_pmap_without_dropout_matches_single_device(report):
  assert report["pmap_vs_single"] < 1e-5 and report["steps"]["pmap"] == 3


def test_mesh_gradient_accumulation_matches_one_large_batch(report):
  assert report["mesh_accum_vs_single"] < 1e-5


def test_eval_outputs_gathered_in_batch_order(report):
  assert report["eval_shapes"] == {"none": [16, 2], "mesh": [16, 2], "pmap": [16, 2]}
  assert max(report["eval_vs_single"].values()) < 1e-5
  assert set(report["eval_counts"].values()) == {16.0}


def test_batches_are_split_over_devices_without_host_keys(report):
  assert report["mesh_batch"] == {
    "keys": ["attention_mask", "input_ids", "labels", "token_type_ids", "weights"],
    "spec": "P(('data', 'fsdp'),)",  # rows over data × fsdp (sharding.BATCH_AXES)
    "rows_per_device": [2],
  }
  for mode in ("mesh", "pmap"):
    assert "not divisible by the 8 devices" in report[f"{mode}_indivisible_error"]


def test_single_device_modes():
  with pytest.raises(ValueError, match="parallel mode must be one of"):
    parallel.make_parallel("ddp")
  for mode in ("mesh", "pmap", "none"):
    par = parallel.make_parallel(mode)
    assert par.num_devices == 1 and par.mode == mode
    batch = par.put_batch(random_batch(0, batch_size=4))
    assert "example_index" not in batch
    host = par.to_host(batch["input_ids"])
    np.testing.assert_array_equal(host, random_batch(0, batch_size=4)["input_ids"])
