"""Matmul throughput of the MiniLM training step's shapes under each XLA:CPU dot configuration, and torch.

  python scripts/bench_gemm.py                        # every configuration, both dtypes, the steps (~5 min)
  python scripts/bench_gemm.py --quick --out /tmp/g   # small shapes, 1 rep: the smoke test (tests/test_bench.py)

The shapes are those of scripts/bench.py's full step (MiniLM, batch 32 × 128: N = 4096 token rows,
H = 384, I = 1536, 12 heads of D = 32, T = 128), as XLA sees them in ftjax's step: for each dense layer
(in → out) the forward x·W (N×in · in×out), the input gradient g·Wᵀ (contracting W's out dimension)
and the weight gradient xᵀ·g (contracting N, the major dimension of both); for attention the batched
(32·12) products QKᵀ and PV and their four gradients. Each product is one jitted `lax.dot_general`
(bf16: bf16 operands, float32 result, as ftjax's bf16 matmuls) timed alone: the median of `--reps`
calls after 2 warm-up calls. GFLOP/s = 2·M·N·K (× batch) ÷ time. The rows "via copy" repeat the
products that contract the major dimension of both operands, computed as ftjax's bf16 backward does
(`_weight_gradient` in ftjax/models/layers.py: the narrower operand copied transposed, then a plain
row-major product; the copy's time counts); torch's cells there are its plain product again.

XLA reads XLA_FLAGS once, when its backend starts, and aborts the process on a flag it does not know:
so each configuration runs in its own fresh process of this script (`--child`), which also reports
which thunk the compiled module actually uses for the dot (ynn = YNNPACK fusion, xnn = XNNPACK fusion,
onednn, eigen = XLA's plain dot, which for bf16 operands upcasts them to float32 first). A flag that
this jaxlib accepts but that changes nothing shows up as the thunk of the configuration without it.
torch runs in its own process too, on 2 threads (`torch.matmul` on float32 or bfloat16 tensors; bf16
results are bf16, as under autocast). "step ms" weights each shape by how often the full step runs it (L = 6
layers) to give the matmul time of one step at that configuration's rates.

A configuration can also change what XLA fuses around the dots (YNNPACK's default fuses elementwise
ops and reductions into its dot fusions; "ynn dots alone" fuses nothing in, "ynn +eltwise+reduce" also
makes YNNPACK fusions of elementwise ops and reductions without a dot), which no GEMM timing
shows: so the `--step-configs` also time ftjax's MiniLM steps (`--step-modes`, as scripts/bench.py
builds them) in the same process.

Writes `<out>/gemm.md` below its hand-written findings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steps import mode_list  # noqa: E402

NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="  # an empty list: no YNNPACK fusions at all
# name → XLA_FLAGS. Each flag exists in jaxlib 0.10.2 (XLA_FLAGS=--help lists it with its values).
CONFIGS = {
  "ynn (default)": "",
  "ynn dots alone": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",  # no elementwise/reduce fused in
  "ynn +eltwise+reduce": "--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce",  # also fusions without a dot
  "eigen": NO_YNN,
  "eigen 1 thread": NO_YNN + " --xla_cpu_multi_thread_eigen=false",
  "xnn dot": NO_YNN + " --xla_cpu_experimental_xnn_fusion_type=individual_dot,dot",
  "xnn graph": NO_YNN + " --xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
  "onednn": NO_YNN + " --xla_cpu_use_onednn=true",
  "onednn custom call": NO_YNN + " --xla_cpu_experimental_onednn_custom_call=true",
  "onednn fusion": NO_YNN + " --xla_cpu_experimental_onednn_fusion_type=dot",
  "ynn max_isa=AVX2": "--xla_cpu_max_isa=AVX2",
}
DTYPES = ("float32", "bfloat16")


def shapes(n: int, h: int, i: int, batch: int, heads: int, t: int, d: int, layers: int) -> list[dict]:
  """Each matmul of the full step: name, lhs/rhs shapes, contracting dims (lhs, rhs), batch dims and
  how many times one step runs it."""
  out = []
  for layer, (fan_in, fan_out, per_layer) in {
    "q/k/v/out": (h, h, 4),
    "ffn in": (h, i, 1),
    "ffn out": (i, h, 1),
  }.items():
    count = per_layer * layers
    out += [
      dict(name=f"{layer} fwd x·W", lhs=(n, fan_in), rhs=(fan_in, fan_out), contract=(1, 0), count=count),
      dict(name=f"{layer} dX g·Wᵀ", lhs=(n, fan_out), rhs=(fan_in, fan_out), contract=(1, 1), count=count),
      dict(name=f"{layer} dW xᵀ·g", lhs=(n, fan_in), rhs=(n, fan_out), contract=(0, 0), count=count),
    ]
  b = (batch, heads)
  out += [
    dict(name="attn fwd QKᵀ", lhs=b + (t, d), rhs=b + (d, t), contract=(3, 2), count=layers),
    dict(name="attn fwd PV", lhs=b + (t, t), rhs=b + (t, d), contract=(3, 2), count=layers),
    dict(name="attn dP dO·Vᵀ", lhs=b + (t, d), rhs=b + (t, d), contract=(3, 3), count=layers),
    dict(name="attn dV Pᵀ·dO", lhs=b + (t, t), rhs=b + (t, d), contract=(2, 2), count=layers),
    dict(name="attn dQ dS·K", lhs=b + (t, t), rhs=b + (d, t), contract=(3, 3), count=layers),
    dict(name="attn dKᵀ Qᵀ·dS", lhs=b + (t, d), rhs=b + (t, t), contract=(2, 2), count=layers),
  ]
  # The products that contract the major dimension of both operands (weight gradients, Pᵀ·dO, Qᵀ·dS) once
  # more, computed as ftjax's bf16 backward computes them: one operand copied transposed first, so that
  # the library sees a plain row-major product (ftjax/models/layers.py, `_weight_gradient`).
  out += [dict(s, name=s["name"] + " via copy", via_copy=True) for s in out if s["contract"][0] != len(s["lhs"]) - 1]
  return out


def flops(s: dict) -> float:
  """2 × (every lhs dimension) × (rhs's free dimension): 2·M·N·K times the batch."""
  free_rhs = [n for k, n in enumerate(s["rhs"]) if k != s["contract"][1] and k >= len(s["rhs"]) - 2]
  total = 2.0
  for n in s["lhs"]:
    total *= n
  return total * free_rhs[0]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reps", type=int, default=10, help="timed calls per shape, dtype and configuration")
  p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of the XLA configurations")
  p.add_argument("--quick", action="store_true", help="batch 2 × 16 tokens, 1 rep, two configurations")
  p.add_argument("--out", default="results", help="folder for gemm.md")
  p.add_argument(
    "--step-configs",
    default="ynn (default),ynn dots alone,ynn +eltwise+reduce,eigen",
    help="configurations that also time ftjax's MiniLM steps (scripts/bench_steps.py); empty: none",
  )
  p.add_argument("--step-modes", default="full,bf16_full,lora", help="the steps those configurations time")
  p.add_argument("--step-reps", type=int, default=3, help="timed steps per mode (after 1 warm-up step)")
  p.add_argument("--child", help=argparse.SUPPRESS)  # "torch" or a configuration name: time it, print JSON
  args = p.parse_args(argv)
  args.configs = [c for c in args.configs.split(",") if c]
  args.step_configs = [c for c in args.step_configs.split(",") if c]
  args.step_modes = mode_list(p, args.step_modes)
  unknown = set(args.configs + args.step_configs) - set(CONFIGS)
  if unknown:
    p.error(f"--configs/--step-configs: unknown {sorted(unknown)}; known: {','.join(CONFIGS)}")
  batch, t = (2, 16) if args.quick else (32, 128)
  if args.quick:
    args.reps, args.step_reps, args.configs, args.step_configs = 1, 1, args.configs[:2], args.configs[:1]
  args.step_configs = [c for c in args.step_configs if c in args.configs]
  args.batch, args.length = batch, t
  args.shapes = shapes(batch * t, 384, 1536, batch, 12, t, 32, 6)
  return args


# --- one configuration, in its own process ------------------------------------------------------------


def median_seconds(call, reps: int) -> float:
  for _ in range(2):
    call()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def thunk(hlo_text: str) -> str:
  """Which library runs the compiled module's dot (see the module docstring)."""
  for marker, name in (("ynn_fusion", "ynn"), ("xnn_fusion", "xnn"), ("onednn", "onednn"), ("__onednn", "onednn")):
    if marker in hlo_text:
      return name
  return "eigen" if " dot(" in hlo_text else "?"


def time_jax(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from ftjax.models.layers import _weight_gradient as weight_gradient

  rng = np.random.default_rng(0)
  numbers = {}
  for dtype in DTYPES:
    for s in args.shapes:
      a = jnp.asarray(rng.standard_normal(s["lhs"], np.float32), dtype)
      b = jnp.asarray(rng.standard_normal(s["rhs"], np.float32), dtype)
      batch = tuple(range(len(s["lhs"]) - 2))
      dims = (((s["contract"][0],), (s["contract"][1],)), (batch, batch))
      if s.get("via_copy"):
        dot = jax.jit(weight_gradient)
      else:
        dot = jax.jit(lambda x, y, dims=dims: jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32))
      compiled = dot.lower(a, b).compile()
      seconds = median_seconds(lambda: compiled(a, b).block_until_ready(), args.reps)
      numbers[f"{dtype} {s['name']}"] = {"gflops": flops(s) / seconds / 1e9, "thunk": thunk(compiled.as_text())}
  return numbers


def time_torch(args) -> dict:
  import numpy as np
  import torch

  torch.set_num_threads(2)
  rng = np.random.default_rng(0)
  numbers = {}
  for dtype in DTYPES:
    for s in args.shapes:
      a = torch.from_numpy(rng.standard_normal(s["lhs"], np.float32)).to(getattr(torch, dtype))
      b = torch.from_numpy(rng.standard_normal(s["rhs"], np.float32)).to(getattr(torch, dtype))
      # the same product as the jax dot_general: contract lhs's last and rhs's second-to-last dimension
      a = a if s["contract"][0] == a.ndim - 1 else a.transpose(-1, -2)
      b = b if s["contract"][1] == b.ndim - 2 else b.transpose(-1, -2)
      seconds = median_seconds(lambda: torch.matmul(a, b), args.reps)
      numbers[f"{dtype} {s['name']}"] = {"gflops": flops(s) / seconds / 1e9, "thunk": "torch"}
  return numbers


def time_steps(args) -> dict:
  """ftjax's MiniLM steps as scripts/bench.py builds them (a tiny random BERT with --quick)."""
  from bench_steps import classifier_params, ftjax_contestant, synthetic_batch, tiny_bert_folder

  from ftjax.models import resolve

  folder = tiny_bert_folder() if args.quick else resolve("minilm")
  hf_config = json.loads((Path(folder) / "config.json").read_text())
  batch = synthetic_batch(hf_config["vocab_size"], args.batch, args.length)
  numbers = {}
  for mode in args.step_modes:
    c = ftjax_contestant(folder, mode, batch, classifier_params(hf_config))
    c.run()
    for _ in range(args.step_reps):
      c.timed()
    numbers[f"step {mode}"] = {"ms": 1e3 * statistics.median(c.times), "compile_s": c.compile_s}
  return numbers


def child(args):
  numbers = time_torch(args) if args.child == "torch" else time_jax(args)
  if args.child in args.step_configs:
    numbers |= time_steps(args)
  print("NUMBERS " + json.dumps(numbers), flush=True)


# --- the run -------------------------------------------------------------------------------------


def run_child(name: str, args) -> dict | str:
  """The child's numbers, or why there are none (XLA aborts on a flag it does not know)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  if name != "torch" and CONFIGS[name]:
    env["XLA_FLAGS"] = CONFIGS[name]
  command = [sys.executable, __file__, "--child", name, f"--reps={args.reps}", f"--step-reps={args.step_reps}"]
  command += ["--step-configs=" + ",".join(args.step_configs), "--step-modes=" + ",".join(args.step_modes)]
  command += ["--quick"] if args.quick else []
  proc = subprocess.run(command, capture_output=True, text=True, env=env)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("NUMBERS ")]
  if proc.returncode != 0 or not lines:
    return f"failed (exit {proc.returncode}): " + (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
  return json.loads(lines[-1].removeprefix("NUMBERS "))


def step_ms(numbers: dict, dtype: str, args) -> float:
  return 1e3 * sum(s["count"] * flops(s) / (numbers[f"{dtype} {s['name']}"]["gflops"] * 1e9) for s in args.shapes)


def write_report(out: Path, args, results: dict, load_before: str, load_after: str, elapsed: float):
  from ftjax.results import write_page

  import jax
  import torch

  names = [n for n in results if isinstance(results[n], dict)]
  lines = [
    f"Generated by `python {' '.join(sys.argv)}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} "
    f"in {elapsed / 60:.1f} min; load average {load_before} before, {load_after} after (well above 0: noisy).",
    "",
    f"- jax {jax.__version__}, torch {torch.__version__} (2 threads); {args.reps} timed calls per cell, median; "
    "GFLOP/s, higher is better, each with the first letter of the thunk that ran it (y ynn, x xnn, o onednn, "
    "e eigen, t torch). bf16: bf16 operands, float32 result (torch: bf16 result).",
    "- Configurations (XLA_FLAGS, each in a fresh process):",
  ]
  lines += [f"  - {name}: `{CONFIGS[name] or '(none)'}`" for name in args.configs]
  for name, why in results.items():
    if not isinstance(why, dict):
      lines.append(f"- {name}: {why}")
  lines.append("")
  for dtype in DTYPES:
    lines += [
      f"## {dtype}",
      "",
      "| shape | per step | GFLOP | " + " | ".join(names) + " |",
      "|---|---:|---:|" + "---:|" * len(names),
    ]
    for s in args.shapes:
      dims = f"{'×'.join(map(str, s['lhs']))} · {'×'.join(map(str, s['rhs']))}"
      key = f"{dtype} {s['name']}"
      cells = [f"{results[n][key]['gflops']:.0f} {results[n][key]['thunk'][0]}" for n in names]
      lines.append(f"| {s['name']} ({dims}) | {s['count']} | {flops(s) / 1e9:.2f} | " + " | ".join(cells) + " |")
    lines.append(
      "| **step ms** (all of the full step's matmuls) | | | "
      + " | ".join(f"**{step_ms(results[n], dtype, args):.0f}**" for n in names)
      + " |"
    )
    thunks = [", ".join(sorted({results[n][f"{dtype} {s['name']}"]["thunk"] for s in args.shapes})) for n in names]
    lines += ["| thunk that ran | | | " + " | ".join(thunks) + " |", ""]
  steps = [n for n in names if n in args.step_configs]
  if steps and args.step_modes:
    lines += [
      "## ftjax's step under each configuration",
      "",
      f"ms per step, median of {args.step_reps} after 1 warm-up (compile s in brackets); each step as "
      f"scripts/bench.py builds it, batch {args.batch} × {args.length}"
      + (" (tiny random BERT)." if args.quick else ", MiniLM."),
      "",
      "| configuration | " + " | ".join(args.step_modes) + " |",
      "|---|" + "---:|" * len(args.step_modes),
    ]
    for n in steps:
      cells = [
        f"{results[n][f'step {m}']['ms']:.0f} ({results[n][f'step {m}']['compile_s']:.1f})" for m in args.step_modes
      ]
      lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
  write_page(out / "gemm.md", "Matmul throughput: XLA:CPU configurations and torch", "\n".join(lines))


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    child(args)
    return
  start = time.perf_counter()
  load_before = Path("/proc/loadavg").read_text().split()[0]
  results = {}
  for name in args.configs + ["torch"]:
    results[name] = run_child(name, args)
    summary = results[name]
    if isinstance(summary, dict):
      summary = ", ".join(f"{dtype} step {step_ms(results[name], dtype, args):.0f} ms" for dtype in DTYPES)
    print(f"{name}: {summary}", flush=True)
  load_after = Path("/proc/loadavg").read_text().split()[0]
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  write_report(out, args, results, load_before, load_after, time.perf_counter() - start)
  print(f"wrote {out / 'gemm.md'}", flush=True)


if __name__ == "__main__":
  main()
