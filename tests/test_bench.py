"""scripts/bench.py runs end to end (tiny random BERT, one step per mode) and keeps its output contract."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("full", "lora", "bitfit", "head", "fgm", "bf16_full", "lora_vs_full", "head_vs_full", "fgm_vs_plain")


def test_bench_quick(tmp_path):
  # Most XLA optimisations off: the tiny steps compile several times faster; timings are meaningless anyway.
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  number = r"(\d+(\.\d+)?|nan|inf)"
  assert re.fullmatch("RATIOS " + " ".join(f"{k}={number}" for k in KEYS), last), last
  values = dict(kv.split("=") for kv in last.split()[1:])
  assert all(float(v) > 0 for v in values.values()), values
  report = (tmp_path / "bench.md").read_text()
  assert "scripts/bench.py --quick" in report
  for mode in ("full", "lora", "bitfit", "head", "fgm", "infer", "bf16_full"):
    assert re.search(rf"^\| {mode} \|", report, re.M), mode
  assert (tmp_path / "bench.png").stat().st_size > 0
