"""scripts/bench.py runs end to end (tiny random BERT, one step per mode) and keeps its output contract."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
  "full",
  "lora",
  "bitfit",
  "head",
  "fgm",
  "bf16_full",
  "bf16_vs_torch_bf16",
  "lora_vs_full",
  "head_vs_full",
  "fgm_vs_plain",
)


# The script smoke runs below are `slow` (bench.py --quick --isolate builds the quick steps three times:
# alternating, then each framework alone): they check the benchmark scripts' output contracts, not
# numbers, and kept the default suite over its 10-minute budget.
@pytest.mark.slow
def test_bench_quick(tmp_path):
  # Most XLA optimisations off: the tiny steps compile several times faster; timings are meaningless anyway.
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--isolate", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  alone, last = proc.stdout.strip().splitlines()[-2:]
  number = r"(\d+(\.\d+)?|nan|inf)"
  for label, line in (("RATIOS_ALONE", alone), ("RATIOS", last)):  # --isolate: each framework alone, then alternating
    assert re.fullmatch(label + " " + " ".join(f"{k}={number}" for k in KEYS), line), line
    values = dict(kv.split("=") for kv in line.split()[1:])
    assert all(float(v) > 0 for v in values.values()), values
  report = (tmp_path / "bench.md").read_text()
  assert "scripts/bench.py --quick --isolate" in report
  modes = ("full", "lora", "bitfit", "head", "fgm", "infer", "bf16_full", "bf16_vs_torch_bf16")
  for mode in modes:  # once in the alternating table, once in the table of each framework alone
    assert len(re.findall(rf"^\| {mode} \|", report, re.M)) == 2, mode
  assert (tmp_path / "bench.png").stat().st_size > 0


def test_profile_kinds_of_ops_from_a_compiled_module():
  """scripts/profile_step.py puts a dot, a dropout draw and an embedding-gradient scatter each in its kind."""
  import jax
  import jax.numpy as jnp

  sys.path.insert(0, str(ROOT / "scripts"))
  import profile_step

  def step(w, x, ids, key):
    keep = jax.random.bernoulli(key, 0.9, x.shape)
    y = jnp.where(keep, x, 0.0) @ w
    table_grad = jnp.zeros((50, 8)).at[ids].add(y[:, :8])
    return y.sum(), table_grad

  args = (jnp.ones((16, 16)), jnp.ones((32, 16)), jnp.arange(32) % 50, jax.random.key(0))
  kinds = {name: op.kind for name, op in profile_step.hlo_ops(jax.jit(step).lower(*args).compile().as_text()).items()}
  found = set(kinds.values())
  assert {"matmul", "dropout RNG", "scatter"} <= found, kinds
  assert found <= set(profile_step.KINDS), found


@pytest.mark.slow
def test_profile_quick(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "profile_step.py"), "--quick", "--modes=full", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (tmp_path / "profile.md").read_text()
  assert "## full" in report and "| matmul |" in report
  shares = [float(m) for m in re.findall(r"\| ([\d.]+)% \|", report)]
  assert len(shares) == 7 and abs(sum(shares) - 100) < 0.5, shares
  matmul_ms = float(re.search(r"^\| matmul \| ([\d.]+) \|", report, re.M).group(1))
  assert matmul_ms > 0, report


@pytest.mark.slow
def test_gemm_quick(tmp_path):
  """scripts/bench_gemm.py: every shape in both dtypes per configuration, the thunk that ran, and the steps."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "bench_gemm.py"), "--quick", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (tmp_path / "gemm.md").read_text()
  assert "## float32" in report and "## bfloat16" in report, report
  rows = re.findall(r"^\| (?:q/k/v/out|ffn|attn) .*$", report, re.M)
  assert len(rows) == 2 * 20, len(rows)  # 15 products + 5 "via copy", per dtype
  # two XLA configurations and torch, each cell GFLOP/s with the thunk's letter; the default runs YNNPACK
  cells = [row.split("|")[4:7] for row in rows]
  assert all(re.fullmatch(r" \d+ [yxoet] ", c) for row in cells for c in row), cells
  assert cells[0][0].endswith("y ") and cells[0][2].endswith("t "), cells[0]
  assert re.search(r"^\| ynn \(default\) \| \d+ \([\d.]+\) \| \d+ \([\d.]+\) \| \d+ \([\d.]+\) \|$", report, re.M)
