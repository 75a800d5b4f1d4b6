"""scripts/bench.py runs end to end (tiny random BERT, one step per mode) and keeps its output contract; so does
`--device` (scripts/bench_device.py) with --quick on the CPU, whose pure pieces are checked on their own."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import script

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


# --- scripts/bench.py --device (scripts/bench_device.py) ------------------------------------------------


def bench_device():
  sys.path.insert(0, str(ROOT / "scripts"))
  import bench_device

  return bench_device


@pytest.mark.slow
def test_bench_device_quick(tmp_path):  # ~30 s on 2 busy cores: slow, as the other scripts' smoke tests
  """--device --quick on the CPU: every (model, mode, framework) row with a time and an MFU, the device
  and peak lines, and the RATIOS_DEVICE line last."""
  proc = script("bench", "--device", "--quick", "--out", tmp_path, timeout=600)  # CPU, XLA optimisations off
  last = proc.stdout.strip().splitlines()[-1]
  keys = ("bert_full", "bert_lora", "llama_full", "llama_lora")
  assert re.fullmatch("RATIOS_DEVICE " + " ".join(rf"{k}=\d+\.\d+" for k in keys), last), last
  assert all(float(kv.split("=")[1]) > 0 for kv in last.split()[1:]), last
  report = (tmp_path / "bench_gpu.md").read_text()
  assert "scripts/bench.py --device --quick" in report and "PARTIAL" not in report
  assert re.search(r"^- Device: cpu ", report, re.M), report
  assert re.search(r"^- Peak used for MFU: [\d.]+ TFLOP/s dense bf16 \(device kind 'cpu' has no spec", report, re.M)
  header = next(line for line in report.splitlines() if line.startswith("| model |"))
  assert "| ms/step |" in header and "| MFU |" in header, header
  for model in ("bert", "llama"):
    for mode in ("full", "lora"):
      for framework in ("ftjax", "torch"):
        row = re.search(rf"^\| {model} \| {mode} \| {framework} \| ([\d.]+) \|.*\| ([\d.]+)% \|", report, re.M)
        assert row, (model, mode, framework)
        assert float(row.group(1)) > 0 and float(row.group(2)) >= 0, row.group(0)


def test_device_model_flops_by_hand():
  """BERT's forward FLOPs are bench_steps'; Llama's: dense layers, LM head and attention counted by hand,
  and 2·N·tokens (N = every parameter but the norms) plus attention at Llama-3.2-1B's shape."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import traverse_util

  from ftjax.models import build_model

  bd = bench_device()
  bert = bd.hf_config("bert", quick=True)
  assert bd.model_flops(bert, 2, 16) == bd.forward_flops(bert, 2, 16)
  llama = bd.hf_config("llama", quick=True)  # L=2 H=32 4/2 heads of 8, I=64
  dense = 2 * (32 * 32 + 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64)  # per layer q, o, k+v, gate+up+down; 2 layers
  head = 32 * 256  # the (tied) LM head
  assert bd.model_flops(llama, 2, 16) == 2 * 2 * 16 * (dense + head) + 4 * 2 * 2 * 16**2 * 32
  full = bd.hf_config("llama", quick=False)
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = traverse_util.flatten_dict(jax.eval_shape(lambda: build_model(full).init(jax.random.key(0), ids))["params"])
  n = sum(int(np.prod(v.shape)) for k, v in shapes.items() if k[-1] != "scale")  # RMSNorm scales are no matmul
  assert 1.23e9 < n < 1.24e9, n
  attention = 4 * 8 * 16 * 512**2 * 2048
  assert bd.model_flops(full, 8, 512) == 2 * 8 * 512 * n + attention


def test_device_chip_peaks():
  bd = bench_device()
  kinds = {
    "NVIDIA H100 80GB HBM3": 989.4,
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H200": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
    "NVIDIA L40S": None,  # not L4
    "cpu": None,
  }
  assert {kind: bd.chip_peak(kind) for kind in kinds} == kinds


def test_device_refuses_without_an_accelerator(tmp_path, monkeypatch):
  """No GPU/TPU and no --quick: one error line, nothing written."""
  import types

  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # main sets it: undone after the test

  import jax

  if jax.devices()[0].platform != "cpu":
    pytest.skip("an accelerator is present: --device would run the benchmark")
  bd = bench_device()
  assert bd.accelerator_error([types.SimpleNamespace(platform="gpu")]) is None
  sys.path.insert(0, str(ROOT / "scripts"))
  import bench

  out = tmp_path / "out"
  with pytest.raises(SystemExit) as stop:
    bench.main(["--device", "--out", str(out)])
  message = str(stop.value)
  assert message.startswith("no GPU/TPU: jax.devices() is [CpuDevice") and "\n" not in message, message
  assert message.endswith("run on an accelerator, or --quick to smoke-test on CPU"), message
  assert not out.exists()


@pytest.mark.slow  # builds and steps both frameworks: the default suite ran past 10 min with it
@pytest.mark.parametrize("model", ["bert", "llama"])
def test_device_both_sides_share_weights(model):
  """ftjax and PyTorch built from the one random PyTorch model compute the same float32 loss."""
  bd = bench_device()
  config = bd.hf_config(model, quick=True)
  ours, theirs = bd.first_losses(model, config, 2, 16)
  assert abs(ours - theirs) < 1e-5 * abs(theirs), (ours, theirs)


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_device_full_size_models_map_name_by_name(model):
  """The accelerator run's BERT-base and 1B Llama: every ftjax parameter has its PyTorch tensor, of the
  right shape (PyTorch built on the meta device: shapes only, no memory), and the Llama has 1.24B."""
  import numpy as np
  from flax import traverse_util

  from ftjax.models import build_model, loading

  bd = bench_device()
  config = bd.hf_config(model, quick=False)
  ours = build_model(config)
  theirs = bd.torch_model(config, "meta")
  state = (theirs.bert if model == "bert" else theirs).state_dict()
  expected = traverse_util.flatten_dict(loading.abstract_params(ours), sep="/")
  names = loading.ARCHITECTURES[model].hf_names(ours.config, state.keys())
  assert {path for path, _, _ in names} == set(expected)
  for path, name, transpose in names:
    shape = tuple(state[name].shape)[:: -1 if transpose else 1]
    assert shape == expected[path].shape, (path, name, shape)
  n = sum(int(np.prod(v.shape)) for v in expected.values())
  assert (1.09e8 < n < 1.1e8) if model == "bert" else (1.235e9 < n < 1.237e9), n
  assert sum(p.numel() for p in theirs.parameters()) - (1538 if model == "bert" else 0) == n


@pytest.mark.slow  # builds and steps both frameworks: the default suite ran past 10 min with it
def test_device_one_at_a_time():
  """The fallback when both training states do not fit the device: each framework built, warmed up and
  timed alone; from the same weights, the first bf16 steps' losses still agree (Llama has no dropout)."""
  import argparse

  bd = bench_device()
  args = argparse.Namespace(quick=True, warmup=1, reps=2)
  pair = bd.time_group("llama", "lora", bd.hf_config("llama", quick=True), args, "cpu", together=False)
  assert set(pair) == {"ftjax", "torch"}
  for c in pair.values():
    assert len(c.times) == 2 and all(t > 0 for t in c.times) and c.run is None, c.name
  assert abs(pair["ftjax"].first_loss - pair["torch"].first_loss) < 1e-2 * pair["torch"].first_loss


@pytest.mark.slow  # builds and steps both frameworks: the default suite ran past 10 min with it
def test_device_out_of_memory_falls_back_to_one_at_a_time(tmp_path, monkeypatch, capsys):
  """A group that runs out of device memory with both frameworks alive is timed again one at a time, and
  the report says both."""
  bd = bench_device()
  real = bd.time_group
  calls = []

  def time_group(*args):
    calls.append(args[-1])
    if args[-1] is None:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.00GiB.")
    return real(*args)

  monkeypatch.setattr(bd, "time_group", time_group)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # main sets it: undone after the test
  bd.main(["--device", "--quick", "--device-models=llama", "--device-modes=lora", "--out", str(tmp_path)])
  assert calls == [None, False]
  report = (tmp_path / "bench_gpu.md").read_text()
  assert "- llama lora: out of device memory together (RuntimeError: RESOURCE_EXHAUSTED" in report, report
  assert "- llama lora: ftjax and PyTorch timed one at a time" in report, report
  assert re.search(r"^\| llama \| lora \| ftjax \| [\d.]+ \|", report, re.M), report
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("RATIOS_DEVICE bert_full=nan bert_lora=nan llama_full=nan llama_lora="), last


@pytest.mark.slow
def test_variants_quick(tmp_path):
  """scripts/bench_variants.py: every row with its variant's ratio, the A/A control's and both compile times."""
  script("bench_variants", "--quick", "--out", tmp_path, timeout=900)
  report = (tmp_path / "variants.md").read_text()
  rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line][1:]
  assert [row.split(" | ")[1] for row in rows] == ["recompute_masks"] * 4 + ["rolled"], rows
  for row in rows:
    ratios = [float(x) for x in re.findall(r"(\d+\.\d{3})", row)]
    assert len(ratios) == 6 and all(0 < r < 10 for r in ratios), row  # two medians, each with its quartiles
